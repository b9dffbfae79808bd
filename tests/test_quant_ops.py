"""Quantization ops (`ir/op_quant.py`): the evaluator against PyTorch bit for bit (per tensor, per channel,
per group; i8, u8, int4, i32, fp8): torch.fake_quantize_per_*, torch.quantize_per_* where torch's own
functions agree (zero point 0) and where they do not, Tensor.dequantize, the fp8 casts; generated
kernels against the evaluator (alone and fused, bit for bit, symbolic sizes too), the straight-through
gradient against torch's autograd, the text form, the shape and dtype rules, int4 packing, and an
ahead-of-time compile of every kernel for sm_90 (no spills)."""
from __future__ import annotations

import math

import pytest
import torch

from axon.codegen import aot, fused_groups, groups
from axon.codegen.target import parse
from axon.ir import (DType, EvalError, Graph, GraphBuilder, IRDTypeError, IRShapeError, IRSyntaxError,
                     IRTypeError, Node, Sym, VerifyError, evaluate, verify)
from axon.ir.ops import OpKind, QuantizeAttrs
from axon.ir.text import parse_graph, print_graph
from axon.passes.autodiff import vjp
from axon.passes.fusion import fuse
from axon.runtime import Executable, run_graph

pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
D = DType
K = OpKind
QTYPE = {D.I8: torch.qint8, D.U8: torch.quint8, D.I32: torch.qint32}
FP8_MAX = {D.F8E4M3: 448.0, D.F8E5M2: 57344.0}


# --- helpers -------------------------------------------------------------------------------------------

def assert_same(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    """Equal dtype, shape and bits (NaN where the other has NaN, whatever its payload; -0.0 is not 0.0)."""
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape)
    if got.dtype.is_floating_point:
        bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[got.element_size()]
        nan_g, nan_w = got.float().isnan(), want.float().isnan()
        assert torch.equal(nan_g, nan_w), f"{what}: NaN at different places"
        differ = (got.view(bits) != want.view(bits)) & ~nan_g
    else:
        differ = got != want
    if differ.any():
        at = differ.nonzero()[0].tolist()
        raise AssertionError(f"{what}: {int(differ.sum())} of {differ.numel()} elements differ, first at "
                             f"{at}: got {got[tuple(at)]}, want {want[tuple(at)]}")


def one_op(build, **feeds) -> Graph:
    """A graph with an input per feed (its tensor's dtype and shape) and the output `y = build(b, ...)`."""
    b = GraphBuilder("q")
    nodes = {n: b.input(n, D.from_torch(t.dtype), tuple(t.shape)) for n, t in feeds.items()}
    b.output("y", build(b, **nodes))
    return b.build()


def ev(build, **feeds) -> torch.Tensor:
    return evaluate(one_op(build, **feeds), feeds)["y"]


def ties(gen, shape, scale, spread=300) -> torch.Tensor:
    """f32 values whose x / scale (`scale` broadcast to `shape`) lands on or within an ulp of half
    integers, where the rounding rules and the zero point's place in the formula show; and plain ones."""
    k = torch.randint(-spread, spread, shape, generator=gen).float() + 0.5
    near = k * scale * (1 + torch.randint(-2, 3, shape, generator=gen).float() * 2.0**-23)
    plain = torch.randn(shape, generator=gen) * scale * spread / 3
    return torch.where(torch.rand(shape, generator=gen) < 0.5, near, plain).float()


def positive(gen, *shape, low=0.003, high=0.05) -> torch.Tensor:
    return torch.rand(shape, generator=gen) * (high - low) + low


def codes(gen, dtype: D, qmin: int, qmax: int, *shape) -> torch.Tensor:
    return torch.randint(qmin, qmax + 1, shape, generator=gen).to(dtype.torch)


def rows(t: torch.Tensor, axis: int, group: int) -> torch.Tensor:
    """A tensor quantized in groups along `axis` as torch's per-channel rows: [groups, group]."""
    return t.movedim(axis, -1).reshape(-1, group)


def unrows(r: torch.Tensor, shape, axis: int) -> torch.Tensor:
    moved = list(shape)
    moved.append(moved.pop(axis))
    return r.reshape(moved).movedim(-1, axis)


GRANULARITY = {  # name: (x shape, axis, group, scale shape)
    "tensor": ((37, 53), None, None, ()),
    "channel0": ((37, 53), 0, None, (37,)),
    "channel2": ((3, 11, 7), 2, None, (7,)),
    "group32": ((5, 96), 1, 32, (5, 3)),
    "group64_axis0": ((128, 3, 7), 0, 64, (2, 3, 7)),
}


