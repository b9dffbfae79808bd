"""Run folders that no run can clobber, and the record of what a run is, so a resume cannot change it.

A run folder holds one run: its checkpoint, its best parameters, its metrics. A new run never writes into
a folder that holds another run's files: with the default folder it takes the next free name
(`runs/MLP-2`, `runs/MLP-3`, ... as Lightning's `version_N` and YOLO's `runs/train2` do) and says so;
with a folder named by `--out` it refuses and names `--resume` and `--overwrite`. The folder is made and
written to (a probe file) before any compute, and held by a lock while the run goes on, so two runs never
share it. The lock is an advisory `flock` on a hidden file: the kernel drops it when the process dies,
even by kill -9.

The run record (`record`) is everything that defines a run: the model, its step graph's hash, the
hyper-parameters, the data and its options, batch, seed, optimizer, schedule and precision. A checkpoint
stores it; `--resume` compares it with the run about to start (`compare`): a difference that breaks the
run refuses, with the difference shown; the changes a run survives (more epochs without a schedule over
the whole run, early stopping, the checkpoint interval, the device, a source edit that compiles to the
same step) are named and allowed, as are a source edit and hyper-parameter overrides where the training
step compiles the same. A record without a key added later reads as that key's old meaning (`ABSENT`:
no precision is f32).

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> first = claim(None, root / "MLP", resume=False, overwrite=False)
>>> _ = (first.path / "checkpoint.safetensors").write_bytes(b"...")
>>> second = claim(None, root / "MLP", resume=False, overwrite=False)
>>> second.path.name, second.note is not None
('MLP-2', True)
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from axon.ir.errors import AxonError

try:
    import fcntl
except ImportError:  # not on Windows: runs there are not locked
    fcntl = None

CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"
METRICS = "metrics.json"
CURVE = "curve.png"
RUN_FILES = (CHECKPOINT, BEST, METRICS)  # what makes a folder hold a run
LOCK = ".axon-run.lock"


class RunFolderError(AxonError):
    """A run folder that cannot be used: another run's, unwritable, not a folder, locked."""


@dataclass
class RunFolder:
    """A claimed run folder: made, written to once, and locked for this process."""

    path: Path
    note: str | None = None       # what the claim decided that the user should hear (another name)
    replaces: list[str] = field(default_factory=list)  # --overwrite: the old run's files, removed by clear()
    _lock: int | None = field(default=None, repr=False)

    def clear(self) -> None:
        """--overwrite: remove the old run's files (called once the new run has compiled)."""
        for name in self.replaces:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        self.replaces = []

    def release(self) -> None:
        """Drop the lock (the process's exit drops it too)."""
        if self._lock is not None:
            _HELD.pop(os.path.realpath(self.path), None)
            with contextlib.suppress(OSError):
                os.close(self._lock)
            self._lock = None

    def __del__(self):
        self.release()


def run_files(folder: Path) -> list[str]:
    """The files of a run that `folder` holds."""
    return [name for name in RUN_FILES if (folder / name).exists()]


def claim(out: str | Path | None, default: Path, *, resume: bool, overwrite: bool) -> RunFolder:
    """The folder this run writes to: `out` if given, else `default` or the next free name after it.

    Refuses (RunFolderError) a folder that holds another run unless `resume` or `overwrite`, a path that
    is a file, a folder that cannot be made or written, and a folder another run holds."""
    if resume and overwrite:
        raise RunFolderError("--resume continues the run in the folder and --overwrite replaces it: "
                             "give one of them")
    explicit = out is not None
    path = Path(out) if explicit else Path(default)
    if resume:
        if not (path / CHECKPOINT).is_file():
            found = run_files(path) if path.is_dir() else []
            what = f"it holds {', '.join(found)} but no {CHECKPOINT}" if found else \
                f"there is no {path / CHECKPOINT}"
            hint = "start the run without --resume" + (" (and with --overwrite)" if found else "")
            raise RunFolderError(f"--resume: nothing to continue in {path}: {what}", hint=hint)
        return _take(path)
    if explicit or overwrite:
        found = run_files(path) if path.is_dir() else []
        if found and not overwrite:
            raise RunFolderError(f"--out {path} holds another run ({', '.join(found)})",
                                 hint="continue it with --resume, replace it with --overwrite, or name a new "
                                      "folder with --out")
        folder = _take(path)
        folder.replaces = found + ([CURVE] if found and (path / CURVE).exists() else [])
        return folder
    for k in itertools.count(1):
        candidate = _nth(path, k)
        if candidate.is_dir() and run_files(candidate):
            continue
        try:
            folder = _take(candidate)
        except _Locked:
            continue
        if k > 1:
            folder.note = (f"{path} holds an earlier run; this run writes to {candidate} "
                           f"(--resume --out {path} continues that one, --overwrite replaces it)")
        return folder
    raise AssertionError("unreachable")


