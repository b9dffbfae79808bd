"""(being written)"""
from __future__ import annotations

from dataclasses import dataclass

from .groups import CodegenError, KernelGroup


@dataclass
class Conv2dKernel:
    group: KernelGroup
    name: str = "conv2d_kernel"
    wide: bool = False

    def __post_init__(self):
        raise CodegenError(f"no kernel template for '{self.group.nodes[0].op}' yet")
