"""Quantization ops: affine integer codes (i8, u8, i32; int4 as a range of i8 or u8), fp8 scaling (e4m3fn,
e5m2), fake quantization for quantization-aware training, and int4 packing. Shape rules, reference
evaluation (PyTorch's fake quantization and fp8 casts, bit for bit: see Semantics) and gradient rules.

Builder API (`GraphBuilder` methods)::

    b.quantize(x, scale, zero_point=None, dtype=DType.I8, *, axis=None, group=None, bits=None,
               qmin=None, qmax=None)              -> codes of `dtype`, x's shape
    b.dequantize(q, scale, zero_point=None, dtype=DType.F32, *, axis=None, group=None)
                                                  -> floats of `dtype` (f32, f16, bf16), q's shape
    b.fake_quantize(x, scale, zero_point=None, qdtype=DType.I8, *, axis=None, group=None, bits=None,
                    qmin=None, qmax=None)         -> floats of x's dtype: dequantize(quantize(x))
    b.pack_int4(x)                                -> u8, last axis halved (x: i8 or u8, last axis even)
    b.unpack_int4(p, dtype=DType.I8)              -> i8 (sign-extended) or u8, last axis doubled

Granularity, the same for the three affine ops (and for quantize/dequantize pairs, give both the same):

    axis=None            per tensor: `scale` holds one value (any shape of one element; the IR's is ()).
    axis=a               per channel: `scale` of shape (x.shape[a],) as torch's, or of x's rank with 1 on
                         every other axis. The IR holds the latter (the builder reshapes: a view), so a
                         scale computed in the graph (amax(|x|, keepdim=True) / 127) broadcasts as is.
    axis=a, group=g      per group: g consecutive elements along axis a share one scale; `scale` has x's
                         shape with axis a divided by g (g divides it). A weight [out, in] quantized along
                         its contraction axis in groups of 64: axis=1, group=64, scale [out, in / 64].

`scale` is f32 (or f16/bf16, widened exactly); a Python number stands for a 0-d f32 constant.
`zero_point` (integer codes only) has the scale's shape and an integer dtype (i8, u8, i32, i64); None is
symmetric quantization (zero point 0); a Python int stands for a constant. fp8 takes no zero point.
The code range is the dtype's (i8 [-128, 127], u8 [0, 255], i32), or `bits` (4: i8 [-8, 7], u8 [0, 15]),
or torch's quant_min/quant_max as `qmin`/`qmax` (e.g. [-127, 127]). x is f32, f16 or bf16.

IR text: `%3 = quantize(%x, %s, %z, axes=[1], group=64, qmin=-8, qmax=7) : i8[96, 128]`, where `axes` is
[] per tensor and `group` is 1 per tensor and per channel; fp8 writes its finite range as qmin/qmax
(`qmin=-448, qmax=448 : f8e4m3[...]`). `dequantize(%q, %s, %z, axes=[], group=1) : f32[...]`,
`fake_quantize(%x, %s, %z, qdtype=u8, axes=[0], group=1, qmin=0, qmax=255) : f32[...]`.

Semantics. All arithmetic is f32, as torch's CPU kernels (fl: rounded to f32; rint: to nearest, ties
to even; inv = fl(1 / scale), correctly rounded):

- quantize (integer): q = clamp(rint(fl(x * inv)) + zp, qmin, qmax), the formula of torch.fake_quantize_
  per_tensor_affine / per_channel_affine; fake_quantize: fl((q - zp) * scale) of that q, so fake_quantize
  is exactly dequantize(quantize(x)) but for NaN (what training sees is what the quantized model
  computes; torch's own functions do not agree on it). torch.quantize_per_tensor / per_channel give
  the same codes when the zero point is 0 (symmetric quantization); with another zero point they add it
  before rounding (per channel and qint32: rint(fl(fl(x * inv) + zp)); per tensor to qint8/quint8
  fbgemm fuses x * inv + zp into one rounding; on CUDA torch rounds x / scale divided in f64), so their
  codes differ from these (and from each other) by one where x * inv is within an ulp or two of a half
  integer.
- dequantize: fl(fl(q - zp) * scale), the difference exact (i32 codes alone can make it round), as
  torch's Tensor.dequantize (per tensor; per channel on a CPU it rounds a qint32 q before subtracting),
  then rounded to the result dtype.
- fp8: q = fp8(clamp(fl(x / scale), -max, max)), to nearest even: `(x / scale).clamp(-448, 448)
  .to(torch.float8_e4m3fn)` (57344 for f8e5m2); a division, not a multiplication by inv. dequantize
  fl(q * scale); fake_quantize both.
- Edge cases, where torch's results come from undefined C++ float-to-int casts and differ between its
  functions (NaN: 127, 0 or quant_min): NaN quantizes to code 0 (clamped into [qmin, qmax]), as
  torch.quantize_per_channel and Axon's `cast`; fp8 and fake_quantize keep NaN (a NaN check in training
  still sees it). +-inf and values beyond the range saturate to qmax/qmin (fp8: +-max). Empty and 0-d
  tensors are elementwise as usual.
- The evaluator refuses a scale that is not positive and finite with a finite f32 reciprocal (0,
  negative, NaN, inf, below 2**-126) and a zero point outside [qmin, qmax] (as torch's fake_quantize).
  Kernels do not check: a scale of 0 gives inv = inf, so codes saturate (and 0 * inf = NaN gives 0).
  Kernels compute exactly the evaluator's codes (codegen/quant.py), on the interpreter and on a GPU.

Gradients: quantize and dequantize carry none (integer codes; as torch's dequantize, a learnable scale
would be another op). fake_quantize: the straight-through estimator of torch.fake_quantize_per_channel
_affine: g * mask, where the mask is 1 where zp + rint(x * inv) lies in [qmin, qmax] before clamping
and 0 elsewhere (NaN: 0; as torch, 0 * a negative g is -0.0); fp8: where |x / scale| <= max. No gradient
flows to the scale or the zero point.

int4 packing: pack_int4 puts pairs along the last axis into one byte, the first (even) element in the low
nibble: p[..., i] = (x[..., 2i] & 15) | (x[..., 2i+1] & 15) << 4, so [-8, 7] and [0, 15] round-trip and
other values keep their low 4 bits (wrap). unpack_int4 reverses it, sign-extending for i8.

Lowering: the three affine ops are in `ELEMENTWISE`, so they fuse as elementwise ops do (pointwise
kernels, both sides of a reduction, matmul and conv2d epilogues); a per-group scale or zero point is read
at coordinate // group (`codegen.groups.Access.group`). A stored weight's `[unpack_int4 ->] dequantize`
read by matmuls (or conv2d) is their prologue: dequantized block by block in the K loop, never stored
(`passes/fusion/prologue.py`, `codegen/prologue.py`). Elsewhere pack_int4 and unpack_int4 are index
kernels of their own.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .dtypes import DType, quant_range
from .errors import EvalError, IRDTypeError, IRShapeError, IRTypeError
from .ops import (DequantizeAttrs, FakeQuantizeAttrs, NoAttrs, OpKind, QuantizeAttrs, UnpackAttrs,
                  no_grad, register, register_grad)
from .shapes import Sym, TensorType, format_shape

if TYPE_CHECKING:
    from .graph import GraphBuilder, Node

K = OpKind
FLOAT_VALUES = (DType.F32, DType.F16, DType.BF16)     # x, scale and dequantized results
INT_CODES = (DType.I8, DType.U8, DType.I32)
FP8 = (DType.F8E4M3, DType.F8E5M2)
ZERO_POINTS = (DType.I8, DType.U8, DType.I32, DType.I64)
SMALLEST_SCALE = 2.0**-126  # below it, 1/scale overflows f32 (the smallest normal f32)


def per_group(node) -> tuple[int, int] | None:
    """(axis, group) of a quantization op whose scale and zero point are read per group of `group`
    elements along `axis` (of x's shape, and of theirs); None when they broadcast as they are."""
    if node.op in (K.QUANTIZE, K.DEQUANTIZE, K.FAKE_QUANTIZE) and node.attrs.group > 1:
        return node.attrs.axes[0], node.attrs.group
    return None


# --- shape and dtype rules ---------------------------------------------------------------------------

def granular_shape(op: str, x: TensorType, axes: tuple[int, ...], group: int) -> tuple:
    """The scale's (and zero point's) shape for quantizing `x` along `axes` in groups of `group`."""
    if len(axes) > 1:
        raise IRShapeError(f"'{op}' quantizes along one axis at most, got axes {list(axes)}")
    if not isinstance(group, int) or isinstance(group, bool) or group < 1:
        raise IRShapeError(f"'{op}' group must be an integer >= 1, got {group!r}")
    if not axes:
        if group != 1:
            raise IRShapeError(f"'{op}' per tensor (no axis) takes group 1, got {group}")
        return ()
    (a,) = axes
    if not 0 <= a < x.rank:
        raise IRShapeError(f"'{op}' axis {a} out of range for {x}")
    if group == 1:
        return tuple(d if i == a else 1 for i, d in enumerate(x.shape))
    size = x.shape[a]
    if not isinstance(size, int):
        raise IRShapeError(f"'{op}' in groups along axis {a} of {x}: the axis must have a static size")
    if size % group:
        raise IRShapeError(f"'{op}' groups of {group} do not divide axis {a} of {x} (size {size})")
    return tuple(size // group if i == a else d for i, d in enumerate(x.shape))


def _granularity(axes, group) -> str:
    if not axes:
        return "per tensor"
    return f"per channel along axis {axes[0]}" if group == 1 else \
        f"in groups of {group} along axis {axes[0]}"


def _check_params(op: str, x: TensorType, ts: list[TensorType], axes, group, codes: DType) -> None:
    """Scale and zero point: their dtypes, and the shape the granularity asks for."""
    want = granular_shape(op, x, axes, group)
    scale, zp = ts[1], ts[2] if len(ts) > 2 else None
    if scale.dtype not in FLOAT_VALUES:
        raise IRDTypeError(f"'{op}' takes an f32, f16 or bf16 scale, got {scale}")
    if tuple(scale.shape) != want:
        raise IRShapeError(f"'{op}' {_granularity(axes, group)} of {x} takes a scale of shape "
                           f"{format_shape(want)}, got {scale}")
    if zp is None:
        return
    if codes.is_fp8:
        raise IRTypeError(f"'{op}' to {codes} takes no zero point (fp8 scaling is symmetric), got {zp}")
    if zp.dtype not in ZERO_POINTS:
        raise IRDTypeError(f"'{op}' takes an integer zero point (i8, u8, i32, i64), got {zp}")
    if tuple(zp.shape) != want:
        raise IRShapeError(f"'{op}' zero point must have the scale's shape {format_shape(want)}, got {zp}")


def _check_codes(op: str, codes: DType, qmin: int, qmax: int, allowed) -> None:
    if codes not in allowed:
        raise IRDTypeError(f"'{op}' codes must be {', '.join(map(str, allowed))}, got {codes}")
    lo, hi = quant_range(codes)
    if codes.is_fp8:
        if (qmin, qmax) != (lo, hi):
            raise IRTypeError(f"'{op}' to {codes} saturates to its finite range: qmin={lo}, qmax={hi}, "
                              f"got [{qmin}, {qmax}]")
    elif not lo <= qmin <= qmax <= hi:
        raise IRTypeError(f"'{op}' code range [{qmin}, {qmax}] is empty or outside {codes}'s [{lo}, {hi}]")


def _operands(op: str, ts: list[TensorType]) -> None:
    if len(ts) not in (2, 3):
        raise IRTypeError(f"'{op}' takes (x, scale) or (x, scale, zero_point), got {len(ts)} operands")


def _infer_quantize(attrs: QuantizeAttrs, ts: list[TensorType]) -> TensorType:
    _operands("quantize", ts)
    x = ts[0]
    if x.dtype not in FLOAT_VALUES:
        raise IRDTypeError(f"'quantize' takes f32, f16 or bf16 values, got {x}")
    _check_codes("quantize", attrs.dtype, attrs.qmin, attrs.qmax, INT_CODES + FP8)
    _check_params("quantize", x, ts, attrs.axes, attrs.group, attrs.dtype)
    return x.with_dtype(attrs.dtype)


def _infer_dequantize(attrs: DequantizeAttrs, ts: list[TensorType]) -> TensorType:
    _operands("dequantize", ts)
    q = ts[0]
    if q.dtype not in INT_CODES + FP8:
        raise IRDTypeError(f"'dequantize' takes codes of i8, u8, i32, f8e4m3 or f8e5m2, got {q}")
    if attrs.dtype not in FLOAT_VALUES:
        raise IRDTypeError(f"'dequantize' gives f32, f16 or bf16, not {attrs.dtype}")
    _check_params("dequantize", q, ts, attrs.axes, attrs.group, q.dtype)
    return q.with_dtype(attrs.dtype)


def _infer_fake(attrs: FakeQuantizeAttrs, ts: list[TensorType]) -> TensorType:
    _operands("fake_quantize", ts)
    x = ts[0]
    if x.dtype not in FLOAT_VALUES:
        raise IRDTypeError(f"'fake_quantize' takes f32, f16 or bf16 values, got {x}")
    _check_codes("fake_quantize", attrs.qdtype, attrs.qmin, attrs.qmax, (DType.I8, DType.U8) + FP8)
    _check_params("fake_quantize", x, ts, attrs.axes, attrs.group, attrs.qdtype)
    return x


def _last_axis(op: str, x: TensorType):
    if not x.rank:
        raise IRShapeError(f"'{op}' works along the last axis; a 0-d tensor has none ({x})")
    return x.shape[-1]


def _infer_pack(attrs, ts: list[TensorType]) -> TensorType:
    (x,) = ts
    if x.dtype not in (DType.I8, DType.U8):
        raise IRDTypeError(f"'pack_int4' packs i8 or u8 codes, got {x}")
    n = _last_axis("pack_int4", x)
    coeff = n.coeff if isinstance(n, Sym) else n
    if coeff % 2:
        raise IRShapeError(f"'pack_int4' packs pairs along the last axis, whose size must be even; {x} has "
                           f"{n} (pad it first)")
    half = Sym(n.factors, n.coeff // 2) if isinstance(n, Sym) else n // 2
    return TensorType(DType.U8, (*x.shape[:-1], half))


def _infer_unpack(attrs: UnpackAttrs, ts: list[TensorType]) -> TensorType:
    (p,) = ts
    if p.dtype != DType.U8:
        raise IRDTypeError(f"'unpack_int4' unpacks bytes (u8), got {p}")
    if attrs.dtype not in (DType.I8, DType.U8):
        raise IRDTypeError(f"'unpack_int4' gives i8 (signed nibbles) or u8, not {attrs.dtype}")
    n = _last_axis("unpack_int4", p)
    double = Sym(n.factors, n.coeff * 2) if isinstance(n, Sym) else n * 2
    return TensorType(attrs.dtype, (*p.shape[:-1], double))


# --- reference evaluation ----------------------------------------------------------------------------

def _per_element(t: torch.Tensor, axes, group: int) -> torch.Tensor:
    """A scale or zero point spread over the groups it covers (it then broadcasts against x)."""
    return t.repeat_interleave(group, dim=axes[0]) if group > 1 else t


def _scale(op: str, s: torch.Tensor, axes, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, 1 / scale) in f32, per element; refuses a scale without a finite positive reciprocal."""
    s32 = s.to(torch.float32)
    bad = ~((s32 >= SMALLEST_SCALE) & (s32 < float("inf")))
    if bool(bad.any()):
        at = tuple(int(i) for i in bad.nonzero()[0])
        raise EvalError(f"'{op}' scale must be positive and finite with a finite reciprocal (at least "
                        f"2**-126), got {float(s32[at])} at index {list(at)}")
    s32 = _per_element(s32, axes, group)
    return s32, torch.ones_like(s32) / s32


def _zero_point(op: str, xs, attrs, qmin: int, qmax: int) -> torch.Tensor | None:
    """The zero point per element, as given (None: symmetric); refuses one outside [qmin, qmax]."""
    if len(xs) < 3:
        return None
    zp = xs[2]
    bad = (zp < qmin) | (zp > qmax)
    if bool(bad.any()):
        at = tuple(int(i) for i in bad.nonzero()[0])
        raise EvalError(f"'{op}' zero point {int(zp[at])} at index {list(at)} is outside the code range "
                        f"[{qmin}, {qmax}]")
    return _per_element(zp, attrs.axes, attrs.group)


def _fp8_grid(y: torch.Tensor, codes: DType) -> torch.Tensor:
    """fl(y) saturated to the format's finite range and rounded to it (NaN stays NaN), in f32."""
    lo, hi = quant_range(codes)
    return y.clamp(float(lo), float(hi)).to(codes.torch).to(torch.float32)


def _ref_quantize(attrs: QuantizeAttrs, xs, ctx):
    x = xs[0].to(torch.float32)
    s, inv = _scale("quantize", xs[1], attrs.axes, attrs.group)
    if attrs.dtype.is_fp8:
        return _fp8_grid(x / s, attrs.dtype)
    r = torch.round(x * inv).double()
    zp = _zero_point("quantize", xs, attrs, attrs.qmin, attrs.qmax)
    if zp is not None:
        r = r + zp.double()
    r = torch.where(r.isnan(), torch.zeros_like(r), r)
    return r.clamp(attrs.qmin, attrs.qmax).to(attrs.dtype.torch)


def _ref_dequantize(attrs: DequantizeAttrs, xs, ctx):
    wide = torch.float64 if ctx.precise else torch.float32  # precise: the product unrounded
    s, _ = _scale("dequantize", xs[1], attrs.axes, attrs.group)
    q = xs[0]
    codes = quant_range(DType.from_torch(q.dtype)) if len(xs) > 2 else (0, 0)  # (ints: held as is)
    zp = _zero_point("dequantize", xs, attrs, *codes)
    if zp is not None:  # the difference exactly, then rounded once (only i32 codes can round)
        q = q.double() - zp.double()
    return q.to(torch.float32).to(wide) * s.to(wide)


def _ref_fake(attrs: FakeQuantizeAttrs, xs, ctx):
    wide = torch.float64 if ctx.precise else torch.float32
    x = xs[0].to(torch.float32)
    s, inv = _scale("fake_quantize", xs[1], attrs.axes, attrs.group)
    if attrs.qdtype.is_fp8:
        return _fp8_grid(x / s, attrs.qdtype).to(wide) * s.to(wide)
    zp = _zero_point("fake_quantize", xs, attrs, attrs.qmin, attrs.qmax)
    zp = None if zp is None else zp.to(torch.float32)  # (i8 and u8 codes: exact)
    c = torch.round(x * inv) + (0.0 if zp is None else zp)  # (+ 0.0: a -0.0 is +0.0, as torch's ints)
    c = c.clamp(float(attrs.qmin), float(attrs.qmax))  # NaN stays NaN, to the result
    if zp is not None:
        c = c - zp
    return c.to(wide) * s.to(wide)


def _ref_pack(attrs, xs, ctx):
    x = xs[0].to(torch.int16) & 15  # two's complement: the low 4 bits of each value
    return (x[..., 0::2] | (x[..., 1::2] << 4)).to(torch.uint8)


def _ref_unpack(attrs: UnpackAttrs, xs, ctx):
    p = xs[0].to(torch.int16)
    pairs = torch.stack([p & 15, p >> 4], dim=-1).reshape(*p.shape[:-1], 2 * p.shape[-1])
    if attrs.dtype == DType.I8:
        pairs = (pairs ^ 8) - 8  # sign-extend the nibble
    return pairs.to(attrs.dtype.torch)


# --- gradients ---------------------------------------------------------------------------------------

def spread(b: GraphBuilder, p: Node, shape, axes, group: int) -> Node:
    """A per-group scale or zero point repeated over its groups (reshape, expand, reshape); others are
    returned as they are (they broadcast against a tensor of `shape`)."""
    if group == 1:
        return p
    a = axes[0]
    split = (*p.shape[:a + 1], 1, *p.shape[a + 1:])
    wide = (*p.shape[:a + 1], group, *p.shape[a + 1:])
    return b.reshape(b.expand(b.reshape(p, split), wide), shape)


def _grad_fake(b, node, ins, out, g):
    """The straight-through estimator: g where the code was in range before clamping, else 0."""
    x, scale = ins[0], ins[1]
    a = node.attrs
    if a.qdtype.is_fp8:
        y = b.div(b.cast(x, DType.F32), b.cast(spread(b, scale, x.shape, a.axes, a.group), DType.F32))
        inside = b.le(b.abs(y), float(quant_range(a.qdtype)[1]))  # false for NaN
    else:
        # rint(x * inv) as i32 codes (saturating), compared with [qmin - zp, qmax - zp]
        lo, hi = quant_range(DType.I32)
        r = b.node(K.QUANTIZE, (x, scale), QuantizeAttrs(DType.I32, a.axes, a.group, lo, hi))
        low, high = b.const(a.qmin, DType.I32), b.const(a.qmax, DType.I32)
        if len(ins) > 2:
            zp = b.cast(spread(b, ins[2], x.shape, a.axes, a.group), DType.I32)
            low, high = b.sub(low, zp), b.sub(high, zp)
        inside = b.logical_and(b.logical_and(b.ge(r, low), b.le(r, high)), b.eq(x, x))  # NaN: code 0
    return [b.mul(g, b.cast(inside, g.dtype))] + [None] * (len(ins) - 1)  # g * mask, as torch: -0.0 too


register(K.QUANTIZE, QuantizeAttrs, None, _infer_quantize, _ref_quantize)
register_grad(K.QUANTIZE, no_grad)
register(K.DEQUANTIZE, DequantizeAttrs, None, _infer_dequantize, _ref_dequantize)
register_grad(K.DEQUANTIZE, no_grad)
register(K.FAKE_QUANTIZE, FakeQuantizeAttrs, None, _infer_fake, _ref_fake)
register_grad(K.FAKE_QUANTIZE, _grad_fake)
register(K.PACK_INT4, NoAttrs, 1, _infer_pack, _ref_pack)
register_grad(K.PACK_INT4, no_grad)
register(K.UNPACK_INT4, UnpackAttrs, 1, _infer_unpack, _ref_unpack)
register_grad(K.UNPACK_INT4, no_grad)
