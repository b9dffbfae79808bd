"""Matrix multiplication (batched, batch dims broadcast) and 2-D convolution (NCHW, OIHW weights): shape
rules, reference evaluation and gradient rules.

Both conv2d gradients are built from conv2d and movement ops, so no transposed-convolution primitive is
needed:
- input: a conv of the output gradient, spread apart by the stride (zeros inserted) and padded to a
  "full" correlation, with the weight flipped in space and its in/out channels swapped per group;
- weight: a conv of the input (batch and channels swapped) with the output gradient as the kernel,
  stride and dilation exchanged. That conv contracts over the batch as its channels, which conv2d
  needs static; with a symbolic batch the weight gradient is an im2col instead (KH*KW strided slices of
  the padded input, stacked, and one batched matmul over groups), costing KH*KW copies of the input.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .dtypes import DType
from .errors import IRDTypeError, IRShapeError
from .op_elementwise import sum_to_shape
from .op_movement import pad_or_crop, spread
from .ops import Conv2dAttrs, NoAttrs, OpKind, register, register_grad
from .shapes import TensorType, broadcast_shapes, format_dim

if TYPE_CHECKING:
    from .graph import GraphBuilder, Node

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


# --- gradients ---------------------------------------------------------------------------------------

def _grad_matmul(b, node, ins, out, g):
    # Batch dims broadcast like elementwise operands: sum the gradient back over the stretched ones.
    x, y = ins
    return [sum_to_shape(b, b.matmul(g, b.transpose(y)), x.shape),
            sum_to_shape(b, b.matmul(b.transpose(x), g), y.shape)]


def _flip(b: GraphBuilder, v: Node, axis: int) -> Node:
    """`v` reversed along a static axis: a take with the indices k-1, ..., 0."""
    k = v.shape[axis]
    return v if k == 1 else b.take(v, b.tensor(list(range(k - 1, -1, -1)), DType.I64), axis)


def _grad_conv_input(b: GraphBuilder, a: Conv2dAttrs, x: Node, w: Node, g: Node) -> Node:
    o, cg, kh, kw = w.shape
    groups = a.groups
    for i, axis in enumerate((2, 3)):
        k, s, p, d = w.shape[axis], a.stride[i], a.padding[i], a.dilation[i]
        # g spread by the stride (with s-1 trailing zeros), then padded so that a stride-1 conv with
        # the flipped kernel lands on the unpadded input: d*(k-1) - p before, the rest after.
        g = spread(b, g, axis, s)
        before = d * (k - 1) - p
        g = pad_or_crop(b, g, axis, before, x.shape[axis] + d * (k - 1) - before - g.shape[axis])
    # [O, C/G, KH, KW] -> [G, O/G, C/G, ..] -> [G, C/G, O/G, ..] -> [C, O/G, KH, KW], flipped in space
    wt = b.reshape(w, (groups, o // groups, cg, kh, kw))
    wt = b.reshape(b.permute(wt, (0, 2, 1, 3, 4)), (groups * cg, o // groups, kh, kw))
    wt = _flip(b, _flip(b, wt, 2), 3)
    return b.conv2d(g, wt, stride=1, padding=0, dilation=a.dilation, groups=groups)


def _grad_conv_weight(b: GraphBuilder, a: Conv2dAttrs, x: Node, w: Node, g: Node) -> Node:
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    groups = a.groups
    # g [N, O, OH, OW] -> [G, O/G, N, OH, OW]: per group, output channels by batch
    gg = b.permute(b.reshape(g, (n, groups, o // groups) + g.shape[2:]), (1, 2, 0, 3, 4))
    if isinstance(n, int):
        # x [N, C, H, W] -> [C/G, G*N, H, W]: the batch becomes the channels the conv contracts over
        xt = b.permute(b.reshape(x, (n, groups, cg, h, wd)), (2, 1, 0, 3, 4))
        xt = b.reshape(xt, (cg, groups * n, h, wd))
        gw = b.conv2d(xt, b.reshape(gg, (o, n) + g.shape[2:]), stride=a.dilation, padding=a.padding,
                      dilation=a.stride, groups=groups)                     # [C/G, O, >= KH, >= KW]
        gw = b.permute(gw, (1, 0, 2, 3))
        return b.slice(b.slice(gw, 2, 0, kh), 3, 0, kw)
    # symbolic batch: im2col. patches[n, c, i*KW + j, oh, ow] = xpad[n, c, oh*s + i*d, ow*s + j*d]
    oh, ow = g.shape[2:]
    xp = b.pad(x, [(0, 0), (0, 0), (a.padding[0],) * 2, (a.padding[1],) * 2])
    patches = []
    for i in range(kh):
        for j in range(kw):
            top, left = i * a.dilation[0], j * a.dilation[1]
            p = b.slice(xp, 2, top, top + (oh - 1) * a.stride[0] + 1, a.stride[0])
            p = b.slice(p, 3, left, left + (ow - 1) * a.stride[1] + 1, a.stride[1])
            patches.append(b.reshape(p, (n, c, 1, oh, ow)))
    cols = b.reshape(b.concat(patches, 2), (n, groups, cg * kh * kw, oh, ow))
    cols = b.reshape(b.permute(cols, (1, 2, 0, 3, 4)), (groups, cg * kh * kw, -1))   # [G, C/G*KK, M]
    gw = b.matmul(b.reshape(gg, (groups, o // groups, -1)), b.transpose(cols))       # [G, O/G, C/G*KK]
    return b.reshape(gw, w.shape)


def _grad_conv2d(b, node, ins, out, g):
    x, w = ins
    return [_grad_conv_input(b, node.attrs, x, w, g), _grad_conv_weight(b, node.attrs, x, w, g)]


register(K.MATMUL, NoAttrs, 2, _infer_matmul, _ref_matmul)
register_grad(K.MATMUL, _grad_matmul)
register(K.CONV2D, Conv2dAttrs, 2, _infer_conv2d, _ref_conv2d)
register_grad(K.CONV2D, _grad_conv2d)
