"""Code generation: kernel groups of the IR lowered to generated Triton source, cached on disk.

The interface, in three steps:

- `groups(graph) -> list[KernelGroup]`: which nodes each kernel computes (the default grouping is one
  kernel per computed node, with const/iota/rand computed inline and permute/expand/slice/reshape folded
  into index arithmetic), or `fused_groups(graph, passes.fusion.fuse(graph).groups)`: the fusion
  pass's kernels (several nodes, several outputs each). Nothing below changes.
- `compile_group(group) -> CompiledKernel`: generates the source (`.source`), writes it to the cache
  (`.path`, under `$AXON_CACHE_DIR` or `~/.cache/axon`, checked private by `ensure_cache_dir()`, else a
  private temporary folder) and loads it.
- `CompiledKernel.run({node: tensor}, env) -> {node: tensor}`: allocates the outputs and launches.

>>> from axon.ir import GraphBuilder, DType
>>> b = GraphBuilder(); x = b.input("x", DType.F32, (37, 53)); _ = b.output("y", b.exp(b.neg(x)))
>>> graph = b.build()
>>> [g.kind for g in groups(graph)]
['pointwise', 'pointwise']
>>> import torch
>>> kernel = compile_group(groups(graph)[0])          # kernel.source: the Triton text, kernel.path: its file
>>> x_value = torch.randn(37, 53)
>>> (neg,) = kernel.run({graph.inputs["x"]: x_value}).values()
>>> torch.equal(neg, -x_value)
True

Without a GPU, kernels run through Triton's interpreter (`TRITON_INTERPRET=1`, set before importing triton).
"""
import os as _os
import sys as _sys

import torch as _torch

# Triton decides at import time whether its own library functions (tl.cdiv, tl.sigmoid, ...) are
# interpreted, so without a GPU the interpreter must be chosen before Triton is first imported.
if not _torch.cuda.is_available() and "triton" not in _sys.modules:
    _os.environ.setdefault("TRITON_INTERPRET", "1")

from .cache import CompiledKernel, cache_dir, compile_group, target
from .cachedir import ensure_cache_dir
from .groups import Access, CodegenError, KernelGroup, fused_groups, groups

__all__ = ["Access", "CodegenError", "CompiledKernel", "KernelGroup", "cache_dir", "compile_group",
           "ensure_cache_dir", "fused_groups", "groups", "target"]
