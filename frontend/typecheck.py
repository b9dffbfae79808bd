"""Declarations against values: `x: f32[..., n]`, `k: int`, `p: float`, `input x: f32[batch, 64]`,
`param w: f32[n, k] = kaiming(n)`.

A tensor type is a pattern. Its named sizes bind on first sight (`n` becomes the size of x's last
axis) and must agree after (`h: f32[b, n]` then checks h against the same `n`); `_` matches any
size; `...` any number of leading axes; any other expression (`4 * hidden`) is evaluated and compared.
The dtype `tensor` (or `any`) accepts every dtype.

Errors are raised without a location: the caller knows whether the argument or the declaration is at
fault.
"""
from __future__ import annotations

import math

from axon.ir import DType, Init, Node, Sym
from axon.ir.errors import did_you_mean
from axon.ir.init import INIT_KINDS

from . import ast as A
from .errors import AxonNameError, AxonTypeError, AxonValueError, ShapeError
from .values import INT_LIMIT, describe, is_dim

SCALAR_TYPES = ("int", "float", "bool", "tensor")
# Initializers and their arguments (names and defaults from the IR's initializer), in the order they
# are given positionally. `normal` takes its std first, as the language's `normal(0.02)` reads (the
# IR lists mean first; its text form names every argument, so the orders never meet). `kaiming()` and
# `xavier()` without fans take them from the shape.
INITIALIZERS = {**INIT_KINDS, "normal": {"std": INIT_KINDS["normal"]["std"],
                                         "mean": INIT_KINDS["normal"]["mean"]}}
_OPTIONAL = frozenset({"fan_in", "fan_out"})
ANY_DTYPE = ("tensor", "any")
_SCALAR_DTYPES = {"int": "i64", "float": "f32", "bool": "bool"}  # a scalar type's tensor dtype


def match(el, value, t: A.TypeExpr, where: str):
    """Check `value` against `t` in the elaborator's current frame (binding sizes there); returns the
    value, converted where the type says so (an int for a float, a number for a scalar tensor)."""
    if t.dims is None:
        return _match_scalar(el, value, t, where)
    if not isinstance(value, Node):
        raise AxonTypeError(f"{where} must be a tensor {type_text(t)}, got {describe(value)}")
    frame = el.frames[-1]
    if t.name not in ANY_DTYPE and value.dtype != dtype_of(t):
        raise AxonTypeError(f"{where}: expected {render(t, frame)}, got {value.type}")
    dims = t.dims
    rest = [i for i, d in enumerate(dims) if isinstance(d, A.DimRest)]
    if len(rest) > 1:
        raise AxonTypeError("a type may contain '...' only once")
    shape = value.shape
    if (not rest and len(shape) != len(dims)) or (rest and len(shape) < len(dims) - 1):
        raise ShapeError(f"{where}: expected {render(t, frame)}, got {value.type} (rank {len(shape)})")
    if rest:
        k, after = rest[0], len(dims) - rest[0] - 1
        pairs = list(zip(dims[:k], shape[:k])) + list(zip(dims[k + 1:], shape[len(shape) - after:]))
        _match_rest(dims[k], tuple(shape[k:len(shape) - after]), frame, where, t, value)
    else:
        pairs = list(zip(dims, shape))
    for d, actual in pairs:
        if isinstance(d, A.Name) and d.name == "_":
            continue
        if isinstance(d, A.Name) and d.name not in frame.vars:
            frame.vars[d.name] = actual
            continue
        want = el.eval(d)
        if not is_dim(want) or want != actual:
            raise ShapeError(f"{where}: expected {render(t, frame)}, got {value.type}")
    return value


def _match_rest(d: A.DimRest, sizes: tuple, frame, where: str, t: A.TypeExpr, value) -> None:
    if d.name is None:
        return
    if d.name not in frame.vars:
        frame.vars[d.name] = sizes
    elif frame.vars[d.name] != sizes:
        raise ShapeError(f"{where}: expected {render(t, frame)}, got {value.type}")


def _match_scalar(el, value, t: A.TypeExpr, where: str):
    name = t.name
    if name == "int" and is_dim(value):
        return value
    if name == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if name == "bool" and isinstance(value, bool):
        return value
    if name in ANY_DTYPE and isinstance(value, Node):
        return value
    if name not in SCALAR_TYPES:
        dtype = dtype_of(t)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return el.b.const(value, dtype)
        if isinstance(value, Node) and value.dtype == dtype and value.shape == ():
            return value
        raise AxonTypeError(f"{where} must be a {dtype} scalar, got {describe(value)}")
    article = "an" if name == "int" else "a"
    raise AxonTypeError(f"{where} must be {article} {name}, got {describe(value)}")


