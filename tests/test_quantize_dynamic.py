"""int8-dynamic and fp8 quantization (`passes/quantize.py`, `qmatmul` in ir/op_qmatmul.py): activations
quantized per row at run time, codes times codes on the tensor cores, scales applied in the epilogue.
Checked against the same arithmetic written with torch ops, against the reference evaluator, on the
interpreter's kernels, and on sm_90 by the ahead-of-time compile (wgmma, no spills)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from axon.codegen.groups import fused_groups
from axon.driver import kernel_groups, optimize
from axon.ir import AxonError, DType, GraphBuilder, evaluate
from axon.passes.fusion import fuse
from axon.passes.quant_weights import convert
from axon.passes.quantize import Quantize
from axon.runtime import Executable

sys.path.insert(0, str(Path(__file__).parent))
QUIET = lambda *a, **k: None  # noqa: E731


def linear(batch=(3, 5), k=40, n=22, dtype=DType.F32):
    b = GraphBuilder("lin")
    x = b.input("x", dtype, (*batch, k))
    w = b.param("fc.w", dtype, (k, n))
    bias = b.param("fc.b", dtype, (n,))
    b.output("y", b.relu(b.add(b.matmul(x, w), bias)))
    return b.build()


def torch_dynamic(x, w, bias, fp8: bool):
    """The mode's arithmetic with torch ops: per-channel weight codes, per-row activation codes, an exact
    (or f32) product of the codes, both scales, the bias and relu."""
    qmax = 448.0 if fp8 else 127.0
    sw = (w.abs().amax(0, keepdim=True) / qmax).clamp_min(2.0**-126)
    amax = x.abs().amax(-1, keepdim=True)
    sx = (amax / qmax).clamp_min(2.0**-126)
    if fp8:
        qw = (w / sw).clamp(-448, 448).to(torch.float8_e4m3fn).float()
        qx = (x / sx).clamp(-448, 448).to(torch.float8_e4m3fn).float()
        acc = qx @ qw
    else:
        qw = torch.round(w * (1 / sw)).clamp(-127, 127)
        qx = torch.round(x * (1 / sx)).clamp(-127, 127)
        acc = (qx.long() @ qw.long()).float()
    return torch.relu(acc * sx * sw + bias)


def quantized(g, mode, params):
    p = Quantize(mode, min_size=0)
    layers = p.plan(g)
    return p.run(g), {**{k: v for k, v in params.items() if k != "fc.w"}, **convert(layers, params)}, layers


@pytest.mark.parametrize("mode", ["int8-dynamic", "fp8"])
def test_the_mode_computes_what_torch_computes(mode, gen):
    g = linear()
    params = {"fc.w": torch.randn(40, 22, generator=gen), "fc.b": torch.randn(22, generator=gen)}
    x = torch.randn(3, 5, 40, generator=gen)
    x[1, 2] = 0.0  # an all-zero row: the smallest scale, codes 0, output relu(bias)
    q, qparams, layers = quantized(g, mode, params)
    assert [layer.kind for layer in layers] == ["dyn8" if mode == "int8-dynamic" else "fp8"]
    assert qparams["fc.w.q"].dtype == (torch.int8 if mode == "int8-dynamic" else torch.float8_e4m3fn)
    want = torch_dynamic(x, params["fc.w"], params["fc.b"], fp8=mode == "fp8")
    ref = evaluate(q, {"x": x}, qparams)["y"]
    torch.testing.assert_close(ref, want, rtol=1e-5, atol=1e-5)
    exe = Executable(q, kernel_groups=fused_groups(q, fuse(q).groups))
    got = exe({"x": x}, qparams)["y"]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # and close to the float layer
    y = evaluate(g, {"x": x}, params)["y"]
    assert float((got - y).norm() / y.norm()) < (0.01 if mode == "int8-dynamic" else 0.06)


def test_two_kernels_and_the_accumulator_is_never_stored(gen):
    """Row quantization (one reduce kernel: amax, scale, codes), then qmatmul with the rescale, bias and
    relu as its epilogue; the i32 accumulator stays in registers."""
    g = linear(batch=(7,))
    params = {"fc.w": torch.randn(40, 22, generator=gen), "fc.b": torch.randn(22, generator=gen)}
    q, qparams, _ = quantized(g, "int8-dynamic", params)
    plan = fuse(q)
    kinds = [gr.kind for gr in plan.groups]
    assert kinds == ["reduce", "matmul"], plan.report()
    exe = Executable(q, kernel_groups=fused_groups(q, plan.groups))
    stored = [p.node for p in exe.memory_plan({}).buffers]
    assert not any(getattr(n, "dtype", None) == DType.I32 for n in stored)
    assert {n.dtype for n in stored if hasattr(n, "dtype")} >= {DType.I8}  # the row codes flow as int8


def test_bf16_activations_keep_their_dtype(gen):
    g = linear(batch=(6,), dtype=DType.BF16)
    params = {"fc.w": torch.randn(40, 22, generator=gen).bfloat16(),
              "fc.b": torch.randn(22, generator=gen).bfloat16()}
    q, qparams, _ = quantized(g, "int8-dynamic", params)
    x = torch.randn(6, 40, generator=gen).bfloat16()
    ref = evaluate(q, {"x": x}, qparams)["y"]
    assert ref.dtype == torch.bfloat16
    got = Executable(q, kernel_groups=kernel_groups(q))({"x": x}, qparams)["y"]
    torch.testing.assert_close(got.float(), ref.float(), rtol=1e-2, atol=1e-2)


def test_conv_layers_fall_back_as_the_plan_says():
    b = GraphBuilder("c")
    x = b.input("x", DType.F32, (2, 3, 8, 8))
    w = b.param("conv.w", DType.F32, (8, 3, 3, 3))
    b.output("y", b.conv2d(x, w))
    g = b.build()
    (dyn,) = Quantize("int8-dynamic", min_size=0).plan(g)
    assert dyn.kind == "int8" and "weight-only" in dyn.reason
    (f8,) = Quantize("fp8", min_size=0).plan(g)
    assert f8.kind == "float" and "fp8" in f8.reason


@pytest.mark.parametrize("mode", ["int8-dynamic", "fp8"])
def test_quantized_gpt_runs_codes_on_sm90_tensor_cores(mode):
    """GPT in bf16: every qmatmul compiles for sm_90 to tensor-core instructions (wgmma, or mma where a
    tile has fewer than 64 rows) with no spill; fp8 on sm_80 is refused with a reason."""
    from test_aot import assert_clean, example_graph, sweep

    from axon.codegen import aot
    from axon.codegen.target import parse

    g, env = example_graph("gpt.axon", False, "bf16")
    q, _ = optimize(g, f"quantize{{mode={mode}}},fold,simplify,cse,dce", out=QUIET)
    rows = sweep(q, env)
    assert_clean(rows)
    codes = [r for r in rows if "qmatmul" in r.what]
    table = aot.format_table(rows, parse("sm_90"))
    assert len(codes) >= 10 and all(r.tensor_cores in ("wgmma", "mma") for r in codes), table
    assert sum(r.tensor_cores == "wgmma" for r in codes) > len(codes) // 2, table  # mma: tiles of < 64 rows
    if mode == "fp8":
        with pytest.raises(AxonError, match="fp8 dots need sm_89"):
            aot.launches_for(kernel_groups(q), env, parse("sm_80"))


def two_layers(dtype=DType.F32):
    b = GraphBuilder("mlp")
    x = b.input("x", dtype, (9, 40))
    h = b.relu(b.add(b.matmul(x, b.param("h.w", dtype, (40, 24))), b.param("h.b", dtype, (24,))))
    b.output("y", b.add(b.matmul(h, b.param("o.w", dtype, (24, 10))), b.param("o.b", dtype, (10,))))
    return b.build()


def test_int8_static_quantizes_in_the_producers_epilogue_so_int8_flows_between_layers(gen):
    g = two_layers()
    params = {"h.w": torch.randn(40, 24, generator=gen), "h.b": torch.randn(24, generator=gen),
              "o.w": torch.randn(24, 10, generator=gen), "o.b": torch.randn(10, generator=gen)}
    x = torch.randn(9, 40, generator=gen)
    p = Quantize("int8-static", min_size=0)
    layers = p.plan(g)
    assert [layer.kind for layer in layers] == ["st8", "st8"]
    with pytest.raises(AxonError, match="calibration"):
        convert(layers, params)
    h = torch.relu(x @ params["h.w"] + params["h.b"])
    amax = {"h.w": float(x.abs().max()), "o.w": float(h.abs().max())}  # min-max over this one batch
    q = p.run(g)
    qparams = {**{k: params[k] for k in ("h.b", "o.b")}, **convert(layers, params, amax)}
    assert float(qparams["o.w.in_scale"]) == pytest.approx(amax["o.w"] / 127)
    # torch: one scale per activation tensor, per-channel weights, exact integer products
    out = x
    for name, bias, relu in (("h", params["h.b"], True), ("o", params["o.b"], False)):
        sx, sw = qparams[f"{name}.w.in_scale"], qparams[f"{name}.w.scale"]
        qx = torch.round(out * (1 / sx)).clamp(-127, 127)
        out = (qx.long() @ qparams[f"{name}.w.q"].long()).float() * sx * sw + bias
        out = torch.relu(out) if relu else out
    ref = evaluate(q, {"x": x}, qparams)["y"]
    torch.testing.assert_close(ref, out, rtol=1e-5, atol=1e-5)
    plan = fuse(q)
    exe = Executable(q, kernel_groups=fused_groups(q, plan.groups))
    torch.testing.assert_close(exe({"x": x}, qparams)["y"], ref, rtol=1e-5, atol=1e-5)
    # x's quantize is a kernel; layer 1's matmul stores h as int8 codes (its epilogue quantizes), which
    # layer 2's matmul reads: no float h in memory
    assert [gr.kind for gr in plan.groups] == ["pointwise", "matmul", "matmul"], plan.report()
    between = [pl.node for pl in exe.memory_plan({}).buffers]
    assert [n.dtype for n in between if hasattr(n, "dtype")] == [DType.I8, DType.I8]


def test_the_ledger_says_what_each_layer_compiles_to_on_sm90(capsys, tmp_path):
    """`axon quantize --mode int8-dynamic`: the ledger's rows name the kernels (row quantization, then
    codes times codes) and, from the ahead-of-time compile, the sm_90 instructions: wgmma on s8."""
    import json

    from test_quantize_pass import TINY

    from axon.cli import main
    from axon.driver import graph_of
    from axon.ir import init_params
    from axon.runtime.safetensors import save

    src = tmp_path / "tiny.axon"
    src.write_text(TINY)
    g, _ = optimize(graph_of(src, loss=True), out=QUIET)
    gen = torch.Generator().manual_seed(5)
    save({k: torch.randn(v.shape, generator=gen) * 0.3 for k, v in init_params(g).items()},
         tmp_path / "w.safetensors")
    code = main(["quantize", str(src), "--mode", "int8-dynamic", "--weights", str(tmp_path / "w.safetensors"),
                 "--out", str(tmp_path / "q"), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    ledger = json.loads((tmp_path / "q" / "ledger.json").read_text())
    assert ledger["target"] == "sm_90"
    (row,) = [r for r in ledger["layers"] if r["kind"] == "dyn8"]
    assert "x per row" in row["runs"] and "qmatmul" in row["runs"]
    assert row["compiled"].startswith("wgmma s8") and "spilled" not in row["compiled"], row
    assert "sm_90: wgmma s8" in out


def test_bench_times_the_quantized_model_beside_the_float_one(capsys, tmp_path):
    """`axon bench FILE --quantized DIR`: a second row, its kernels checked against the quantized graph's
    reference evaluator, with both models' weight bytes and kernel counts; other modes are refused."""
    import json

    from test_quantize_pass import TINY

    from axon.cli import main

    src = tmp_path / "tiny.axon"
    src.write_text(TINY)
    assert main(["quantize", str(src), "--mode", "int8-dynamic", "--out", str(tmp_path / "q"),
                 "--device", "cpu", "--target", "none"]) == 0
    code = main(["bench", str(src), "--quantized", str(tmp_path / "q"), "--no-compile", "--repeats", "1",
                 "--warmup", "0", "--device", "cpu", "--json", str(tmp_path / "b.json")])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    base, quant = json.loads((tmp_path / "b.json").read_text())["runs"]
    assert quant["case"] == "Tiny int8-dynamic" and quant["check"]["ok"]
    assert "reference evaluator" in quant["check"]["against"]
    q = quant["quantized"]
    assert q["weight_bytes"]["quantized"] < q["weight_bytes"]["float"] / 2
    assert q["kernels"] == {"float": base["impls"]["axon"]["kernels"], "quantized": 3}
    assert quant["flops"] == base["flops"]
    code = main(["bench", str(src), "--mode", "train", "--quantized", str(tmp_path / "q"), "--device", "cpu"])
    assert code != 0 and "--mode forward" in capsys.readouterr().err