def torch_quantize(x, s, axis, group, dtype: D, qmin, qmax):
    """torch.quantize_per_tensor / per_channel's int_repr with zero point 0 (per group: per channel over
    `rows`), clamped to [qmin, qmax] for ranges narrower than the dtype's."""
    qt = QTYPE[dtype]
    if axis is None:
        q = torch.quantize_per_tensor(x, float(s), 0, qt).int_repr()
    elif group is None:
        q = torch.quantize_per_channel(x, s.double(), torch.zeros(s.numel(), dtype=torch.long), axis,
                                       qt).int_repr()
    else:
        scales = rows(s, axis, 1).reshape(-1).double()
        q = torch.quantize_per_channel(rows(x, axis, group), scales, torch.zeros_like(scales).long(), 0,
                                       qt).int_repr()
        q = unrows(q, x.shape, axis)
    return q.long().clamp(qmin, qmax).to(dtype.torch)


def torch_fake(x, s, zp, axis, group, qmin, qmax):
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, s, zp, qmin, qmax)
    if group is None:
        return torch.fake_quantize_per_channel_affine(x, s, zp, axis, qmin, qmax)
    out = torch.fake_quantize_per_channel_affine(rows(x, axis, group), rows(s, axis, 1).reshape(-1),
                                                 rows(zp, axis, 1).reshape(-1), 0, qmin, qmax)
    return unrows(out, x.shape, axis)


def per_element(p, x_shape, axis, group):
    """A scale of the builder's shape spread over x (broadcast per channel, repeated per group)."""
    if axis is None:
        return p
    if group is None:
        return p.reshape([-1 if d == axis else 1 for d in range(len(x_shape))])
    return p.repeat_interleave(group, dim=axis)


# --- the evaluator against torch, bit for bit ---------------------------------------------------------

RANGES = {"i8": (D.I8, None, None), "u8": (D.U8, None, None), "int4": (D.I8, -8, 7), "uint4": (D.U8, 0, 15),
          "narrow": (D.I8, -127, 127)}


@pytest.mark.parametrize("codes_name", list(RANGES))
@pytest.mark.parametrize("gran", list(GRANULARITY))
def test_quantize_and_fake_quantize_equal_torch(gran, codes_name, gen):
    """fake_quantize is torch.fake_quantize_per_*; quantize gives its codes (fake_quantize is exactly
    dequantize(quantize(x))), and torch.quantize_per_*'s codes when the zero point is 0."""
    shape, axis, group, sshape = GRANULARITY[gran]
    dtype, lo, hi = RANGES[codes_name]
    qmin, qmax = (lo, hi) if lo is not None else {D.I8: (-128, 127), D.U8: (0, 255)}[dtype]
    s = positive(gen, *sshape)
    zp = torch.randint(qmin, qmax + 1, sshape, generator=gen, dtype=torch.int32)
    full = per_element(s, shape, axis, group)
    x = ties(gen, shape, full)
    kw = dict(axis=axis, group=group, qmin=lo, qmax=hi)
    fake = ev(lambda b, x, s, zp: b.fake_quantize(x, s, zp, dtype, **kw), x=x, s=s, zp=zp)
    assert_same(fake, torch_fake(x, s, zp, axis, group, qmin, qmax), "fake_quantize")
    q = ev(lambda b, x, s, zp: b.quantize(x, s, zp, dtype, **kw), x=x, s=s, zp=zp)
    want = torch.round(fake / full).long() + per_element(zp, shape, axis, group)  # fake's codes, exactly
    assert_same(q, want.to(dtype.torch), "quantize")
    back = ev(lambda b, q, s, zp: b.dequantize(q, s, zp, axis=axis, group=group), q=q, s=s, zp=zp)
    assert_same(back, fake, "dequantize(quantize(x))")
    if qmin <= 0 <= qmax:
        q0 = ev(lambda b, x, s: b.quantize(x, s, None, dtype, **kw), x=x, s=s)
        assert_same(q0, torch_quantize(x, s, axis, group, dtype, qmin, qmax), "quantize, zero point 0")


def test_torch_quantize_with_a_zero_point_rounds_after_adding_it(gen):
    """x / scale = 2.5 with zero point 1: torch.quantize_per_tensor rounds 3.5 (to 4), its fake_quantize
    rounds 2.5 (to 2) then adds 1; quantize here gives fake_quantize's codes. Elsewhere, the codes of
    torch.quantize_per_channel (rint(fl(fl(x * inv) + zp))) differ from these by one, only next to ties."""
    x = torch.tensor([2.5, -0.5, 3.5]) * 0.125
    q = ev(lambda b, x: b.quantize(x, 0.125, 1, D.I8), x=x)
    assert q.tolist() == [3, 1, 5]
    assert torch.quantize_per_tensor(x, 0.125, 1, torch.qint8).int_repr().tolist() == [4, 0, 4]
    fake = ev(lambda b, x: b.fake_quantize(x, 0.125, 1, D.I8), x=x)
    assert fake.tolist() == [0.25, 0.0, 0.5] == torch.fake_quantize_per_tensor_affine(x, 0.125, 1, -128,
                                                                                      127).tolist()
    s = positive(gen, 37)
    zp = torch.randint(-100, 100, (37,), generator=gen, dtype=torch.int32)
    x = ties(gen, (37, 53), s[:, None])
    ours = ev(lambda b, x, s, zp: b.quantize(x, s, zp, D.I8, axis=0), x=x, s=s, zp=zp).long()
    theirs = torch.quantize_per_channel(x, s.double(), zp.long(), 0, torch.qint8).int_repr().long()
    v = x * (1 / s[:, None])
    ulp = 2.0 ** (torch.floor(torch.log2(v.abs() + zp.abs()[:, None])) - 23)
    near_tie = (v - v.floor() - 0.5).abs() <= ulp
    differ = ours != theirs
    assert 0 < int(differ.sum()) and bool(near_tie[differ].all()) and int((ours - theirs).abs().max()) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fake_quantize_of_16_bit_values_equals_torch(dtype, gen):
    x = (torch.randn(37, 53, generator=gen) * 3).to(dtype)
    s, zp = positive(gen, 53), torch.randint(-20, 20, (53,), generator=gen, dtype=torch.int32)
    got = ev(lambda b, x, s, zp: b.fake_quantize(x, s, zp, D.I8, axis=1), x=x, s=s, zp=zp)
    assert_same(got, torch.fake_quantize_per_channel_affine(x, s, zp, 1, -128, 127))
    got = ev(lambda b, x: b.fake_quantize(x, 0.0625, 3, D.U8, bits=4), x=x)
    assert_same(got, torch.fake_quantize_per_tensor_affine(x, 0.0625, 3, 0, 15))


