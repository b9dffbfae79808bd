"""The modes of `axon bench`, in one table: what each times and what it needs.

A mode is a function giving the cases to time (built one at a time, so big ones are freed in turn), and
the function timing one case (by default `timing.time_case`: Axon, PyTorch eager and torch.compile).
To add a mode, write its cases (and, if it measures something else than three implementations, its
own timing function) in a module of its own next to `forward.py`, and add a line to `MODES` below;
`axon bench --mode NAME` then runs it (the CLI's help lists the modes by hand).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from axon.ir.errors import did_you_mean
from .forward import forward_cases
from .host import host_cases, time_host
from .kernels import kernel_cases
from .settings import BenchError, Settings
from .timing import time_case
from .train import train_block, train_cases


@dataclass(frozen=True)
class Mode:
    """One `--mode`: its cases, how a case is timed, and what it takes."""

    cases: Callable                    # (settings, device) -> the cases, one at a time
    time: Callable = time_case         # (case, settings, device, ceilings) -> the run's record
    needs_file: bool = True            # a model file; else its own sweep: no FILE, --model, --set, ...
    cuda_graphs: bool = True           # can run as CUDA graphs (--cuda-graphs)
    prepare: Callable[[Settings], object] | None = None  # checks made before any measuring
    file_optional: bool = False        # a model file may be given (else the mode's own set)


MODES: dict[str, Mode] = {
    "forward": Mode(forward_cases),
    "train": Mode(train_cases, prepare=train_block),  # a model without a train block fails at once
    "kernels": Mode(kernel_cases, needs_file=False, cuda_graphs=False),
    # the examples' training steps, or FILE's: host time per launch (Axon's own, Triton's, eager's)
    "host": Mode(host_cases, time=time_host, needs_file=False, cuda_graphs=False, file_optional=True),
}


def select(s: Settings) -> Mode:
    """The mode `s` asks for, after checking that it gets what it takes."""
    mode = MODES.get(s.mode)
    if mode is None:
        raise BenchError(f"unknown bench mode '{s.mode}'",
                         hint=did_you_mean(s.mode, MODES) or f"modes: {', '.join(MODES)}")
    if mode.needs_file and not s.file:
        raise BenchError(f"--mode {s.mode} needs a model file (only --mode kernels runs without one)")
    given = s.file or s.model or s.hparams or s.batch or s.dims
    if not mode.needs_file and not mode.file_optional and given:
        raise BenchError(f"--mode {s.mode} times its own sweep of kernels and sizes: it takes no FILE, "
                         "--model, --set, --batch or --dim")
    if s.cuda_graphs and not mode.cuda_graphs:
        raise BenchError("--cuda-graphs applies to --mode forward and train (the kernel sweep times "
                         "single large kernels, where launch overhead is not what is measured)")
    return mode