def _nth(path: Path, k: int) -> Path:
    return path if k == 1 else path.with_name(f"{path.name}-{k}")


def free_folder(default: Path) -> Path:
    """The folder a run without --out would take now: `default` or the next name holding no run."""
    return next(p for p in (_nth(Path(default), k) for k in itertools.count(1))
                if not (p.is_dir() and run_files(p)))


class _Locked(RunFolderError):
    pass


def _take(path: Path) -> RunFolder:
    """Make `path`, prove it writable, and lock it."""
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"run folder {path} is a file, not a folder", hint="name a folder with --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".axon-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunFolderError(f"run folder {path} cannot be written: {e.strerror or e}",
                             hint="name a writable folder with --out") from None
    return RunFolder(path, _lock=_lock(path))


_HELD: dict[str, int] = {}  # folders this process holds (a second Trainer on one folder shares the lock)


def _lock(path: Path) -> int | None:
    key = os.path.realpath(path)
    if fcntl is None or key in _HELD:
        return None
    try:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunFolderError(f"run folder {path}: cannot make its lock file: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        by = f" (process {holder})" if holder else ""
        raise _Locked(f"run folder {path} is in use by another run{by}",
                      hint="wait for it to end, or name another folder with --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD[key] = fd
    return fd


# --- the run record ----------------------------------------------------------------------------------
# what a resumed run may change, and what breaks it (and why)
MAY_CHANGE = {
    "epochs": "the run ends at another epoch",
    "early_stop": "early stopping decides with other settings from here on",
    "checkpoint_every": "checkpoints are written at another interval",
    "device": "the run continues on another device",
    "init": "the starting parameters matter only at the start: a resumed run continues from its checkpoint",
}
SAME_STEP = {"source", "hparams"}  # harmless where the training step compiles the same, else they break
BREAKS = {
    "model": "a checkpoint of another model",
    "source": "the file changed, and the training step with it",
    "step_graph": "the training step computes something else (the model, loss or optimizer changed)",
    "hparams": "the model's hyper-parameters differ",
    "data": "another data set or data options: other examples, another split",
    "batch": "the data order, the step count and the learning-rate schedule depend on it",
    "seed": "the train/validation split, the data order and dropout depend on it",
    "optimizer": "the optimizer or its settings differ",
    "schedule_steps": "the learning-rate schedule spans the whole run, so it depends on the epochs",
    "precision": "the step computes in another precision (f32, or mixed with bf16 or f16 dots)",
    "qat": "quantization-aware training fake-quantizes other weights, or none (--qat)",
    "augment": "the training batches are augmented otherwise, or not at all (augment { ... })",
    "adversarial": "the step trains on other adversarial examples, or none (adversarial = ...)",
    "structure": "the model has other neurons, channels or heads removed (axon prune --method structured)",
    "prune": "the run prunes other weights, by another amount or schedule, or none (prune { ... })",
}
# what a record written before a key existed means by its absence
ABSENT = {"precision": "f32", "qat": None}


def normal(record: dict) -> dict:
    """`record` as it reads back from a checkpoint (JSON types: lists, string keys)."""
    return json.loads(json.dumps(record, sort_keys=True, default=str))


def compare(saved: dict, now: dict) -> tuple[list[str], list[str]]:
    """(what breaks the run, what changes and is allowed), one line each, for a resume of `saved` as
    `now`. Keys neither table names break the run: an unknown difference is not assumed harmless."""
    saved, now = {**ABSENT, **normal(saved)}, normal(now)
    breaks, allowed = [], []
    for key in sorted(set(saved) | set(now)):
        old, new = saved.get(key), now.get(key)
        if old == new:
            continue
        line = f"{key}: {_show(old)} in the checkpoint, {_show(new)} now"
        if key in SAME_STEP and saved.get("step_graph") == now.get("step_graph"):
            allowed.append(f"{line} (the training step is the same)")
        elif key in MAY_CHANGE:
            allowed.append(f"{line} ({MAY_CHANGE[key]})")
        else:
            breaks.append(f"{line} ({BREAKS.get(key, 'part of what the run is')})")
    return breaks, allowed


def _show(value) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a hash
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
