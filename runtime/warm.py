"""A cold start on a GPU, in parallel: a plan's kernels compiled by a pool of worker processes before its
first call, instead of one after another as the call reaches them.

Triton compiles a kernel the first time it is launched, in the launching process, one at a time; a model
of a hundred kernels (each with the configs its tuner will try) pays for each in turn. The compile
workers of `axon compile --target` (`codegen/aot.py`) compile exactly what the launches will ask for — the
same source file, arguments specialized the same way, the same options — for this GPU's architecture,
and Triton's on-disk cache hands the result to the launching process, which then only loads it. Kernels
compiled before on this machine (the AOT result cache knows them) are not sent again; the tuner's stored
choices narrow a launch to the config it will run. `AXON_PARALLEL_COMPILE=0` turns this off.
"""
from __future__ import annotations

import logging
import os

from axon.codegen import aot
from axon.codegen.target import Target
from .plan import Plan

log = logging.getLogger("axon")
SWITCH = "AXON_PARALLEL_COMPILE"
MIN_JOBS = 4  # fewer compiles than this are not worth starting worker processes for


def jobs(plan: Plan, target: Target, chosen=lambda launch, kernel: None) -> list[aot.Job]:
    """One job per config each launch of `plan` may run (the stored choice alone when there is one)."""
    out = []
    for step in plan.steps:
        launch = step.launch
        known = chosen(launch, step.kernel)
        if known is not None:
            launch = launch.__class__(launch.grid, launch.inputs, launch.outputs, launch.scalars, known)
        out += aot.jobs_for([(step.kernel, launch)], target)
    return out


def compile_ahead(plan: Plan, target: Target, chosen=lambda launch, kernel: None) -> int:
    """Compile what `plan`'s first call would, in parallel; returns how many compiles were sent."""
    if os.environ.get(SWITCH, "1") == "0" or target.interpreted:
        return 0
    todo = [j for j in jobs(plan, target, chosen) if aot.saved(j.key(target)) is None]
    if len(todo) < MIN_JOBS:
        return 0
    rows = aot.compile_jobs(todo, target)
    failed = [r for r in rows if not r.ok]
    if failed:  # the launch will raise with the full error; say here which it is
        log.warning("%d of %d kernels did not compile ahead (%s)", len(failed), len(rows),
                    failed[0].error[:200])
    return len(todo)