def test_i32_codes(gen):
    x = torch.randn(37, 53, generator=gen) * 1e4
    got = ev(lambda b, x: b.quantize(x, 1e-3, dtype=D.I32), x=x)
    assert_same(got, torch.quantize_per_tensor(x, 1e-3, 0, torch.qint32).int_repr())
    zp = 2**31 - 10**7  # near the top: the zero point is added exactly (in f64), the codes saturate
    got = ev(lambda b, x: b.quantize(x, 1e-3, zp, dtype=D.I32), x=x)
    want = (torch.round(x * (1 / torch.tensor(1e-3))).double() + zp).clamp(-2**31, 2**31 - 1).int()
    assert_same(got, want)
    assert (got == 2**31 - 1).any() and (got < 2**31 - 1).any()


@pytest.mark.parametrize("gran", ["tensor", "channel0", "group32"])
@pytest.mark.parametrize("dtype", [D.I8, D.U8, D.I32])
def test_dequantize_equals_torch(dtype, gran, gen):
    shape, axis, group, sshape = GRANULARITY[gran]
    lo, hi = (-2**31, 2**31 - 1) if dtype == D.I32 else {D.I8: (-128, 127), D.U8: (0, 255)}[dtype]
    q = codes(gen, dtype, lo, hi, *shape)
    s = positive(gen, *sshape)
    zp = torch.randint(max(lo, -100), min(hi, 100) + 1, sshape, generator=gen)
    got = ev(lambda b, q, s, zp: b.dequantize(q, s, zp, axis=axis, group=group), q=q, s=s, zp=zp)
    if axis is None:
        want = torch._make_per_tensor_quantized_tensor(q, float(s), int(zp)).dequantize()
    elif dtype == D.I32:  # torch's per-tensor formula (a CPU's per channel rounds q - zp twice)
        want = (q.long() - per_element(zp, shape, axis, group)).float() * per_element(s, shape, axis, group)
    elif group is None:
        want = torch._make_per_channel_quantized_tensor(q, s.double(), zp, axis).dequantize()
    else:
        qt = torch._make_per_channel_quantized_tensor(rows(q, axis, group), rows(s, axis, 1).reshape(-1)
                                                      .double(), rows(zp, axis, 1).reshape(-1), 0)
        want = unrows(qt.dequantize(), shape, axis)
    assert_same(got, want)
    half = ev(lambda b, q, s, zp: b.dequantize(q, s, zp, D.BF16, axis=axis, group=group), q=q, s=s, zp=zp)
    assert_same(half, want.bfloat16())


@pytest.mark.parametrize("gran", ["tensor", "channel2", "group64_axis0"])
@pytest.mark.parametrize("fp8", [D.F8E4M3, D.F8E5M2])
def test_fp8_equals_torch_casts(fp8, gran, gen):
    shape, axis, group, sshape = GRANULARITY[gran]
    top = FP8_MAX[fp8]
    s = positive(gen, *sshape, low=0.5, high=2.0)
    x = torch.randn(shape, generator=gen) * torch.logspace(-9, 6, math.prod(shape)).reshape(shape) * top / 1e4
    x.view(-1)[:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -0.0, 2.0**-140])
    full = per_element(s, shape, axis, group)
    want = (x / full).clamp(-top, top).to(fp8.torch)
    got = ev(lambda b, x, s: b.quantize(x, s, dtype=fp8, axis=axis, group=group), x=x, s=s)
    assert_same(got, want, "quantize")
    assert got.view(-1)[1].float() == top and got.view(-1)[2].float() == -top  # saturated, not inf or NaN
    back = ev(lambda b, q, s: b.dequantize(q, s, axis=axis, group=group), q=want, s=s)
    assert_same(back, want.float() * full, "dequantize")
    fake = ev(lambda b, x, s: b.fake_quantize(x, s, qdtype=fp8, axis=axis, group=group), x=x, s=s)
    assert_same(fake, want.float() * full, "fake_quantize")


