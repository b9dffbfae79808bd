"""Data augmentation for training batches: random crops with padding (shifts), horizontal flips, small
rotations and Gaussian noise, applied on the batch's device with one generator per batch seeded by
(run seed, epoch, batch index), so two runs with the same seed, and a run resumed from a checkpoint,
see exactly the same augmented batches. Evaluation never augments.

    crop = P     pad each side by P (zeros), cut the original size back out at a random offset
    flip = true  mirror left-right, each example with probability 1/2
    rotate = D   rotate each example by a uniform angle in [-D, D] degrees (bilinear, zeros outside)
    noise = S    add N(0, S^2) to every input value
    mixup = A    mix each example with another of the batch (Zhang et al. 2018): one weight lam ~ Beta(A, A)
                 per batch, x' = lam * x + (1 - lam) * x[perm], and the loss taken against both label sets
                 (`passes/mixup.py`), after the other augmentations

Spatial augmentations need image batches [batch, channels, height, width]; noise and mixup take any float
input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from axon.ir import AxonError


class AugmentError(AxonError):
    """Augmentation asked of inputs it cannot apply to."""


@dataclass(frozen=True)
class Augment:
    crop: int = 0
    flip: bool = False
    rotate: float = 0.0
    noise: float = 0.0
    mixup: float = 0.0

    def record(self) -> dict:
        record = {"crop": self.crop, "flip": self.flip, "rotate": self.rotate, "noise": self.noise}
        return {**record, "mixup": self.mixup} if self.mixup else record  # (as runs before mixup saved it)

    @property
    def spatial(self) -> bool:
        return bool(self.crop or self.flip or self.rotate)

    def check(self, shape, dtype: torch.dtype) -> None:
        if not dtype.is_floating_point:
            raise AugmentError(f"augmentation changes input values, and the inputs are {dtype}")
        if self.spatial and len(shape) != 4:
            raise AugmentError(f"crop, flip and rotate augment images [batch, channels, height, width]; the "
                               f"inputs have shape {list(shape)}",
                               hint="load the data as images (digits(image = true)), or keep to noise")

    def __call__(self, x: torch.Tensor, seed: int, epoch: int, index: int) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(_mix(seed, epoch, index))
        n = x.shape[0]
        if self.crop:
            p = self.crop
            h, w = x.shape[-2:]
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
            rows = (dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h))        # [n, h]
            cols = (dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w))        # [n, w]
            idx_r = rows.view(n, 1, h, 1).expand(n, x.shape[1], h, padded.shape[-1])
            x = padded.gather(2, idx_r)
            x = x.gather(3, cols.view(n, 1, 1, w).expand(n, x.shape[1], h, w))
        if self.flip:
            mirror = (torch.rand(n, generator=gen) < 0.5).to(x.device).view(n, *([1] * (x.dim() - 1)))
            x = torch.where(mirror, x.flip(-1), x)
        if self.rotate:
            angle = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * math.radians(self.rotate)
            cos, sin = torch.cos(angle), torch.sin(angle)
            theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n, dtype=torch.float64)], 1),
                                 torch.stack([sin, cos, torch.zeros(n, dtype=torch.float64)], 1)], 1)
            grid = F.affine_grid(theta.to(x.dtype).to(x.device), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.noise:
            x = x + torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device) * self.noise
        return x


    def mix(self, x: torch.Tensor, labels: torch.Tensor, seed: int, epoch: int, index: int):
        """Mixup of this batch: (mixed inputs, the labels of the rows mixed in, lam), the same for this
        (seed, epoch, batch) in every run and resume."""
        import numpy as np

        key = _mix(seed, epoch, index)
        lam = float(np.random.default_rng([key, 1]).beta(self.mixup, self.mixup))
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(key ^ 0x5DEECE66D))
        perm = perm.to(x.device)
        return x * lam + x[perm] * (1.0 - lam), labels[perm.to(labels.device)], lam


def _mix(seed: int, epoch: int, index: int) -> int:
    """One 63-bit seed per (run, epoch, batch), well apart for neighbouring values."""
    h = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**63 - 1)
    return h ^ (h >> 31)
