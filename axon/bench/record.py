"""A run of `axon bench`: the settings checked, the device's ceilings measured, each case of the mode timed,
and the record (what `--json` writes) with the commit, versions and device it ran on."""
from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from .cases import compile_mode
from .modes import Mode, select
from .settings import Settings, with_defaults
from .timing import ceilings, ieee_f32


def run(settings: Settings, log: Callable[[str], None] = lambda line: None) -> dict:
    """Benchmark as `settings` says; returns the record (what `--json` writes)."""
    from axon.runtime import choose

    mode = select(settings)
    settings.check()
    if mode.prepare is not None:
        mode.prepare(settings)  # before any measuring: a model that cannot run fails at once
    device = choose(settings.device)
    if settings.cuda_graphs:
        from axon.runtime.cuda_graphs import require_cuda

        require_cuda(device)
    s = with_defaults(settings, device)
    torch.manual_seed(s.seed)
    with ieee_f32():
        return _run(mode, s, device, log)


def _run(mode: Mode, s: Settings, device: torch.device, log) -> dict:
    record = header(s, device)
    log(f"measuring the device's ceilings on {record['device']['name']} ...")
    record["ceilings"] = ceil = ceilings(device)
    for case in mode.cases(s, device):
        log(f"timing {case.name} ...")
        record["runs"].append(mode.time(case, s, device, ceil))
        del case
    return record


def header(s: Settings, device: torch.device) -> dict:
    import triton

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU (Triton interpreter)"
    settings = asdict(s)
    settings.update({"torch_compile_mode": compile_mode(s), "axon_call": "check_indices=False (checked once)",
                     "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                     "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32})
    return {"tool": "axon bench", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "axon": git_state(), "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                              "triton": triton.__version__},
            "device": {"name": name, "type": device.type, "interpreter": device.type != "cuda"},
            "mode": s.mode, "settings": settings, "runs": []}


def git_state() -> dict:
    """The commit of the Axon checkout (and whether tracked files differ from it); 'unknown' outside
    a git checkout. Read only: no index refresh (GIT_OPTIONAL_LOCKS=0)."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*argv):
        return subprocess.run(["git", "-C", str(root), *argv], capture_output=True, text=True, timeout=10,
                              env=env, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    try:
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return {"commit": commit, "dirty": dirty}
