"""The IR's text form: `print_graph` writes a graph, `parse_graph` reads one back.

    graph main {
      input %x: f32[batch, 64]
      param %fc1.w: f32[64, 128] = kaiming(fan_in=64)
      %0 = matmul(%x, %fc1.w) : f32[batch, 128]
      %1 = sum(%0, axes=[1], keepdim=false) : f32[batch]
      output %total = %1
    }

Inputs and parameters are declared where they sit in the node order; computed values are numbered in
order. An op's attributes are its attribute dataclass's fields, except `dtype` and `shape`, which the
`: TYPE` annotation already states. The grammar is `ir.lark`; parsing rebuilds every node through
`GraphBuilder.node`, so types are re-inferred and each annotation is checked against them. Every
malformed text raises `IRSyntaxError` pointing at the offending spot.

>>> g = parse_graph("graph g { input %x: f32[3]\\n %0 = neg(%x) : f32[3]\\n output %y = %0 }")
>>> print_graph(g) == str(g)
True
"""
from __future__ import annotations

import functools
import json
import numbers
import re
import types
import typing
from dataclasses import MISSING, dataclass, fields
from importlib import resources

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError
from lark.lexer import PatternStr

from .dtypes import DType
from .errors import AxonError, IRSyntaxError, Note, Span, did_you_mean
from .graph import Graph, GraphBuilder, Node
from .ops import OPS, Attrs, Init, InputAttrs, OpKind, ParamAttrs
from .shapes import Dim, Sym, TensorType, dim_mul

K = OpKind
RESTATED = ("dtype", "shape")  # attribute fields the `: TYPE` annotation states; never printed
DEFAULT_INIT = next(f.default for f in fields(ParamAttrs) if f.name == "init")
DECLARED = (K.INPUT, K.PARAM)
MAX_DIM = 2**63 - 1  # sizes are int64 at run time
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")  # the grammar's NAME


# ---------------------------------------------------------------------------------------------------
# Printing


def print_graph(graph: Graph) -> str:
    """The text form of `graph` (no trailing newline); `parse_graph` reads it back unchanged."""
    return "\n".join(print_lines(graph)[0])


def print_lines(graph: Graph) -> tuple[list[str], dict[Node, int]]:
    """The lines of the text form, and the line index of each node (for showing IR around a node).

    Tolerates broken graphs (the verifier prints them): an operand that is not in the node list
    prints as `%?`.
    """
    names: dict[Node, str] = {}
    line_of: dict[Node, int] = {}
    title = graph.name if _IDENTIFIER.fullmatch(graph.name) else json.dumps(graph.name)
    lines = [f"graph {title} {{"]
    computed = 0
    for node in graph.nodes:
        line_of.setdefault(node, len(lines))
        if node.op in DECLARED:
            names[node] = f"%{node.name}"
            lines.append(f"  {_declaration(node)}")
            continue
        args = [names.get(src, "%?") for src in node.inputs]
        args += [f"{k}={format_value(v)}" for k, v in _printed_attrs(node.attrs, node.dtype)]
        names[node] = f"%{computed}"
        computed += 1
        lines.append(f"  {names[node]} = {node.op}({', '.join(args)}) : {node.type}")
    for name, out in graph.outputs.items():
        lines.append(f"  output %{name} = {names.get(out, '%?')}")
    lines.append("}")
    return lines, line_of


def _declaration(node: Node) -> str:
    text = f"{node.op} %{node.name}: {node.type}"
    if node.op == K.PARAM and node.attrs.init != DEFAULT_INIT:
        text += f" = {format_value(node.attrs.init)}"
    return text


def _printed_attrs(attrs: Attrs, dtype: DType) -> list[tuple[str, object]]:
    hints = _hints(type(attrs))
    return [(k, _as_stored(v, hints[k], dtype)) for k, v in attrs.items() if k not in RESTATED]


