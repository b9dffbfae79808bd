"""A test harness: a whole graph through generated kernels, in one call (the runtime's Executable, with
index checks off so a test can see what a kernel does with an out-of-range index)."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from axon.ir import Graph
from .executable import Executable


def run_graph(graph: Graph, inputs: Mapping[str, torch.Tensor],
              params: Mapping[str, torch.Tensor] | None = None,
              poison: bool = False) -> dict[str, torch.Tensor]:
    """Run `graph` with generated kernels (one per group of the default grouping); named outputs."""
    return Executable(graph)(inputs, params or {}, poison=poison, check_indices=False)
