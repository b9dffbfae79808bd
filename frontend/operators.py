"""What the operators of the language do to values: on tensors they build IR nodes (with NumPy
broadcasting, `@` a matmul, `x[i, 1:3, ...]` slices), on compile-time numbers and sizes they compute
at once (so `4 * d` is an int, `2 * batch` a symbolic size), on lists `+` concatenates.

Errors are raised without a location; the elaborator places them at the expression.
"""
from __future__ import annotations

import operator

from axon.ir import DType, GraphBuilder, Node, Sym
from axon.ir.ops import OpKind

from . import ast as A
from .errors import AxonTypeError, AxonValueError, ShapeError
from .values import MAX_LIST, check_int, describe, dim_floordiv, is_dim, size_mul

K = OpKind
_TENSOR_OPS = {
    "+": K.ADD, "-": K.SUB, "*": K.MUL, "/": K.DIV, "**": K.POW, "<": K.LT, "<=": K.LE, ">": K.GT,
    ">=": K.GE, "==": K.EQ, "!=": K.NE, "and": K.AND, "or": K.OR,
}
_NUMBER_OPS = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "//": operator.floordiv, "%": operator.mod, "**": operator.pow, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}
_SCALAR = (bool, int, float)


def apply_binary(b: GraphBuilder, op: str, x, y):
    if isinstance(x, Node) or isinstance(y, Node):
        return _tensor_binary(b, op, x, y)
    if op in ("and", "or"):
        if not isinstance(x, bool) or not isinstance(y, bool):
            raise AxonTypeError(f"'{op}' takes bools, got {describe(x)} and {describe(y)}")
        return (x and y) if op == "and" else (x or y)
    if op in ("==", "!="):
        same = type(x) is type(y) or (is_dim(x) and is_dim(y)) or (
            isinstance(x, (int, float)) and isinstance(y, (int, float)))
        return (same and x == y) == (op == "==")
    if isinstance(x, tuple) and isinstance(y, tuple) and op == "+":
        if len(x) + len(y) > MAX_LIST:
            raise AxonValueError(f"joining lists of {len(x)} and {len(y)} values gives more than "
                                 f"{MAX_LIST:,}")
        return x + y
    if isinstance(x, tuple) and op == "*" and isinstance(y, int) and not isinstance(y, bool):
        if len(x) * y > MAX_LIST:
            raise AxonValueError(f"a list of {len(x)} repeated {y} times is longer than {MAX_LIST:,}")
        return x * max(y, 0)
    if isinstance(x, Sym) or isinstance(y, Sym):
        return _size_binary(op, x, y)
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and op in _NUMBER_OPS:
        if isinstance(x, bool) or isinstance(y, bool):
            if op not in ("==", "!="):
                raise AxonTypeError(f"'{op}' takes numbers, got {describe(x)} and {describe(y)}")
        return _number_binary(op, x, y)
    raise AxonTypeError(f"'{op}' does not apply to {describe(x)} and {describe(y)}")


def _tensor_binary(b: GraphBuilder, op: str, x, y) -> Node:
    for v in (x, y):
        if not isinstance(v, (Node,) + _SCALAR):
            raise AxonTypeError(f"'{op}' of a tensor and {describe(v)}")
    if op == "@":
        if not isinstance(x, Node) or not isinstance(y, Node):
            raise AxonTypeError(f"'@' multiplies two tensors, got {describe(x)} and {describe(y)}")
        return b.matmul(x, y)
    if op == "//":
        return b.floor(b.div(x, y))
    if op not in _TENSOR_OPS:
        raise AxonTypeError(f"'{op}' does not apply to tensors")
    return b.binary(_TENSOR_OPS[op], x, y)


def _size_binary(op: str, x, y):
    if not (is_dim(x) and is_dim(y)):
        raise AxonTypeError(f"'{op}' of the size {x if isinstance(x, Sym) else y} and {describe(y)}")
    if op == "*":
        return size_mul(x, y)
    if op == "//":
        return dim_floordiv(x, y)
    if op in ("+", "-") and isinstance(x, Sym) and isinstance(y, Sym) and x.factors == y.factors:
        c = x.coeff + y.coeff if op == "+" else x.coeff - y.coeff
        if c > 0:
            return Sym(x.factors, c)
        if c == 0:
            return 0
    raise AxonTypeError(f"cannot compute {x} {op} {y}: the sizes are symbolic",
                        hint="only *, // and == work on symbolic sizes such as 'batch'")