def test_nan_inf_and_huge_values_have_defined_results():
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 3e9, -0.0, 0.04])
    q = ev(lambda b, x: b.quantize(x, 0.1, 3, D.I8), x=special)
    assert q.tolist() == [0, 127, -128, 127, -128, 127, 3, 3]  # NaN -> code 0 (as quantize_per_channel)
    q = ev(lambda b, x: b.quantize(x, 0.1, 20, D.U8, qmin=10, qmax=200), x=special)
    assert q.tolist() == [10, 200, 10, 200, 10, 200, 20, 20]    # 0 clamped into [qmin, qmax]
    fake = ev(lambda b, x: b.fake_quantize(x, 0.5, 3, D.I8), x=special)
    assert fake[0].isnan() and fake[1:6].tolist() == [62.0, -65.5, 62.0, -65.5, 62.0]  # NaN stays NaN
    assert fake[6].item() == 0.0 and not fake[6].signbit()  # (c - zp) * s: +0.0, as torch
    sym = ev(lambda b, x: b.fake_quantize(x, 0.5, None, D.I8), x=torch.tensor([-0.1, -0.0]))
    assert not sym.signbit().any()  # symmetric too: torch's zero point 0 makes +0.0


@pytest.mark.parametrize("scale", [0.0, -0.5, float("nan"), float("inf"), 1e-40])
def test_a_bad_scale_is_refused_at_evaluation(scale):
    x = torch.randn(3, 4)
    s = torch.tensor([0.1, scale, 0.2])
    with pytest.raises(EvalError, match=r"scale must be positive and finite .* at index \[1, 0\]"):
        ev(lambda b, x, s: b.quantize(x, s, axis=0), x=x, s=s)
    with pytest.raises(EvalError, match="scale must be positive"):
        ev(lambda b, x, s: b.fake_quantize(x, s, axis=0), x=x, s=s)


def test_a_zero_point_outside_the_range_is_refused_at_evaluation():
    zp = torch.tensor([3, 200, 0], dtype=torch.int32)
    with pytest.raises(EvalError, match=r"zero point 200 at index \[1, 0\] is outside the code range "
                                        r"\[-128, 127\]"):
        ev(lambda b, x, s, zp: b.quantize(x, s, zp, axis=0), x=torch.randn(3, 4), s=torch.ones(3), zp=zp)
    with pytest.raises(EvalError, match=r"zero point -1 .* \[0, 15\]"):
        ev(lambda b, x: b.fake_quantize(x, 0.1, -1, D.U8, bits=4), x=torch.randn(3, 4))


def test_empty_and_0d_tensors():
    empty = ev(lambda b, x, s: b.quantize(x, s, 1, D.U8, axis=1), x=torch.randn(0, 5), s=torch.ones(5))
    assert empty.shape == (0, 5) and empty.dtype == torch.uint8
    scalar = ev(lambda b, x: b.fake_quantize(x, 0.25, None, D.I8, bits=4), x=torch.tensor(5.0))
    assert scalar.shape == () and scalar.item() == 1.75  # clamped to 7 * 0.25


# --- gradients: the straight-through estimator --------------------------------------------------------

@pytest.mark.parametrize("gran", ["tensor", "channel0", "group32"])
@pytest.mark.parametrize("codes_name", ["i8", "uint4"])
def test_fake_quantize_gradient_is_torchs_straight_through_estimator(gran, codes_name, gen):
    shape, axis, group, sshape = GRANULARITY[gran]
    dtype, lo, hi = RANGES[codes_name]
    qmin, qmax = (lo, hi) if lo is not None else (-128, 127)
    s = 2.0 ** -torch.randint(3, 7, sshape, generator=gen).float()  # powers of 2: x / s exact
    zp = torch.randint(qmin, qmax + 1, sshape, generator=gen, dtype=torch.int32)
    # codes around both ends of the range, halves included (ties go to even: in or out of range)
    m = torch.randint(qmin - 3, qmax + 4, shape, generator=gen).float()
    m += torch.randint(0, 2, shape, generator=gen).float() * 0.5
    x = (m - per_element(zp, shape, axis, group)) * per_element(s, shape, axis, group)
    x.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])

    b = GraphBuilder()
    xi, si, zi = b.input("x", D.F32, shape), b.input("s", D.F32, sshape), b.input("zp", D.I32, sshape)
    b.output("y", b.fake_quantize(xi, si, zi, dtype, axis=axis, group=group, qmin=lo, qmax=hi))
    bwd = verify(vjp(b.build(), ["x", "s"]))
    dout = torch.randn(shape, generator=gen)
    feeds = {"x": x, "s": s, "zp": zp, "dout.y": dout}
    got = evaluate(bwd, feeds)
    leaf = x.clone().requires_grad_()
    torch_fake(leaf, s, zp, axis, group, qmin, qmax).backward(dout)
    assert_same(got["grad.x"], leaf.grad)
    assert 0 < int((leaf.grad == 0).sum()) < x.numel()  # both sides of the range are exercised
    assert "grad.s" not in got or not got["grad.s"].any()  # no gradient to the scale
    kernels = run_graph(bwd, feeds, poison=True)  # the backward's kernels, bit for bit
    assert_same(kernels["grad.x"], got["grad.x"])


