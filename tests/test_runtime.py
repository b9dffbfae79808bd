"""The runtime: an Executable's plans (prepared once per size, buffers reused), input checks, devices,
int64 indexing, and `axon.compile` with its parameters and weights."""
from __future__ import annotations

import pytest
import torch

import axon
from axon.ir import DType, GraphBuilder, OpKind, Sym, evaluate
from axon.runtime import DeviceError, Executable, RunError, choose
from numerics import assert_close

K = OpKind
SOURCE = """
model Tiny(hidden = 7) {
    input x: f32[batch, 5]
    h = relu(linear(x, hidden))
    output y = linear(h, 3)
}
"""


def _graph():
    b = GraphBuilder("g")
    batch = Sym.of("batch")
    x = b.input("x", DType.F32, (batch, 13))
    w = b.param("w", DType.F32, (13,))
    t = b.tensor([1.0, -2.0, 3.0], DType.F32)
    s = b.sum(b.mul(x, w), 1, keepdim=True)  # [batch, 1]
    b.output("y", b.add(b.expand(s, (batch, 3)), t))
    b.output("t", t)
    b.output("x", x)
    return b.build()


def test_plans_are_made_once_per_size_and_reused(gen):
    exe = Executable(_graph())
    w = torch.randn(13, generator=gen)
    for batch in (3, 3, 8):
        x = torch.randn(batch, 13, generator=gen)
        got = exe({"x": x}, {"w": w}, poison=True)
        want = evaluate(exe.graph, {"x": x}, {"w": w})
        for name in want:
            assert_close(got[name], want[name], what=name)
    assert sorted(exe._plans) == [(("batch", 3),), (("batch", 8),)]
    plan = exe.plan({"batch": 3})
    assert plan is exe.plan({"batch": 3}) and all(n.op != K.TENSOR for n in plan.buffers)


def test_outputs_are_fresh_and_literals_are_copies(gen):
    exe = Executable(_graph())
    x, w = torch.randn(4, 13, generator=gen), torch.randn(13, generator=gen)
    a, b = exe({"x": x}, {"w": w}), exe({"x": x}, {"w": w})
    assert a["y"].data_ptr() != b["y"].data_ptr()  # a second call does not overwrite the first's outputs
    a["t"].fill_(0)
    assert torch.equal(exe({"x": x}, {"w": w})["t"], torch.tensor([1.0, -2.0, 3.0]))


@pytest.mark.parametrize("inputs, params, fragment", [
    ({}, {"w": torch.zeros(13)}, "no value given for 'x'"),
    ({"x": torch.zeros(2, 13)}, {}, "no value given for 'w'"),
    ({"x": torch.zeros(2, 13), "z": torch.zeros(1)}, {"w": torch.zeros(13)}, "unknown input(s) 'z'"),
    ({"x": torch.zeros(2, 13, dtype=torch.float64)}, {"w": torch.zeros(13)}, "should be f32, got f64"),
    ({"x": torch.zeros(2, 12)}, {"w": torch.zeros(13)}, "should have shape"),
    ({"x": torch.zeros(2, 13)}, {"w": torch.zeros(14)}, "parameter 'w' should have shape [13]"),
    ({"x": [[1.0] * 13]}, {"w": torch.zeros(13)}, "must be a torch.Tensor"),
])
def test_bad_inputs_are_named(inputs, params, fragment):
    exe = Executable(_graph())
    with pytest.raises(RunError) as e:
        exe(inputs, params)
    assert fragment in str(e.value)


def test_index_inputs_are_checked_on_the_host(gen):
    b = GraphBuilder("embed")
    table = b.param("table", DType.F32, (11, 6))
    ids = b.input("ids", DType.I64, (Sym.of("batch"),))
    b.output("e", b.take(table, ids, axis=0))
    exe = Executable(b.build())
    t = torch.randn(11, 6, generator=gen)
    ids_ok = torch.tensor([0, 10, 3])
    assert torch.equal(exe({"ids": ids_ok}, {"table": t})["e"], t[ids_ok])
    with pytest.raises(RunError, match=r"'ids' is the index of a take \(axis 0\) of size 11.*\[0, 11\]"):
        exe({"ids": torch.tensor([0, 11])}, {"table": t})
    ids_back = torch.tensor([-1, -11, 2])  # a take counts a negative index from the end (torch.take)
    assert torch.equal(exe({"ids": ids_back}, {"table": t})["e"], t[ids_back])
    with pytest.raises(RunError, match=r"valid: \[-11, 10\]"):
        exe({"ids": torch.tensor([-12])}, {"table": t})


def test_wide_indexing_is_chosen_by_size(monkeypatch, gen):
    """Tensors past 2**31 elements get int64 index arithmetic: forced here by lowering the threshold."""
    import axon.codegen.cache as cache

    monkeypatch.setattr(cache, "WIDE", 10)
    exe = Executable(_graph())
    x, w = torch.randn(5, 13, generator=gen), torch.randn(13, generator=gen)
    got = exe({"x": x}, {"w": w}, poison=True)
    plan = exe.plan({"batch": 5})
    assert all(k.spec.wide for k, _ in plan.launches if k.group.kind != "pointwise" or
               any(n.shape and n.shape[0] != 3 for n in k.group.outputs))
    assert "tl.int64" in plan.launches[0][0].source
    assert_close(got["y"], evaluate(exe.graph, {"x": x}, {"w": w})["y"])


def test_device_choice():
    assert choose(None).type == "cpu" or torch.cuda.is_available()
    assert choose("cpu").type == "cpu"
    with pytest.raises(DeviceError, match="unknown device 'tpu9'"):
        choose("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            choose("cuda")


def test_compile_source_text_call_and_reference(gen):
    model = axon.compile(SOURCE, hparams={"hidden": 9}, seed=3)
    assert sorted(model.params) == ["h.b", "h.w", "y.b", "y.w"]
    assert tuple(model.params["h.w"].shape) == (5, 9)
    x = torch.randn(6, 5, generator=gen)
    y = model(x)
    assert y.shape == (6, 3)
    assert torch.equal(model(x=x), y)
    assert_close(y, model.reference({"x": x})["y"])
    p = model.params
    ref = torch.relu(x @ p["h.w"] + p["h.b"]) @ p["y.w"] + p["y.b"]
    assert_close(y, ref)
    with pytest.raises(RunError, match="takes 1 input"):
        model(x, x)
    with pytest.raises(RunError, match="both by position and by name"):
        model(x, x=x)


def test_params_can_be_changed_in_place_and_replaced(gen):
    model = axon.compile(SOURCE)
    x = torch.randn(2, 5, generator=gen)
    model.params["y.b"].fill_(1.0)
    model.params["y.w"] = torch.zeros(7, 3)
    assert torch.equal(model(x), torch.ones(2, 3))


def test_weights_round_trip_and_mismatches(tmp_path, gen):
    a, b = axon.compile(SOURCE, seed=1), axon.compile(SOURCE, seed=2)
    x = torch.randn(3, 5, generator=gen)
    assert not torch.equal(a(x), b(x))
    a.save_weights(tmp_path / "w.safetensors")
    b.load_weights(tmp_path / "w.safetensors")
    assert torch.equal(a(x), b(x))
    other = axon.compile(SOURCE, hparams={"hidden": 4})
    before = {k: v.clone() for k, v in other.params.items()}
    with pytest.raises(axon.api.AxonError, match=r"'h.w' is f32\[5, 7\], the model wants f32\[5, 4\]"):
        other.load_weights(tmp_path / "w.safetensors")
    assert all(torch.equal(before[k], other.params[k]) for k in before)  # nothing changed by the failure
