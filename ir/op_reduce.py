"""Reductions over a set of axes (sum, max, min, mean) and over one axis (argmax, argmin): shape rules,
reference evaluation and gradient rules.

Reducing over no axes is an error, and so is a max, min, argmax or argmin over an axis of size 0: there
is no value to return (a sum over it is 0 and a mean NaN, as in torch).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .dtypes import DType
from .errors import EvalError, IRShapeError
from .ops import OpKind, ReduceAttrs, check_reduce_dtype, no_grad, register, register_grad
from .shapes import TensorType, is_static

if TYPE_CHECKING:
    from .graph import GraphBuilder, Node

K = OpKind


def _infer_reduce(kind: OpKind):
    def infer(attrs: ReduceAttrs, ts: list[TensorType]) -> TensorType:
        (x,) = ts
        if not attrs.axes:
            raise IRShapeError(f"'{kind}' over no axes; name at least one axis")
        if any(not 0 <= a < x.rank for a in attrs.axes):
            raise IRShapeError(f"'{kind}' axes {list(attrs.axes)} out of range for {x}")
        if list(attrs.axes) != sorted(set(attrs.axes)):
            raise IRShapeError(f"'{kind}' axes {list(attrs.axes)} must be sorted and distinct")
        for a in attrs.axes:  # a sum of nothing is 0 and a mean NaN (as torch); the others have none
            if x.shape[a] == 0 and kind not in (K.SUM, K.MEAN):
                raise IRShapeError(f"'{kind}' over axis {a} of size 0 in {x}: the result is undefined")
        if kind in (K.ARGMAX, K.ARGMIN) and len(attrs.axes) != 1:
            raise IRShapeError(f"'{kind}' takes exactly one axis, got {list(attrs.axes)}")
        check_reduce_dtype(kind, x)
        if attrs.keepdim:
            shape = tuple(1 if i in attrs.axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in attrs.axes)
        dtype = DType.I64 if kind in (K.ARGMAX, K.ARGMIN) else x.dtype
        return TensorType(dtype, shape)
    return infer


def _ref_reduce(kind: OpKind):
    def ref(attrs: ReduceAttrs, xs, ctx):
        (x,) = xs
        dims = list(attrs.axes)
        if any(x.shape[a] == 0 for a in dims) and kind not in (K.SUM, K.MEAN):
            raise EvalError(f"'{kind}' over an axis of size 0 (shape {tuple(x.shape)})")
        if kind == K.SUM:
            return torch.sum(x, dim=dims, keepdim=attrs.keepdim)
        if kind == K.MEAN:
            return torch.mean(x, dim=dims, keepdim=attrs.keepdim)
        if kind == K.MAX:
            return torch.amax(x, dim=dims, keepdim=attrs.keepdim)
        if kind == K.MIN:
            return torch.amin(x, dim=dims, keepdim=attrs.keepdim)
        fn = torch.argmax if kind == K.ARGMAX else torch.argmin
        return fn(x, dim=dims[0], keepdim=attrs.keepdim)
    return ref


def _kept(b: GraphBuilder, node: Node, v: Node) -> Node:
    """A reduction's result (or its gradient) with the reduced axes kept as size 1, to broadcast."""
    x = node.inputs[0]
    return b.reshape(v, tuple(1 if i in node.attrs.axes else d for i, d in enumerate(x.shape)))


def _grad_sum(b, node, ins, out, g):
    return [b.expand(_kept(b, node, g), ins[0].shape)]


def _grad_mean(b, node, ins, out, g):
    (x,) = ins
    g = _kept(b, node, g)
    dims = [x.shape[a] for a in node.attrs.axes]
    if not is_static(dims):  # a symbolic count, summed from ones at run time (exact in i64)
        g = b.div(g, b.cast(b.sum(b.const(1, DType.I64, dims)), g.dtype))
    elif math.prod(dims) <= torch.finfo(g.dtype.torch).max:
        g = b.div(g, float(math.prod(dims)))
    else:  # a count f16 cannot hold (> 65504) would divide by inf: multiply by its inverse instead
        g = b.mul(g, 1.0 / math.prod(dims))
    return [b.expand(g, x.shape)]


def _grad_extremum(b, node, ins, out, g):
    # Every element equal to the result shares the gradient equally with its ties (as torch.amax);
    # a NaN result came from the NaN elements, which share it (as torch.max; x != x only where the
    # result is NaN, since max and min propagate NaN).
    (x,) = ins
    hits = b.cast(b.logical_or(b.eq(x, _kept(b, node, out)), b.ne(x, x)), x.dtype)
    ties = b.sum(hits, node.attrs.axes, keepdim=True)
    return [b.mul(hits, b.div(_kept(b, node, g), ties))]


_GRAD = {K.SUM: _grad_sum, K.MEAN: _grad_mean, K.MAX: _grad_extremum, K.MIN: _grad_extremum,
         K.ARGMAX: no_grad, K.ARGMIN: no_grad}  # an index is piecewise constant
for _k in (K.SUM, K.MAX, K.MIN, K.MEAN, K.ARGMAX, K.ARGMIN):
    register(_k, ReduceAttrs, 1, _infer_reduce(_k), _ref_reduce(_k))
    register_grad(_k, _GRAD[_k])
