"""Calibration observers for static int8 quantization: the range [-t, t] an activation tensor is
quantized over (scale t / 127), from the values it took on calibration batches, by one of the methods
TensorRT, ONNX Runtime and torch.ao use.

minmax      t = the largest |x| seen (torch.ao's MinMaxObserver, symmetric): nothing is clipped, and one
            outlier stretches every step.
percentile  t = the p-th percentile of |x| (99.99 by default; ONNX Runtime's percentile calibration):
            the rarest values are clipped.
entropy     t minimizing KL(P || Q) between the distribution of |x| clipped at t (P, the clipped tail
            folded into the last bin) and the same quantized to 128 levels (Q), over the candidates from
            bin 128 of a 2048-bin histogram up (TensorRT's entropy calibration).

Every observer keeps a histogram of |x| over [0, amax] in BINS bins; when a batch goes past the range,
the counts so far are moved to the wider bins by their bin centres (as ONNX Runtime merges histograms),
so the percentile and entropy thresholds are exact to a bin of the final range. The clipped fraction
(the share of the values beyond t) is read from the same histogram.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from axon.ir import AxonError

METHODS = ("minmax", "percentile", "entropy")
BINS = 2048
LEVELS = 128  # int8's positive codes (TensorRT's quantized bins)


class CalibrationError(AxonError):
    """Calibration data that gives no usable range (NaN or infinite activations)."""


class Observer:
    """The distribution of |x| over calibration batches; `threshold()` by `method`."""

    def __init__(self, method: str = "minmax", percentile: float = 99.99):
        if method not in METHODS:
            raise CalibrationError(f"calibration method '{method}': the methods are {', '.join(METHODS)}")
        if not 0 < percentile <= 100:
            raise CalibrationError(f"percentile {percentile}: must be in (0, 100]")
        self.method, self.percentile = method, percentile
        self.amax = 0.0
        self.count = 0
        self.hist = torch.zeros(BINS, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        a = x.detach().to(torch.float64).abs().flatten().cpu()
        if a.numel() == 0:
            return
        if not bool(torch.isfinite(a).all()):
            raise CalibrationError(f"{int((~torch.isfinite(a)).sum())} NaN or infinite activation value(s)")
        top = float(a.max())
        if top > self.amax:
            self._widen(top)
        if self.amax > 0:
            self.hist += torch.histc(a, BINS, 0.0, self.amax)
        else:
            self.hist[0] += a.numel()
        self.count += a.numel()

    def _widen(self, top: float) -> None:
        """Move the counts to bins over [0, top], each by its bin's centre."""
        if self.amax > 0 and self.hist.sum() > 0:
            centres = (torch.arange(BINS, dtype=torch.float64) + 0.5) * (self.amax / BINS)
            at = (centres / (top / BINS)).long().clamp_max(BINS - 1)
            moved = torch.zeros(BINS, dtype=torch.float64)
            moved.index_add_(0, at, self.hist)
            self.hist = moved
        elif self.hist.sum() > 0:  # zeros seen so far: they stay in the first bin
            pass
        self.amax = top

    def threshold(self) -> float:
        """t: activations are quantized over [-t, t]."""
        if self.count == 0:
            raise CalibrationError("no calibration values were observed")
        if self.method == "minmax" or self.amax == 0:
            return self.amax
        if self.method == "percentile":
            return _percentile(self.hist.numpy(), self.amax, self.percentile)
        return entropy_threshold(self.hist.numpy(), self.amax)

    def clipped(self, t: float) -> float:
        """The share of the observed values beyond t (by whole bins)."""
        if self.amax == 0 or t >= self.amax:
            return 0.0
        first = min(BINS, int(math.ceil(t / (self.amax / BINS))))
        return float(self.hist[first:].sum() / self.hist.sum())


def _percentile(hist: np.ndarray, amax: float, p: float) -> float:
    """The value below which p% of the histogram's mass lies, interpolated inside its bin."""
    cdf = np.cumsum(hist)
    target = cdf[-1] * p / 100.0
    i = int(np.searchsorted(cdf, target))
    i = min(i, len(hist) - 1)
    before = cdf[i - 1] if i else 0.0
    inside = (target - before) / hist[i] if hist[i] > 0 else 1.0
    return float((i + min(max(inside, 0.0), 1.0)) * amax / len(hist))


def _kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    """KL(P || Q) of two histograms, each normalized, Q's empty bins where P has mass given `eps` of the
    mass (taken evenly from its other bins), as the reference implementations smooth it."""
    if p.sum() == 0 or q.sum() == 0:
        return math.inf
    p, q = p / p.sum(), q / q.sum()
    holes = (q == 0) & (p > 0)
    if holes.any():
        filled = q > 0
        q = q - eps * holes.sum() / filled.sum() * filled + eps * holes
    keep = p > 0
    return float(np.sum(p[keep] * np.log(p[keep] / q[keep])))


def entropy_threshold(hist: np.ndarray, amax: float, levels: int = LEVELS) -> float:
    """TensorRT's KL-divergence threshold for a histogram of |x| over [0, amax]."""
    bins = len(hist)
    width = amax / bins
    best, best_i = math.inf, bins
    for i in range(levels, bins + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()  # the clipped tail folds into the last kept bin
        nonzero = p > 0
        # Q: the first i bins (unfolded) merged into `levels` groups, each group's mass spread evenly over
        # the bins where P has mass (MXNet's and TensorRT's reference)
        group = np.arange(i) * levels // i
        mass = np.bincount(group, weights=hist[:i], minlength=levels)
        support = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
        q = np.where(nonzero, mass[group] / np.maximum(support[group], 1), 0.0)
        kl = _kl(p, q)
        if kl < best:
            best, best_i = kl, i
    return float(best_i * width)
