"""Reductions over a set of axes (sum, max, min, mean) and over one axis (argmax, argmin).

Reducing over no axes, or over an axis of size 0, is an error: there is no value to return.
"""
from __future__ import annotations

import torch

from .dtypes import DType
from .errors import EvalError, IRDTypeError, IRShapeError
from .ops import FLOAT_OPERANDS, OpKind, ReduceAttrs, register
from .shapes import TensorType

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
        for a in attrs.axes:
            if x.shape[a] == 0:
                raise IRShapeError(f"'{kind}' over axis {a} of size 0 in {x}: the result is undefined")
        if kind in (K.ARGMAX, K.ARGMIN) and len(attrs.axes) != 1:
            raise IRShapeError(f"'{kind}' takes exactly one axis, got {list(attrs.axes)}")
        if x.dtype == DType.BOOL:
            raise IRDTypeError(f"'{kind}' of a bool tensor; cast it to a number first")
        if kind in FLOAT_OPERANDS and not x.dtype.is_float:
            raise IRDTypeError(f"'{kind}' of {x.dtype}; cast it to a floating-point type first")
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
        if any(x.shape[a] == 0 for a in dims):
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


for _k in (K.SUM, K.MAX, K.MIN, K.MEAN, K.ARGMAX, K.ARGMIN):
    register(_k, ReduceAttrs, 1, _infer_reduce(_k), _ref_reduce(_k))
