"""The `quantize` block: how `axon quantize` quantizes a model when the command line does not say.

    quantize GPT {
        mode = "int8-static"        # int8-weight, int4-weight, int8-dynamic, int8-static, fp8
        group = 32                  # int4-weight: 32, 64 or 128
        skip = ["logits", "blocks.*.up"]    # layers left float: names or globs
        min_size = 1024             # weights with fewer elements stay float
        calibrate = 16              # int8-static: batches of the train block's data
        method = "entropy"          # int8-static: minmax, percentile or entropy
        percentile = 99.99          # method = "percentile"
    }

Every key is optional; a key not known, a value of the wrong type or out of range is an error at its
place in the file. The modes are those of `passes/quantize.py`; it is checked here, not at quantization,
so a mistyped mode is found when the file is loaded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from axon.ir import Span
from axon.ir.errors import Note, did_you_mean

from . import ast as A
from .errors import AxonNameError, AxonTypeError, AxonValueError
from .values import show

MODES = ("int8-weight", "int4-weight", "int8-dynamic", "int8-static", "fp8")
METHODS = ("minmax", "percentile", "entropy")
GROUPS = (32, 64, 128)
KEYS = ("mode", "group", "skip", "min_size", "calibrate", "method", "percentile")


@dataclass(frozen=True)
class QuantizeSpec:
    """The block's settings (None: not given) and where it is."""

    model: str
    span: Span
    mode: str | None = None
    group: int | None = None
    skip: tuple[str, ...] | None = None
    min_size: int | None = None
    calibrate: int | None = None
    method: str | None = None
    percentile: float | None = None


def check_quantize_def(program, qd: A.QuantizeDef) -> QuantizeSpec:
    if qd.model not in program.user.models:
        raise AxonNameError(f"quantize block for unknown model '{qd.model}'", qd.model_span,
                            hint=did_you_mean(qd.model, program.user.models))
    values, _ = read_settings(qd.items, KEYS, "quantize", _value)
    return QuantizeSpec(qd.model, qd.span, **values)


def read_settings(items, keys, what: str, value) -> tuple[dict[str, object], dict[str, A.TrainItem]]:
    """The `key = value` settings of a block (quantize, prune, augment), each key known and given once,
    each value checked by `value(item)`; and where each was given."""
    seen: dict[str, A.TrainItem] = {}
    values: dict[str, object] = {}
    for it in items:
        if it.key not in keys or it.is_call or isinstance(it.value, A.SettingsBlock):
            raise AxonNameError(f"unknown {what} setting '{it.key}'", it.span,
                                hint=did_you_mean(it.key, keys) or f"known: {', '.join(keys)}")
        if it.key in seen:
            raise AxonNameError(f"{what} setting '{it.key}' is given twice", it.span,
                                notes=[Note("first given here", seen[it.key].span)])
        seen[it.key] = it
        values[it.key] = value(it)
    return values, seen


def _value(it: A.TrainItem):
    key, e = it.key, it.value
    v = _const(e)
    if key in ("mode", "method"):
        return choice(key, v, MODES if key == "mode" else METHODS, e.span)
    if key == "skip":
        return skip_list(v, e.span)
    if key == "percentile":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise AxonTypeError(f"'percentile' must be a number, got {show(v)}", e.span)
        if not (math.isfinite(v) and 0 < v <= 100):
            raise AxonValueError(f"'percentile' must be in (0, 100], got {v}", e.span)
        return float(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise AxonTypeError(f"'{key}' must be an int, got {show(v)}", e.span)
    if key == "group" and v not in GROUPS:
        raise AxonValueError(f"'group' must be one of {', '.join(map(str, GROUPS))}, got {v}", e.span)
    if key == "min_size" and v < 0 or key == "calibrate" and v < 1:
        raise AxonValueError(f"'{key}' must be at least {0 if key == 'min_size' else 1}, got {v}", e.span)
    return v


def choice(key: str, v, choices, span, what: str = "") -> str:
    """A string setting that must be one of `choices` (`what`: a word before the key in the message)."""
    if not isinstance(v, str):
        raise AxonTypeError(f"'{key}' must be a string, one of {', '.join(choices)}; got {show(v)}", span)
    if v not in choices:
        raise AxonValueError(f"unknown {what}{key} '{v}'", span,
                             hint=did_you_mean(v, choices) or f"one of {', '.join(choices)}")
    return v


def skip_list(v, span) -> tuple[str, ...]:
    """A list of layer names or globs (no character a pass option would split on)."""
    if not isinstance(v, tuple) or not all(isinstance(s, str) and s and not set(s) & set("|,{}=") for s in v):
        raise AxonTypeError(f"'skip' must be a list of layer names or glob patterns, got {show(v)}", span)
    return v


def _const(e, what: str = "a quantize setting"):
    """The value of a setting given as a literal (a number, string, bool or list of them)."""
    if isinstance(e, (A.Num, A.Str, A.Bool)):
        return e.value
    if isinstance(e, A.Unary) and e.op == "-" and isinstance(e.operand, A.Num):
        return -e.operand.value
    if isinstance(e, A.ListLit):
        return tuple(_const(i, what) for i in e.items)
    raise AxonTypeError(f"{what} must be a constant (number, string or list)", e.span)


constant = _const
