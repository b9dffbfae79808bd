"""Pruning masks, computed on the host from the weights (1 keeps an entry, 0 removes it).

The rules are torch.nn.utils.prune's, call for call, so the same weights and amount give the same mask:

- `l1_unstructured(w, amount)`: the round(amount * numel) entries of least |w| (torch.topk, largest=False,
  on the flattened tensor), as `prune.l1_unstructured`;
- `global_unstructured(ws, amount)`: the same over all the tensors at once, flattened and concatenated in
  the order given, as `prune.global_unstructured(..., pruning_method=prune.L1Unstructured)`;
- `ln_structured(w, amount, n, dim)`: whole slices along `dim` with the least Ln norm over the other
  axes (torch keeps the `size - round(amount * size)` of largest norm, torch.topk largest=True), as
  `prune.ln_structured`.

A mask already in place (`previous`) is respected as torch's PruningContainer does, with one
difference that makes a gradual schedule simple: `amount` is the share of the whole tensor that ends up
pruned (previously pruned entries count towards it and always stay pruned), where torch's iterative
pruning takes the share of what remains. Ties between equal magnitudes fall as torch.topk breaks them on
the whole tensor.

`cubic_sparsity` is Zhu & Gupta's gradual schedule ("To prune, or not to prune", 2017):
s(e) = s_f * (1 - (1 - (e - start) / (end - start))^3) for start <= e <= end.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from axon.ir import AxonError
from axon.ir.op_bsmatmul import BLOCKS
from axon.passes.block_sparse import block_index, block_mask, index_names, nm_mask
from axon.passes.structured import slice_norms


class PruneError(AxonError):
    """A pruning request that cannot be carried out: an amount out of range, a tensor without the axis."""


def check_amount(amount: float, what: str = "the amount") -> float:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount) \
            or not 0 <= amount < 1:
        raise PruneError(f"{what} to prune must be a fraction in [0, 1), got {amount!r}",
                         hint="0.9 removes nine entries in ten; 1 would remove every one")
    return float(amount)


def count(amount: float, size: int) -> int:
    """How many of `size` entries `amount` prunes: round(amount * size), as torch (round half to even)."""
    return round(check_amount(amount) * size)


def _scores(w: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """|w| flattened, entries already pruned first in line (-1 is below any magnitude)."""
    s = w.detach().abs().reshape(-1).to(torch.float64 if w.dtype == torch.float64 else torch.float32)
    if previous is not None:
        if previous.shape != w.shape:
            raise PruneError(f"a mask of shape {list(previous.shape)} for a weight of shape {list(w.shape)}")
        s = torch.where(previous.reshape(-1).to(s.device) == 0, torch.full_like(s, -1.0), s)
    return s


def l1_unstructured(w: torch.Tensor, amount: float, previous: torch.Tensor | None = None) -> torch.Tensor:
    """The mask of `prune.l1_unstructured(module, name, amount)`: 0 at the round(amount * numel) entries
    of least magnitude."""
    k = count(amount, w.numel())
    mask = torch.ones(w.numel(), dtype=w.dtype, device=w.device)
    if k:
        mask[torch.topk(_scores(w, previous), k=k, largest=False).indices.to(w.device)] = 0
    return mask.view(w.shape)


def global_unstructured(ws: Mapping[str, torch.Tensor], amount: float,
                        previous: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The masks of `prune.global_unstructured(params, L1Unstructured, amount=amount)`: the entries of
    least magnitude over all of `ws` together (so layers end up with different sparsities)."""
    if not ws:
        return {}
    previous = previous or {}
    scores = torch.cat([_scores(w, previous.get(name)).cpu() for name, w in ws.items()])
    flat = torch.ones(scores.numel(), dtype=torch.float32)
    k = count(amount, scores.numel())
    if k:
        flat[torch.topk(scores, k=k, largest=False).indices] = 0
    out, at = {}, 0
    for name, w in ws.items():
        out[name] = flat[at:at + w.numel()].view(w.shape).to(dtype=w.dtype, device=w.device)
        at += w.numel()
    return out


def ln_structured(w: torch.Tensor, amount: float, n: float = 2, dim: int = 0,
                  previous: torch.Tensor | None = None) -> torch.Tensor:
    """The mask of `prune.ln_structured(module, name, amount, n, dim)`: the slices along `dim` of least
    Ln norm (over every other axis) set to 0, the others 1."""
    if w.dim() < 2:
        raise PruneError(f"structured pruning needs a tensor of rank 2 or more, this one has shape "
                         f"{list(w.shape)}")
    if not -w.dim() <= dim < w.dim():
        raise PruneError(f"axis {dim} is out of range for a weight of shape {list(w.shape)}")
    dim %= w.dim()
    size = w.shape[dim]
    keep = size - count(amount, size)
    norms = slice_norms(w if previous is None else w * previous, n, dim)
    if previous is not None:  # slices already pruned stay pruned
        norms = torch.where(slice_norms(previous, 1, dim) == 0, torch.full_like(norms, -1.0), norms)
    mask = torch.zeros_like(w)
    index = [slice(None)] * w.dim()
    index[dim] = torch.topk(norms, k=keep, largest=True).indices
    mask[tuple(index)] = 1
    return mask


