"""Low-precision matmul: `qmatmul(a, b)` multiplies integer or fp8 codes with a wide accumulator, as the
tensor cores do; the scales are applied by the ops after it (a cast and two multiplies, which fusion
makes the kernel's epilogue).

    qmatmul(a: i8[..., M, K], b: i8[..., K, N])    -> i32[..., M, N]   exact (torch._int_mm)
    qmatmul(a: f8[..., M, K], b: f8[..., K, N])    -> f32[..., M, N]   (f8: f8e4m3 or f8e5m2, any pair)

Batch dims broadcast as matmul's. Integer products are summed exactly in i32: the reference sums in i64
and wraps to i32 as an i32 accumulator would (|a @ b| <= K * 128 * 128, so K < 2**17 never wraps). fp8
products are exact in f32 (4 + 4 significant bits); their sum is rounded as an f32 accumulation is, in an
order the kernel chooses (torch._scaled_mm with unit scales, up to that order).

The dynamic int8 and fp8 modes of `passes/quantize.py` write, for `x @ w` with w stored as codes and a
scale per output channel (sw: [1, N]) and x quantized per row at run time (sx: [..., M, 1]):

    y = cast(qmatmul(quantize(x, sx), w.q), f32) * sx * sw

No gradient: the codes are integers (train through fake_quantize, `qat`, instead).
"""
from __future__ import annotations

import torch

from .dtypes import DType
from .errors import IRDTypeError, IRShapeError
from .ops import NoAttrs, OpKind, no_grad, register, register_grad
from .shapes import TensorType, broadcast_shapes, format_dim

K = OpKind


def accumulator(a: DType, b: DType) -> DType | None:
    """The result dtype of qmatmul over codes `a` and `b`, or None when it takes no such pair."""
    if a == b == DType.I8:
        return DType.I32
    if a.is_fp8 and b.is_fp8:
        return DType.F32
    return None


def _infer(attrs, ts: list[TensorType]) -> TensorType:
    a, b = ts
    if a.rank < 2 or b.rank < 2:
        raise IRShapeError(f"'qmatmul' takes operands of rank >= 2, got {a} and {b}")
    acc = accumulator(a.dtype, b.dtype)
    if acc is None:
        raise IRDTypeError(f"'qmatmul' multiplies i8 by i8 (-> i32) or fp8 by fp8 (-> f32) codes, got "
                           f"{a.dtype} and {b.dtype}; quantize the operands first")
    if a.shape[-1] != b.shape[-2]:
        raise IRShapeError(f"'qmatmul' inner dimensions differ: {a} @ {b} "
                           f"({format_dim(a.shape[-1])} vs {format_dim(b.shape[-2])})")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return TensorType(acc, batch + (a.shape[-2], b.shape[-1]))


def _ref(attrs, xs, ctx):
    a, b = xs
    if not a.is_floating_point():  # exact in i64, wrapped to i32 as the accumulator wraps
        return torch.matmul(a.to(torch.int64), b.to(torch.int64)).to(torch.int32)
    return torch.matmul(a.to(torch.float32), b.to(torch.float32))


register(K.QMATMUL, NoAttrs, 2, _infer, _ref)
register_grad(K.QMATMUL, no_grad)
