"""Matrix multiplication (batched, batch dims broadcast) and 2-D convolution (NCHW, OIHW weights)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dtypes import DType
from .errors import IRDTypeError, IRShapeError
from .ops import Conv2dAttrs, NoAttrs, OpKind, register
from .shapes import TensorType, broadcast_shapes, format_dim

K = OpKind


def _infer_matmul(attrs, ts: list[TensorType]) -> TensorType:
    a, b = ts
    if a.rank < 2 or b.rank < 2:
        raise IRShapeError(f"'matmul' takes operands of rank >= 2, got {a} and {b}")
    if a.dtype != b.dtype:
        raise IRDTypeError(f"operands of 'matmul' have different dtypes {a.dtype} and {b.dtype}; cast one")
    if a.dtype == DType.BOOL:
        raise IRDTypeError("'matmul' of bool tensors; cast them to a number first")
    if a.shape[-1] != b.shape[-2]:
        raise IRShapeError(f"'matmul' inner dimensions differ: {a} @ {b} "
                           f"({format_dim(a.shape[-1])} vs {format_dim(b.shape[-2])})")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return TensorType(a.dtype, batch + (a.shape[-2], b.shape[-1]))


def _infer_conv2d(attrs: Conv2dAttrs, ts: list[TensorType]) -> TensorType:
    x, w = ts
    if x.rank != 4 or w.rank != 4:
        raise IRShapeError(f"'conv2d' takes x[N, C, H, W] and w[O, C/groups, KH, KW], got {x} and {w}")
    if x.dtype != w.dtype or not x.dtype.is_float:
        raise IRDTypeError(f"'conv2d' takes floating-point operands of one dtype, got {x.dtype}, {w.dtype}")
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    if not all(isinstance(d, int) for d in (c, h, wd, o, cg, kh, kw)):
        raise IRShapeError(f"'conv2d' needs static channel, spatial and kernel sizes, got {x} and {w}")
    g = attrs.groups
    if g < 1 or c % g or o % g or cg * g != c:
        raise IRShapeError(f"'conv2d' with groups={g}: input channels {c} and output channels {o} must "
                           f"divide by groups, and the weight must have {c // max(g, 1)} input channels, "
                           f"not {cg}")
    sh, sw = attrs.stride
    ph, pw = attrs.padding
    dh, dw = attrs.dilation
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise IRShapeError(f"'conv2d' needs stride and dilation >= 1 and padding >= 0, got {attrs}")
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if kh < 1 or kw < 1:
        raise IRShapeError(f"'conv2d' kernel {kh}x{kw} is empty")
    if oh < 1 or ow < 1:
        raise IRShapeError(f"'conv2d' kernel {kh}x{kw} (dilation {dh}x{dw}) does not fit the "
                           f"{h}x{wd} input padded by {ph}x{pw}")
    return TensorType(x.dtype, (n, o, oh, ow))


def _ref_conv2d(attrs: Conv2dAttrs, xs, ctx):
    x, w = xs
    return F.conv2d(x, w, stride=attrs.stride, padding=attrs.padding, dilation=attrs.dilation,
                    groups=attrs.groups)


def _ref_matmul(attrs, xs, ctx):
    a, b = xs
    if not a.is_floating_point():  # torch has no integer matmul on every backend: exact in int64
        return torch.matmul(a.to(torch.int64), b.to(torch.int64))
    return torch.matmul(a, b)


register(K.MATMUL, NoAttrs, 2, _infer_matmul, _ref_matmul)
register(K.CONV2D, Conv2dAttrs, 2, _infer_conv2d, _ref_conv2d)
