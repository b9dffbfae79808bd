"""Choosing each launch's config on a GPU: compiled, pruned by its resources, timed, remembered.

A launch may carry several configs (`Launch.configs`: block sizes, warps, pipeline stages; the grid is
the same for all). On a GPU, the first call at a set of sizes tunes each such launch on the call's own
tensors: every config is compiled (Triton's disk cache makes that cheap after the first time), a config
that spills registers or cannot launch (too much shared memory, too many threads for its registers) is
dropped before it ever runs, the rest are timed, and the fastest is kept. The choice is stored per
device (`$AXON_CACHE_DIR/tune/<device>.json`, keyed by the kernel's code, its sizes and its configs), so
a later process compiles only the chosen config.

The same figures decide in `axon compile --target` (`codegen/aot.py`), where no config is timed.
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from axon.codegen import cache_dir
from axon.codegen.files import atomic_write
from axon.codegen.launch import Launch


@dataclass
class Trial:
    """One config's fate: its resources, why it was dropped, or its time."""

    config: dict
    regs: int = 0
    spills: int = 0
    dropped: str = ""
    ms: float | None = None


@dataclass
class Store:
    """The choices made on one device, on disk (atomic writes; a damaged file is started afresh)."""

    path: Path
    choices: dict = field(default_factory=dict)

    @classmethod
    def for_device(cls, name: str) -> Store:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "device"
        store = cls(cache_dir() / "tune" / f"{safe}.json")
        try:
            data = json.loads(store.path.read_text())
            store.choices = data if isinstance(data, dict) else {}
        except (OSError, ValueError, RecursionError):  # missing, damaged, not JSON: start afresh
            store.choices = {}
        return store

    def get(self, key: str) -> dict | None:
        found = self.choices.get(key)
        return found.get("config") if isinstance(found, dict) else None

    def put(self, key: str, config: dict, trials: list[Trial]) -> None:
        self.choices[key] = {"config": config, "trials": [
            {"config": t.config, "ms": t.ms, "dropped": t.dropped} for t in trials]}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(self.choices))
        except OSError:
            pass  # a read-only cache: the choice holds for this process only


def key_of(kernel_file: str, launch: Launch) -> str:
    """What a choice depends on: the kernel's code (its cache file), its sizes and its configs."""
    body = json.dumps([kernel_file, list(launch.grid), list(launch.scalars), list(launch.configs)],
                      sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def choose(launch: Launch, key: str, store: Store, compile_config: Callable[[dict], tuple[int, int]],
           time_config: Callable[[dict], float]) -> tuple[Launch, list[Trial]]:
    """The launch with its best config: from `store`, or tried now. `compile_config(config)` compiles
    and returns (registers, spilled bytes), raising if it cannot launch; `time_config(config)` returns
    milliseconds. Configs that spill or cannot launch are never timed."""
    if len(launch.configs) < 2:
        return launch, []
    known = store.get(key)
    if known is not None and known in launch.configs:
        return replace(launch, meta=known), []
    trials = []
    for config in launch.configs:
        trial = Trial(dict(config))
        try:
            trial.regs, trial.spills = compile_config(config)
        except Exception as e:  # noqa: BLE001 - OutOfResources and compile errors alike drop the config
            trial.dropped = f"cannot launch: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        else:
            if trial.spills:
                trial.dropped = f"spills {trial.spills} bytes"
        trials.append(trial)
    usable = [t for t in trials if not t.dropped]
    if not usable:
        # nothing clean: the config that launches with the fewest spills, and a warning saying so
        launchable = [t for t in trials if t.dropped.startswith("spills")]
        if not launchable:
            raise RuntimeError(f"no config of this kernel can launch: {trials[0].dropped}")
        best = min(launchable, key=lambda t: t.spills)
        warnings.warn(f"every config of a kernel spills registers; running the one spilling least "
                      f"({best.spills} bytes): {best.config}", RuntimeWarning, stacklevel=2)
        usable = [best]
    for t in usable:
        t.ms = time_config(t.config)
    best = min(usable, key=lambda t: t.ms)
    store.put(key, best.config, trials)
    return replace(launch, meta=best.config), trials


def on_gpu(kernel, launch: Launch, args: list, store: Store) -> Launch:
    """`choose` with Triton's compiler and `triton.testing.do_bench` on the call's own tensors."""
    import triton.testing

    fn = kernel.fn

    def compile_config(config: dict) -> tuple[int, int]:
        compiled = fn.run(*args, grid=launch.grid, warmup=True, **config)
        compiled._init_handles()  # loads the cubin: raises OutOfResources, reads registers and spills
        return compiled.n_regs, compiled.n_spills

    def time_config(config: dict) -> float:
        return triton.testing.do_bench(lambda: fn[launch.grid](*args, **config), warmup=5, rep=20)

    tuned, _ = choose(launch, key_of(kernel.path.name, launch), store, compile_config, time_config)
    return tuned
