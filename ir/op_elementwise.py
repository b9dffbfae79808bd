"""Elementwise ops: unary, binary (NumPy broadcasting), where, cast. Shape rules and reference evaluation.

Binary ops take operands of one dtype (the builder inserts the casts that `promote` asks for), so
every conversion is a visible `cast` node in the graph.
"""
from __future__ import annotations

import torch

from .dtypes import DType
from .errors import IRDTypeError
from .ops import COMPARE, FLOAT_OPERANDS, LOGICAL, CastAttrs, NoAttrs, OpKind, register
from .shapes import TensorType, broadcast_shapes

K = OpKind

_UNARY_REF = {
    K.NEG: torch.neg, K.EXP: torch.exp, K.LOG: torch.log, K.SQRT: torch.sqrt, K.RSQRT: torch.rsqrt,
    K.TANH: torch.tanh, K.SIGMOID: torch.sigmoid, K.RELU: torch.relu, K.ERF: torch.erf, K.ABS: torch.abs,
    K.SIN: torch.sin, K.COS: torch.cos, K.RECIP: torch.reciprocal, K.FLOOR: torch.floor,
    K.CEIL: torch.ceil, K.SIGN: torch.sign, K.NOT: torch.logical_not,
}
_BINARY_REF = {
    K.ADD: torch.add, K.SUB: torch.sub, K.MUL: torch.mul, K.DIV: torch.div, K.POW: torch.pow,
    K.MAXIMUM: torch.maximum, K.MINIMUM: torch.minimum, K.EQ: torch.eq, K.NE: torch.ne, K.LT: torch.lt,
    K.LE: torch.le, K.GT: torch.gt, K.GE: torch.ge, K.AND: torch.logical_and, K.OR: torch.logical_or,
}


def _check_operand(kind: OpKind, dtype: DType) -> None:
    if kind == K.NOT or kind in LOGICAL:
        if dtype != DType.BOOL:
            raise IRDTypeError(f"'{kind}' takes bool operands, got {dtype}")
    elif kind in FLOAT_OPERANDS:
        if not dtype.is_float:
            raise IRDTypeError(f"'{kind}' takes floating-point operands, got {dtype}; cast it first")
    elif kind not in COMPARE and dtype == DType.BOOL:
        raise IRDTypeError(f"'{kind}' takes numeric operands, got bool; cast it first")


def _infer_unary(kind: OpKind):
    def infer(attrs, ts: list[TensorType]) -> TensorType:
        _check_operand(kind, ts[0].dtype)
        return ts[0]
    return infer


def _infer_binary(kind: OpKind):
    def infer(attrs, ts: list[TensorType]) -> TensorType:
        a, b = ts
        if a.dtype != b.dtype:
            raise IRDTypeError(f"operands of '{kind}' have different dtypes {a.dtype} and {b.dtype}; "
                               f"cast one of them")
        _check_operand(kind, a.dtype)
        out_dtype = DType.BOOL if kind in COMPARE or kind in LOGICAL else a.dtype
        return TensorType(out_dtype, broadcast_shapes(a.shape, b.shape))
    return infer


def _ref_unary(kind: OpKind):
    fn = _UNARY_REF[kind]
    return lambda attrs, xs, ctx: fn(xs[0])


def _ref_binary(kind: OpKind):
    fn = _BINARY_REF[kind]
    return lambda attrs, xs, ctx: fn(xs[0], xs[1])


for _k in _UNARY_REF:
    register(_k, NoAttrs, 1, _infer_unary(_k), _ref_unary(_k))
for _k in _BINARY_REF:
    register(_k, NoAttrs, 2, _infer_binary(_k), _ref_binary(_k))


def _infer_where(attrs, ts: list[TensorType]) -> TensorType:
    cond, a, b = ts
    if cond.dtype != DType.BOOL:
        raise IRDTypeError(f"the condition of 'where' must be bool, got {cond.dtype}")
    if a.dtype != b.dtype:
        raise IRDTypeError(f"the branches of 'where' have different dtypes {a.dtype} and {b.dtype}")
    return TensorType(a.dtype, broadcast_shapes(cond.shape, a.shape, b.shape))


def _infer_cast(attrs: CastAttrs, ts: list[TensorType]) -> TensorType:
    return ts[0].with_dtype(attrs.dtype)


def _ref_cast(attrs: CastAttrs, xs, ctx):
    return ctx.cast(xs[0], attrs.dtype)


register(K.WHERE, NoAttrs, 3, _infer_where, lambda attrs, xs, ctx: torch.where(xs[0], xs[1], xs[2]))
register(K.CAST, CastAttrs, 1, _infer_cast, _ref_cast)
