"""Movement ops (reshape, permute, expand, slice, pad, concat) and indexing (gather, take): shape rules,
reference evaluation and gradient rules.

Movement ops change where elements sit, never their values; codegen folds most of them into index
arithmetic. Symbolic dimensions pass through untouched; an op that would need to compute with one
(slicing or padding it) is refused with a message saying so.

Gradients of movement ops are movement ops (slice <-> pad, reshape back, inverse permute, expand ->
sum). Gather and take read with indices; their gradient is a scatter-add, which the IR has no op for,
so it is built from a one-hot comparison `index == iota`, multiplied by the gradient and summed (take:
a matmul). That costs O(numel(index) * size of the indexed axis): for an embedding table [V, D] looked
up with ids [N], an [N, V] one-hot and an [V, N] @ [N, D] matmul.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .dtypes import DType
from .errors import EvalError, IRDTypeError, IRShapeError
from .op_elementwise import sum_to_shape
from .op_source import check_scalar
from .ops import (AxisAttrs, ExpandAttrs, OpKind, PadAttrs, PermuteAttrs, ReshapeAttrs,
                  SliceAttrs, register, register_grad)
from .shapes import Dim, Sym, TensorType, concrete, format_dim, format_shape, is_static, numel

if TYPE_CHECKING:
    from .graph import GraphBuilder, Node

K = OpKind


def dim_add(a: Dim, b: Dim) -> Dim:
    """Sum of two dimensions where it stays a single term (ints, or like symbolic terms)."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if isinstance(a, Sym) and isinstance(b, Sym) and a.factors == b.factors:
        return Sym(a.factors, a.coeff + b.coeff)
    if a == 0:
        return b
    if b == 0:
        return a
    raise IRShapeError(f"cannot add dimensions {format_dim(a)} and {format_dim(b)}")


def _infer_reshape(attrs: ReshapeAttrs, ts):
    (x,) = ts
    if any(isinstance(d, int) and d < 0 for d in attrs.shape):
        raise IRShapeError(f"'reshape' to {format_shape(attrs.shape)}: sizes must be >= 0")
    if numel(x.shape) != numel(attrs.shape):
        raise IRShapeError(f"cannot reshape {x} to {format_shape(attrs.shape)}: "
                           f"{format_dim(numel(x.shape))} elements vs {format_dim(numel(attrs.shape))}")
    return x.with_shape(attrs.shape)


def _infer_permute(attrs: PermuteAttrs, ts):
    (x,) = ts
    if sorted(attrs.perm) != list(range(x.rank)):
        raise IRShapeError(f"'permute' order {list(attrs.perm)} is not a permutation of the "
                           f"{x.rank} axes of {x}")
    return x.with_shape(tuple(x.shape[p] for p in attrs.perm))


def _infer_expand(attrs: ExpandAttrs, ts):
    (x,) = ts
    target = attrs.shape
    if any(isinstance(d, int) and d < 0 for d in target):
        raise IRShapeError(f"cannot expand {x} to {format_shape(target)}: sizes must be >= 0")
    if len(target) < x.rank:
        raise IRShapeError(f"cannot expand {x} to the lower rank {format_shape(target)}")
    for i, d in enumerate(x.shape):
        t = target[len(target) - x.rank + i]
        if d != t and d != 1:
            raise IRShapeError(f"cannot expand {x} to {format_shape(target)}: dimension "
                               f"{format_dim(d)} is neither 1 nor {format_dim(t)}")
    return x.with_shape(target)


def _infer_slice(attrs: SliceAttrs, ts):
    (x,) = ts
    if not len(attrs.axes) == len(attrs.starts) == len(attrs.stops) == len(attrs.steps):
        raise IRShapeError("'slice' needs one start, stop and step per axis")
    if len(set(attrs.axes)) != len(attrs.axes):
        raise IRShapeError(f"'slice' names an axis twice: {list(attrs.axes)}")
    shape = list(x.shape)
    for a, start, stop, step in zip(attrs.axes, attrs.starts, attrs.stops, attrs.steps):
        if not 0 <= a < x.rank:
            raise IRShapeError(f"'slice' axis {a} out of range for {x}")
        d = x.shape[a]
        if not isinstance(d, int):
            raise IRShapeError(f"cannot slice the symbolic dimension {format_dim(d)} (axis {a} of {x})")
        if step < 1 or not 0 <= start < stop <= d:
            raise IRShapeError(f"'slice' {start}:{stop}:{step} of axis {a} (size {d}) is empty or out "
                               f"of range")
        shape[a] = (stop - start + step - 1) // step
    return x.with_shape(tuple(shape))


