"""The values elaboration computes with, and the rule that names parameters.

A value is a tensor (an IR `Node`), a compile-time number (`int`, `float`, `bool`), a symbolic size
(`Sym`, e.g. `batch`), a string, a dtype, or a tuple of values (a shape, a list of tensors).

Parameter names (`Scope`): a parameter `w` declared in a function is named `<scope>.w`, where the
scope of a call is, from its statement:
  * `... as name` or `... as name[i]`   the given path (`name`, `name.0`); the same explicit name
                                        twice means the same parameters (weight sharing);
  * `h = f(...)`, `output h = f(...)`   the bound name (`h`); `h, c = f(...)` uses `h`;
  * `return f(...)`, anything else      the called function's name (`f`).
Implicit names that are already taken in the same scope get `_1`, `_2`, ... (Keras style), so a
stack written as `h = linear(h, 64)` three times has `h`, `h_1`, `h_2`. A scope claims its name only
when a parameter is made under it, so `h = relu(h)` takes no name. Parameters declared in the model
body itself have their bare names.
"""
from __future__ import annotations

from axon.ir import DType, Node, Sym
from axon.ir.shapes import dim_mul, format_shape

from .errors import AxonTypeError, AxonValueError

INT_LIMIT = 2**63  # compile-time integers live in i64, like every shape and index in the IR


class Scope:
    """One level of the parameter naming path, claimed lazily (see the module docstring)."""

    __slots__ = ("parent", "base", "explicit", "_path", "_taken")

    def __init__(self, parent: Scope | None, base: str = "", explicit: bool = False):
        self.parent = parent
        self.base = base
        self.explicit = explicit
        self._path: str | None = None if parent is not None else ""
        self._taken: set[str] = set()

    def path(self) -> str:
        if self._path is None:
            prefix = self.parent.path()
            name = self.parent._claim(self.base, self.explicit)
            self._path = f"{prefix}.{name}" if prefix else name
        return self._path

    def qualify(self, name: str) -> str:
        p = self.path()
        return f"{p}.{name}" if p else name

    def _claim(self, base: str, explicit: bool) -> str:
        name, k = base, 1
        while not explicit and name in self._taken:
            name, k = f"{base}_{k}", k + 1
        self._taken.add(name)
        return name


def describe(v) -> str:
    """A value as a message shows it: `f32[batch, 64]`, `int 3`, `list of 2 values`."""
    if isinstance(v, Node):
        return str(v.type)
    if isinstance(v, bool):
        return f"bool {str(v).lower()}"
    if isinstance(v, int):
        return f"int {v}"
    if isinstance(v, float):
        return f"float {v!r}"
    if isinstance(v, Sym):
        return f"size {v}"
    if isinstance(v, str):
        return f"string {v!r}"
    if isinstance(v, DType):
        return f"dtype {v}"
    if isinstance(v, tuple):
        return f"list of {len(v)} value{'s' if len(v) != 1 else ''}"
    if v is None:
        return "no value"
    return type(v).__name__


def kind_of(v) -> str:
    """The kind of a value in one word, for "expected an int, got a tensor"."""
    if isinstance(v, Node):
        return "a tensor"
    if isinstance(v, bool):
        return "a bool"
    if isinstance(v, (int, Sym)):
        return "an int"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, tuple):
        return "a list"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, DType):
        return "a dtype"
    return "no value"


def check_int(v: int) -> int:
    if not -INT_LIMIT <= v < INT_LIMIT:
        raise AxonValueError(f"integer {v} does not fit in 64 bits")
    return v


def is_dim(v) -> bool:
    return isinstance(v, Sym) or (isinstance(v, int) and not isinstance(v, bool))


def shape_of(v, what: str) -> tuple:
    """A shape given as a list of sizes (ints or symbolic sizes)."""
    if is_dim(v):
        v = (v,)
    if not isinstance(v, tuple) or not all(is_dim(d) for d in v):
        raise AxonTypeError(f"{what} must be a list of sizes, got {describe(v)}")
    for d in v:
        if isinstance(d, int) and d < 0 and d != -1:
            raise AxonValueError(f"{what} has a negative size {d}")
    return v


def dim_product(dims) -> int | Sym:
    out = 1
    for d in dims:
        out = dim_mul(out, d)
    return out


def dim_floordiv(a, b):
    """`a // b` for sizes: exact on symbols (`4*batch // 2` is `2*batch`), Python's rule on ints."""
    if isinstance(a, Sym) and isinstance(b, int) and b > 0 and a.coeff % b == 0:
        return Sym(a.factors, a.coeff // b) if a.coeff // b else 0
    if isinstance(a, Sym) and isinstance(b, Sym):
        rest = list(a.factors)
        for f in b.factors:
            if f not in rest:
                break
            rest.remove(f)
        else:
            if a.coeff % b.coeff == 0:
                c = a.coeff // b.coeff
                return Sym(tuple(rest), c) if rest else c
    raise AxonTypeError(f"cannot divide the size {a} by {b} exactly")


def format_dims(dims) -> str:
    return format_shape(tuple(dims))
