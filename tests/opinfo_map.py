"""Torch ops written with Axon's builder: one entry per OpInfo of torch's `op_db` that maps onto Axon's
primitive ops, taking the sample's arguments in torch's own signature (tensors already made inputs of
the graph, everything else as the sample has it) and returning the node (or a tuple of nodes) that
computes the same value.

A translation restates torch's conventions in Axon's terms (a 1-D matmul operand is a matrix with a
unit axis, an empty `dim` reduces every axis, a negative pad crops, integer sums accumulate in int64);
it never hides a difference of values. Samples a translation cannot express are named in the skip
table of `test_opinfo.py`, never dropped here.
"""
from __future__ import annotations

import math

import torch

from axon.ir import DType, Node, OpKind

K = OpKind


def _dims(d) -> tuple[int, ...] | None:
    """torch's `dim` argument as a tuple, or None for every axis (None, and an empty list, mean all)."""
    if d is None or (isinstance(d, (tuple, list)) and len(d) == 0):
        return None
    return tuple(d) if isinstance(d, (tuple, list)) else (d,)


def _unsqueezed(b, x, axis: int):
    axis = axis % (len(x.shape) + 1)
    return b.reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])


# --- elementwise --------------------------------------------------------------------------------------

def _unary(kind):
    return lambda b, x: b.unary(kind, x)


def _binary(kind):
    return lambda b, x, y: b.binary(kind, x, y)


def _reversed(kind):  # x.__rsub__(y) is y - x, with y a Python number
    return lambda b, x, y: b.binary(kind, y, x)


def _cast(dtype: DType):
    return lambda b, x, memory_format=None: b.cast(x, dtype)


def _to(b, x, *args, memory_format=None, **kwargs):
    """`x.to(dtype)`, `x.to(device, dtype, ...)`, `x.to(other)`: only the dtype matters here."""
    dtypes = [a for a in (*args, kwargs.get("dtype")) if isinstance(a, torch.dtype)]
    others = [a for a in args if isinstance(a, Node)]  # x.to(other): other's dtype
    dtype = DType.from_torch(dtypes[0]) if dtypes else (others[0].dtype if others else x.dtype)
    return b.cast(x, dtype)


# --- reductions ---------------------------------------------------------------------------------------

def _accumulated(b, x, dtype):
    """torch's reduction dtype: `dtype=` if given, else integers and bools accumulate in int64."""
    if dtype is not None:
        return b.cast(x, DType.from_torch(dtype))
    return x if x.dtype.is_float else b.cast(x, DType.I64)


def _sum(b, x, dim=None, keepdim=False, *, dtype=None):
    return b.sum(_accumulated(b, x, dtype), _dims(dim), keepdim)


def _mean(b, x, dim=None, keepdim=False, *, dtype=None):
    x = b.cast(x, DType.from_torch(dtype)) if dtype is not None else x
    return b.mean(x, _dims(dim), keepdim)


def _extremum(kind):
    def build(b, x, dim=None, keepdim=False):
        return b.reduce(kind, x, _dims(dim), keepdim)
    return build


def _arg(kind):
    def build(b, x, dim=None, keepdim=False):
        if dim is None:  # the index into the flattened tensor; keepdim keeps every axis as 1
            out = b.reduce(kind, b.reshape(x, (-1,)), 0)
            return b.reshape(out, (1,) * len(x.shape)) if keepdim else out
        return b.reduce(kind, x, dim, keepdim)
    return build


def _with_dim(kind, arg_kind):  # torch.max(x, dim) -> (values, indices)
    return lambda b, x, dim, keepdim=False: (b.reduce(kind, x, dim, keepdim),
                                             b.reduce(arg_kind, x, dim, keepdim))


# --- linear algebra -----------------------------------------------------------------------------------

def _matmul(b, x, y):
    """torch.matmul's 1-D rules: a vector on the left is a row, on the right a column, dropped after."""
    xr, yr = len(x.shape), len(y.shape)
    x2 = _unsqueezed(b, x, 0) if xr == 1 else x
    y2 = _unsqueezed(b, y, -1) if yr == 1 else y
    out = b.matmul(x2, y2)
    drop = ([len(out.shape) - 2] if xr == 1 else []) + ([len(out.shape) - 1] if yr == 1 else [])
    return b.reshape(out, tuple(d for i, d in enumerate(out.shape) if i not in drop))


