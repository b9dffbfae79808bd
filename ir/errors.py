"""Axon's error types. Every error a user can cause is an `AxonError`; internal invariants are asserts.

An error may carry a `Span` (file, line, column, source line); `str(err)` then renders it the way
compilers do:

    model.axon:3:14: error: unknown name 'lineer'
        h = relu(lineer(x, 128))
                 ^^^^^^
    hint: did you mean 'linear'?
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass


SHOWN_LINE = 120  # characters of a long source line shown around the caret


@dataclass(frozen=True)
class Span:
    """A place in a source text. Lines and columns count from 1; `end_col` is exclusive."""

    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None
    source_line: str | None = None

    def caret(self) -> str:
        if self.source_line is None:
            return ""
        text = self.source_line.rstrip("\r\n").expandtabs(1)
        col, width = self.col, 1
        if self.end_col is not None and (self.end_line in (None, self.line)):
            width = max(1, self.end_col - self.col)
        if len(text) > SHOWN_LINE:  # a window around the caret, not a megabyte of source
            start = max(0, min(col - 1 - SHOWN_LINE // 4, len(text) - SHOWN_LINE))
            shown = text[start:start + SHOWN_LINE]
            lead, tail = ("..." if start else ""), ("..." if start + SHOWN_LINE < len(text) else "")
            text, col = lead + shown + tail, col - start + len(lead)
            width = min(width, len(lead) + len(shown) - col + 1)
        width = max(1, min(width, len(text) - col + 1))
        return f"    {text}\n    {' ' * (col - 1)}{'^' * width}"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class Note:
    message: str
    span: Span | None = None


class AxonError(Exception):
    """Base class of every error Axon reports to a user."""

    kind = "error"

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None,
                 notes: list[Note] | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.notes: list[Note] = list(notes or [])

    def with_span(self, span: Span) -> AxonError:
        """Attach a location if the error has none yet (the innermost location wins)."""
        if self.span is None:
            self.span = span
        return self

    def __str__(self) -> str:
        lines = []
        where = f"{self.span}: " if self.span else ""
        lines.append(f"{where}error: {self.message}")
        if self.span and self.span.source_line is not None:
            lines.append(self.span.caret())
        for note in self.notes:
            nwhere = f"{note.span}: " if note.span else ""
            lines.append(f"{nwhere}note: {note.message}")
            if note.span and note.span.source_line is not None:
                lines.append(note.span.caret())
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


class IRSyntaxError(AxonError):
    """Malformed IR text."""


class IRTypeError(AxonError):
    """An op applied to operands of the wrong dtype or shape, or with bad attributes.

    Shape and dtype mistakes raise the subclasses `IRShapeError` and `IRDTypeError`; a plain
    `IRTypeError` is left for what is neither: an argument of the wrong Python kind (a string where a
    DType or an int is expected), a bad name, a node from another graph, a wrong operand count.
    """


class IRShapeError(IRTypeError):
    """Shapes that do not fit: broadcasting, matmul inner dimensions, reshape element counts, expand,
    slice/pad/concat bounds, conv2d sizes, an axis out of range, a reduction over a size-0 axis, the
    shape of a gather/take index."""


class IRDTypeError(IRTypeError):
    """A wrong element type: a float-only op on integers, bool where a number is needed, mixed dtypes
    (binary ops, where, concat, matmul, two fp8 formats), an index that is not an integer, a constant
    that does not fit its dtype."""


class VerifyError(AxonError):
    """A graph that breaks an invariant (found by the verifier)."""


class EvalError(AxonError):
    """A graph that cannot be evaluated on the given inputs (missing input, shape mismatch, ...)."""


class PassError(AxonError):
    """A bad pass pipeline (unknown pass, bad option) or a pass that broke the graph."""


def did_you_mean(name: str, choices) -> str | None:
    """A hint naming the closest known name, or None."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
