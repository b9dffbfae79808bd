"""What kernels are generated and compiled for: Triton's interpreter or a CUDA architecture.

A `Target` is passed to every kernel spec (the source differs where the interpreter and the compiler
differ: the interpreter's bf16 `tl.dot` is wrong, tile caps, launch options) and names the kernel cache
key. `native()` is this machine's; `parse("sm_90")` names another, for ahead-of-time compiles.

The float32 dot precision follows PyTorch's own switch, read when a target is made:
`torch.set_float32_matmul_precision("high")` (or `torch.backends.cuda.matmul.allow_tf32 = True`) lets
f32 matmul, conv and attention run on TF32 tensor cores; the default ("highest") keeps full f32 (`ieee`).

>>> parse("sm_90").name, parse("sm_90").arch
('sm_90', 90)
>>> native().interpreted                                      # doctest: +SKIP
True
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from axon.ir import AxonError


@dataclass(frozen=True)
class Limits:
    """Per-SM resources of an architecture (CUDA's occupancy calculator's table)."""

    regs_per_sm: int = 65536
    regs_per_thread: int = 255
    reg_unit: int = 256               # registers are allocated per warp in units of this many
    smem_per_sm: int = 228 * 1024
    smem_per_block: int = 227 * 1024  # the opt-in maximum one block may use
    threads_per_sm: int = 2048
    blocks_per_sm: int = 32
    threads_per_block: int = 1024


# The architectures `axon compile --target` knows (others fall back to the closest older one).
LIMITS = {
    80: Limits(smem_per_sm=164 * 1024, smem_per_block=163 * 1024),                       # A100
    86: Limits(smem_per_sm=100 * 1024, smem_per_block=99 * 1024, threads_per_sm=1536, blocks_per_sm=16),
    89: Limits(smem_per_sm=100 * 1024, smem_per_block=99 * 1024, threads_per_sm=1536, blocks_per_sm=24),
    90: Limits(),                                                                          # H100/H200
    100: Limits(),                                                                         # B200
    120: Limits(smem_per_sm=100 * 1024, smem_per_block=99 * 1024, threads_per_sm=1536, blocks_per_sm=24),
}
NAMES = ("sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120", "native", "interpreter")


class TargetError(AxonError):
    """A target name that is not an architecture Axon compiles for."""


@dataclass(frozen=True)
class Target:
    backend: str = "interpreter"   # "interpreter" or "cuda"
    arch: int = 0                  # compute capability, major * 10 + minor (90 for sm_90)
    tf32: bool = False             # f32 dots on TF32 tensor cores (PyTorch's "high" precision)

    @property
    def interpreted(self) -> bool:
        return self.backend == "interpreter"

    @property
    def name(self) -> str:
        return "interpreter" if self.interpreted else f"sm_{self.arch}"

    @property
    def limits(self) -> Limits:
        known = [a for a in LIMITS if a <= self.arch] or [min(LIMITS)]
        return LIMITS[max(known)]

    @property
    def dot_precision(self) -> str:
        """`input_precision` of an f32 `tl.dot`: full f32, or TF32 where allowed and compiled."""
        return "tf32" if self.tf32 and not self.interpreted and self.arch >= 80 else "ieee"

    def key(self) -> str:
        """What a cached kernel depends on besides its code: the target and Triton's version."""
        import triton

        return f"{self.name}{' tf32' if self.dot_precision == 'tf32' else ''} triton-{triton.__version__}"

    def __str__(self) -> str:
        return self.name + (" (tf32)" if self.dot_precision == "tf32" else "")


def tf32_allowed() -> bool:
    """PyTorch's float32 matmul precision: anything but "highest" allows TF32."""
    return torch.get_float32_matmul_precision() != "highest"


def native(tf32: bool | None = None) -> Target:
    """This machine's target: the interpreter without a GPU (or with TRITON_INTERPRET=1), else the GPU's
    architecture."""
    tf32 = tf32_allowed() if tf32 is None else tf32
    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        return Target("interpreter", 0, tf32)
    major, minor = torch.cuda.get_device_capability()
    return Target("cuda", major * 10 + minor, tf32)


def parse(name: str, tf32: bool | None = None) -> Target:
    """A target by name: `sm_90` (also `sm90`, `90`), `native`, or `interpreter`."""
    text = name.strip().lower()
    if text == "native":
        return native(tf32)
    tf32 = tf32_allowed() if tf32 is None else tf32
    if text == "interpreter":
        return Target("interpreter", 0, tf32)
    m = re.fullmatch(r"(?:sm_?)?(\d{2,3})a?", text)
    if not m or int(m.group(1)) < 75:
        raise TargetError(f"unknown target '{name}': use one of {', '.join(NAMES)}")
    return Target("cuda", int(m.group(1)), tf32)
