"""The `augment` block inside a train block: data augmentation of the training batches.

    augment { crop = 2  flip = true  rotate = 10  noise = 0.05  mixup = 0.2 }

Every key is optional (at least one is given); values are checked at their place in the file. What each
does, and how it stays the same across runs and resumes: `runtime/augment.py`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from axon.ir import Span

from . import ast as A
from .errors import ArityError, AxonTypeError, AxonValueError
from .quantize_block import constant, read_settings
from .values import show

KEYS = ("crop", "flip", "rotate", "noise", "mixup")


@dataclass(frozen=True)
class AugmentSpec:
    span: Span
    crop: int = 0
    flip: bool = False
    rotate: float = 0.0
    noise: float = 0.0
    mixup: float = 0.0     # alpha of the Beta(alpha, alpha) the mixing weight is drawn from (0: off)


def check_augment_item(it: A.TrainItem) -> AugmentSpec:
    if not isinstance(it.value, A.SettingsBlock):
        raise AxonTypeError("'augment' is a block of settings: augment { crop = 2  flip = true }", it.span)
    values, _ = read_settings(it.value.items, KEYS, "augment", _value)
    if not values:
        raise ArityError("the augment block is empty: give crop, flip, rotate, noise or mixup", it.span)
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
    if key == "mixup" and not 0 < v <= 100:
        raise AxonValueError(f"'mixup' must be the Beta distribution's alpha in (0, 100], got {show(v)}",
                             e.span)
    if key == "noise" and v < 0:
        raise AxonValueError(f"'noise' must be a standard deviation of at least 0, got {show(v)}", e.span)
    return float(v)
