"""Text to AST: the LALR parser built from `axon.lark`, and `AstBuilder`, the lark `Transformer` with one
small method per grammar rule. Parse errors become `AxonSyntaxError`s that say, in words, what was
expected.

The tree is transformed bottom-up with an explicit stack, never by recursion, so a 10,000-deep
parenthesized expression parses as well as a flat one.

>>> m = parse("model M { input x: f32[b, 3]  output y = x * 2 }", "m.axon")
>>> [type(s).__name__ for s in m.items[0].body]
['InputDecl', 'Output']
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError
from lark.lexer import PatternStr

from axon.ir import AxonError, Span

from . import ast as A
from .errors import AxonSyntaxError, AxonValueError
from .values import INT_LIMIT

_GRAMMAR = Path(__file__).with_name("axon.lark")

# Words for the terminals that are patterns rather than fixed strings.
_TERMINAL_WORDS = {"NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
                   "$END": "the end of the file"}
# Groups of terminals named by one phrase in "expected ..." messages, so a message lists a handful
# of alternatives instead of every token the parser could shift.
_GROUPS = (
    ("a statement", {"INPUT", "OUTPUT", "PARAM", "RETURN", "REPEAT", "FOR", "IF", "ASSERT"}),
    ("an operator", {"PLUS", "MINUS", "STAR", "SLASH", "DSLASH", "PERCENT", "AT", "POW", "LT", "LE",
                     "GT", "GE", "EQ", "NE", "AND", "OR"}),
    ("an expression", {"INT", "FLOAT", "STRING", "TRUE", "FALSE", "LPAR", "LSQB", "MINUS", "PLUS",
                       "NOT", "NAME"}),
    ("a definition ('fn', 'model', 'train', 'quantize' or 'import')", {"FN", "MODEL", "TRAIN", "QUANTIZE",
                                                                       "IMPORT"}),
)
_COMPARE = {"LT", "LE", "GT", "GE", "EQ", "NE"}


@functools.cache
def _lark() -> Lark:
    return Lark(_GRAMMAR.read_text(), parser="lalr", propagate_positions=True, maybe_placeholders=True)


def parse(text: str, file: str = "<string>") -> A.Module:
    """Parse Axon source text into a `Module` (raises `AxonSyntaxError` with a located message)."""
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the program
    lines = source_lines(text)
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, file, lines) from None
    items = AstBuilder(file, lines).transform(tree)
    return A.Module(file, tuple(items), text)


def source_lines(text: str) -> list[str]:
    """The lines as the lexer counts them: split at newlines only (`str.splitlines` also splits at form
    feeds, U+2028 and lone carriage returns, which would shift every later line), without the `\r` of
    a CRLF ending or the empty line after a final newline."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    return lines