def test_fp8_fake_quantize_gradient_passes_inside_the_finite_range():
    x = torch.tensor([1.0, 447.0, 448.0, 449.0, -500.0, float("nan"), float("inf"), 0.0])
    b = GraphBuilder()
    b.output("y", b.fake_quantize(b.input("x", D.F32, (8,)), 1.0, qdtype=D.F8E4M3))
    g = evaluate(vjp(b.build(), ["x"]), {"x": x, "dout.y": torch.ones(8)})["grad.x"]
    assert g.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]


# --- int4 packing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [D.I8, D.U8])
def test_pack_and_unpack_int4(dtype, gen):
    lo, hi = (-8, 7) if dtype == D.I8 else (0, 15)
    x = codes(gen, dtype, lo, hi, 3, 5, 38)
    g = one_op(lambda b, x: b.pack_int4(x), x=x)
    packed = evaluate(g, {"x": x})["y"]
    nib = x.to(torch.int16) & 15
    assert_same(packed, (nib[..., 0::2] | nib[..., 1::2] << 4).to(torch.uint8))  # low nibble first
    assert packed.shape == (3, 5, 19) and packed.element_size() * packed.numel() * 2 == x.numel()
    back = ev(lambda b, p: b.unpack_int4(p, dtype), p=packed)
    assert_same(back, x)
    assert_same(run_graph(g, {"x": x})["y"], packed)
    any_bytes = torch.randint(0, 256, (7, 9), generator=gen, dtype=torch.uint8)
    g = one_op(lambda b, p: b.unpack_int4(p, dtype), p=any_bytes)
    want = evaluate(g, {"p": any_bytes})["y"]
    assert_same(run_graph(g, {"p": any_bytes})["y"], want)
    assert_same(ev(lambda b, x: b.pack_int4(x), x=want), any_bytes)


def test_pack_keeps_the_low_four_bits():
    x = torch.tensor([[9, -9, 100, 7]], dtype=torch.int8)  # 9 -> 9 (u4), -9 -> 7, 100 -> 4
    assert ev(lambda b, x: b.pack_int4(x), x=x).tolist() == [[9 | 7 << 4, 4 | 7 << 4]]


# --- kernels against the evaluator -----------------------------------------------------------------------

def _kernel_graph():
    """Every op, every granularity and code type, 16-bit values, one graph."""
    b = GraphBuilder("kernels")
    x = b.input("x", D.F32, (37, 96))
    xb = b.input("xb", D.BF16, (37, 96))
    sc, zc = b.input("sc", D.F32, (37,)), b.input("zc", D.I32, (37,))
    sg, zg = b.input("sg", D.F16, (37, 3)), b.input("zg", D.U8, (37, 3))
    out = {
        "q_tensor": b.quantize(x, b.input("st", D.F32, ()), b.input("zt", D.I64, ()), D.U8),
        "q_channel": b.quantize(xb, sc, zc, D.I8, axis=0),
        "q_group4": b.quantize(x, sg, zg, D.U8, axis=1, group=32, bits=4),
        "q_i32": b.quantize(b.mul(x, 1e5), 0.37, dtype=D.I32),
        "f_channel": b.fake_quantize(x, sc, zc, D.I8, axis=0, qmin=-127),
        "f_group": b.fake_quantize(xb, sg, zg, D.U8, axis=1, group=32),
        "f_sym": b.fake_quantize(x, 0.0625, None, D.I8, bits=4),
        "e4m3": b.quantize(x, sg, dtype=D.F8E4M3, axis=1, group=32),
        "e5m2": b.quantize(b.mul(x, 1e4), 0.01, dtype=D.F8E5M2),
        "f_e4m3": b.fake_quantize(xb, sc, qdtype=D.F8E4M3, axis=0),
    }
    out["d_channel"] = b.dequantize(out["q_channel"], sc, zc, D.F16, axis=0)
    out["d_group"] = b.dequantize(out["q_group4"], sg, zg, axis=1, group=32)
    out["d_e4m3"] = b.dequantize(out["e4m3"], sg, dtype=D.BF16, axis=1, group=32)
    out["d_e5m2"] = b.dequantize(out["e5m2"], 0.01)
    out["d_i32"] = b.dequantize(out["q_i32"], 0.37)
    out["d_i32_zp"] = b.dequantize(out["q_i32"], sc, b.add(zc, 2**31 - 100), axis=0)  # q - zp exact
    for fp8 in FP8_MAX:  # every midpoint between neighbouring codes: ties to even
        out[f"ties_{fp8}"] = b.quantize(b.input(f"mid_{fp8}", D.F32, (2, 63)), 0.5, dtype=fp8)
    for name, n in out.items():
        b.output(name, n)
    return b.build()


