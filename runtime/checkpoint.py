"""Checkpoints: a run's parameters, optimizer state, progress and run record in one safetensors file.

    param/<name>   each parameter          state/<slot>.<name>   each optimizer state tensor
    mask/<name>    each pruned parameter's mask (1 keeps an entry, 0 removes it), in a pruned run
    metadata       progress (JSON: `Progress`), run (JSON: `runs.record`), model, seed, and for an f16
                   run scaler (JSON: the loss scale, its good-step count and the steps skipped)

The file is written atomically and every tensor carries its sha256 (`safetensors`), so a checkpoint is
whole, or the one before it stands, and damage is found on load with the tensor named. A checkpoint whose
progress or run record is malformed, or whose parameters hold NaN or infinity, is refused with the file
named: resuming from it could only train on garbage.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from axon.ir.errors import AxonError
from .safetensors import load, load_metadata, save


class CheckpointError(AxonError):
    """A checkpoint that cannot be used: damaged, malformed, of another model, or not fitting this one."""


@dataclass
class Progress:
    """Where a run is: saved in every checkpoint's metadata."""

    epoch: int = 0            # the epoch under way (0-based)
    batch: int = 0            # the next batch of that epoch
    step: int = 0             # optimizer steps taken
    loss_sum: float = 0.0     # this epoch's training loss so far (sum over batches)
    loss_sum_g: float = 0.0   # a GAN's: its generator's loss this epoch (sum over its steps)
    best: float | None = None
    bad_epochs: int = 0       # epochs since the best (early stopping)
    stopped: str = ""         # why the run ended ("" while it goes on)
    history: list[dict] = field(default_factory=list)


_KINDS = {"epoch": int, "batch": int, "step": int, "loss_sum": float, "loss_sum_g": float,
          "best": (float, type(None)), "bad_epochs": int, "stopped": str, "history": list}
_LATER = {"loss_sum_g": 0.0}  # fields added after checkpoints were first written: absent means this


@dataclass
class Checkpoint:
    params: dict[str, torch.Tensor]
    states: dict[str, torch.Tensor]
    progress: Progress
    run: dict | None          # None: written before run records were kept
    meta: dict[str, str]
    scaler: dict | None = None  # the loss scaler's state (`runtime/scaler.py`); None: no loss scaling
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # pruning masks (`runtime/pruning.py`)


def write(path: Path, params: dict, states: dict, progress: Progress, run: dict, model: str,
          seed: int, scaler: dict | None = None, masks: dict | None = None) -> None:
    tensors = {f"param/{k}": v for k, v in params.items()}
    tensors.update({f"state/{k}": v for k, v in states.items()})
    tensors.update({f"mask/{k}": v for k, v in (masks or {}).items()})
    meta = {"progress": json.dumps(progress.__dict__), "run": json.dumps(run, sort_keys=True, default=str),
            "model": model, "seed": str(seed)}
    if scaler is not None:
        meta["scaler"] = json.dumps(scaler, sort_keys=True)
    save(tensors, path, meta)