def _as_stored(value, hint, dtype: DType):
    """Literals whose Python type follows the result dtype (const values, tensor data), normalized so
    that the text says `1.0` for a float constant even if it was built from the int 1."""
    if _is_scalar_union(hint):
        return _exact_scalar(value, dtype)
    if hint is tuple:
        return tuple(_exact_scalar(v, dtype) for v in value)
    return value


def _exact_scalar(value, dtype: DType):
    if not isinstance(value, numbers.Real):
        return value
    if dtype == DType.BOOL:
        return bool(value) if value in (0, 1) else value
    if dtype.is_int:
        return int(value) if isinstance(value, float) and value.is_integer() else value
    return float(value)


def format_value(value) -> str:
    """An attribute value as text: `1`, `1.0`, `inf`, `true`, `"s"`, `f32`, `[1, 2]`, `kaiming(fan_in=64)`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, DType):
        return value.value
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))  # always has '.' or 'e', or is inf / -inf / nan
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, Init):
        return f"{value.kind}(" + ", ".join(f"{k}={format_value(v)}" for k, v in value.args) + ")"
    raise TypeError(f"attribute value {value!r} has no text form")


# ---------------------------------------------------------------------------------------------------
# Parsing


def parse_graph(text: str, file: str = "<ir>") -> Graph:
    """Parse the text form of a graph; raises `IRSyntaxError` with the location of any mistake."""
    source = _Source(file, text)
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as e:
        raise source.lark_error(e) from e
    try:
        return _ToGraph(source).transform(tree)
    except VisitError as e:  # lark wraps what a rule method raises
        if isinstance(e.orig_exc, AxonError):
            raise e.orig_exc from e.orig_exc.__cause__
        raise


@functools.cache
def _parser() -> Lark:
    grammar = resources.files(__package__).joinpath("ir.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


@functools.cache
def _terminal_words() -> dict[str, str]:
    """How an expected terminal is named in an error message."""
    words = {"VAR": "a value such as %x", "NAME": "a name", "INT": "an integer", "FLOAT": "a number",
             "STRING": "a string", "$END": "the end of the text"}
    for t in _parser().terminals:
        if isinstance(t.pattern, PatternStr):
            words.setdefault(t.name, f"'{t.pattern.value}'")
    return words


def _expected(names) -> str:
    words = sorted({_terminal_words().get(n, n) for n in names if n not in ("WS", "COMMENT")})
    return f"expected {words[0]}" if len(words) == 1 else f"expected one of {_listing(words, 'or')}"


def _listing(words: list[str], last: str = "and") -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {last} {words[-1]}"


class _Source:
    """The text being parsed, for turning lark positions into `Span`s."""

    def __init__(self, file: str, text: str):
        self.file = file
        self.lines = text.split("\n")  # lark counts lines by '\n' only

    def span(self, line: int, col: int, end_line: int | None = None, end_col: int | None = None) -> Span:
        source_line = self.lines[line - 1] if 0 < line <= len(self.lines) else None
        return Span(self.file, line, col, end_line, end_col, source_line)

    def of(self, where) -> Span:
        """The span of a token or of a rule's `meta`."""
        return self.span(where.line, where.column, where.end_line, where.end_column)

    def error(self, message: str, where, hint: str | None = None, notes=None) -> IRSyntaxError:
        span = where if isinstance(where, Span) else self.of(where)
        return IRSyntaxError(message, span, hint=hint, notes=notes)

    def lark_error(self, e: UnexpectedInput) -> IRSyntaxError:
        if isinstance(e, UnexpectedCharacters):
            message = f"unexpected character {e.char!r}"
            if e.allowed:
                message += f"; {_expected(e.allowed)}"
            return self.error(message, self.span(e.line, e.column))
        if isinstance(e, UnexpectedToken) and e.token.type != "$END":
            tok = e.token
            shown = tok if len(tok) <= 20 else tok[:17] + "..."
            return self.error(f"unexpected '{shown}'; {_expected(e.accepts or e.expected)}", tok)
        # The end of the text: point just after the last token.
        tok = getattr(e, "token", None)
        if tok is not None and tok.end_line is not None:
            span = self.span(tok.end_line, tok.end_column)
        else:
            span = self.span(len(self.lines), len(self.lines[-1]) + 1)
        return self.error(f"unexpected end of the text; {_expected(e.expected)}", span)