def _kernel_inputs(gen):
    x = torch.randn(37, 96, generator=gen) * 2
    x[0, :5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -0.0])
    x[1] = ties(gen, (96,), torch.tensor(0.0625))
    mids = {}
    for fp8 in FP8_MAX:
        grid = torch.arange(127, dtype=torch.uint8).view(fp8.torch).float()  # +0 up to the largest code
        mid = (grid[:-1] + grid[1:]) / 2
        mids[f"mid_{fp8}"] = (torch.cat([mid[:63], -mid[63:126]]) * 0.5).reshape(2, 63)
    return {**mids, "x": x, "xb": (torch.randn(37, 96, generator=gen) * 2).bfloat16(),
            "st": torch.tensor(0.02), "zt": torch.tensor(128), "sc": positive(gen, 37),
            "zc": torch.randint(-20, 20, (37,), generator=gen, dtype=torch.int32),
            "sg": positive(gen, 37, 3, low=0.05, high=0.3).half(),
            "zg": torch.randint(0, 16, (37, 3), generator=gen, dtype=torch.uint8)}


@pytest.mark.parametrize("fusion", [False, True], ids=["one_kernel_per_op", "fused"])
def test_kernels_equal_the_evaluator_bit_for_bit(fusion, gen):
    g = _kernel_graph()
    feeds = _kernel_inputs(gen)
    want = evaluate(g, feeds)
    kernels = fused_groups(g, fuse(g).groups) if fusion else groups(g)
    got = Executable(g, kernel_groups=kernels)(feeds, poison=True)
    for name in want:
        assert_same(got[name], want[name], name)


def test_what_fuses(gen):
    """quantize(relu(x)) per group, its dequantize and a reduction: one kernel; dynamic per-row
    quantization (amax, scale, quantize): one kernel; fake quantization per group in a matmul's epilogue;
    dequantize(w) -> matmul: the weight's own kernel (a matmul reads its operands from memory)."""
    b = GraphBuilder()
    x = b.input("x", D.F32, (37, 64))
    gs, gz = b.input("gs", D.F32, (37, 2)), b.input("gz", D.I8, (37, 2))
    q = b.quantize(b.relu(x), gs, gz, D.I8, axis=1, group=32)
    b.output("q", q)
    b.output("rowsum", b.sum(b.dequantize(q, gs, gz, axis=1, group=32), 1))
    scale = b.div(b.maximum(b.max(b.abs(x), 1, keepdim=True), 1e-6), 127.0)
    b.output("dyn", b.quantize(x, scale, None, D.I8, axis=0))
    w = b.dequantize(b.input("wq", D.I8, (64, 38)), b.input("ws", D.F32, (38,)), axis=1)
    b.output("y", b.fake_quantize(b.matmul(x, w), b.input("ys", D.F32, (37, 2)), None, D.I8, axis=1,
                                  group=19))
    g = b.build()
    plan = fuse(g)
    members = [sorted(str(n.op) for n in grp.nodes) for grp in plan.groups]
    assert ["dequantize", "quantize", "relu", "sum"] in members
    assert ["abs", "div", "max", "maximum", "quantize"] in members
    assert ["fake_quantize", "matmul"] in members and ["dequantize"] in members
    assert len(plan.groups) == 4
    feeds = {"x": torch.randn(37, 64, generator=gen), "gs": positive(gen, 37, 2),
             "gz": torch.randint(-5, 5, (37, 2), generator=gen, dtype=torch.int8),
             "wq": torch.randint(-128, 128, (64, 38), generator=gen, dtype=torch.int8),
             "ws": positive(gen, 38, low=0.001, high=0.01), "ys": positive(gen, 37, 2, low=0.05, high=0.2)}
    want = evaluate(g, feeds)
    got = Executable(g, kernel_groups=fused_groups(g, plan.groups))(feeds, poison=True)
    for name in ("q", "dyn"):
        assert_same(got[name], want[name], name)
    torch.testing.assert_close(got["rowsum"], want["rowsum"], rtol=1e-5, atol=1e-5)  # summation order
    # the matmul's sums in another order can move a code by one step: at most one scale apart
    assert (got["y"] - want["y"]).abs().max() <= feeds["ys"].max() * 1.001


def test_kernels_with_a_symbolic_batch(gen):
    b = GraphBuilder()
    x = b.input("x", D.F32, (Sym.of("batch"), 64))
    gs = b.input("gs", D.F32, (Sym.of("batch"), 2))
    q = b.quantize(x, gs, 3, D.U8, axis=1, group=32)
    b.output("d", b.dequantize(q, gs, 3, D.BF16, axis=1, group=32))
    b.output("f", b.fake_quantize(x, b.input("cs", D.F32, (64,)), None, D.I8, axis=1, bits=4))
    g = b.build()
    exe = Executable(g, kernel_groups=fused_groups(g, fuse(g).groups))
    for batch in (5, 37):
        feeds = {"x": torch.randn(batch, 64, generator=gen), "gs": positive(gen, batch, 2),
                 "cs": positive(gen, 64, low=0.1, high=0.3)}
        want, got = evaluate(g, feeds), exe(feeds, poison=True)
        for name in want:
            assert_same(got[name], want[name], f"{name} at batch {batch}")