def _number_binary(op: str, x, y):
    if op in ("/", "//", "%") and y == 0:
        raise AxonValueError(f"division by zero in {x} {op} {y}")
    if op == "**" and isinstance(x, int) and isinstance(y, int):
        if y < 0:
            x = float(x)
        elif abs(x) > 1 and y > 64:
            raise AxonValueError(f"{x} ** {y} does not fit in 64 bits")
    try:
        out = _NUMBER_OPS[op](x, y)
    except (OverflowError, ZeroDivisionError, ValueError) as e:
        raise AxonValueError(f"{x!r} {op} {y!r}: {e}") from None
    if isinstance(out, complex):
        raise AxonValueError(f"{x!r} {op} {y!r} is not a real number")
    return check_int(out) if isinstance(out, int) and not isinstance(out, bool) else out


def apply_unary(b: GraphBuilder, op: str, x):
    if op == "not":
        if isinstance(x, Node):
            return b.logical_not(x)
        if not isinstance(x, bool):
            raise AxonTypeError(f"'not' takes a bool, got {describe(x)}")
        return not x
    if isinstance(x, Node):
        return b.neg(x) if op == "-" else x
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise AxonTypeError(f"unary '{op}' takes a number or a tensor, got {describe(x)}")
    return check_int(-x) if op == "-" and isinstance(x, int) else (-x if op == "-" else x)


# --- indexing ---------------------------------------------------------------------------------------
_FULL = slice(None)


def apply_index(b: GraphBuilder, target, items, values):
    """`target[items]`, where `values` are the evaluated sub-expressions of `items`, in order."""
    vals = iter(values)
    resolved = []
    for it in items:
        if isinstance(it, A.Slice):
            parts = [next(vals) if p is not None else None for p in (it.start, it.stop, it.step)]
            resolved.append(slice(*parts))
        elif isinstance(it, A.Ellipsis_):
            resolved.append(Ellipsis)
        else:
            resolved.append(next(vals))
    if isinstance(target, tuple):
        return _index_list(target, resolved)
    if not isinstance(target, Node):
        raise AxonTypeError(f"cannot index {describe(target)}")
    return _index_tensor(b, target, resolved)


def _index_list(xs: tuple, items: list):
    if len(items) != 1 or items[0] is Ellipsis:
        raise AxonTypeError("a list takes one index or slice")
    it = items[0]
    if isinstance(it, slice):
        parts = [_int_or_none(p, "a slice bound") for p in (it.start, it.stop, it.step)]
        if parts[2] == 0:
            raise AxonValueError("slice step cannot be zero")
        return xs[slice(*parts)]
    i = _int_or_none(it, "a list index")
    if i is None or not -len(xs) <= i < len(xs):
        raise ShapeError(f"index {i} is out of range for a list of {len(xs)}")
    return xs[i]


def _int_or_none(v, what: str):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise AxonTypeError(f"{what} must be an int, got {describe(v)}")
    return v


def _index_tensor(b: GraphBuilder, x: Node, items: list) -> Node:
    rank = len(x.shape)
    if items.count(Ellipsis) > 1:
        raise AxonTypeError("an index may contain '...' only once")
    explicit = len(items) - items.count(Ellipsis)
    if explicit > rank:
        raise ShapeError(f"too many indices ({explicit}) for a tensor of rank {rank} ({x.type})")
    if Ellipsis in items:
        k = items.index(Ellipsis)
        items = items[:k] + [_FULL] * (rank - explicit) + items[k + 1:]
    else:
        items = items + [_FULL] * (rank - explicit)
    drop, axis = [], 0
    for it in items:
        if isinstance(it, slice):
            start, stop, step = (_int_or_none(p, "a slice bound") for p in (it.start, it.stop, it.step))
            if step is not None and step < 1:
                raise AxonValueError(f"slice step must be >= 1, got {step}")
            _check_slice(x, axis, start, stop)
            x = b.slice(x, axis, start, stop, step or 1)
            axis += 1
        elif isinstance(it, Node):
            if it.dtype not in (DType.I64, DType.I32, DType.I8, DType.U8):
                raise AxonTypeError(f"a tensor index must hold integers, got {it.type}")
            x = b.take(x, it, axis)
            axis += len(it.shape)
        else:
            i = _int_or_none(it, "an index")
            size = x.shape[axis]
            if isinstance(size, int):
                if not -size <= i < size:
                    raise ShapeError(f"index {i} is out of range for axis {axis} of size {size} "
                                     f"({x.type})")
                i %= size
            x = b.slice(x, axis, i, i + 1)
            drop.append(axis)
            axis += 1
    if drop:
        x = b.reshape(x, tuple(d for a, d in enumerate(x.shape) if a not in drop))
    return x


def _check_slice(x: Node, axis: int, start, stop) -> None:
    size = x.shape[axis]
    if isinstance(size, int):
        lo, hi, _ = slice(start, stop).indices(size)
        if hi <= lo:
            raise ShapeError(f"slice {_fmt(start)}:{_fmt(stop)} of axis {axis} (size {size}) is empty")


def _fmt(v) -> str:
    return "" if v is None else str(v)
