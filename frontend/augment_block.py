"""The `augment` block inside a train block: data augmentation of the training batches.

    augment { crop = 2  flip = true  rotate = 10  noise = 0.05 }

Every key is optional (at least one is given); values are checked at their place in the file. What each
does, and how it stays the same across runs and resumes: `runtime/augment.py`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from axon.ir import Span
from axon.ir.errors import Note, did_you_mean

from . import ast as A
from .errors import ArityError, AxonNameError, AxonTypeError, AxonValueError
from .quantize_block import constant
from .values import show

KEYS = ("crop", "flip", "rotate", "noise")


@dataclass(frozen=True)
class AugmentSpec:
    span: Span
    crop: int = 0
    flip: bool = False
    rotate: float = 0.0
    noise: float = 0.0

    def record(self) -> dict:
        return {"crop": self.crop, "flip": self.flip, "rotate": self.rotate, "noise": self.noise}


def check_augment_item(it: A.TrainItem) -> AugmentSpec:
    if not isinstance(it.value, A.SettingsBlock):
        raise AxonTypeError("'augment' is a block of settings: augment { crop = 2  flip = true }", it.span)
    seen: dict[str, A.TrainItem] = {}
    values: dict[str, object] = {}
    for s in it.value.items:
        if s.key not in KEYS or s.is_call or isinstance(s.value, A.SettingsBlock):
            raise AxonNameError(f"unknown augment setting '{s.key}'", s.span,
                                hint=did_you_mean(s.key, KEYS) or f"known: {', '.join(KEYS)}")
        if s.key in seen:
            raise AxonNameError(f"augment setting '{s.key}' is given twice", s.span,
                                notes=[Note("first given here", seen[s.key].span)])
        seen[s.key] = s
        values[s.key] = _value(s)
    if not values:
        raise ArityError("the augment block is empty: give crop, flip, rotate or noise", it.span)
    return AugmentSpec(span=it.span, **values)


def _value(it: A.TrainItem):
    key, e = it.key, it.value
    v = constant(e, "an augment setting")
    if key == "flip":
        if not isinstance(v, bool):
            raise AxonTypeError(f"'flip' must be true or false, got {show(v)}", e.span)
        return v
    if key == "crop":
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 64:
            raise AxonValueError(f"'crop' must be an int padding in [0, 64], got {show(v)}", e.span)
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise AxonTypeError(f"'{key}' must be a number, got {show(v)}", e.span)
    if key == "rotate" and not 0 <= v <= 180:
        raise AxonValueError(f"'rotate' must be degrees in [0, 180], got {show(v)}", e.span)
    if key == "noise" and v < 0:
        raise AxonValueError(f"'noise' must be a standard deviation of at least 0, got {show(v)}", e.span)
    return float(v)