def test_kernels_on_empty_and_0d_tensors():
    b = GraphBuilder()
    b.output("e", b.quantize(b.input("x", D.F32, (0, 7)), b.input("s", D.F32, (7,)), None, D.I8, axis=1))
    b.output("s", b.fake_quantize(b.input("y", D.F32, ()), 0.25, 2, D.U8))
    g = b.build()
    feeds = {"x": torch.randn(0, 7), "s": torch.ones(7), "y": torch.tensor(-3.3)}
    want, got = evaluate(g, feeds), run_graph(g, feeds)
    for name in want:
        assert_same(got[name], want[name], name)


# --- text form, builder and verifier -----------------------------------------------------------------

def test_text_form():
    b = GraphBuilder("t")
    w = b.input("w", D.F32, (6, 64))
    q = b.quantize(w, b.input("s", D.F32, (6, 2)), None, D.I8, axis=1, group=32, bits=4)
    b.output("p", b.pack_int4(q))
    b.output("f", b.fake_quantize(w, b.input("c", D.F32, (6,)), 3, D.U8, axis=0))
    b.output("e", b.dequantize(b.quantize(w, 0.5, dtype=D.F8E4M3), 0.5, dtype=D.F16))
    text = print_graph(b.build())
    for line in ("%0 = quantize(%w, %s, axes=[1], group=32, qmin=-8, qmax=7) : i8[6, 64]",
                 "%1 = pack_int4(%0) : u8[6, 32]",
                 "%2 = reshape(%c) : f32[6, 1]",  # torch's per-channel shape (6,): x's rank
                 "%3 = const(value=3) : i32[6, 1]",
                 "%4 = fake_quantize(%w, %2, %3, qdtype=u8, axes=[0], group=1, qmin=0, qmax=255) : "
                 "f32[6, 64]",
                 "%6 = quantize(%w, %5, axes=[], group=1, qmin=-448, qmax=448) : f8e4m3[6, 64]",
                 "%7 = dequantize(%6, %5, axes=[], group=1) : f16[6, 64]"):
        assert line in text, text
    assert print_graph(parse_graph(text)) == text


@pytest.mark.parametrize("text, error, message", [
    ("quantize(%x, %s, axes=[1], group=5, qmin=-128, qmax=127) : i8[6, 64]", IRShapeError,
     "groups of 5 do not divide axis 1"),
    ("quantize(%x, %s, axes=[1], group=32, qmin=-128, qmax=127) : i8[6, 64]", IRShapeError,
     r"in groups of 32 along axis 1 of f32\[6, 64\] takes a scale of shape \[6, 2\], got f32\[6\]"),
    ("quantize(%x, %s, axes=[0], group=1, qmin=-128, qmax=127) : i8[6, 64]", IRShapeError,
     r"per channel along axis 0 .* takes a scale of shape \[6, 1\]"),
    ("quantize(%x, %s, axes=[0, 1], group=1, qmin=-128, qmax=127) : i8[6, 64]", IRShapeError,
     "one axis at most"),
    ("quantize(%x, %s, axes=[], group=2, qmin=-128, qmax=127) : i8[6, 64]", IRShapeError,
     "per tensor .* takes group 1"),
    ("quantize(%x, %s, axes=[0], group=0, qmin=-128, qmax=127) : i8[6, 64]", IRShapeError,
     "group must be an integer >= 1"),
    ("quantize(%x, %t, axes=[], group=1, qmin=-128, qmax=128) : i8[6, 64]", IRTypeError,
     r"code range \[-128, 128\] is empty or outside i8's \[-128, 127\]"),
    ("quantize(%x, %t, axes=[], group=1, qmin=5, qmax=4) : u8[6, 64]", IRTypeError, "is empty"),
    ("quantize(%x, %t, axes=[], group=1, qmin=-127, qmax=127) : f8e4m3[6, 64]", IRTypeError,
     r"saturates to its finite range: qmin=-448, qmax=448"),
    ("quantize(%x, %t, %z, axes=[], group=1, qmin=-448, qmax=448) : f8e4m3[6, 64]", IRTypeError,
     "takes no zero point"),
    ("quantize(%x, %t, %zf, axes=[], group=1, qmin=-128, qmax=127) : i8[6, 64]", IRDTypeError,
     "integer zero point"),
    ("quantize(%x, %t, %z6, axes=[], group=1, qmin=-128, qmax=127) : i8[6, 64]", IRShapeError,
     r"zero point must have the scale's shape \[\]"),
    ("quantize(%x, %t, axes=[], group=1, qmin=-128, qmax=127) : f16[6, 64]", IRDTypeError,
     "codes must be i8, u8, i32, f8e4m3, f8e5m2"),
    ("quantize(%x64, %t, axes=[], group=1, qmin=-128, qmax=127) : i8[6]", IRDTypeError,
     "takes f32, f16 or bf16 values"),
    ("quantize(%x, %z, axes=[], group=1, qmin=-128, qmax=127) : i8[6, 64]", IRDTypeError,
     "f32, f16 or bf16 scale"),
    ("quantize(%x, axes=[], group=1, qmin=-128, qmax=127) : i8[6, 64]", IRTypeError,
     r"takes \(x, scale\) or \(x, scale, zero_point\), got 1"),
    ("dequantize(%x, %t, axes=[], group=1) : f32[6, 64]", IRDTypeError, "takes codes of"),
    ("dequantize(%q, %t, axes=[], group=1) : i32[6, 64]", IRDTypeError, "gives f32, f16 or bf16"),
    ("fake_quantize(%x, %t, qdtype=i32, axes=[], group=1, qmin=0, qmax=9) : f32[6, 64]", IRDTypeError,
     "codes must be i8, u8, f8e4m3, f8e5m2"),
    ("pack_int4(%q7) : u8[7]", IRShapeError, "must be even"),
    ("pack_int4(%x) : u8[6, 32]", IRDTypeError, "packs i8 or u8 codes"),
    ("unpack_int4(%q) : i8[6, 128]", IRDTypeError, r"unpacks bytes \(u8\)"),
    ("pack_int4(%t) : u8[]", IRDTypeError, "packs i8 or u8"),
    ("pack_int4(%q0) : u8[]", IRShapeError, "a 0-d tensor has none"),
])
def test_shape_and_dtype_rules(text, error, message):
    decls = """input %x: f32[6, 64]
      input %x64: f64[6]
      input %s: f32[6]
      input %t: f32[]
      input %z: i32[]
      input %zf: f32[]
      input %z6: i32[6]
      input %q: i8[6, 64]
      input %q7: i8[7]
      input %q0: i8[]"""
    with pytest.raises(IRSyntaxError, match=message) as info:
        parse_graph(f"graph g {{\n      {decls}\n      %0 = {text}\n    }}")
    assert isinstance(info.value.__cause__, error)  # the rule's own error, located in the text