def read_meta(path: Path) -> dict[str, str]:
    """The metadata, checked to be a checkpoint's (for reading its run record before compiling)."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    meta = load_metadata(path)
    for key in ("progress", "model"):
        if key not in meta:
            raise CheckpointError(f"{path}: not a checkpoint of `axon train` (its metadata has no '{key}')")
    return meta


def run_record(path: Path, meta: dict[str, str]) -> dict | None:
    if "run" not in meta:
        return None
    try:
        run = json.loads(meta["run"])
    except ValueError as e:
        raise CheckpointError(f"{path}: its run record is damaged ({e})") from None
    if not isinstance(run, dict):
        raise CheckpointError(f"{path}: its run record is damaged (not a JSON object)")
    return run


def read(path: Path, model: str, params: dict[str, torch.Tensor], states: dict[str, torch.Tensor],
         device, masks: dict[str, torch.Tensor] | None = None) -> Checkpoint:
    """The checkpoint at `path` for `model`, its tensors checked against `params` and `states` (names,
    shapes, dtypes) and to be finite; the masks of a pruned run against `masks` (the pruned parameters:
    names, shapes, dtypes, and nothing but 0 and 1 in them)."""
    meta = read_meta(path)
    if meta["model"] != model:
        raise CheckpointError(f"{path}: a checkpoint of model '{meta['model']}', not '{model}'")
    progress = _progress(path, meta["progress"])
    run = run_record(path, meta)
    tensors = load(path, device=device)
    got_params = section(tensors, "param/", params, path)
    got_states = section(tensors, "state/", states, path)
    for prefix, group in (("param/", got_params), ("state/", got_states)):
        for name, t in group.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise CheckpointError(f"{path}: tensor '{prefix}{name}' holds NaN or infinity; "
                                      f"a run cannot continue from it")
    got_masks = section(tensors, "mask/", masks or {}, path)
    for name, m in got_masks.items():
        if not bool(((m == 0) | (m == 1)).all()):
            raise CheckpointError(f"{path}: mask 'mask/{name}' holds values other than 0 and 1")
    scaler = _scaler(path, meta["scaler"]) if "scaler" in meta else None
    return Checkpoint(got_params, got_states, progress, run, meta, scaler, got_masks)


def _progress(path: Path, text: str) -> Progress:
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise CheckpointError(f"{path}: its progress record is damaged ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: its progress record is damaged (not a JSON object)")
    names = {f.name for f in fields(Progress)}
    raw = {**_LATER, **raw}
    unknown = sorted(set(raw) - names)
    missing = sorted(names - set(raw))
    if unknown or missing:
        raise CheckpointError(f"{path}: its progress record is damaged ("
                              + "; ".join(filter(None, [unknown and f"unknown fields {', '.join(unknown)}",
                                                        missing and f"missing {', '.join(missing)}"])) + ")")
    for name, kind in _KINDS.items():
        value = raw[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = raw[name] = float(value)
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if ok and isinstance(value, int) and value < 0:
            ok = False
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok:
            raise CheckpointError(f"{path}: its progress record is damaged ('{name}' is {value!r})")
    if not all(isinstance(r, dict) for r in raw["history"]):
        raise CheckpointError(f"{path}: its progress record is damaged (a history entry is not an object)")
    return Progress(**raw)


_SCALER = {"scale": float, "growth_tracker": int, "skipped": int}


def _scaler(path: Path, text: str) -> dict:
    """The loss scaler's state: a finite positive scale and two counts."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise CheckpointError(f"{path}: its loss-scaler record is damaged ({e})") from None
    if not isinstance(raw, dict) or set(raw) != set(_SCALER):
        raise CheckpointError(f"{path}: its loss-scaler record is damaged (expected the fields "
                              f"{', '.join(_SCALER)}, got {raw!r})")
    for name, kind in _SCALER.items():
        value = raw[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = raw[name] = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) or value < 0 or \
                (kind is float and not (math.isfinite(value) and value > 0)):
            raise CheckpointError(f"{path}: its loss-scaler record is damaged ('{name}' is {value!r})")
    return raw


def section(tensors, prefix: str, like: dict[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    """The tensors under `prefix`, which must match `like` in names, shapes and dtypes."""
    got = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing = sorted(set(like) - set(got))
    extra = sorted(set(got) - set(like))
    bad = [k for k in like if k in got and (got[k].shape != like[k].shape or got[k].dtype != like[k].dtype)]
    if missing or extra or bad:
        what = "; ".join(filter(None, [
            missing and f"missing {', '.join(missing[:5])}", extra and f"unexpected {', '.join(extra[:5])}",
            bad and "different shape or dtype: " + ", ".join(
                f"{k} {tuple(got[k].shape)} {got[k].dtype} (model: {tuple(like[k].shape)} {like[k].dtype})"
                for k in bad[:5])]))
        raise CheckpointError(f"{path}: does not fit this model ({what})")
    return {k: got[k] for k in like}