@v_args(meta=True)
class AstBuilder(Transformer):
    """Builds AST nodes from the parse tree, one method per rule (`meta` gives the rule's position)."""

    def __init__(self, file: str, lines: list[str]):
        super().__init__(visit_tokens=False)
        self.file = file
        self.lines = lines

    def transform(self, tree: Tree):
        """Bottom-up over the tree with an explicit stack (lark's own transform recurses)."""
        stack: list[tuple[Tree, bool]] = [(tree, False)]
        done: list = []  # results, in post-order
        while stack:
            node, expanded = stack.pop()
            if not isinstance(node, Tree):
                done.append(node)
            elif not expanded:
                stack.append((node, True))
                stack.extend((c, False) for c in reversed(node.children))
            else:
                n = len(node.children)
                children = done[len(done) - n:] if n else []
                del done[len(done) - n:]
                try:
                    done.append(self._call_userfunc(node, children))
                except VisitError as e:
                    if isinstance(e.orig_exc, AxonError):
                        raise e.orig_exc from None
                    raise
        (result,) = done
        return result

    # --- positions --------------------------------------------------------------------------------
    def span(self, meta) -> Span:
        return self._span(meta.line, meta.column, meta.end_line, meta.end_column)

    def tok(self, t: Token) -> Span:
        return self._span(t.line, t.column, t.end_line, t.end_column)

    def _span(self, line, col, end_line, end_col) -> Span:
        src = self.lines[line - 1] if 0 < line <= len(self.lines) else None
        return Span(self.file, line, col, end_line, end_col, src)

    # --- module and definitions -------------------------------------------------------------------
    def start(self, meta, items):
        return items

    def import_def(self, meta, ch):
        return A.Import(self.span(meta), str(ch[0])[1:-1])

    def fn_def(self, meta, ch):
        name, params, body = ch
        return A.FnDef(self.span(meta), str(name), tuple(params or ()), body)

    def model_def(self, meta, ch):
        name, params, body = ch
        return A.ModelDef(self.span(meta), str(name), tuple(params or ()), body)

    def train_def(self, meta, ch):
        return A.TrainDef(self.span(meta), str(ch[0]), self.tok(ch[0]), tuple(ch[1:]))

    def quantize_def(self, meta, ch):
        return A.QuantizeDef(self.span(meta), str(ch[0]), self.tok(ch[0]), tuple(ch[1:]))

    def train_set(self, meta, ch):
        return A.TrainItem(self.span(meta), str(ch[0]), ch[1], False)

    def train_block(self, meta, ch):
        block = A.SettingsBlock(self.span(meta), tuple(ch[1:]))
        return A.TrainItem(self.span(meta), str(ch[0]), block, False)

    def train_call(self, meta, ch):
        return A.TrainItem(self.span(meta), ch[0].func, ch[0], True)

    def params(self, meta, ch):
        return ch

    def param(self, meta, ch):
        name, typ, default = ch
        return A.Param(self.span(meta), str(name), typ, default)

    def scalar_type(self, meta, ch):
        return A.TypeExpr(self.span(meta), str(ch[0]), None)

    def tensor_type(self, meta, ch):
        return A.TypeExpr(self.span(meta), str(ch[0]), tuple(ch[1] or ()))

    def dims(self, meta, ch):
        return ch

    def dim_rest(self, meta, ch):
        return A.DimRest(self.span(meta), str(ch[1]) if ch else None)

    # --- statements -------------------------------------------------------------------------------
    def block(self, meta, ch):
        return tuple(ch)

    def input_decl(self, meta, ch):
        return A.InputDecl(self.span(meta), str(ch[0]), ch[1])

    def output_stmt(self, meta, ch):
        name, value, scope = ch
        return A.Output(self.span(meta), str(name), value, scope)

    def param_decl(self, meta, ch):
        return A.ParamDecl(self.span(meta), str(ch[0]), ch[1], ch[2])

    def assign(self, meta, ch):
        *targets, value, scope = ch
        return A.Assign(self.span(meta), tuple(str(t) for t in targets), value, scope)

    def return_stmt(self, meta, ch):
        return A.Return(self.span(meta), ch[0], ch[1])

    def repeat_stmt(self, meta, ch):
        count, body = ch
        return A.For(self.span(meta), None, A.Num(count.span, 0), count, body)

    def for_stmt(self, meta, ch):
        var, start, stop, body = ch
        return A.For(self.span(meta), str(var), start, stop, body)

    def if_stmt(self, meta, ch):
        cond, then, orelse = ch
        if isinstance(orelse, A.If):
            orelse = (orelse,)
        return A.If(self.span(meta), cond, then, orelse or ())

    def assert_stmt(self, meta, ch):
        cond, message = ch
        return A.Assert(self.span(meta), cond, str(message)[1:-1] if message is not None else None)

    def as_clause(self, meta, ch):
        return A.ScopeName(self.span(meta), str(ch[0]), tuple(ch[1:]))

    # --- expressions ------------------------------------------------------------------------------
    def binary(self, meta, ch):
        left, op, right = ch
        return A.Binary(self.span(meta), str(op), left, right)

    def unary(self, meta, ch):
        op, operand = ch
        return A.Unary(self.span(meta), str(op), operand)

    def call(self, meta, ch):
        name, *rest = ch
        rest = [a for a in rest if a is not None]
        args = tuple(a for a in rest if not isinstance(a, A.Kwarg))
        kwargs = tuple(a for a in rest if isinstance(a, A.Kwarg))
        return A.Call(self.span(meta), str(name), self.tok(name), args, kwargs)

    def kwarg(self, meta, ch):
        return A.Kwarg(self.span(meta), str(ch[0]), ch[1])

    def index(self, meta, ch):
        return A.Index(self.span(meta), ch[0], tuple(ch[1:]))

    def slice(self, meta, ch):
        start, stop, step = ch
        return A.Slice(self.span(meta), start, stop, step)

    def ellipsis(self, meta, ch):
        return A.Ellipsis_(self.span(meta))

    def name(self, meta, ch):
        return A.Name(self.span(meta), str(ch[0]))

    def int_lit(self, meta, ch):
        digits = str(ch[0]).lstrip("0") or "0"
        # Checked by length first: Python refuses to convert more than 4,300 digits.
        if len(digits) > len(str(INT_LIMIT)) or int(digits) >= INT_LIMIT:
            shown = digits if len(digits) <= 30 else f"{digits[:12]}... ({len(digits)} digits)"
            raise AxonValueError(f"integer {shown} does not fit in 64 bits", self.span(meta))
        return A.Num(self.span(meta), int(digits))

    def float_lit(self, meta, ch):
        value = float(ch[0])
        if not math.isfinite(value):
            raise AxonValueError(f"the number {ch[0]} is too large for a float", self.span(meta),
                                 hint="write 'inf' for infinity")
        return A.Num(self.span(meta), value)

    def string_lit(self, meta, ch):
        return A.Str(self.span(meta), str(ch[0])[1:-1])

    def bool_lit(self, meta, ch):
        return A.Bool(self.span(meta), ch[0].type == "TRUE")

    def list_lit(self, meta, ch):
        return A.ListLit(self.span(meta), tuple(c for c in ch if c is not None))


