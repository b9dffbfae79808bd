"""A dequantized weight fused into its matmul's K loop (`passes/fusion/prologue.py`, `codegen/prologue.py`):
one kernel, the float weight never stored (the memory plan has no buffer for it), results equal to the
evaluator and to the unfused kernels, on every code format the quantize op has; refused, with the reason,
where the weight is read elsewhere; and on sm_90 the fused kernels compile without spills onto tensor
cores (bf16)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from axon.codegen.groups import fused_groups, groups
from axon.ir import DType, GraphBuilder, evaluate
from axon.passes.fusion import fuse
from axon.runtime import Executable

sys.path.insert(0, str(Path(__file__).parent))

# (codes, granularity): the code formats and scale layouts a weight [K, N] may be stored in
CASES = {
    "i8 per channel": (DType.I8, dict(axis=1)),
    "i8 per tensor": (DType.I8, dict()),
    "u8 per channel, zero point": (DType.U8, dict(axis=1, zp=True)),
    "i8 groups along K": (DType.I8, dict(axis=0, group=8)),
    "int4 groups along K": ("int4", dict(axis=0, group=8)),
    "uint4 groups along N, zero point": ("uint4", dict(axis=1, group=2, zp=True)),
    "e4m3 per tensor": (DType.F8E4M3, dict()),
    "e5m2 per channel": (DType.F8E5M2, dict(axis=1)),
}
K_, N_ = 40, 22  # irregular: partial K and N blocks


def weight(b: GraphBuilder, codes, axis=None, group=None, zp=False, dtype=DType.F32):
    """A stored weight [K, N] and what dequantizes it; returns (the weight node, its param values)."""
    g = torch.Generator().manual_seed(1)
    packed = codes in ("int4", "uint4")
    qshape = (K_, N_ // 2) if packed else (K_, N_)
    sshape = [1, 1] if axis is not None else []
    if axis is not None:
        sshape[axis] = (K_, N_)[axis] // (group or 1)
        sshape[1 - axis] = 1 if group is None else (K_, N_)[1 - axis]
    if packed:
        q = b.param("w.q", DType.U8, qshape)
        vals = {"w.q": torch.randint(0, 256, qshape, dtype=torch.uint8, generator=g)}
        q = b.unpack_int4(q, DType.I8 if codes == "int4" else DType.U8)
    elif codes.is_fp8:
        q = b.param("w.q", codes, qshape)
        vals = {"w.q": (torch.randn(qshape, generator=g) * 8).to(codes.torch)}
    else:
        q = b.param("w.q", codes, qshape)
        lo, hi = (-127, 128) if codes == DType.I8 else (0, 256)
        vals = {"w.q": torch.randint(lo, hi, qshape, dtype=codes.torch, generator=g)}
    s = b.param("w.scale", DType.F32, tuple(sshape))
    vals["w.scale"] = torch.rand(sshape, generator=g) * 0.05 + 0.001
    z = None
    if zp:
        z = b.param("w.zp", DType.U8, tuple(sshape))
        vals["w.zp"] = torch.randint(0, 16 if packed else 256, sshape, dtype=torch.uint8, generator=g)
    w = b.dequantize(q, s, z, dtype, axis=axis, group=group)
    return w, vals


def model(codes, gran, dtype=DType.F32, batch=(5,)):
    b = GraphBuilder()
    x = b.input("x", dtype, (*batch, K_))
    w, vals = weight(b, codes, dtype=dtype, **gran)
    bias = b.param("bias", dtype, (N_,))
    b.output("y", b.relu(b.add(b.matmul(x, w), bias)))
    vals["bias"] = torch.randn(N_).to(dtype.torch)
    return b.build(), vals


def run(graph, feeds, params, fusion=True):
    kernels = fused_groups(graph, fuse(graph).groups) if fusion else groups(graph)
    exe = Executable(graph, kernel_groups=kernels)
    return exe, exe(feeds, params)


@pytest.mark.parametrize("case", list(CASES))
def test_the_fused_weight_equals_the_evaluator_and_the_unfused_kernels(case):
    g, params = model(*CASES[case], batch=(2, 3))
    feeds = {"x": torch.randn(2, 3, K_, generator=torch.Generator().manual_seed(2))}
    want = evaluate(g, feeds, params)["y"]
    exe, got = run(g, feeds, params)
    (k,) = exe.kernels  # dequantize (unpack), matmul, bias, relu: one kernel
    assert k.group.prologue and k.group.prologue[-1].op.value == "dequantize"
    _, unfused = run(g, feeds, params, fusion=False)
    torch.testing.assert_close(got["y"], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["y"], unfused["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [DType.BF16, DType.F16])
def test_a_16_bit_weight_is_dequantized_then_rounded_as_the_evaluator_does(dtype):
    g, params = model(DType.I8, dict(axis=1), dtype=dtype, batch=(7,))
    feeds = {"x": torch.randn(7, K_).to(dtype.torch)}
    want = evaluate(g, feeds, params)["y"].float()
    exe, got = run(g, feeds, params)
    assert len(exe.kernels) == 1
    torch.testing.assert_close(got["y"].float(), want, rtol=2e-2, atol=2e-2)


def test_the_float_weight_is_never_stored():
    g, params = model("int4", dict(axis=0, group=8))
    exe, _ = run(g, {"x": torch.randn(5, K_)}, params)
    plan = exe.memory_plan({})
    deq = next(n for n in g.nodes if n.op.value == "dequantize")
    stored = {p.node for p in plan.buffers}
    assert deq not in stored and not any(n.op.value == "unpack_int4" for n in stored if hasattr(n, "op"))
    assert plan.launches == 1
    # unfused, the dequantized weight (and the unpacked codes) are buffers of their own
    unfused = Executable(g, kernel_groups=groups(g)).memory_plan({})
    assert unfused.launches == 5 and deq in {p.node for p in unfused.buffers}


def test_the_plan_names_the_prologue():
    g, _ = model("int4", dict(axis=0, group=8))
    report = fuse(g).report()
    assert "1 kernels" in report and "prologue:" in report and "unpack_int4" in report


def test_a_weight_read_elsewhere_is_not_fused_and_the_refusal_says_why():
    b = GraphBuilder()
    x = b.input("x", DType.F32, (5, K_))
    w, params = weight(b, DType.I8, axis=1)
    b.output("y", b.matmul(x, w))
    b.output("w", w)  # the dequantized weight is an output: it must be stored
    g = b.build()
    f = fuse(g)
    assert "graph output" in f.report(why_not=True)
    feeds = {"x": torch.randn(5, K_)}
    exe, got = run(g, feeds, params)
    assert len(exe.kernels) == 2
    torch.testing.assert_close(got["y"], evaluate(g, feeds, params)["y"])

    b = GraphBuilder()
    x = b.input("x", DType.F32, (5, K_))
    x2 = b.input("x2", DType.F32, (N_, 3))
    w, params = weight(b, DType.I8, axis=1)
    b.output("y", b.matmul(x, w))
    b.output("y2", b.matmul(w, x2))  # also a left operand: stored, read by both
    g = b.build()
    assert "as its left operand" in fuse(g).report(why_not=True)
    feeds = {"x": feeds["x"], "x2": torch.randn(N_, 3)}
    exe, got = run(g, feeds, params)
    assert len(exe.kernels) == 3
    want = evaluate(g, feeds, params)
    for name in ("y", "y2"):
        torch.testing.assert_close(got[name], want[name])


def test_two_matmuls_sharing_a_weight_each_dequantize_it():
    b = GraphBuilder()
    x = b.input("x", DType.F32, (5, K_))
    x2 = b.input("x2", DType.F32, (3, K_))
    w, params = weight(b, DType.I8, axis=1)
    b.output("y", b.matmul(x, w))
    b.output("y2", b.matmul(x2, w))
    g = b.build()
    feeds = {"x": torch.randn(5, K_), "x2": torch.randn(3, K_)}
    exe, got = run(g, feeds, params)
    assert len(exe.kernels) == 2 and all(k.group.prologue for k in exe.kernels)
    want = evaluate(g, feeds, params)
    for name in ("y", "y2"):
        torch.testing.assert_close(got[name], want[name])


def test_quantized_gpt_kernels_compile_for_sm90_on_tensor_cores_without_spills():
    """GPT in bf16 with int4 weights (groups of 32): every weight dequantized inside its matmul (as many
    kernels as the float model), each compiling to wgmma on sm_90 with no spill."""
    from test_aot import QUIET, assert_clean, example_graph, sweep

    from axon.driver import kernel_groups, optimize

    g, env = example_graph("gpt.axon", False, "bf16")
    q, _ = optimize(g, "quantize{mode=int4-weight,group=32},fold,simplify,cse,dce", out=QUIET)
    kernels = kernel_groups(q)
    assert len(kernels) == len(kernel_groups(g))
    fused = [k for k in kernels if k.prologue]
    assert len(fused) >= 10 and all(k.kind == "matmul" for k in fused)
    rows = sweep(q, env)
    assert_clean(rows)
    assert all(r.tensor_cores == "wgmma" for r in rows if r.kind == "matmul")


@pytest.mark.parametrize("dtype", [None, "bf16"])
def test_quantized_cnn_kernels_compile_for_sm90_without_spills(dtype):
    """The CNN with int8 weights: both convolutions and both dense layers dequantize in their K loops;
    f32 on FMA units, bf16 on tensor cores; no spill."""
    from test_aot import QUIET, assert_clean, example_graph, sweep

    from axon.driver import kernel_groups, optimize

    g, env = example_graph("cnn.axon", False, dtype)
    q, _ = optimize(g, "quantize{mode=int8-weight,min_size=16},fold,simplify,cse,dce", out=QUIET)
    kernels = kernel_groups(q)
    assert sorted(k.kind for k in kernels if k.prologue) == ["conv2d", "conv2d", "matmul", "matmul"]
    rows = sweep(q, env)
    assert_clean(rows)
    if dtype:
        assert all(r.tensor_cores != "none" for r in rows if r.kind in ("matmul", "conv2d"))


@pytest.mark.parametrize("per", ["channel", "tensor"])
def test_a_conv2d_weight_is_dequantized_in_its_k_loop(per):
    """int8 conv weights [O, C, KH, KW] with a scale per output channel (or per tensor), grouped and
    padded: one kernel, equal to the evaluator and to the unfused kernels."""
    b = GraphBuilder()
    x = b.input("x", DType.F32, (2, 6, 9, 7))
    q = b.param("w.q", DType.I8, (10, 3, 3, 2))
    sshape = (10, 1, 1, 1) if per == "channel" else ()
    s = b.param("w.scale", DType.F32, sshape)
    w = b.dequantize(q, s, axis=0 if per == "channel" else None)
    y = b.conv2d(x, w, stride=(2, 1), padding=(1, 0), groups=2)
    b.output("y", b.relu(y))
    g = b.build()
    gen = torch.Generator().manual_seed(3)
    params = {"w.q": torch.randint(-127, 128, (10, 3, 3, 2), dtype=torch.int8, generator=gen),
              "w.scale": torch.rand(sshape, generator=gen) * 0.05 + 0.001}
    feeds = {"x": torch.randn(2, 6, 9, 7, generator=gen)}
    exe, got = run(g, feeds, params)
    (k,) = exe.kernels
    assert k.group.kind == "conv2d" and k.group.prologue
    torch.testing.assert_close(got["y"], evaluate(g, feeds, params)["y"], rtol=1e-5, atol=1e-5)
    _, unfused = run(g, feeds, params, fusion=False)
    torch.testing.assert_close(got["y"], unfused["y"], rtol=1e-5, atol=1e-5)
