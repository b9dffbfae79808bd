"""Matrix multiplication (batched, batch dims broadcast) and 2-D convolution (NCHW, OIHW weights): shape
rules, reference evaluation and gradient rules.

Both conv2d gradients are built from conv2d and movement ops, so no transposed-convolution primitive is
needed:
- input: a conv of the output gradient, spread apart by the stride (zeros inserted) and padded to a
  "full" correlation, with the weight flipped in space and its in/out channels swapped per group;
- weight: a conv of the input (batch and channels swapped) with the output gradient as the kernel,
  stride and dilation exchanged. That conv contracts over the batch as its channels, so conv2d takes
  a symbolic number of input channels (its output channels and kernel stay static).
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
from .shapes import TensorType, broadcast_shapes, dim_mul, format_dim, numel

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
    if not all(isinstance(d, int) for d in (h, wd, o, kh, kw)):
        raise IRShapeError(f"'conv2d' needs static output channel, spatial and kernel sizes, got {x} and {w}")
    g = attrs.groups
    if g < 1 or o % g or dim_mul(cg, g) != c:  # input channels may be symbolic (a weight gradient's batch)
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
    # f16/bf16 in f32, rounded once by the evaluator (as the kernels accumulate): torch's CPU half
    # conv2d is not trustworthy (with dilation it returns garbage in some outputs, torch 2.13)
    x, w = (v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for v in xs)
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
    gx = sum_to_shape(b, b.matmul(g, b.transpose(y)), x.shape)
    if len(y.shape) == 2 and len(x.shape) > 2:
        # one matrix applied over a batch (a linear layer over [batch, seq, d]): its gradient is one
        # matmul contracting over every row, not a batched product summed over the batch afterwards
        # (the row count written out: a -1 cannot be inferred when the last axis is empty)
        rows = lambda v: b.reshape(v, (numel(v.shape[:-1]), v.shape[-1]))  # noqa: E731
        return [gx, b.matmul(b.transpose(rows(x)), rows(g))]
    return [gx, sum_to_shape(b, b.matmul(b.transpose(x), g), y.shape)]


def _flip(b: GraphBuilder, v: Node, axis: int) -> Node:
    """`v` reversed along a static axis: a take with the indices k-1, ..., 0."""
    k = v.shape[axis]
    return v if k == 1 else b.take(v, b.tensor(list(range(k - 1, -1, -1)), DType.I64), axis)


def _grad_conv_input(b: GraphBuilder, a: Conv2dAttrs, x: Node, w: Node, g: Node) -> Node:
    o, cg, kh, kw = w.shape
    groups = a.groups
    padding = [0, 0]
    for i, axis in enumerate((2, 3)):
        k, s, p, d = w.shape[axis], a.stride[i], a.padding[i], a.dilation[i]
        # g spread by the stride (with s-1 trailing zeros), then padded so that a stride-1 conv with
        # the flipped kernel lands on the unpadded input: d*(k-1) - p before, the rest after. Equal
        # non-negative amounts (always so for stride 1) are the conv's own padding: no padded copy.
        g = spread(b, g, axis, s)
        before = d * (k - 1) - p
        after = x.shape[axis] + d * (k - 1) - before - g.shape[axis]
        if before == after and before >= 0:
            padding[i] = before
        else:
            g = pad_or_crop(b, g, axis, before, after)
    # [O, C/G, KH, KW] -> [G, O/G, C/G, ..] -> [G, C/G, O/G, ..] -> [C, O/G, KH, KW], flipped in space
    wt = b.reshape(w, (groups, o // groups, cg, kh, kw))
    wt = b.reshape(b.permute(wt, (0, 2, 1, 3, 4)), (groups * cg, o // groups, kh, kw))
    wt = _flip(b, _flip(b, wt, 2), 3)
    return b.conv2d(g, wt, stride=1, padding=padding, dilation=a.dilation, groups=groups)


def _grad_conv_weight(b: GraphBuilder, a: Conv2dAttrs, x: Node, w: Node, g: Node) -> Node:
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    groups = a.groups
    # g [N, O, OH, OW] -> [G, O/G, N, OH, OW]: per group, output channels by batch
    gg = b.permute(b.reshape(g, (n, groups, o // groups) + g.shape[2:]), (1, 2, 0, 3, 4))
    # x [N, C, H, W] -> [C/G, G*N, H, W]: the batch (symbolic or not) becomes the channels the conv
    # contracts over
    xt = b.permute(b.reshape(x, (n, groups, cg, h, wd)), (2, 1, 0, 3, 4))
    xt = b.reshape(xt, (cg, dim_mul(n, groups), h, wd))
    gw = b.conv2d(xt, b.reshape(gg, (o, n) + g.shape[2:]), stride=a.dilation, padding=a.padding,
                  dilation=a.stride, groups=groups)                         # [C/G, O, >= KH, >= KW]
    gw = b.permute(gw, (1, 0, 2, 3))
    return b.slice(b.slice(gw, 2, 0, kh), 3, 0, kw)


def _grad_conv2d(b, node, ins, out, g):
    x, w = ins
    return [_grad_conv_input(b, node.attrs, x, w, g), _grad_conv_weight(b, node.attrs, x, w, g)]


register(K.MATMUL, NoAttrs, 2, _infer_matmul, _ref_matmul)
register_grad(K.MATMUL, _grad_matmul)
register(K.CONV2D, Conv2dAttrs, 2, _infer_conv2d, _ref_conv2d)
register_grad(K.CONV2D, _grad_conv2d)