# --- syntax errors in words -------------------------------------------------------------------------
def _syntax_error(e: UnexpectedInput, file: str, lines: list[str]) -> AxonSyntaxError:
    line, col = max(e.line, 1), max(e.column, 1)
    width = 1
    if isinstance(e, UnexpectedToken):
        tok = e.token
        if tok.type == "$END":
            line = max(len(lines), 1)
            col = len(lines[line - 1]) + 1 if lines else 1
            what = "unexpected end of file"
        else:
            width = max(len(tok), 1)
            what = f"unexpected {_describe_token(tok)}"
        expected = _expected_words(e.expected)
        if tok.type in _COMPARE:
            return AxonSyntaxError(f"{what}: comparisons do not chain", _at(file, lines, line, col, width),
                                   hint="write 'a < b and b < c'")
    elif isinstance(e, UnexpectedCharacters):
        what = f"unexpected character {e.char!r}"
        expected = None
    else:  # pragma: no cover - LALR raises only the two above
        what, expected = "cannot parse this", None
    message = f"{what}, expected {expected}" if expected else what
    return AxonSyntaxError(message, _at(file, lines, line, col, width))


def _at(file: str, lines: list[str], line: int, col: int, width: int) -> Span:
    src = lines[line - 1] if 0 < line <= len(lines) else None
    return Span(file, line, col, line, col + width, src)


def _describe_token(tok: Token) -> str:
    if tok.type in _TERMINAL_WORDS:
        return f"{_TERMINAL_WORDS[tok.type].split()[-1]} '{tok}'"
    return f"'{tok}'"


def _expected_words(expected) -> str:
    names = set(expected)
    words = []
    for phrase, group in _GROUPS:
        if len(names & group) >= 3:
            words.append(phrase)
            names -= group
    for n in sorted(names):
        if n in _TERMINAL_WORDS:
            words.append(_TERMINAL_WORDS[n])
            continue
        try:
            pattern = _lark().get_terminal(n).pattern
        except KeyError:
            words.append(n.lower())
            continue
        words.append(f"'{pattern.value}'" if isinstance(pattern, PatternStr) else n.lower())
    words = sorted(set(words), key=lambda w: (w[0] == "'", w))
    if len(words) > 6:
        return None
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
