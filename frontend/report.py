"""Where an elaboration error is reported: in the user's own code, never inside the prelude.

A mistake found inside a prelude layer (a shape that does not fit inside `conv2d`) is reported at the
user's call of the layer, with the layer's line as a note; a mistake inside the user's own function
is reported where it is, with the call sites that led there as notes. The builder's `IRTypeError`s
become `ShapeError`s (an `IRShapeError`) or `AxonTypeError`s (an `IRDTypeError`, or any other
`IRTypeError`) on the way, keeping the original as `__cause__`.
"""
from __future__ import annotations

from axon.ir import AxonError, IRShapeError, IRTypeError, Span
from axon.ir.errors import Note

from .errors import AxonTypeError, ShapeError
from .program import PRELUDE_PATH

_PRELUDE = str(PRELUDE_PATH)
MAX_CALLER_NOTES = 3


def is_placed(err: AxonError) -> bool:
    """Whether `err` went through `place` already (it then says where the user should look)."""
    return getattr(err, "placed", False)


def place(err: AxonError, span: Span, frames, extra: list[Note] | None = None) -> AxonError:
    """A copy of `err` at `span` or the user's call that led there; `frames` are the active calls
    (objects with `name` and `call_span`, outermost first), `extra` notes go first."""
    cls = _classify(err)
    where, notes = _user_place(span, frames)
    out = cls(err.message, where, hint=err.hint, notes=list(extra or []) + notes + err.notes)
    out.__cause__ = err
    out.placed = True
    return out


def _user_place(span: Span, frames) -> tuple[Span, list[Note]]:
    places = [span] + [f.call_span for f in reversed(frames) if f.call_span is not None]
    owners = [f.name for f in reversed(frames)]  # places[k] lies in the code of owners[k]
    k = next((i for i, s in enumerate(places) if s.file != _PRELUDE), 0)
    notes = [Note(f"inside '{owners[i]}', here", places[i]) for i in range(k - 1, -1, -1)]
    for i in range(k + 1, min(len(places), k + 1 + MAX_CALLER_NOTES)):
        if places[i] != places[i - 1]:  # a recursive call would repeat one place
            notes.append(Note(f"in '{owners[i]}', called from here", places[i]))
    return places[k], notes


def _classify(err: AxonError) -> type[AxonError]:
    """The frontend's error class for `err`: the builder says by its class whether a shape or a dtype
    is wrong; an `IRTypeError` that is neither (an argument of the wrong kind) is a type error."""
    if isinstance(err, IRShapeError):
        return ShapeError
    if isinstance(err, IRTypeError):  # an IRDTypeError, or an argument of the wrong kind
        return AxonTypeError
    return type(err)
