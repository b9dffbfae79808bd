"""The typed AST of an Axon file: frozen dataclasses, each with the `Span` it was parsed from.

Nodes compare by identity (`eq=False`): ASTs can be deep (a 1,000-term sum), and a generated `__eq__`
or `__hash__` would recurse through them.

>>> from axon.frontend import parse
>>> m = parse("fn f(x) { return x + 1 }", "f.axon")
>>> ret = m.items[0].body[0]
>>> type(ret.value).__name__, ret.value.op
('Binary', '+')
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from axon.ir import Span

_node = dataclass(frozen=True, eq=False, slots=True)


# --- expressions ------------------------------------------------------------------------------------
@_node
class Name:
    span: Span
    name: str


@_node
class Num:
    span: Span
    value: int | float


@_node
class Bool:
    span: Span
    value: bool


@_node
class Str:
    span: Span
    value: str


@_node
class ListLit:
    span: Span
    items: tuple[Expr, ...]


@_node
class Unary:
    span: Span
    op: str  # '-', '+', 'not'
    operand: Expr


@_node
class Binary:
    span: Span
    op: str  # '+', '-', '*', '/', '//', '%', '@', '**', '<', '<=', '>', '>=', '==', '!=', 'and', 'or'
    left: Expr
    right: Expr


@_node
class Kwarg:
    span: Span
    name: str
    value: Expr


@_node
class Call:
    span: Span
    func: str
    func_span: Span
    args: tuple[Expr, ...]
    kwargs: tuple[Kwarg, ...]


@_node
class Slice:
    span: Span
    start: Expr | None
    stop: Expr | None
    step: Expr | None


@_node
class Ellipsis_:
    span: Span


@_node
class Index:
    span: Span
    target: Expr
    items: tuple[Expr | Slice | Ellipsis_, ...]


Expr = Union[Name, Num, Bool, Str, ListLit, Unary, Binary, Call, Index]


# --- types ------------------------------------------------------------------------------------------
@_node
class DimRest:
    """`...` or `*name` in a tensor type: any number of dimensions (`*name` binds them as a list, so
    `labels: i64[*lead]` can say "the leading sizes of logits: f32[*lead, classes]")."""

    span: Span
    name: str | None


@_node
class TypeExpr:
    """`f32[batch, n]` (dims is a tuple) or a scalar type such as `int` (dims is None)."""

    span: Span
    name: str
    dims: tuple[Expr | DimRest, ...] | None


# --- statements -------------------------------------------------------------------------------------
@_node
class ScopeName:
    """`as block[i]`: names the parameters made by the calls of one statement."""

    span: Span
    name: str
    indices: tuple[Expr, ...]


@_node
class InputDecl:
    span: Span
    name: str
    type: TypeExpr


@_node
class Output:
    span: Span
    name: str
    value: Expr | None
    scope: ScopeName | None


@_node
class ParamDecl:
    span: Span
    name: str
    type: TypeExpr
    init: Call


@_node
class Assign:
    span: Span
    targets: tuple[str, ...]
    value: Expr
    scope: ScopeName | None


@_node
class Return:
    span: Span
    value: Expr
    scope: ScopeName | None


@_node
class For:
    """`for i in a..b { }` (var is the name) or `repeat n { }` (var is None, start is 0)."""

    span: Span
    var: str | None
    start: Expr
    stop: Expr
    body: tuple[Stmt, ...]


@_node
class If:
    span: Span
    cond: Expr
    then: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...]


@_node
class Assert:
    """`assert cond, "message"`: a compile-time check, reported at the user's call when it fails."""

    span: Span
    cond: Expr
    message: str | None


Stmt = Union[InputDecl, Output, ParamDecl, Assign, Return, For, If, Assert]


# --- definitions ------------------------------------------------------------------------------------
@_node
class Param:
    """A function parameter or model hyper-parameter: `x: f32[..., n]`, `p: float = 0.1`, `k = 3`."""

    span: Span
    name: str
    type: TypeExpr | None
    default: Expr | None


@_node
class FnDef:
    span: Span
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]


@_node
class ModelDef:
    span: Span
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]


@_node
class TrainItem:
    """`key = value`, or a bare call such as `early_stop(patience = 5)` (key is the call's name)."""

    span: Span
    key: str
    value: Expr
    is_call: bool


@_node
class SettingsBlock:
    """`prune { amount = 0.9 ... }` inside a train block: settings of one feature, by name."""

    span: Span
    items: tuple[TrainItem, ...]


@_node
class TrainDef:
    span: Span
    model: str
    model_span: Span
    items: tuple[TrainItem, ...]


@_node
class QuantizeDef:
    """`quantize Model { mode = "int8-dynamic" ... }`: how `axon quantize` quantizes the model by default."""

    span: Span
    model: str
    model_span: Span
    items: tuple[TrainItem, ...]


@_node
class Import:
    span: Span
    path: str


Item = Union[Import, FnDef, ModelDef, TrainDef, QuantizeDef]


@_node
class Module:
    file: str
    items: tuple[Item, ...]
    source: str


def dump(node) -> str:
    """The tree as indented text, one node a line with its scalar fields and `@line:col` (what
    `axon show FILE --stage ast` prints). Iterative, so a 3,000-deep expression prints too."""
    from dataclasses import fields, is_dataclass

    lines: list[str] = []
    stack: list[tuple[int, str, object]] = [(0, "", node)]
    while stack:
        depth, label, n = stack.pop()
        pad = "  " * depth + (f"{label}: " if label else "")
        if not is_dataclass(n):
            lines.append(pad + repr(n))
            continue
        scalars, children = [], []
        for f in fields(n):
            v = getattr(n, f.name)
            if isinstance(v, Span) or f.name == "source":
                continue
            if is_dataclass(v) or (isinstance(v, tuple) and any(is_dataclass(x) for x in v)):
                children.append((f.name, v))
            elif v is not None and v != ():
                scalars.append(f"{f.name}={v!r}")
        where = f" @{n.span.line}:{n.span.col}" if hasattr(n, "span") else ""
        lines.append(pad + " ".join([type(n).__name__.rstrip("_"), *scalars]) + where)
        for name, v in reversed(children):
            items = v if isinstance(v, tuple) else (v,)
            for i, x in reversed(list(enumerate(items))):
                stack.append((depth + 1, f"{name}[{i}]" if isinstance(v, tuple) else name, x))
    return "\n".join(lines)
