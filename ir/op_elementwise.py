"""Elementwise ops: unary, binary (NumPy broadcasting), where, cast. Shape rules, reference evaluation
and gradient rules.

Binary ops take operands of one dtype (the builder inserts the casts that `promote` asks for), so
every conversion is a visible `cast` node in the graph. A broadcast operand's gradient is summed back
to its shape by `sum_to_shape` (also used by expand and matmul's batch dims).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .dtypes import DType
from .errors import IRDTypeError
from .ops import (COMPARE, FLOAT_OPERANDS, LOGICAL, CastAttrs, NoAttrs, OpKind, no_grad, register,
                  register_grad)
from .shapes import Shape, TensorType, broadcast_shapes

if TYPE_CHECKING:
    from .graph import GraphBuilder, Node

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


def _check_operand(kind: OpKind, *ts: TensorType) -> None:
    """The operands' dtype (one for all: binary ops take equal dtypes) suits the op; the error names
    every operand's type."""
    dtype, got = ts[0].dtype, " and ".join(map(str, ts))
    if kind == K.NOT or kind in LOGICAL:
        if dtype != DType.BOOL:
            raise IRDTypeError(f"'{kind}' takes bool operands, got {got}")
    elif kind in FLOAT_OPERANDS:
        if not dtype.is_float:
            raise IRDTypeError(f"'{kind}' takes floating-point operands, got {got}; cast first")
    elif kind not in COMPARE and dtype == DType.BOOL:
        raise IRDTypeError(f"'{kind}' takes numeric operands, got {got}; cast first")


def _infer_unary(kind: OpKind):
    def infer(attrs, ts: list[TensorType]) -> TensorType:
        _check_operand(kind, ts[0])
        return ts[0]
    return infer


def _infer_binary(kind: OpKind):
    def infer(attrs, ts: list[TensorType]) -> TensorType:
        a, b = ts
        if a.dtype != b.dtype:
            raise IRDTypeError(f"operands of '{kind}' have different dtypes {a.dtype} and {b.dtype}; "
                               f"cast one of them")
        _check_operand(kind, a, b)
        out_dtype = DType.BOOL if kind in COMPARE or kind in LOGICAL else a.dtype
        return TensorType(out_dtype, broadcast_shapes(a.shape, b.shape))
    return infer


def _ref_unary(kind: OpKind):
    fn = _UNARY_REF[kind]
    return lambda attrs, xs, ctx: fn(xs[0])


def _ref_binary(kind: OpKind):
    fn = _BINARY_REF[kind]
    return lambda attrs, xs, ctx: fn(xs[0], xs[1])


# --- gradients (conventions as in torch) --------------------------------------------------------------

def sum_to_shape(b: GraphBuilder, g: Node, shape: Shape) -> Node:
    """The gradient of an operand of shape `shape` that broadcasting stretched to `g`'s shape: `g` summed
    over the leading axes and the size-1 axes that were stretched, then reshaped to `shape`."""
    lead = len(g.shape) - len(shape)
    axes = [i for i, d in enumerate(g.shape) if i < lead or (shape[i - lead] == 1 and d != 1)]
    if any(g.shape[a] == 0 for a in axes):  # stretched to nothing: no element was read
        return b.const(0.0, g.dtype, shape)
    if axes:
        g = b.sum(g, axes, keepdim=True)
    return b.reshape(g, shape)


# (builder, x, y = f(x), g) -> the gradient of x; None: zero almost everywhere (piecewise constant).
# Rules reuse the result `y` where it is cheaper than recomputing (exp, sqrt, tanh, sigmoid, recip).
_UNARY_GRAD = {
    K.NEG: lambda b, x, y, g: b.neg(g),
    K.EXP: lambda b, x, y, g: b.mul(g, y),
    K.LOG: lambda b, x, y, g: b.div(g, x),
    K.SQRT: lambda b, x, y, g: b.div(g, b.mul(y, 2.0)),
    K.RSQRT: lambda b, x, y, g: b.mul(g, b.mul(b.mul(b.mul(y, y), y), -0.5)),     # -x^(-3/2) / 2
    K.TANH: lambda b, x, y, g: b.mul(g, b.sub(1.0, b.mul(y, y))),
    K.SIGMOID: lambda b, x, y, g: b.mul(g, b.mul(y, b.sub(1.0, y))),
    K.RELU: lambda b, x, y, g: b.where(b.le(y, 0.0), 0.0, g),          # relu'(0) = 0; NaN passes g
    K.ERF: lambda b, x, y, g: b.mul(g, b.mul(b.exp(b.neg(b.mul(x, x))), 2.0 / math.sqrt(math.pi))),
    K.ABS: lambda b, x, y, g: b.mul(g, b.sign(x)),                                # abs'(0) = 0
    K.SIN: lambda b, x, y, g: b.mul(g, b.cos(x)),
    K.COS: lambda b, x, y, g: b.neg(b.mul(g, b.sin(x))),
    K.RECIP: lambda b, x, y, g: b.neg(b.mul(g, b.mul(y, y))),
    K.FLOOR: None, K.CEIL: None, K.SIGN: None, K.NOT: None,
}