# --- typed attribute values --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Word:
    """A bare name used as a value, such as a dtype (`dtype=f16`)."""

    text: str


@dataclass(frozen=True)
class _Attr:
    name: str
    value: object
    key: Token  # where to point for a bad name
    span: Span  # where to point for a bad value


@dataclass(frozen=True)
class _Typed:
    type: TensorType
    span: Span


class _Mismatch(Exception):
    """A value of the wrong kind for an attribute field (reported by the caller, with the span)."""


@functools.cache
def _hints(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _is_scalar_union(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _coerce(value, hint, dtype: DType):
    """The value an attribute field of type `hint` stores, or `_Mismatch`. Literals whose Python type
    depends on the dtype (const values, tensor data) take it from the result dtype."""
    if _is_scalar_union(hint):
        return _scalar(value, dtype)
    if hint is tuple:  # flat literal data
        if not isinstance(value, list):
            raise _Mismatch
        return tuple(_scalar(v, dtype) for v in value)
    if hint is bool or hint is str:
        if not isinstance(value, hint):
            raise _Mismatch
        return value
    if hint is int or hint is float:
        number = isinstance(value, int) or (hint is float and isinstance(value, float))
        huge = hint is float and isinstance(value, int) and abs(value) > _MAX_FLOAT
        if isinstance(value, bool) or not number or huge:
            raise _Mismatch
        return hint(value)
    if hint is DType:
        if not isinstance(value, _Word) or value.text not in _DTYPES:
            raise _Mismatch
        return _DTYPES[value.text]
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], dtype) for v in value)
        if len(args) == len(value):
            return tuple(_coerce(v, a, dtype) for v, a in zip(value, args))
    raise _Mismatch


def _scalar(value, dtype: DType):
    return _coerce(value, _scalar_hint(dtype), dtype)


def _scalar_hint(dtype: DType) -> type:
    """The Python type a literal of `dtype` is stored as."""
    return bool if dtype == DType.BOOL else int if dtype.is_int else float


def _describe(hint, dtype: DType) -> str:
    """What `_coerce` accepts, in words: 'a list of 2 integers'."""
    if _is_scalar_union(hint):
        return _describe(_scalar_hint(dtype), dtype)
    if hint is tuple:
        return "a list of " + _plural(_describe(_scalar_hint(dtype), dtype))
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
              DType: "a dtype"}
    if hint in simple:
        return simple[hint]
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
        return "a list of " + _plural(_describe(args[0], dtype))
    return f"a list of {len(args)} " + _plural(_describe(args[0], dtype))


def _plural(words: str) -> str:
    if words == "true or false":
        return "bools"
    first, _, rest = words.partition(" ")[2].partition(" ")
    return f"{first}s {rest}".strip()


