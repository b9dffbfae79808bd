"""The reference evaluator itself: binding symbolic dims from inputs, rejecting bad inputs with errors
that name them, precise mode, NumPy inputs, and freeing values without losing outputs."""
import numpy as np
import pytest
import torch

from axon.ir import DType, EvalError, GraphBuilder, Init, Sym, evaluate
from numerics import assert_close

D = DType
BATCH, SEQ = Sym.of("batch"), Sym.of("seq")


def _two_input_graph():
    """y = x @ w + b, with x: f32[batch, seq, 5] and b: f32[batch, 1, 3], so two inputs bind `batch`."""
    g = GraphBuilder()
    x, b = g.input("x", D.F32, (BATCH, SEQ, 5)), g.input("b", D.F32, (BATCH, 1, 3))
    w = g.param("w", D.F32, (5, 3), Init("normal"))
    g.output("y", g.add(g.matmul(x, w), b))
    return g.build()


def test_symbolic_dims_are_bound_from_inputs(gen):
    x, b, w = (torch.randn(s, generator=gen) for s in ((4, 7, 5), (4, 1, 3), (5, 3)))
    y = evaluate(_two_input_graph(), {"x": x, "b": b}, {"w": w})["y"]
    assert_close(y, x @ w + b)


def test_inconsistent_symbolic_dims_name_both_inputs():
    x, b, w = torch.zeros(4, 7, 5), torch.zeros(3, 1, 3), torch.zeros(5, 3)
    with pytest.raises(EvalError, match=r"'batch' is 4 in input 'x' \(axis 0\) but 3 in input 'b'"):
        evaluate(_two_input_graph(), {"x": x, "b": b}, {"w": w})


def test_product_dims_are_checked_against_bound_symbols():
    g = GraphBuilder()
    x, y = g.input("x", D.F32, (BATCH, SEQ)), g.input("flat", D.F32, (Sym(("batch", "seq")),))
    g.output("z", g.add(g.reshape(x, (Sym(("batch", "seq")),)), y))
    graph = g.build()
    out = evaluate(graph, {"x": torch.ones(2, 3), "flat": torch.arange(6.0)})["z"]
    assert torch.equal(out, torch.arange(6.0) + 1)
    with pytest.raises(EvalError, match="input 'flat' axis 0 should be batch\\*seq = 6, got 7"):
        evaluate(graph, {"x": torch.ones(2, 3), "flat": torch.arange(7.0)})


def test_coefficient_dims_must_divide():
    g = GraphBuilder()
    g.output("y", g.neg(g.input("x", D.F32, (Sym(("batch",), 2), 3))))
    assert evaluate(g.build(), {"x": torch.ones(4, 3)})["y"].shape == (4, 3)
    with pytest.raises(EvalError, match="input 'x' axis 0 is 2\\*batch, which 5 is not"):
        evaluate(g.build(), {"x": torch.ones(5, 3)})


BAD_FEEDS = [  # (inputs, params, message naming what is wrong)
    ({"x": torch.zeros(4, 7, 5, dtype=torch.float64), "b": torch.zeros(4, 1, 3)}, True,
     "input 'x' should be f32, got f64"),
    ({"x": torch.zeros(4, 7, 5, dtype=torch.int16), "b": torch.zeros(4, 1, 3)}, True,
     "input 'x' should be f32, got torch.int16"),
    ({"x": torch.zeros(4, 7, 6), "b": torch.zeros(4, 1, 3)}, True, "input 'x' should have shape"),
    ({"x": torch.zeros(4, 7), "b": torch.zeros(4, 1, 3)}, True,
     "input 'x' should have shape .* \\(rank 3\\)"),
    ({"x": torch.zeros(4, 7, 5)}, True, "no value given for 'b'"),
    ({"x": torch.zeros(4, 7, 5), "b": torch.zeros(4, 1, 3)}, False, "no value given for 'w'"),
    ({"x": torch.zeros(4, 7, 5), "b": torch.zeros(4, 1, 3), "z": torch.zeros(1)}, True,
     "unknown input\\(s\\) 'z'; the graph takes x, b"),
    ({"x": "not a tensor", "b": torch.zeros(4, 1, 3)}, True,
     "input 'x' must be a tensor or an array, got str"),
]


@pytest.mark.parametrize("inputs,with_w,message", BAD_FEEDS, ids=[m for _, _, m in BAD_FEEDS])
def test_bad_inputs_are_eval_errors_naming_them(inputs, with_w, message):
    params = {"w": torch.zeros(5, 3)} if with_w else {}
    with pytest.raises(EvalError, match=message):
        evaluate(_two_input_graph(), inputs, params)


def test_bad_parameter_names_it():
    feeds = {"x": torch.zeros(4, 7, 5), "b": torch.zeros(4, 1, 3)}
    with pytest.raises(EvalError, match="parameter 'w' should have shape \\[5, 3\\], got \\[3, 5\\]"):
        evaluate(_two_input_graph(), feeds, {"w": torch.zeros(3, 5)})
    with pytest.raises(EvalError, match="parameter 'w' should be f32, got bf16"):
        evaluate(_two_input_graph(), feeds, {"w": torch.zeros(5, 3, dtype=torch.bfloat16)})