def _infer_pad(attrs: PadAttrs, ts):
    (x,) = ts
    if len(attrs.pads) != x.rank:
        raise IRShapeError(f"'pad' needs one (before, after) pair per axis of {x}, got {len(attrs.pads)}")
    value = attrs.value  # stored as a float: it must still be a value of x's dtype
    if x.dtype == DType.BOOL and value in (0, 1):
        value = bool(value)
    elif x.dtype.is_int and float(value).is_integer():
        value = int(value)
    try:
        check_scalar(value, x.dtype)
    except IRDTypeError as e:
        raise IRDTypeError(f"'pad' of {x} with value {attrs.value!r}: {e.message}") from None
    shape = []
    for d, (lo, hi) in zip(x.shape, attrs.pads):
        if lo < 0 or hi < 0:
            raise IRShapeError(f"'pad' amounts must be >= 0, got {list(attrs.pads)} (use slice to crop)")
        shape.append(dim_add(d, lo + hi) if lo + hi else d)
    return x.with_shape(tuple(shape))


def _infer_concat(attrs: AxisAttrs, ts):
    first = ts[0]
    if not 0 <= attrs.axis < first.rank:
        raise IRShapeError(f"'concat' axis {attrs.axis} out of range for {first}")
    total = first.shape[attrs.axis]
    for t in ts[1:]:
        if t.dtype != first.dtype:
            raise IRDTypeError(f"'concat' of different dtypes {first.dtype} and {t.dtype}")
        same = t.rank == first.rank and all(
            a == b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != attrs.axis)
        if not same:
            raise IRShapeError(f"'concat' along axis {attrs.axis}: {t} does not match {first} "
                               f"on the other axes")
        total = dim_add(total, t.shape[attrs.axis])
    shape = list(first.shape)
    shape[attrs.axis] = total
    return first.with_shape(tuple(shape))


def _check_index(t: TensorType, op: str) -> None:
    if not t.dtype.is_int:
        raise IRDTypeError(f"the index of '{op}' must be an integer tensor, got {t}")


def _infer_gather(attrs: AxisAttrs, ts):
    x, idx = ts
    _check_index(idx, "gather")
    if idx.rank != x.rank or not 0 <= attrs.axis < x.rank:
        raise IRShapeError(f"'gather' along axis {attrs.axis} needs an index of the rank of {x}, got {idx}")
    for i, (a, b) in enumerate(zip(x.shape, idx.shape)):
        if i != attrs.axis and a != b:
            raise IRShapeError(f"'gather' along axis {attrs.axis}: index {idx} and source {x} differ "
                               f"on axis {i}")
    return TensorType(x.dtype, idx.shape)


def _infer_take(attrs: AxisAttrs, ts):
    x, idx = ts
    _check_index(idx, "take")
    if not 0 <= attrs.axis < x.rank:
        raise IRShapeError(f"'take' axis {attrs.axis} out of range for {x}")
    return TensorType(x.dtype, x.shape[:attrs.axis] + idx.shape + x.shape[attrs.axis + 1:])


def _bounds(idx: torch.Tensor, size: int, op: str) -> torch.Tensor:
    """The index as int64 in [0, size). Take counts a negative index from the end (as torch.take and
    Python); gather does not (as torch.gather)."""
    lo = -size if op == "take" else 0
    if idx.numel() and (int(idx.min()) < lo or int(idx.max()) >= size):
        raise EvalError(f"'{op}' index out of range: values span [{int(idx.min())}, {int(idx.max())}] "
                        f"for an axis of size {size} (valid: [{lo}, {size - 1}])")
    idx = idx.to(torch.int64)
    return torch.where(idx < 0, idx + size, idx)


def _ref_slice(attrs: SliceAttrs, xs, ctx):
    index = [slice(None)] * xs[0].dim()
    for a, start, stop, step in zip(attrs.axes, attrs.starts, attrs.stops, attrs.steps):
        index[a] = slice(start, stop, step)
    return xs[0][tuple(index)]


