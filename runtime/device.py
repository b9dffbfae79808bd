"""Where kernels run: a CUDA GPU when there is one, else the CPU through Triton's interpreter.

The choice is made once per process (Triton decides interpreter-or-compiler when a kernel is loaded, from
`TRITON_INTERPRET`), can be forced with `device="cpu"` / `"cuda"` or `TRITON_INTERPRET=1`, and is said once.
"""
from __future__ import annotations

import logging
import os
import warnings

import torch

from axon.ir import AxonError

log = logging.getLogger("axon")
_SAID: set[str] = set()


class DeviceError(AxonError):
    """A device asked for that this machine does not have."""


def choose(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: `device` if given, else CUDA when present (and not TRITON_INTERPRET=1)."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if device is None:
        device = "cpu" if interpret or not torch.cuda.is_available() else "cuda"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"unknown device '{device}': use 'cuda', 'cuda:N' or 'cpu'") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device 'cuda' asked for, but this machine has no CUDA GPU (use 'cpu': "
                              "the same kernels run through Triton's interpreter)")
        if interpret:
            raise DeviceError("TRITON_INTERPRET=1 is set, which runs kernels on the CPU: unset it to use "
                              "the GPU")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type == "cpu":
        if not _library_interpreted():
            raise DeviceError("device 'cpu' needs Triton's interpreter, but Triton was imported without "
                              "it: set TRITON_INTERPRET=1 before starting Python (or import axon first)")
        os.environ["TRITON_INTERPRET"] = "1"  # Triton reads it when each kernel is loaded
        # The interpreter computes masked-off lanes too (log(0), x/0 there are harmless): no warnings.
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="triton.runtime.interpreter")
    else:
        raise DeviceError(f"device '{dev}' is not supported: kernels run on 'cuda' or, through "
                          f"Triton's interpreter, on 'cpu'")
    _say_once(dev)
    return dev


def _library_interpreted() -> bool:
    """Whether Triton's own jit functions were set up for the interpreter (decided at import)."""
    import triton.language as tl

    return type(tl.standard.cdiv).__name__ == "InterpretedFunction"


def describe(dev: torch.device) -> str:
    import triton

    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        return (f"running on {torch.cuda.get_device_name(dev)} ({dev}, sm{major}{minor}), "
                f"Triton {triton.__version__}")
    why = "TRITON_INTERPRET=1" if torch.cuda.is_available() else "no CUDA GPU"
    return f"running on the CPU through Triton {triton.__version__}'s interpreter ({why})"


def _say_once(dev: torch.device) -> None:
    if str(dev) not in _SAID:
        _SAID.add(str(dev))
        log.info(describe(dev))