def test_numpy_inputs_are_accepted(gen):
    x, b, w = (torch.randn(s, generator=gen) for s in ((2, 3, 5), (2, 1, 3), (5, 3)))
    y = evaluate(_two_input_graph(), {"x": x.numpy(), "b": b.numpy()}, {"w": w.numpy()})["y"]
    assert isinstance(y, torch.Tensor)
    assert_close(y, x @ w + b)


def test_precise_mode_holds_f64_and_only_casts_round(gen):
    g = GraphBuilder()
    x = g.input("x", D.F16, (37, 53))
    s = g.add(g.mul(x, x), 1.0)  # computed in f16 by default, in f64 when precise
    g.output("s", s)
    g.output("r", g.cast(g.cast(s, D.F8E4M3), D.F32))  # the casts round even when precise
    g.output("n", g.argmax(s, 1))
    graph = g.build()
    xv = torch.randn(37, 53, generator=gen).half()
    default, precise = evaluate(graph, {"x": xv}), evaluate(graph, {"x": xv}, precise=True)
    x64 = xv.double()
    assert default["s"].dtype == torch.float16 and torch.equal(default["s"], xv * xv + 1)
    assert precise["s"].dtype == torch.float64 and torch.equal(precise["s"], x64 * x64 + 1)
    assert precise["r"].dtype == torch.float64
    assert torch.equal(precise["r"], (x64 * x64 + 1).to(torch.float8_e4m3fn).double())
    assert precise["n"].dtype == torch.int64


def test_precise_literals_hold_their_dtypes_value():
    g = GraphBuilder()
    x = g.input("x", D.F32, (3,))
    g.output("y", g.add(g.cast(x, D.F16), 0.1))  # the literal 0.1 is an f16: 0.0999755859375
    y = evaluate(g.build(), {"x": torch.zeros(3)}, precise=True)["y"]
    assert torch.equal(y, torch.full((3,), torch.tensor(0.1).half().item(), dtype=torch.float64))


def test_values_used_later_and_outputs_are_not_freed(gen):
    g = GraphBuilder()
    x = g.input("x", D.F32, (37, 53))
    sq = g.mul(x, x)                      # one node using x twice
    g.output("sq", sq)                    # an output ...
    t = g.tanh(sq)
    g.output("late", g.add(t, sq))        # ... that is also used by a later node
    g.output("x_again", x)                # an output that is an input
    g.output("t", t)
    xv = torch.randn(37, 53, generator=gen)
    out = evaluate(g.build(), {"x": xv})
    assert set(out) == {"sq", "late", "x_again", "t"}
    assert_close(out["sq"], xv * xv)
    assert_close(out["late"], torch.tanh(xv * xv) + xv * xv)
    assert torch.equal(out["x_again"], xv)
    precise = evaluate(g.build(), {"x": xv}, precise=True)
    assert precise["x_again"].dtype == torch.float64 and torch.equal(precise["x_again"], xv.double())


def test_runtime_failures_name_the_node():
    g = GraphBuilder()
    x = g.input("x", D.F32, (Sym.of("n"), 4))
    g.output("m", g.max(x, 0))
    with pytest.raises(EvalError, match=r"evaluating %1 = max\(f32\[n, 4\]\) -> f32\[4\]: .*size 0"):
        evaluate(g.build(), {"x": np.zeros((0, 4), np.float32)})


def test_float_to_int_cast_truncates_zeroes_nan_and_saturates():
    """The rule generated kernels must follow too: C leaves all three cases undefined."""
    b = GraphBuilder()
    x = b.input("x", DType.F32, (6,))
    for d in (DType.I8, DType.U8, DType.I32, DType.I64):
        b.output(str(d), b.cast(x, d))
    g = b.build()
    xs = torch.tensor([float("nan"), 300.5, -1.7, -200.0, float("inf"), -float("inf")])
    out = evaluate(g, {"x": xs})
    assert out["i8"].tolist() == [0, 127, -1, -128, 127, -128]
    assert out["u8"].tolist() == [0, 255, 0, 0, 255, 0]
    assert out["i32"].tolist() == [0, 300, -1, -200, 2**31 - 1, -2**31]
    assert out["i64"].tolist()[:4] == [0, 300, -1, -200]


def test_large_literal_rounds_to_infinity_as_in_torch():
    b = GraphBuilder()
    x = b.input("x", DType.F16, (3,))
    m = b.input("m", DType.BOOL, (3,))
    b.output("y", b.where(m, x, -1e9))  # the usual attention-mask pattern
    out = evaluate(b.build(), {"x": torch.ones(3, dtype=torch.float16), "m": torch.tensor([1, 0, 1]).bool()})
    assert out["y"].tolist() == [1.0, -float("inf"), 1.0]


def test_precise_mode_rounds_sources_to_their_dtype():
    b = GraphBuilder()
    x = b.input("x", DType.F16, (2,))
    b.output("iota", b.iota((20,), 0, DType.F8E4M3))
    b.output("pad", b.pad(x, [(1, 0)], 0.1))
    out = evaluate(b.build(), {"x": torch.zeros(2, dtype=torch.float16)}, precise=True)
    assert out["iota"][17].item() == 16.0  # e4m3 holds 16 or 18, not 17: round to even
    assert out["pad"][0].item() == torch.tensor(0.1, dtype=torch.float16).item()