def test_the_verifier_names_an_ill_typed_quantize():
    b = GraphBuilder()
    x = b.input("x", D.F32, (6, 64))
    s = b.input("s", D.F32, (6, 2))
    good = b.quantize(x, s, None, D.I8, axis=1, group=32)
    bad = Node(K.QUANTIZE, good.inputs, QuantizeAttrs(D.I8, (1,), 16, -128, 127), good.type)
    with pytest.raises(VerifyError, match=r"quantize is ill-typed: 'quantize' in groups of 16 along axis 1 "
                                          r".* takes a scale of shape \[6, 4\]"):
        verify(Graph([x, s, bad], {"q": bad}))


def test_builder_arguments():
    b = GraphBuilder()
    x = b.input("x", D.F32, (6, 64))
    assert b.quantize(x, 0.1, 0, D.U8, bits=4).attrs == QuantizeAttrs(D.U8, (), 1, 0, 15)
    assert b.quantize(x, 0.1, bits=3).attrs.qmin == -4
    for kwargs, message in [(dict(bits=4, qmin=-3), "bits or qmin/qmax, not both"),
                            (dict(bits=9), r"bits must be an integer in \[2, 8\]"),
                            (dict(qmin=1.5), "qmin must be an integer"),
                            (dict(dtype=D.F8E4M3, bits=4), "takes no bits"),
                            (dict(group=32), "needs the axis"),
                            (dict(axis=2), "axis 2 is out of range")]:
        with pytest.raises(IRTypeError, match=message):
            b.quantize(x, 0.1, **kwargs)
    per_row = b.quantize(x, b.input("s", D.F32, (6,)), None, axis=0)  # torch's shape (C,) is reshaped
    assert per_row.inputs[1].shape == (6, 1) and per_row.inputs[1].op == K.RESHAPE


# --- sm_90 ahead of time ----------------------------------------------------------------------------

def test_kernels_compile_for_sm90_without_spills():
    """Every quantization kernel (one per op, and fused) compiles and launches for sm_90, no spills."""
    g = _kernel_graph()
    b, _ = GraphBuilder.extending(g)
    p = b.input("packed", D.U8, (37, 48))
    b.output("u", b.unpack_int4(p, D.I8))
    b.output("p", b.pack_int4(b.output("u8", b.unpack_int4(p, D.U8))))
    g = b.build()
    sm90 = parse("sm_90", tf32=False)
    rows_ = []
    for kernels in (groups(g), fused_groups(g, fuse(g).groups)):
        rows_ += aot.compile_jobs(aot.jobs_for(aot.launches_for(kernels, {}, sm90), sm90, False), sm90)
    assert aot.summary(rows_)["failed"] == 0, aot.format_table(rows_, sm90)
    assert not [r for r in rows_ if r.pruned], aot.format_table(rows_, sm90)
    assert {r.kind for r in rows_} >= {"pointwise", "index"}
