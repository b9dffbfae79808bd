"""A test harness, not the runtime: evaluates a whole graph by running each group's kernel in order."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from axon.ir import Graph, OpKind
from axon.ir.evaluate import EvalContext, bind_symbols
from .cache import compile_group
from .groups import groups

K = OpKind


def run_graph(graph: Graph, inputs: Mapping[str, torch.Tensor],
              params: Mapping[str, torch.Tensor] | None = None,
              poison: bool = False) -> dict[str, torch.Tensor]:
    """Run `graph` with generated kernels (one per group of the default grouping); named outputs."""
    params = params or {}
    env = bind_symbols(graph, inputs)
    values = {}
    for node in graph.nodes:
        if node.op == K.INPUT:
            values[node] = inputs[node.name].contiguous()
        elif node.op == K.PARAM:
            values[node] = params[node.name].contiguous()
        elif node.op == K.TENSOR:
            values[node] = EvalContext().literal(node.attrs.data, node.dtype).reshape(node.shape)
            values[node] = values[node].to(node.dtype.torch)
    for group in groups(graph):
        values.update(compile_group(group).run(values, env, poison=poison))
    return {name: values[node] for name, node in graph.outputs.items()}
