"""The primitive functions an Axon program can call, each a thin layer over one `GraphBuilder` method.

Everything else (linear, softmax, attention, LSTM, losses) is written in Axon on top of these, in
`prelude.axon`. A builtin declares its parameters as a signature string; calls are bound against it
by the same code that binds calls of Axon functions, so arity errors read the same for both.

Math functions (`exp`, `sqrt`, `tanh`, ...) also work on compile-time numbers, so a layer can compute
`1.0 / sqrt(hd)` as a constant.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from axon.ir import DType, GraphBuilder, Node
from axon.ir.ops import OpKind

from .errors import AxonTypeError, AxonValueError
from .values import MAX_LIST, check_int, describe, dim_product, is_dim, kind_of, shape_of

K = OpKind


@dataclass(frozen=True)
class Builtin:
    name: str
    params: tuple[str, ...]
    defaults: dict
    fn: Callable


BUILTINS: dict[str, Builtin] = {}


def builtin(signature: str, name: str | None = None):
    """Register `fn(ctx, *args)` under `name` with parameters like "x, axis=none, keep=false"."""
    params, defaults = [], {}
    for part in (p.strip() for p in signature.split(",") if p.strip()):
        pname, _, default = part.partition("=")
        params.append(pname)
        if default:
            defaults[pname] = _DEFAULTS[default] if default in _DEFAULTS else _literal(default)
    def register(fn):
        n = name or fn.__name__.rstrip("_")
        BUILTINS[n] = Builtin(n, tuple(params), defaults, fn)
        return fn
    return register


_DEFAULTS = {"none": None, "true": True, "false": False, "f32": DType.F32, "i64": DType.I64}


def _literal(text: str):
    return float(text) if "." in text else int(text)


# --- argument coercion ------------------------------------------------------------------------------
def tensor(b: GraphBuilder, v, what: str) -> Node:
    if isinstance(v, Node):
        return v
    if isinstance(v, (bool, int, float)):
        return b.lift(v)
    raise AxonTypeError(f"{what} must be a tensor, got {describe(v)}")


def as_int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise AxonTypeError(f"{what} must be an int, got {describe(v)}")
    return v


def as_axes(v, what: str = "axis"):
    if v is None:
        return None
    if isinstance(v, tuple):
        return tuple(as_int(a, what) for a in v)
    return as_int(v, what)


def as_dtype(v, what: str = "dtype") -> DType:
    if not isinstance(v, DType):
        raise AxonTypeError(f"{what} must be a dtype such as f32 or i64, got {describe(v)}")
    return v


def as_bool(v, what: str) -> bool:
    if not isinstance(v, bool):
        raise AxonTypeError(f"{what} must be true or false, got {describe(v)}")
    return v


def as_number(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise AxonTypeError(f"{what} must be a number, got {describe(v)}")
    return v


# --- elementwise ------------------------------------------------------------------------------------
def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


_UNARY = {
    "exp": (K.EXP, math.exp), "log": (K.LOG, math.log), "sqrt": (K.SQRT, math.sqrt),
    "rsqrt": (K.RSQRT, lambda x: 1.0 / math.sqrt(x)), "tanh": (K.TANH, math.tanh),
    "sigmoid": (K.SIGMOID, _sigmoid), "relu": (K.RELU, lambda x: max(x, 0)), "erf": (K.ERF, math.erf),
    "abs": (K.ABS, abs), "sin": (K.SIN, math.sin), "cos": (K.COS, math.cos),
    "recip": (K.RECIP, lambda x: 1.0 / x), "floor": (K.FLOOR, math.floor), "ceil": (K.CEIL, math.ceil),
    "sign": (K.SIGN, lambda x: (x > 0) - (x < 0)),
}


def _make_unary(name: str, op: OpKind, scalar):
    def fn(ctx, x):
        if isinstance(x, Node):
            return ctx.b.unary(op, x)
        x = as_number(x, f"the argument of '{name}'")
        try:
            return scalar(x)
        except (ValueError, OverflowError, ZeroDivisionError) as e:
            raise AxonValueError(f"'{name}({x!r})' is undefined ({e})") from None
    return fn


for _name, (_op, _scalar) in _UNARY.items():
    builtin("x", _name)(_make_unary(_name, _op, _scalar))


@builtin("a, b")
def maximum(ctx, a, b):
    if not isinstance(a, Node) and not isinstance(b, Node):
        return max(as_number(a, "a"), as_number(b, "b"))
    return ctx.b.maximum(_operand(a), _operand(b))


@builtin("a, b")
def minimum(ctx, a, b):
    if not isinstance(a, Node) and not isinstance(b, Node):
        return min(as_number(a, "a"), as_number(b, "b"))
    return ctx.b.minimum(_operand(a), _operand(b))


def _operand(v):
    if isinstance(v, (Node, bool, int, float)):
        return v
    raise AxonTypeError(f"expected a tensor or a number, got {describe(v)}")


@builtin("cond, a, b")
def where(ctx, cond, a, b):
    c = tensor(ctx.b, cond, "the condition of 'where'")
    if not isinstance(a, Node) and not isinstance(b, Node):
        a = ctx.b.lift(_operand(a))
    return ctx.b.where(c, _operand(a), _operand(b))


@builtin("x, dtype")
def cast(ctx, x, dtype):
    return ctx.b.cast(tensor(ctx.b, x, "the argument of 'cast'"), as_dtype(dtype))


# --- reductions -------------------------------------------------------------------------------------
def _make_reduce(op: OpKind):
    def fn(ctx, x, axis, keep):
        x = tensor(ctx.b, x, f"the argument of '{op}'")
        return ctx.b.reduce(op, x, as_axes(axis), as_bool(keep, "keep"))
    return fn


for _op in (K.SUM, K.MAX, K.MIN, K.MEAN):
    builtin("x, axis=none, keep=false", _op.value)(_make_reduce(_op))


@builtin("x, axis=-1, keep=false")
def argmax(ctx, x, axis, keep):
    return ctx.b.argmax(tensor(ctx.b, x, "x"), as_int(axis, "axis"), as_bool(keep, "keep"))


@builtin("x, axis=-1, keep=false")
def argmin(ctx, x, axis, keep):
    return ctx.b.argmin(tensor(ctx.b, x, "x"), as_int(axis, "axis"), as_bool(keep, "keep"))


# --- linear algebra ---------------------------------------------------------------------------------
@builtin("a, b")
def matmul(ctx, a, b):
    return ctx.b.matmul(tensor(ctx.b, a, "a"), tensor(ctx.b, b, "b"))


@builtin("x, w, stride=1, padding=0, dilation=1, groups=1")
def convolve(ctx, x, w, stride, padding, dilation, groups):
    pair = {}
    for what, v in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        pair[what] = tuple(as_int(i, what) for i in v) if isinstance(v, tuple) else as_int(v, what)
    return ctx.b.conv2d(tensor(ctx.b, x, "x"), tensor(ctx.b, w, "w"), groups=as_int(groups, "groups"),
                        **pair)


# --- movement ---------------------------------------------------------------------------------------
@builtin("x, shape")
def reshape(ctx, x, shape):
    return ctx.b.reshape(tensor(ctx.b, x, "x"), shape_of(shape, "the shape of 'reshape'"))


@builtin("x, order")
def permute(ctx, x, order):
    if not isinstance(order, tuple):
        raise AxonTypeError(f"the order of 'permute' must be a list of axes, got {describe(order)}")
    return ctx.b.permute(tensor(ctx.b, x, "x"), [as_int(a, "axis") for a in order])


@builtin("x, a=-2, b=-1")
def transpose(ctx, x, a, b):
    return ctx.b.transpose(tensor(ctx.b, x, "x"), as_int(a, "a"), as_int(b, "b"))


@builtin("x, shape")
def expand(ctx, x, shape):
    return ctx.b.expand(tensor(ctx.b, x, "x"), shape_of(shape, "the shape of 'expand'"))


@builtin("x, pads, value=0.0")
def pad(ctx, x, pads, value):
    x = tensor(ctx.b, x, "x")
    ok = isinstance(pads, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in pads)
    if not ok:
        raise AxonTypeError(f"the pads of 'pad' must be a list of [before, after] pairs, got "
                            f"{describe(pads)}")
    pairs = [(as_int(lo, "pad"), as_int(hi, "pad")) for lo, hi in pads]
    return ctx.b.pad(x, pairs, as_number(value, "value"))


@builtin("xs, axis=0")
def concat(ctx, xs, axis):
    if not isinstance(xs, tuple) or not xs:
        raise AxonTypeError(f"'concat' takes a non-empty list of tensors, got {describe(xs)}")
    return ctx.b.concat([tensor(ctx.b, x, "each item") for x in xs], as_int(axis, "axis"))


@builtin("xs, axis=0")
def stack(ctx, xs, axis):
    if not isinstance(xs, tuple) or not xs:
        raise AxonTypeError(f"'stack' takes a non-empty list of tensors, got {describe(xs)}")
    return ctx.b.concat([unsqueeze(ctx, x, axis) for x in xs], axis)


@builtin("x, axis")
def unsqueeze(ctx, x, axis):
    x = tensor(ctx.b, x, "x")
    axis = as_int(axis, "axis")
    rank = len(x.shape) + 1
    if not -rank <= axis < rank:
        raise AxonValueError(f"axis {axis} is out of range for a result of rank {rank}")
    axis %= rank
    return ctx.b.reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])


@builtin("x, axis")
def squeeze(ctx, x, axis):
    x = tensor(ctx.b, x, "x")
    axis = as_int(axis, "axis")
    if not -len(x.shape) <= axis < len(x.shape) or x.shape[axis] != 1:
        raise AxonValueError(f"cannot squeeze axis {axis} of {x.type}: it is not of size 1")
    axis %= len(x.shape)
    return ctx.b.reshape(x, x.shape[:axis] + x.shape[axis + 1:])


@builtin("x, axis, index")
def gather(ctx, x, axis, index):
    return ctx.b.gather(tensor(ctx.b, x, "x"), as_int(axis, "axis"), tensor(ctx.b, index, "index"))


@builtin("x, index, axis=0")
def take(ctx, x, index, axis):
    return ctx.b.take(tensor(ctx.b, x, "x"), tensor(ctx.b, index, "index"), as_int(axis, "axis"))


# --- sources ----------------------------------------------------------------------------------------
@builtin("shape, axis=0, dtype=i64")
def iota(ctx, shape, axis, dtype):
    return ctx.b.iota(shape_of(shape, "the shape of 'iota'"), as_int(axis, "axis"), as_dtype(dtype))


@builtin("shape, dtype=f32")
def rand(ctx, shape, dtype):
    """Uniform [0, 1) numbers from the model's `seed` input; every call draws a fresh stream."""
    return ctx.b.rand(ctx.seed(), shape_of(shape, "the shape of 'rand'"), as_dtype(dtype),
                      stream=ctx.next_stream())