def _ref_pad(attrs: PadAttrs, xs, ctx):
    flat = [p for lo_hi in reversed(attrs.pads) for p in lo_hi]  # torch lists the last axis first
    x = xs[0]
    if x.dtype == torch.bool:
        return F.pad(x.to(torch.uint8), flat, value=float(attrs.value)).to(torch.bool)
    value = ctx.literal(attrs.value, ctx.out.dtype).item()  # the pad value as the tensor's dtype holds it
    return F.pad(x, flat, value=value)


def _ref_gather(attrs: AxisAttrs, xs, ctx):
    x, idx = xs
    return torch.gather(x, attrs.axis, _bounds(idx, x.shape[attrs.axis], "gather"))


def _ref_take(attrs: AxisAttrs, xs, ctx):
    x, idx = xs
    flat = _bounds(idx, x.shape[attrs.axis], "take").reshape(-1)
    out = torch.index_select(x, attrs.axis, flat)
    return out.reshape(tuple(x.shape[:attrs.axis]) + tuple(idx.shape) + tuple(x.shape[attrs.axis + 1:]))


# --- gradients ---------------------------------------------------------------------------------------

def spread(b: GraphBuilder, v: Node, axis: int, step: int) -> Node:
    """Each element of `v` along `axis` followed by `step - 1` zeros: [.., m, ..] -> [.., m*step, ..]
    (a reshape to [.., m, 1, ..], a pad to [.., m, step, ..] and a reshape back)."""
    if step == 1:
        return v
    shape = list(v.shape)
    v = b.reshape(v, shape[:axis + 1] + [1] + shape[axis + 1:])
    pads = [(0, 0)] * len(v.shape)
    pads[axis + 1] = (0, step - 1)
    shape[axis] = shape[axis] * step
    return b.reshape(b.pad(v, pads), shape)


def pad_or_crop(b: GraphBuilder, v: Node, axis: int, before: int, after: int) -> Node:
    """`v` with zeros added along `axis` (`before` and `after` elements), or elements removed where an
    amount is negative."""
    pads = [(0, 0)] * len(v.shape)
    pads[axis] = (max(before, 0), max(after, 0))
    v = b.pad(v, pads)
    if before >= 0 and after >= 0:  # nothing to cut (and the axis may be symbolic)
        return v
    return b.slice(v, axis, max(-before, 0), v.shape[axis] - max(-after, 0))


def _grad_permute(b, node, ins, out, g):
    inverse = [0] * len(node.attrs.perm)
    for i, p in enumerate(node.attrs.perm):
        inverse[p] = i
    return [b.permute(g, inverse)]


def _grad_slice(b, node, ins, out, g):
    # Put each value back where it was read (spread apart by the step), zeros everywhere else.
    (x,) = ins
    a = node.attrs
    for axis, start, step in zip(a.axes, a.starts, a.steps):
        m = g.shape[axis]
        g = pad_or_crop(b, spread(b, g, axis, step), axis, start, x.shape[axis] - start - m * step)
    return [g]


def _grad_pad(b, node, ins, out, g):
    for axis, (lo, hi) in enumerate(node.attrs.pads):
        g = pad_or_crop(b, g, axis, -lo, -hi)
    return [g]


def _grad_concat(b, node, ins, out, g):
    axis = node.attrs.axis
    sizes = [x.shape[axis] for x in ins]
    if is_static(sizes):
        counts, view = sizes, g
    else:  # symbolic pieces are multiples c * S of one product S (as concat's rule allows): view the
        # axis as [sum of c, S] and cut the static part
        unit = next(Sym(d.factors) for d in sizes if isinstance(d, Sym))
        counts = [d.coeff if isinstance(d, Sym) else 0 for d in sizes]
        view = b.reshape(g, g.shape[:axis] + (sum(counts), unit) + g.shape[axis + 1:])
    grads, start = [], 0
    for x, n in zip(ins, counts):
        if n == 0:  # an empty piece: nothing to cut (a slice cannot be empty)
            grads.append(b.const(0.0, g.dtype, x.shape))
        else:
            grads.append(b.reshape(b.slice(view, axis, start, start + n), x.shape))
        start += n
    return grads


