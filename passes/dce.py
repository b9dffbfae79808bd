"""Dead-code elimination: a graph is what its outputs reach.

    input %x: f32[3]
    param %unused: f32[3]                   dce      input %x: f32[3]
    %0 = exp(%x) : f32[3]                  ---->     %0 = neg(%x) : f32[3]
    %1 = neg(%x) : f32[3]                            output %y = %0
    output %y = %1
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from axon.ir import Graph, OpKind, reachable, rebuild

from .manager import register_pass


@register_pass
@dataclass(frozen=True)
class Dce:
    """Drop computed values and parameters the outputs do not reach; every input stays (the signature)."""

    name: ClassVar[str] = "dce"

    def run(self, graph: Graph, stats: Counter | None = None) -> Graph:
        live = reachable(graph)  # the outputs' cone, plus every input
        return _keep(graph, live, stats)


def _keep(graph: Graph, live: set, stats: Counter | None) -> Graph:
    if len(live) == len(graph):
        return graph
    if stats is not None:
        for n in graph.nodes:
            if n not in live:
                stats["dropped param" if n.op == OpKind.PARAM else "dropped dead node"] += 1
    return rebuild(graph, keep=live)[0]
