"""What `axon bench` was asked to do, and the defaults it fills in for the device."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from axon.ir import AxonError


class BenchError(AxonError):
    """A benchmark that cannot run as asked: a bad mode, size or count, a model without a train block."""


@dataclass
class Settings:
    """What `axon bench` was asked to do (recorded in the JSON as given, plus the defaults it chose)."""

    file: str | None = None
    model: str | None = None
    hparams: dict = field(default_factory=dict)
    mode: str = "forward"
    batch: int | None = None
    dims: dict = field(default_factory=dict)
    repeats: int | None = None   # default: 50 on a GPU, 3 on the CPU
    warmup: int | None = None    # default: 10 on a GPU, 1 on the CPU
    device: str | None = None
    compile: bool = True
    seed: int = 0
    cuda_graphs: bool = False    # Axon's launch list as a CUDA graph; torch.compile's 'reduce-overhead'
    quantized: str | None = None  # forward: also the model as `axon quantize` wrote it to this folder

    def check(self) -> None:
        """The counts make sense (what each mode takes is `modes.select`'s to check)."""
        for name in ("repeats", "batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BenchError(f"--{name} must be at least 1, got {value}")
        if self.warmup is not None and self.warmup < 0:
            raise BenchError(f"--warmup must be at least 0, got {self.warmup}")
        if self.quantized is not None:
            if self.mode != "forward":
                raise BenchError(f"--quantized times the quantized model's forward pass: it takes --mode "
                                 f"forward, not --mode {self.mode}")
            from axon.quantize_cmd import read

            read(self.quantized)  # a missing or foreign folder before anything is timed


def with_defaults(s: Settings, device: torch.device) -> Settings:
    """`s` with the repeat and warm-up counts of the device filled in."""
    gpu = device.type == "cuda"
    return Settings(**{**asdict(s), "repeats": s.repeats or (50 if gpu else 3),
                       "warmup": s.warmup if s.warmup is not None else (10 if gpu else 1)})