def input_dim(el, d, frame):
    """A size in an input's type: a new name is a symbolic size (and becomes a variable)."""
    if isinstance(d, A.DimRest):
        raise AxonTypeError("an input's shape cannot contain '...'")
    if isinstance(d, A.Name) and d.name not in frame.vars and not el.is_constant(d.name):
        frame.vars[d.name] = Sym.of(d.name)
        return frame.vars[d.name]
    v = el.eval(d)
    if not is_dim(v):
        raise AxonTypeError(f"an input's sizes must be integers or names, got {describe(v)}")
    if isinstance(v, int) and not 0 <= v < INT_LIMIT:
        raise AxonValueError(f"an input's size must be in [0, 2**63 - 1], got {v}")
    return v


def param_dim(el, d) -> int:
    """A size in a parameter's type: a known, non-negative int."""
    if isinstance(d, A.DimRest):
        raise AxonTypeError("a parameter's shape cannot contain '...'")
    v = el.eval(d)
    if isinstance(v, bool) or not isinstance(v, int):
        raise AxonTypeError(f"a parameter's sizes must be known integers, got {describe(v)}",
                            hint="a parameter cannot depend on a symbolic size such as 'batch'")
    if not 0 <= v < INT_LIMIT:
        raise AxonValueError(f"a parameter's size must be in [0, 2**63 - 1], got {v}")
    return v


def dtype_of(t: A.TypeExpr) -> DType:
    """The dtype a type names; a scalar type (`int`) or `tensor` names none."""
    try:
        return DType(t.name)
    except ValueError:
        known = [d.value for d in DType]
        if t.name in SCALAR_TYPES or t.name in ANY_DTYPE:
            like = _SCALAR_DTYPES.get(t.name)
            if like is None:
                hint = f"dtypes: {', '.join(known)}"
            else:
                hint = f"for a single {t.name} write {like}[]" if t.dims is None else f"write {like}[...]"
            raise AxonTypeError(f"'{t.name}' is not a dtype; this needs a tensor type such as f32[...]",
                                t.span, hint=hint) from None
        raise AxonTypeError(f"unknown dtype '{t.name}'", t.span,
                            hint=did_you_mean(t.name, known + list(SCALAR_TYPES))
                            or f"known: {', '.join(known)}") from None


def render(t: A.TypeExpr, frame) -> str:
    """The type as the message shows it, with the sizes bound so far: `f32[batch, 64]`."""
    parts = []
    for d in t.dims:
        if isinstance(d, A.DimRest) and isinstance(frame.vars.get(d.name), tuple):
            parts.extend(str(x) for x in frame.vars[d.name])
        elif isinstance(d, A.DimRest):
            parts.append(f"*{d.name}" if d.name else "...")
        elif isinstance(d, A.Name) and d.name in frame.vars and is_dim(frame.vars[d.name]):
            parts.append(str(frame.vars[d.name]))
        elif isinstance(d, A.Name):
            parts.append(d.name)
        else:
            parts.append(source_text(d.span) or "?")
    return f"{t.name}[{', '.join(parts)}]"


def type_text(t: A.TypeExpr) -> str:
    return source_text(t.span) or t.name


def source_text(span) -> str | None:
    if span.source_line and span.end_line == span.line and span.end_col:
        return span.source_line[span.col - 1:span.end_col - 1]
    return None


def initializer(el, call: A.Call) -> Init:
    """`kaiming(n)` to an `Init`, its arguments compile-time numbers, checked as far as the shape does
    not matter (the IR's initializer checks the rest when it draws)."""
    if call.func not in INITIALIZERS:
        raise el.locate(AxonNameError(f"unknown initializer '{call.func}'",
                                      hint=did_you_mean(call.func, INITIALIZERS)), call.func_span)
    spec = INITIALIZERS[call.func]
    defaults = {k: v for k, v in spec.items() if v is not None or k in _OPTIONAL}
    args = [el.eval(a) for a in call.args]
    kwargs = [(k.name, el.eval(k.value), k.span) for k in call.kwargs]
    bound = el.bind(call, call.func, tuple(spec), defaults, args, kwargs)
    given = {}
    for p in spec:
        v, span = bound[p]
        if v is None:  # a fan left to the shape
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise el.locate(AxonTypeError(f"initializer argument '{p}' must be a finite number, got "
                                          f"{describe(v)}"), span)
        given[p] = v
    if given.get("std", 0) < 0 or given.get("low", 0) > given.get("high", 0):
        shown = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise AxonValueError(f"{call.func}({shown}) is not a distribution")
    return Init(call.func, tuple(given.items()))
