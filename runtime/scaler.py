"""The host half of dynamic loss scaling (`passes/loss_scale.py` is the step graph's half): the scale S
fed to each f16 training step, and its update from the step's `found_inf`, as torch.cuda.amp.GradScaler
with its defaults (init_scale 2**16, growth_factor 2, backoff_factor 0.5, growth_interval 2000).

>>> s = LossScaler(growth_interval=2)
>>> s.update(found_inf=True); s.scale, s.skipped
(32768.0, 1)
>>> s.update(False); s.update(False); s.scale, s.growth_tracker
(65536.0, 0)
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

INIT_SCALE = 2.0 ** 16
STATE = ("scale", "growth_tracker", "skipped")  # what a checkpoint keeps


@dataclass
class LossScaler:
    scale: float = INIT_SCALE
    growth_tracker: int = 0        # good steps in a row since the scale last changed (GradScaler's)
    skipped: int = 0               # steps skipped so far: the optimizer has taken steps - skipped
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000

    def update(self, found_inf: bool) -> None:
        """After a step: on inf/NaN halve the scale (the step was skipped), else count a good step and
        double the scale after `growth_interval` of them. The scale is an f32, as GradScaler's tensor:
        it grows only while it stays finite (torch's `_amp_update_scale_`)."""
        if found_inf:
            self.scale = _f32(self.scale * self.backoff_factor)
            self.growth_tracker = 0
            self.skipped += 1
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            grown = _f32(self.scale * self.growth_factor)
            if math.isfinite(grown):
                self.scale = grown
            self.growth_tracker = 0

    def state(self) -> dict:
        return {k: getattr(self, k) for k in STATE}


def _f32(x: float) -> float:
    """x rounded to f32 (inf where it overflows)."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)