def _pow_grads(b: GraphBuilder, x: Node, y: Node, out: Node, g: Node):
    # d/dx = y * x^(y-1); 0 where y == 0 (0 * 0^-1 would be nan at x == 0), as torch.
    gx = b.where(b.eq(y, 0.0), 0.0, b.mul(g, b.mul(y, b.pow(x, b.sub(y, 1.0)))))
    # d/dy = x^y * log(x): real only for x > 0. For x < 0 it is nan (as torch); at x == 0 with y >= 0
    # x^y is constant (0, or 1 at y == 0) on the side that exists, so the gradient is 0 there.
    gy = b.where(b.logical_and(b.eq(x, 0.0), b.ge(y, 0.0)), 0.0, b.mul(g, b.mul(out, b.log(x))))
    return gx, gy


def _extremum_grads(kind: OpKind):
    def grads(b: GraphBuilder, x: Node, y: Node, out: Node, g: Node):
        # torch.maximum's convention: a tie splits g half and half, the loser gets 0, anything else g,
        # so where either operand is NaN (no order) both get g.
        half = b.mul(g, 0.5)
        x_loses, y_loses = (b.lt(x, y), b.lt(y, x)) if kind == K.MAXIMUM else (b.gt(x, y), b.gt(y, x))
        tie = b.eq(x, y)
        return (b.where(tie, half, b.where(x_loses, 0.0, g)),
                b.where(tie, half, b.where(y_loses, 0.0, g)))
    return grads


# (builder, x, y, out, g) -> (gradient of x, gradient of y), before summing back to their shapes.
_BINARY_GRAD = {
    K.ADD: lambda b, x, y, out, g: (g, g),
    K.SUB: lambda b, x, y, out, g: (g, b.neg(g)),
    K.MUL: lambda b, x, y, out, g: (b.mul(g, y), b.mul(g, x)),
    K.DIV: lambda b, x, y, out, g: (b.div(g, y), b.neg(b.div(b.mul(g, out), y))),  # -g * x / y^2
    K.POW: _pow_grads,
    K.MAXIMUM: _extremum_grads(K.MAXIMUM),
    K.MINIMUM: _extremum_grads(K.MINIMUM),
    **{k: None for k in COMPARE | LOGICAL},  # bool results carry no gradient
}


def _grad_unary(kind: OpKind):
    fn = _UNARY_GRAD[kind]
    if fn is None:
        return no_grad
    return lambda b, node, ins, out, g: [fn(b, ins[0], out, g)]


def _grad_binary(kind: OpKind):
    fn = _BINARY_GRAD[kind]
    if fn is None:
        return no_grad

    def rule(b, node, ins, out, g):
        x, y = ins
        gx, gy = fn(b, x, y, out, g)
        return [sum_to_shape(b, gx, x.shape), sum_to_shape(b, gy, y.shape)]
    return rule


def _grad_where(b, node, ins, out, g):
    cond, x, y = ins  # g goes to the branch taken, zeros to the other; the condition gets none
    return [None, sum_to_shape(b, b.where(cond, g, 0.0), x.shape),
            sum_to_shape(b, b.where(cond, 0.0, g), y.shape)]


def _grad_cast(b, node, ins, out, g):
    (x,) = ins  # back to the operand's precision; integer and bool operands get none
    return [b.cast(g, x.dtype) if x.dtype.is_float else None]


for _k in _UNARY_REF:
    register(_k, NoAttrs, 1, _infer_unary(_k), _ref_unary(_k))
    register_grad(_k, _grad_unary(_k))
for _k in _BINARY_REF:
    register(_k, NoAttrs, 2, _infer_binary(_k), _ref_binary(_k))
    register_grad(_k, _grad_binary(_k))


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
register_grad(K.WHERE, _grad_where)
register(K.CAST, CastAttrs, 1, _infer_cast, _ref_cast)
register_grad(K.CAST, _grad_cast)
