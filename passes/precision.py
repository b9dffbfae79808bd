"""A model in another float dtype: every f32 value becomes bf16 (or f16), as `module.to(torch.bfloat16)`.

    input %x: f32[4, 8]                               input %x: bf16[4, 8]
    param %w: f32[8, 3]             dtype{to=bf16}    param %w: bf16[8, 3]
    %0 = matmul(%x, %w) : f32[4, 3]    ------->       %0 = matmul(%x, %w) : bf16[4, 3]
    output %y = %0                                    output %y = %0

Inputs, parameters, constants, literal tensors, casts to f32 and what is computed from them all take the
new dtype; integer and bool values (token ids, labels, masks) and f64 values keep theirs. Kernels hold
16-bit values and compute each op in f32, rounding its result (as torch does on a CPU); matmul, conv2d
and attention take 16-bit operands on tensor cores with f32 accumulation. This is the whole model in 16
bits; mixed precision (f32 master weights, 16-bit dots, loss scaling for f16) is `autocast.py`.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from axon.ir import DType, Graph, GraphBuilder, PassError

from .manager import register_pass

LOW = ("bf16", "f16")


@register_pass
@dataclass(frozen=True)
class ToDtype:
    """Run the model in 16 bits (bf16 or f16): half the memory traffic, dots on tensor cores."""

    name: ClassVar[str] = "dtype"
    to: str = "bf16"

    def run(self, graph: Graph, stats: Counter | None = None) -> Graph:
        if self.to not in LOW:
            raise PassError(f"dtype{{to={self.to}}}: the model can be run in {' or '.join(LOW)}")
        to = DType.parse(self.to)
        b = GraphBuilder(graph.name)
        mapping = {}
        for node in graph.nodes:
            attrs = node.attrs
            if getattr(attrs, "dtype", None) == DType.F32:
                attrs = dataclasses.replace(attrs, dtype=to)
                if stats is not None:
                    stats[f"{node.op} to {self.to}"] += 1
            mapping[node] = b.node(node.op, [mapping[i] for i in node.inputs], attrs)
        for name, node in graph.outputs.items():
            b.output(name, mapping[node])
        return b.build()
