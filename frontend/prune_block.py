"""The `prune` block inside a train block: pruning that runs while the model trains.

    train MLP {
        ...
        prune {
            method = "magnitude"    # entries of least |w| (torch.nn.utils.prune.l1_unstructured)
            amount = 0.9            # the share of each pruned weight removed at the end, in [0, 1)
            scope = "layer"         # "layer": amount of each weight; "global": of all of them together
            schedule = "cubic"      # "oneshot": all at `start`; "cubic": Zhu & Gupta's ramp
            start = 0   end = 10    # epochs: the ramp runs from the start of `start` to that of `end`
            skip = ["logits"]       # layers left dense: names or globs
            granularity = "block:32"   # or "element" (default), "2:4" (N:M)
        }
    }

Every key but `amount` is optional; a key not known, a value of the wrong type or out of range is an
error at its place in the file. The masks are computed on the host (`runtime/pruning.py`) at the start of
each epoch of the schedule and kept in the compiled step (`passes/masks.py`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from axon.ir import Span

from . import ast as A
from .errors import ArityError, AxonTypeError, AxonValueError
from .quantize_block import choice, constant, read_settings, skip_list
from .values import INT_LIMIT, show

METHODS = ("magnitude",)
SCOPES = ("layer", "global")
SCHEDULES = ("oneshot", "cubic")
KEYS = ("method", "amount", "scope", "schedule", "start", "end", "skip", "granularity")
BLOCK_SIDES = (16, 32, 64)
CHOICES = {"method": METHODS, "scope": SCOPES, "schedule": SCHEDULES}


@dataclass(frozen=True)
class PruneSpec:
    """The block's settings, defaults filled in (`end` None: half the run's epochs, at least 1)."""

    amount: float
    span: Span
    method: str = "magnitude"
    scope: str = "layer"
    schedule: str = "oneshot"
    start: int = 0
    end: int | None = None
    skip: tuple[str, ...] = ()
    granularity: str = "element"

    def record(self) -> dict:
        """What a run's checkpoint keeps of it (a resume with other settings is another run)."""
        return {"method": self.method, "amount": self.amount, "scope": self.scope, "schedule": self.schedule,
                "start": self.start, "end": self.end, "skip": list(self.skip),
                "granularity": self.granularity}


def check_prune_item(it: A.TrainItem) -> PruneSpec:
    if not isinstance(it.value, A.SettingsBlock):
        raise AxonTypeError("'prune' is a block of settings: prune { amount = 0.9 ... }", it.span)
    values, seen = read_settings(it.value.items, KEYS, "prune", _value)
    if "amount" not in values:
        raise ArityError("the prune block needs 'amount = ...' (the share of each weight to remove)",
                         it.span)
    if "start" in values and "end" in values and values["end"] < values["start"]:
        raise AxonValueError(f"'end' ({values['end']}) comes before 'start' ({values['start']})",
                             seen["end"].value.span)
    if values.get("schedule", "oneshot") == "oneshot" and "end" in values:
        raise ArityError("'end' applies only with schedule = \"cubic\" (oneshot prunes at 'start')",
                         seen["end"].span)
    return PruneSpec(span=it.span, **values)


def _value(it: A.TrainItem):
    key, e = it.key, it.value
    v = constant(e, "a prune setting")
    if key in CHOICES:
        return choice(key, v, CHOICES[key], e.span, "prune ")
    if key == "granularity":
        if not isinstance(v, str) or not _granularity_ok(v):
            raise AxonValueError(f"'granularity' must be \"element\", \"block:16\", \"block:32\", "
                                 f"\"block:64\" or an N:M pattern such as \"2:4\"; got {show(v)}", e.span)
        return v
    if key == "skip":
        return skip_list(v, e.span)
    if key == "amount":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise AxonTypeError(f"'amount' must be a number, got {show(v)}", e.span)
        if not (math.isfinite(v) and 0 <= v < 1):
            raise AxonValueError(f"'amount' must be a fraction in [0, 1), got {show(v)}", e.span,
                                 hint="0.9 removes nine entries in ten")
        return float(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise AxonTypeError(f"'{key}' must be an epoch number (an int), got {show(v)}", e.span)
    if not 0 <= v < INT_LIMIT:
        raise AxonValueError(f"'{key}' must be an epoch number, at least 0, got {v}", e.span)
    return v


def _granularity_ok(v: str) -> bool:
    head, _, tail = v.partition(":")
    if v == "element" or head == "block" and tail.isdigit() and int(tail) in BLOCK_SIDES:
        return True
    return head.isdigit() and tail.isdigit() and 0 < int(head) < int(tail) <= 16