def _shown(value, limit: int = 40) -> str:
    """A parsed value as it was written, cut short if long."""
    if isinstance(value, _Word):
        text = value.text
    elif isinstance(value, list):
        text = "[" + ", ".join(_shown(v) for v in value) + "]"
    else:
        text = format_value(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _frozen(value):
    """An Init argument as stored: lists become tuples, bare words strings."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value.text if isinstance(value, _Word) else value


_DTYPES = {d.value: d for d in DType}
_MAX_FLOAT = 1.7976931348623157e308  # an int literal beyond it has no float value (not even inf)
_OPS = {k.value: k for k in OpKind}


# --- the transformer: one method per grammar rule ---------------------------------------------------


class _ToGraph(Transformer):
    """Builds the graph statement by statement, in source order (lark transforms children in order,
    so every earlier statement is built before a later one's operands are looked up)."""

    def __init__(self, source: _Source):
        super().__init__()
        self.src = source
        self.b = GraphBuilder()
        self.defined: dict[str, tuple[Node, Span]] = {}
        self.outputs: dict[str, Span] = {}

    # statements
    def start(self, children) -> Graph:
        name = children[0]
        self.b.name = self.string([name]) if name.type == "STRING" else str(name)
        return self.b.build()

    @v_args(meta=True)
    def input_decl(self, meta, children) -> None:
        var, typed = children
        self._fresh(var)
        attrs = InputAttrs(self._declared_name(var), typed.type.dtype, typed.type.shape)
        self._define(var, self._build(meta, K.INPUT, [], attrs))

    @v_args(meta=True)
    def param_decl(self, meta, children) -> None:
        var, typed, init = children
        self._fresh(var)
        attrs = ParamAttrs(self._declared_name(var), typed.type.dtype, typed.type.shape,
                           DEFAULT_INIT if init is None else init)
        self._define(var, self._build(meta, K.PARAM, [], attrs))

    @v_args(meta=True)
    def op_stmt(self, meta, children) -> None:
        var, op_name, args, typed = children
        kind = self._op_kind(op_name)
        self._fresh(var)
        operands, attrs = self._split_args(args or [])
        node = self._build(meta, kind, operands, self._attrs(kind, op_name, attrs, typed))
        if node.type != typed.type:
            operand_types = [str(n.type) for n in operands]
            given = f"{kind} of {_listing(operand_types)}" if operands else str(kind)
            raise self.src.error(f"annotated {typed.type} but {given} gives {node.type}", typed.span)
        self._define(var, node)

    def output_decl(self, children) -> None:
        var, ref = children
        name = self._declared_name(var)
        if name in self.outputs:
            raise self.src.error(f"output '{name}' is declared twice", var,
                                 notes=[Note("first declared here", self.outputs[name])])
        self.outputs[name] = self.src.of(var)
        self.b.output(name, self._lookup(ref))

    # pieces of statements
    def args(self, children) -> list:
        return children

    @v_args(meta=True)
    def attr(self, meta, children) -> _Attr:
        key, value = children
        return _Attr(str(key), value, key, self.src.of(meta))

    def init(self, children) -> Init:
        kind, *attrs = (c for c in children if c is not None)
        seen = set()
        for a in attrs:
            if a.name in seen:
                raise self.src.error(f"argument '{a.name}' is given twice", a.key)
            seen.add(a.name)
        return Init(str(kind), tuple((a.name, _frozen(a.value)) for a in attrs))

    @v_args(meta=True)
    def tensor_type(self, meta, children) -> _Typed:
        name, *dims = (c for c in children if c is not None)
        if str(name) not in _DTYPES:
            raise self.src.error(f"unknown dtype '{name}'", name, hint=did_you_mean(str(name), _DTYPES))
        dims = [self.dim([d]) if isinstance(d, Token) else d for d in dims]
        return _Typed(TensorType(_DTYPES[str(name)], tuple(dims)), self.src.of(meta))

    def dim(self, children) -> Dim:
        out: Dim = 1
        for tok in children:
            if tok.type == "NAME":
                out = dim_mul(out, Sym.of(str(tok)))
            elif self.integer([tok]) < 0:
                raise self.src.error(f"a dimension cannot be negative, got {tok}", tok)
            else:
                out = dim_mul(out, self.integer([tok]))
            if (out.coeff if isinstance(out, Sym) else out) > MAX_DIM:
                raise self.src.error(f"a dimension must be at most {MAX_DIM} (2**63 - 1)", tok)
        return out

    # values
    def integer(self, children) -> int:
        tok = children[0]
        try:
            return int(tok)
        except ValueError as e:  # Python refuses to convert integers of over 4300 digits
            raise self.src.error(f"an integer of {len(tok)} digits is too long", tok) from e

    def real(self, children) -> float: return float(children[0])
    def true(self, children) -> bool: return True
    def false(self, children) -> bool: return False
    def inf(self, children) -> float: return float("inf")
    def neg_inf(self, children) -> float: return float("-inf")
    def nan(self, children) -> float: return float("nan")
    def word(self, children) -> _Word: return _Word(str(children[0]))
    def items(self, children) -> list: return [c for c in children if c is not None]

    def string(self, children) -> str:
        tok = children[0]
        try:
            return json.loads(tok)
        except ValueError as e:
            raise self.src.error(f"bad escape in string {tok}", tok) from e

    # helpers
    def _op_kind(self, tok: Token) -> OpKind:
        kind = _OPS.get(str(tok))
        if kind in DECLARED:
            raise self.src.error(f"'{tok}' is not computed; declare it as `{tok} %name: TYPE`", tok)
        if kind is None:
            choices = [k for k in _OPS if _OPS[k] not in DECLARED]
            raise self.src.error(f"unknown op '{tok}'", tok, hint=did_you_mean(str(tok), choices))
        return kind

    def _split_args(self, args: list) -> tuple[list[Node], list[_Attr]]:
        operands, attrs = [], []
        for arg in args:
            if isinstance(arg, _Attr):
                attrs.append(arg)
            elif attrs:
                raise self.src.error(f"operand {arg} after an attribute; operands come first", arg)
            else:
                operands.append(self._lookup(arg))
        return operands, attrs

    def _attrs(self, kind: OpKind, op_tok: Token, given: list[_Attr], typed: _Typed) -> Attrs:
        cls = OPS[kind].attrs
        hints = _hints(cls)
        settable = [f.name for f in fields(cls) if f.name not in RESTATED]
        values: dict[str, object] = {}
        for a in given:
            if a.name in values:
                raise self.src.error(f"attribute '{a.name}' is given twice", a.key)
            if a.name in RESTATED and a.name in hints:
                raise self.src.error(f"'{a.name}' of '{kind}' is stated by the result type after ':', "
                                     f"not as an attribute", a.key)
            if a.name not in hints:
                hint = did_you_mean(a.name, settable) or (
                    f"'{kind}' takes {', '.join(settable)}" if settable else f"'{kind}' takes none")
                raise self.src.error(f"'{kind}' has no attribute '{a.name}'", a.key, hint=hint)
            try:
                values[a.name] = _coerce(a.value, hints[a.name], typed.type.dtype)
            except _Mismatch:
                want = _describe(hints[a.name], typed.type.dtype)
                raise self.src.error(f"attribute '{a.name}' of '{kind}' must be {want}, got "
                                     f"{_shown(a.value)}", a.span) from None
        for f in fields(cls):
            if f.name in RESTATED:
                values[f.name] = getattr(typed.type, f.name)
            elif f.name not in values and f.default is MISSING:
                raise self.src.error(f"'{kind}' needs the attribute '{f.name}'", op_tok)
        return cls(**values)

    def _build(self, meta, kind: OpKind, operands: list[Node], attrs: Attrs) -> Node:
        try:
            return self.b.node(kind, operands, attrs)
        except AxonError as e:
            raise self.src.error(e.message, meta, hint=e.hint) from e

    def _declared_name(self, var: Token) -> str:
        name = var[1:]
        if name[0].isdigit():
            raise self.src.error(f"'{var}' is a number; inputs, parameters and outputs need a name "
                                 f"starting with a letter or '_'", var)
        return name

    def _fresh(self, var: Token) -> None:
        if str(var) in self.defined:
            first = self.defined[str(var)][1]
            raise self.src.error(f"'{var}' is defined twice", var, notes=[Note("first defined here", first)])

    def _define(self, var: Token, node: Node) -> None:
        self._fresh(var)
        self.defined[str(var)] = (node, self.src.of(var))

    def _lookup(self, var: Token) -> Node:
        found = self.defined.get(str(var))
        if found is None:
            hint = did_you_mean(str(var), self.defined)
            raise self.src.error(f"'{var}' is not defined (before this use)", var, hint=hint)
        return found[0]