def _from_end(b: GraphBuilder, index: Node, dtype: DType, size: Dim) -> Node:
    """An int64 `index` with its negative values counted from the end of an axis of `size` (take)."""
    if dtype == DType.U8:
        return index
    if not isinstance(size, int):  # a symbolic size, counted at run time
        size = b.sum(b.const(1, DType.I64, (size,)))
    return b.where(b.lt(index, 0), b.add(index, size), index)


def _grad_gather(b, node, ins, out, g):
    # gx[.., k, ..] = sum over j of g[.., j, ..] * (index[.., j, ..] == k): a one-hot along a new axis.
    x, idx = ins
    axis = node.attrs.axis
    if idx.shape[axis] == 0:
        return [b.const(0.0, g.dtype, x.shape), None]
    rank = len(x.shape)
    ramp_shape = (1,) * axis + (x.shape[axis],) + (1,) * (rank - axis - 1)
    if idx.shape[axis] == 1 and all(idx.shape[d] == x.shape[d] for d in range(rank) if d != axis):
        # one index per row (cross-entropy's label): the one-hot has x's own shape, no new axis
        hits = b.cast(b.eq(b.cast(idx, DType.I64), b.iota(ramp_shape, axis)), g.dtype)
        return [b.mul(hits, g), None]
    widened = idx.shape[:axis + 1] + (1,) + idx.shape[axis + 1:]                 # [.., J, 1, ..]
    ramp = b.iota((1,) * (axis + 1) + (x.shape[axis],) + (1,) * (rank - axis - 1), axis + 1)
    hits = b.cast(b.eq(b.reshape(b.cast(idx, DType.I64), widened), ramp), g.dtype)  # [.., J, K, ..]
    return [b.sum(b.mul(hits, b.reshape(g, widened)), axis), None]


def _grad_take(b, node, ins, out, g):
    # gx = one-hot(index)^T @ g: [K, P] @ [lead, P, rest], P the index's elements, K the axis' size.
    x, idx = ins
    axis = node.attrs.axis
    p, lead, rest = numel(idx.shape), numel(x.shape[:axis]), numel(x.shape[axis + 1:])
    flat = _from_end(b, b.reshape(b.cast(idx, DType.I64), (p, 1)), idx.dtype, x.shape[axis])
    hits = b.cast(b.eq(flat, b.iota((1, x.shape[axis]), 1)), g.dtype)              # [P, K]
    g = b.reshape(g, (p, rest) if lead == 1 else (lead, p, rest))
    return [b.reshape(b.matmul(b.transpose(hits), g), x.shape), None]


register(K.RESHAPE, ReshapeAttrs, 1, _infer_reshape,
         lambda attrs, xs, ctx: xs[0].reshape(concrete(attrs.shape, ctx.env)))
register_grad(K.RESHAPE, lambda b, node, ins, out, g: [b.reshape(g, ins[0].shape)])
register(K.PERMUTE, PermuteAttrs, 1, _infer_permute, lambda attrs, xs, ctx: xs[0].permute(attrs.perm))
register_grad(K.PERMUTE, _grad_permute)
register(K.EXPAND, ExpandAttrs, 1, _infer_expand,
         lambda attrs, xs, ctx: xs[0].expand(concrete(attrs.shape, ctx.env)))
register_grad(K.EXPAND, lambda b, node, ins, out, g: [sum_to_shape(b, g, ins[0].shape)])
register(K.SLICE, SliceAttrs, 1, _infer_slice, _ref_slice)
register_grad(K.SLICE, _grad_slice)
register(K.PAD, PadAttrs, 1, _infer_pad, _ref_pad)
register_grad(K.PAD, _grad_pad)
register(K.CONCAT, AxisAttrs, None, _infer_concat, lambda attrs, xs, ctx: torch.cat(xs, attrs.axis))
register_grad(K.CONCAT, _grad_concat)
register(K.GATHER, AxisAttrs, 2, _infer_gather, _ref_gather)
register_grad(K.GATHER, _grad_gather)
register(K.TAKE, AxisAttrs, 2, _infer_take, _ref_take)
register_grad(K.TAKE, _grad_take)

