"""The values elaboration computes with, and the rule that names parameters.

A value is a tensor (an IR `Node`), a compile-time number (`int`, `float`, `bool`), a symbolic size
(`Sym`, e.g. `batch`), a string, a dtype, or a tuple of values (a shape, a list of tensors).

Parameter names (`Scope`): a parameter `w` declared in a function is named `<scope>.w`, where the
scope of a call is, from its statement:
  * `... as name` or `... as name[i]`   the given path (`name`, `name.0`); the same explicit name
                                        twice means the same parameters (weight sharing), while
                                        an explicit name meeting an implicit one is an error;
  * `h = f(...)`, `output h = f(...)`   the bound name (`h`); `h, c = f(...)` uses `h`;
  * `return f(...)`, anything else      the called function's name (`f`).
Implicit names that are already taken in the same scope get `_1`, `_2`, ... (Keras style), so a
stack written as `h = linear(h, 64)` three times has `h`, `h_1`, `h_2`. A scope claims its name only
when a parameter is made under it, so `h = relu(h)` takes no name. Parameters declared in the model
body itself have their bare names.
"""
from __future__ import annotations

from axon.ir import DType, Node, Span, Sym
from axon.ir.errors import Note
from axon.ir.shapes import dim_mul, format_shape

from .errors import AxonNameError, AxonTypeError, AxonValueError

INT_LIMIT = 2**63  # compile-time integers live in i64, like every shape and index in the IR
MAX_LIST = 1_000_000  # elements in one compile-time list (`+`, `*` and `range` make no longer one)
MAX_SIZE_FACTORS = 8  # symbols in one symbolic size product (`batch * seq * heads` is 3)


class Scope:
    """One level of the parameter naming path, claimed lazily (see the module docstring). `span` is
    where the name was chosen: the `as` clause, or the statement (or call) an implicit name comes from."""

    __slots__ = ("parent", "base", "explicit", "span", "_path", "_taken")

    def __init__(self, parent: Scope | None, base: str = "", explicit: bool = False,
                 span: Span | None = None):
        self.parent = parent
        self.base = base
        self.explicit = explicit
        self.span = span
        self._path: str | None = None if parent is not None else ""
        self._taken: dict[str, Scope] = {}  # name -> the scope that claimed it first

    def path(self) -> str:
        if self._path is None:
            prefix = self.parent.path()
            name = self.parent._claim(self)
            self._path = f"{prefix}.{name}" if prefix else name
        return self._path

    def qualify(self, name: str) -> str:
        p = self.path()
        return f"{p}.{name}" if p else name

    def _claim(self, child: Scope) -> str:
        """The name of `child` here: an explicit name taken before explicitly is shared; an implicit
        one gets `_1`, `_2`, ... past every taken name. An explicit name and an implicit one never
        meet silently (sharing would merge two layers; renaming would break the `as` promise)."""
        base = child.base
        first = self._taken.get(base)
        if first is not None and first.explicit != child.explicit:
            message = (f"'as {base}' would merge this layer with an earlier one named '{base}' "
                       f"implicitly" if child.explicit else
                       f"this layer's parameters would be named '{base}', which an earlier "
                       f"'as {base}' names explicitly")
            notes = [Note(f"'{base}' first named here", first.span)] if first.span else []
            raise AxonNameError(message, child.span, notes=notes,
                                hint="choose another name, or name both explicitly with 'as' to share "
                                     "parameters")
        name, k = base, 1
        while not child.explicit and name in self._taken:
            name, k = f"{base}_{k}", k + 1
        self._taken.setdefault(name, child)
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


def show(v) -> str:
    """A value as the language writes it, for assert messages: `3`, `0.5`, `[2, 2]`, `f32[b, 4]`."""
    if isinstance(v, Node):
        return str(v.type)
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, tuple):
        return "[" + ", ".join(show(x) for x in v) + "]"
    return str(v)


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
        if isinstance(d, int) and d >= INT_LIMIT:
            raise AxonValueError(f"{what} has a size {d} that does not fit in 64 bits")
    return v


def size_mul(a, b):
    """`a * b` for sizes, refused when the product outgrows i64 or `MAX_SIZE_FACTORS` symbols (a
    product grown in a loop, `repeat 10000 { s = s * batch }`)."""
    out = dim_mul(a, b)
    if isinstance(out, Sym):
        if len(out.factors) > MAX_SIZE_FACTORS:
            raise AxonValueError(f"the size {a} * {b} is a product of {len(out.factors)} symbolic "
                                 f"sizes; at most {MAX_SIZE_FACTORS} are allowed")
        if out.coeff >= INT_LIMIT:
            raise AxonValueError(f"the size {a} * {b} does not fit in 64 bits")
        return out
    return check_int(out)


def dim_product(dims) -> int | Sym:
    out = 1
    for d in dims:
        out = size_mul(out, d)
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
