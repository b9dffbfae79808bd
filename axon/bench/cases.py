"""A case: one computation, ready to be timed three ways (Axon, PyTorch eager, torch.compile), with what
it moves and computes, and how far Axon's result is from PyTorch's. Helpers the modes share."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from axon.ir import Graph, OpKind
from axon.ir.shapes import concrete
from .settings import Settings

K = OpKind


@dataclass
class Case:
    """One thing timed three ways."""

    name: str
    shapes: dict
    axon: Callable[[], object]
    eager: Callable[[], object]
    make_compiled: Callable[[], Callable[[], object]]
    launches: int
    kernels: int
    check: dict
    bytes: int | None = None     # the least traffic the computation needs (inputs + outputs)
    flops: int | None = None
    extra: dict = field(default_factory=dict)


def agreement(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]) -> dict:
    """Worst absolute and relative error over the outputs both have, and whether each is within the
    tolerance `axon run --check` allows."""
    from axon.run import compare

    worst, rel, ok, names = 0.0, 0.0, True, []
    for name in want:
        if name in got:
            w, r, good = compare(got[name], want[name])
            rel = math.nan if math.isnan(r) or math.isnan(rel) else max(rel, r)  # nan: a NaN misplaced
            worst, ok = max(worst, w), ok and good
            names.append(name)
    return {"max_abs_error": worst, "max_rel_error": rel, "ok": ok, "outputs": names}


def dims(graph: Graph, s: Settings, device: torch.device, batch: int | None) -> dict[str, int]:
    """Sizes of the symbolic dimensions: --dim, then --batch (or `batch`: on a GPU the train block's),
    the rest 32 on a GPU and 4 on the CPU (a smoke test there)."""
    from axon.run import bind_dims, symbols

    sizes = dict(s.dims)
    names = symbols(graph)
    if "batch" in names and (s.batch or batch):
        sizes["batch"] = s.batch or batch
    return bind_dims(graph, sizes, default=32 if device.type == "cuda" else 4)


def graph_flops(graph: Graph, env: Mapping[str, int]) -> int:
    """Multiply-adds of the matmuls and convolutions, times two (the rest is noise next to them)."""
    total = 0
    for node in graph.nodes:
        if node.op in (K.MATMUL, K.QMATMUL):
            a = concrete(node.inputs[0].shape, env)
            total += 2 * math.prod(concrete(node.shape, env)) * a[-1]
        elif node.op == K.CONV2D:
            w = concrete(node.inputs[1].shape, env)
            total += 2 * math.prod(concrete(node.shape, env)) * math.prod(w[1:])
    return total


def shapes(tensors: Mapping[str, torch.Tensor]) -> dict:
    return {k: list(v.shape) for k, v in tensors.items()}


def compile_mode(s: Settings) -> str:
    """torch.compile's mode: with --cuda-graphs its own CUDA graphs ('reduce-overhead'), like for like."""
    return "reduce-overhead" if s.cuda_graphs else "default"


def graphed(exe, s: Settings, **options):
    """The executable, or with --cuda-graphs its launch list replayed as CUDA graphs."""
    if not s.cuda_graphs:
        return exe
    from axon.runtime.cuda_graphs import GraphedExecutable

    return GraphedExecutable(exe, **options)
