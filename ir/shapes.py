"""Shapes with symbolic dimensions, broadcasting, and the tensor type (dtype + shape).

A dimension is an `int` or a `Sym`: a product of named sizes times a positive integer, such as
`batch` or `batch*seq` or `4*batch`. Products are all reshape needs (flattening `[batch, seq, d]`
into `[batch*seq, d]` and back), and equality of products is decidable, so shape checking stays exact.

>>> str(TensorType(DType.F32, (Sym.of("batch"), 64)))
'f32[batch, 64]'
>>> broadcast_shapes((Sym.of("b"), 1, 5), (3, 1))
(Sym(factors=('b',), coeff=1), 3, 5)
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
import re
from dataclasses import dataclass
from typing import Union

from .dtypes import DType
from .errors import EvalError, IRShapeError, IRTypeError

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")  # names of symbols, inputs, parameters and outputs


@dataclass(frozen=True)
class Sym:
    """A symbolic dimension: `coeff * factors[0] * factors[1] * ...` (factors sorted)."""

    factors: tuple[str, ...]
    coeff: int = 1

    @staticmethod
    def of(name: str) -> Sym:
        return Sym((name,), 1)

    def __post_init__(self):
        if not self.factors or not all(isinstance(f, str) and NAME.fullmatch(f) for f in self.factors):
            raise IRTypeError(f"symbolic dimension names must be identifiers, got {self.factors!r}")
        if not isinstance(self.coeff, int) or isinstance(self.coeff, bool) or self.coeff < 1:
            raise IRTypeError(f"a symbolic dimension's coefficient must be a positive int, "
                              f"got {self.coeff!r}")
        object.__setattr__(self, "factors", tuple(sorted(self.factors)))  # one normal form per product

    def __str__(self) -> str:
        parts = ([str(self.coeff)] if self.coeff != 1 else []) + list(self.factors)
        return "*".join(parts)


Dim = Union[int, Sym]


def is_dim(d) -> bool:
    """A valid dimension: a non-negative int or a `Sym`."""
    return isinstance(d, Sym) or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
Shape = tuple  # tuple[Dim, ...]


def dim_mul(a: Dim, b: Dim) -> Dim:
    """Product of two dimensions, kept in normal form (an int whenever no symbol is involved)."""
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if isinstance(a, int) or isinstance(b, int):
        n, s = (a, b) if isinstance(a, int) else (b, a)
        if n < 0:
            raise IRShapeError(f"negative size {n} times the symbolic dimension {s}")
        return 0 if n == 0 else Sym(s.factors, s.coeff * n)
    return Sym(tuple(sorted(a.factors + b.factors)), a.coeff * b.coeff)


def numel(shape: Iterable[Dim]) -> Dim:
    out: Dim = 1
    for d in shape:
        out = dim_mul(out, d)
    return out


def is_static(shape: Shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def symbols(shape: Shape) -> set[str]:
    return {f for d in shape if isinstance(d, Sym) for f in d.factors}


def dim_value(d: Dim, env: Mapping[str, int]) -> int:
    """The concrete size of `d` once every symbol has a value."""
    if isinstance(d, int):
        return d
    out = d.coeff
    for f in d.factors:
        if f not in env:
            raise EvalError(f"symbolic dimension '{f}' has no value (bind it through an input's shape)")
        out *= env[f]
    return out


def concrete(shape: Shape, env: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(dim_value(d, env) for d in shape)


def format_dim(d: Dim) -> str:
    return str(d)


def format_shape(shape: Shape) -> str:
    return "[" + ", ".join(format_dim(d) for d in shape) + "]"


def broadcast_shapes(*shapes: Shape) -> Shape:
    """NumPy broadcasting, right-aligned; a dim of 1 stretches, symbols must match exactly."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        cur: Dim = 1
        for d in dims:
            if d == 1 or d == cur:
                continue
            if cur == 1:
                cur = d
                continue
            listed = " and ".join(format_shape(s) for s in shapes)
            raise IRShapeError(f"shapes {listed} do not broadcast: dimension {format_dim(cur)} "
                               f"against {format_dim(d)}")
        out.append(cur)
    return tuple(out)


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:  # a scalar has no axes at all
        raise IRShapeError(f"axis {axis} is out of range for a tensor of rank {rank}")
    return axis % rank


def normalize_axes(axes: Iterable[int], rank: int) -> tuple[int, ...]:
    out = tuple(sorted(normalize_axis(a, rank) for a in axes))
    if len(set(out)) != len(out):
        raise IRShapeError(f"repeated axis in {tuple(axes)}")
    return out


@dataclass(frozen=True)
class TensorType:
    """The type of a value: element type and shape. A scalar has shape ()."""

    dtype: DType
    shape: Shape

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_shape(self, shape: Shape) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: DType) -> TensorType:
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}{format_shape(self.shape)}"