def _conv2d(b, x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    unbatched = len(x.shape) == 3
    if unbatched:
        x = _unsqueezed(b, x, 0)
    if padding == "valid":
        padding = 0
    elif padding == "same":  # as torch: the odd element of an uneven total goes after
        d = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
        pads = [(0, 0), (0, 0)]
        for i, k in enumerate(w.shape[2:]):
            total = d[i] * (k - 1)
            pads.append((total // 2, total - total // 2))
        x, padding = b.pad(x, pads), 0
    out = b.conv2d(x, w, stride, padding, dilation, groups)
    if bias is not None:
        out = b.add(out, b.reshape(bias, (1, bias.shape[0], 1, 1)))
    return b.reshape(out, out.shape[1:]) if unbatched else out


# --- movement -----------------------------------------------------------------------------------------

def _shape_arg(args):
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args


def _expand(b, x, *sizes):
    sizes = _shape_arg(sizes)
    lead = len(sizes) - len(x.shape)
    return b.expand(x, tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes)))


def _squeeze(b, x, dim=None):
    dims = range(len(x.shape)) if dim is None else [d % max(len(x.shape), 1) for d in _dims(dim)]
    drop = {d for d in dims if len(x.shape) and x.shape[d] == 1}
    return b.reshape(x, tuple(s for i, s in enumerate(x.shape) if i not in drop))


def _flatten(b, x, start_dim=0, end_dim=-1):
    if not x.shape:
        return b.reshape(x, (1,))
    lo, hi = start_dim % len(x.shape), end_dim % len(x.shape)
    return b.reshape(x, x.shape[:lo] + (math.prod(x.shape[lo:hi + 1]),) + x.shape[hi + 1:])


def _transpose(b, x, d0, d1):
    return x if not x.shape else b.transpose(x, d0, d1)


def _slice(b, x, dim=0, start=None, end=None, step=1):
    return b.slice(x, dim, start, end, step)


def _narrow(b, x, dim, start, length):
    start = start % x.shape[dim] if start < 0 else start
    return b.slice(x, dim, start, start + length)


def _constant_pad_nd(b, x, pad, value=0):
    return _pad(b, x, pad, "constant", value)


def _pad(b, x, pad, mode="constant", value=None):
    """F.pad's flat list (last axis first); a negative amount crops, as torch does."""
    pairs = [(0, 0)] * len(x.shape)
    for i in range(len(pad) // 2):
        pairs[len(x.shape) - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    x = b.pad(x, [(max(lo, 0), max(hi, 0)) for lo, hi in pairs], 0.0 if value is None else value)
    for axis, (lo, hi) in enumerate(pairs):
        if lo < 0 or hi < 0:
            x = b.slice(x, axis, max(-lo, 0), x.shape[axis] - max(-hi, 0))
    return x


def _getitem(b, x, index):
    """Basic indexing: integers, slices, None and Ellipsis (a one-axis list is a take)."""
    index = index if isinstance(index, tuple) else (index,)
    if Ellipsis in index:
        at = index.index(Ellipsis)
        fill = len(x.shape) - sum(1 for i in index if i is not None and i is not Ellipsis)
        index = index[:at] + (slice(None),) * fill + index[at + 1:]
    axis = 0
    for item in index:
        if item is None:
            x, axis = _unsqueezed(b, x, axis), axis + 1
        elif isinstance(item, int):
            x = b.slice(x, axis, item % x.shape[axis], item % x.shape[axis] + 1)
            x = b.reshape(x, x.shape[:axis] + x.shape[axis + 1:])
        elif isinstance(item, slice):
            x, axis = b.slice(x, axis, item.start, item.stop, item.step or 1), axis + 1
        else:  # a list of indices on this one axis
            x = b.take(x, b.tensor(list(item), DType.I64), axis)
            axis += 1
    return x


# --- indexing -----------------------------------------------------------------------------------------

def _take(b, x, index):
    return b.take(b.reshape(x, (-1,)), index, 0)


def _take_along_dim(b, x, index, dim=None):
    """torch.take_along_dim: the axes but `dim` broadcast, and a negative index counts from the end
    (torch.gather, which Axon's gather follows, takes no negative index)."""
    if dim is None:
        x, index, dim = b.reshape(x, (-1,)), b.reshape(index, (-1,)), 0
    dim = dim % len(x.shape)
    size = x.shape[dim]
    index = b.where(b.lt(index, 0), b.add(index, size), index)
    ones = lambda v: tuple(1 if i == dim else s for i, s in enumerate(v.shape))  # noqa: E731
    shape = torch.broadcast_shapes(ones(x), ones(index))
    like = lambda v: tuple(v.shape[i] if i == dim else s for i, s in enumerate(shape))  # noqa: E731
    return b.gather(b.expand(x, like(x)), dim, b.expand(index, like(index)))


def _embedding(b, weight, index, padding_idx=None, max_norm=None, norm_type=2.0,
               scale_grad_by_freq=False, sparse=False):
    """The lookup; the options that change only the gradient are named in the NO_GRAD rules, max_norm
    (which rewrites the weight) in the skips."""
    assert max_norm is None, "max_norm samples are skipped by the table"
    return b.take(weight, index, 0)


MAP = {
    **{name: _unary(kind) for name, kind in [
        ("neg", K.NEG), ("exp", K.EXP), ("log", K.LOG), ("sqrt", K.SQRT), ("rsqrt", K.RSQRT),
        ("tanh", K.TANH), ("sigmoid", K.SIGMOID), ("nn.functional.relu", K.RELU), ("erf", K.ERF),
        ("abs", K.ABS), ("sin", K.SIN), ("cos", K.COS), ("reciprocal", K.RECIP), ("floor", K.FLOOR),
        ("ceil", K.CEIL), ("sign", K.SIGN), ("sgn", K.SIGN), ("logical_not", K.NOT)]},
    **{name: _binary(kind) for name, kind in [
        ("add", K.ADD), ("sub", K.SUB), ("mul", K.MUL), ("div.no_rounding_mode", K.DIV),
        ("true_divide", K.DIV), ("pow", K.POW), ("maximum", K.MAXIMUM), ("minimum", K.MINIMUM),
        ("max.binary", K.MAXIMUM), ("min.binary", K.MINIMUM), ("clamp_min", K.MAXIMUM),
        ("clamp_max", K.MINIMUM), ("eq", K.EQ), ("ne", K.NE), ("lt", K.LT), ("le", K.LE), ("gt", K.GT),
        ("ge", K.GE), ("logical_and", K.AND), ("logical_or", K.OR)]},
    **{name: _reversed(kind) for name, kind in [
        ("__radd__", K.ADD), ("__rsub__", K.SUB), ("rsub", K.SUB), ("__rmul__", K.MUL),
        ("__rdiv__", K.DIV), ("__rpow__", K.POW)]},
    "where": lambda b, x, cond, y: b.where(cond, x, y),
    **{name: _cast(d) for name, d in [
        ("double", DType.F64), ("float", DType.F32), ("half", DType.F16), ("bfloat16", DType.BF16),
        ("long", DType.I64), ("int", DType.I32), ("char", DType.I8), ("byte", DType.U8),
        ("bool", DType.BOOL)]},
    "to": _to,
    "sum": _sum, "mean": _mean, "amax": _extremum(K.MAX), "amin": _extremum(K.MIN),
    "max.reduction_no_dim": _extremum(K.MAX), "min.reduction_no_dim": _extremum(K.MIN),
    "max.reduction_with_dim": _with_dim(K.MAX, K.ARGMAX),
    "min.reduction_with_dim": _with_dim(K.MIN, K.ARGMIN),
    "argmax": _arg(K.ARGMAX), "argmin": _arg(K.ARGMIN),
    "matmul": _matmul, "mm": _matmul, "bmm": _matmul, "nn.functional.conv2d": _conv2d,
    "reshape": lambda b, x, *shape: b.reshape(x, _shape_arg(shape)),
    "view": lambda b, x, *shape: b.reshape(x, _shape_arg(shape)),
    "reshape_as": lambda b, x, other: b.reshape(x, other.shape),
    "view_as": lambda b, x, other: b.reshape(x, other.shape),
    "permute": lambda b, x, *dims: b.permute(x, _shape_arg(dims)) if x.shape else x,
    "expand": _expand, "broadcast_to": _expand,
    "expand_as": lambda b, x, other: b.expand(x, other.shape),
    "transpose": _transpose, "squeeze": _squeeze, "unsqueeze": _unsqueezed, "flatten": _flatten,
    "slice": _slice, "narrow": _narrow, "__getitem__": _getitem,
    "nn.functional.pad.constant": _pad, "constant_pad_nd": _constant_pad_nd,
    "cat": lambda b, xs, dim=0: b.concat(xs, dim),
    "gather": lambda b, x, dim, index: b.gather(x, dim, index),
    "take": _take, "index_select": lambda b, x, dim, index: b.take(x, index, dim),
    "take_along_dim": _take_along_dim, "nn.functional.embedding": _embedding,
}