@builtin("shape, value, dtype=f32")
def full(ctx, shape, value, dtype):
    return ctx.b.const(_operand(value), as_dtype(dtype), shape_of(shape, "the shape of 'full'"))


@builtin("shape, dtype=f32")
def zeros(ctx, shape, dtype):
    return full(ctx, shape, 0, dtype)


@builtin("shape, dtype=f32")
def ones(ctx, shape, dtype):
    return full(ctx, shape, 1, dtype)


# --- state a training step carries ------------------------------------------------------------------
UPDATE_PREFIX = "update."  # graph output update.<param>: the parameter's value after a training step


@builtin("buffer, value")
def running_update(ctx, buffer, value):
    """`buffer` (a parameter no optimizer touches, such as batchnorm's running mean) takes `value` after
    each training step: the graph gets an output `update.<name>` that the training step writes back in
    place of an optimizer update. Returns `value`."""
    if not isinstance(buffer, Node) or buffer.op != K.PARAM:
        raise AxonTypeError(f"'running_update' updates a parameter, got {describe(buffer)}")
    value = tensor(ctx.b, value, "the value of 'running_update'")
    if value.type != buffer.type:
        raise AxonTypeError(f"'running_update' of '{buffer.name}' ({buffer.type}) needs a value of that "
                            f"type, got {value.type}")
    name = UPDATE_PREFIX + buffer.name
    if ctx.b.has_output(name):
        raise AxonValueError(f"the parameter '{buffer.name}' is updated twice in one step (a layer "
                             f"with running statistics applied twice under one name?)")
    ctx.b.output(name, value)
    return value