GRANULARITY_WORDS = "'element', 'block:16', 'block:32', 'block:64' or 'N:M' such as '2:4'"


def parse_granularity(text: str) -> tuple[str, object]:
    """'element' -> ("element", None); 'block:32' -> ("block", 32); '2:4' -> ("n:m", (2, 4))."""
    if text == "element":
        return "element", None
    head, _, tail = str(text).partition(":")
    if head == "block" and tail.isdigit() and int(tail) in BLOCKS:
        return "block", int(tail)
    if head.isdigit() and tail.isdigit() and 0 < int(head) < int(tail) <= 16:
        return "n:m", (int(head), int(tail))
    raise PruneError(f"unknown pruning granularity '{text}': {GRANULARITY_WORDS}")


def cubic_sparsity(final: float, epoch: int, start: int, end: int, initial: float = 0.0) -> float:
    """The sparsity at the start of `epoch` (0-based) under Zhu & Gupta's cubic ramp from `initial` at
    `start` to `final` at `end`: none before `start`, `final` from `end` on."""
    if epoch < start:
        return 0.0
    if epoch >= end:
        return final
    frac = (epoch - start) / (end - start)
    return final + (initial - final) * (1.0 - frac) ** 3


def sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """The share of entries the masks remove, over all of them."""
    total = sum(m.numel() for m in masks.values())
    return sum(int((m == 0).sum()) for m in masks.values()) / total if total else 0.0


class Pruner:
    """Pruning while a model trains: which weights, how much by which epoch, and the masks that say so.

    `layers` are the parameters pruned (each gets a mask input in the compiled step). At the start of an
    epoch of the schedule, `update` computes the masks for that epoch's sparsity from the weights as
    they are (magnitude: per layer or over all of them), and zeroes the removed entries of the weights and
    of their optimizer states (`state.<slot>.<param>`)."""

    def __init__(self, layers, amount: float, scope: str = "layer", schedule: str = "oneshot",
                 start: int = 0, end: int | None = None, epochs: int = 1, granularity: str = "element"):
        self.layers = tuple(layers)
        self.amount = check_amount(amount)
        self.granularity = granularity
        self.kind, self.size = parse_granularity(granularity)
        if self.kind == "n:m":
            n, m = self.size
            if abs(self.amount - (1 - n / m)) > 1e-9:
                raise PruneError(f"{granularity} sparsity removes {1 - n / m:g} of each weight, not "
                                 f"{self.amount}", hint=f"give amount {1 - n / m:g}")
        if self.kind != "element" and scope == "global":
            raise PruneError(f"scope global ranks single entries; {granularity} pruning is per layer")
        self.scope, self.schedule, self.start = scope, schedule, start
        default_end = max(start + 1, epochs // 2)
        self.end = start if schedule == "oneshot" else (end if end is not None else default_end)
        if self.start >= epochs:
            raise PruneError(f"pruning starts at epoch {self.start}, but the run has {epochs} epochs "
                             f"(epochs count from 0)")

    def record(self) -> dict:
        return {"layers": list(self.layers), "amount": self.amount, "scope": self.scope,
                "schedule": self.schedule, "start": self.start, "end": self.end,
                "granularity": self.granularity}

    def target(self, epoch: int) -> float | None:
        """The sparsity to prune to at the start of `epoch` (0-based), or None when the masks stay."""
        if not self.layers or epoch < self.start or epoch > self.end:
            return None
        if self.schedule == "oneshot":
            return self.amount
        return cubic_sparsity(self.amount, epoch, self.start, self.end)

    def masks(self, params: Mapping[str, torch.Tensor], previous: Mapping[str, torch.Tensor],
              amount: float) -> dict[str, torch.Tensor]:
        ws = {n: params[n] for n in self.layers}
        if self.kind == "block":
            return {n: block_mask(w, self.size, amount, previous=previous.get(n)) for n, w in ws.items()}
        if self.kind == "n:m":  # the pattern of the end at once: N:M has no partial sparsity
            return {n: nm_mask(w, *self.size) if amount else torch.ones_like(w) for n, w in ws.items()}
        if self.scope == "global":
            return global_unstructured(ws, amount, previous)
        return {n: l1_unstructured(w, amount, previous.get(n)) for n, w in ws.items()}

    def update(self, epoch: int, params: dict, states: dict, masks: dict) -> float | None:
        """At the start of `epoch`: new masks if the schedule says so, applied in place to `params`,
        `states` and `masks` (dicts of tensors by name). Returns the sparsity pruned to, or None."""
        from axon.passes.masks import state_param

        amount = self.target(epoch)
        if amount is None:
            return None
        masks.update(self.masks(params, masks, amount))
        for name in self.layers:
            params[name] = params[name] * masks[name]
        for name, s in states.items():
            owner = state_param(name, masks)
            if owner is not None:
                states[name] = s * masks[owner]
        return amount


def refresh_block_indices(params: dict, layers, block: int) -> None:
    """The block indices of block-sparse `layers` in `params` recomputed from their weights (in place,
    on the weights' device); the counters keep counting."""
    for name in layers:
        i, it, _ = index_names(name)
        if i in params:
            index, index_t = block_index(params[name], block)
            params[i], params[it] = index.to(params[name].device), index_t.to(params[name].device)