# --- compile-time helpers ---------------------------------------------------------------------------
@builtin("x")
def shape(ctx, x):
    return tuple(tensor(ctx.b, x, "the argument of 'shape'").shape)


@builtin("x")
def rank(ctx, x):
    return len(tensor(ctx.b, x, "the argument of 'rank'").shape)


@builtin("xs")
def prod(ctx, xs):
    out = dim_product(shape_of(xs, "the argument of 'prod'"))
    return check_int(out) if isinstance(out, int) else out


@builtin("xs")
def len_(ctx, xs):
    if not isinstance(xs, tuple):
        raise AxonTypeError(f"'len' takes a list, got {kind_of(xs)}")
    return len(xs)


@builtin("x")
def float_(ctx, x):
    if is_dim(x) and not isinstance(x, int):
        raise AxonTypeError(f"the symbolic size {x} has no value at compile time")
    return float(as_number(x, "the argument of 'float'"))


@builtin("x")
def int_(ctx, x):
    x = as_number(x, "the argument of 'int'")
    if isinstance(x, float) and not math.isfinite(x):
        raise AxonValueError(f"int({x}) has no value")
    return check_int(int(x))


@builtin("start, stop=none")
def range_(ctx, start, stop):
    """`range(n)` is [0, 1, ..., n-1]; `range(a, b)` is [a, ..., b-1] (for lists of axes)."""
    lo, hi = (0, start) if stop is None else (start, stop)
    lo, hi = as_int(lo, "start"), as_int(hi, "stop")
    if hi - lo > MAX_LIST:
        raise AxonValueError(f"range({lo}, {hi}) is longer than {MAX_LIST:,}, too long for a "
                             f"compile-time list")
    return tuple(range(lo, hi))


@builtin("v")
def pair(ctx, v):
    """An int as [v, v], or a list of two ints as it is: how 2-D layers take kernel sizes and strides."""
    if isinstance(v, tuple):
        if len(v) != 2:
            raise AxonTypeError(f"expected an int or a pair of ints, got {describe(v)}")
        return tuple(as_int(i, "each size") for i in v)
    return (as_int(v, "a size"), as_int(v, "a size"))
