"""Common-subexpression elimination. Rebuilding a graph through `GraphBuilder` already merges
structurally equal nodes (the builder interns them); this pass also puts the operands of commutative
ops in one order, so that `add(%a, %b)` and `add(%b, %a)` become one node.

    %0 = add(%x, %y) : f32[3]            cse     %0 = add(%y, %x) : f32[3]
    %1 = add(%y, %x) : f32[3]           ---->    %1 = mul(%0, %0) : f32[3]
    %2 = mul(%0, %1) : f32[3]
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from axon.ir import Graph, GraphBuilder, Node, OpKind, rebuild
from axon.ir.ops import COMMUTATIVE

from .manager import register_pass

LITERALS = frozenset({OpKind.CONST, OpKind.TENSOR, OpKind.IOTA})


@register_pass
@dataclass(frozen=True)
class Cse:
    """Merge values computed twice (commutative operands ordered first), so each is computed once."""

    name: ClassVar[str] = "cse"

    def run(self, graph: Graph, stats: Counter | None = None) -> Graph:
        position: dict[Node, int] = {}  # each new node's place in the new graph

        def order(n: Node) -> tuple[bool, int]:
            """Literals last (as `x + 1` is written), then the later-defined operand first (as in
            `x @ w + b`, the bias declared before the product): the order most graphs already use."""
            return n.op in LITERALS, -position[n]

        reordered = 0

        def visit(b: GraphBuilder, old: Node, inputs: tuple[Node, ...]) -> Node:
            nonlocal reordered
            if old.op in COMMUTATIVE:
                ordered = tuple(sorted(inputs, key=order))
                reordered += ordered != inputs
                inputs = ordered
            new = b.node(old.op, inputs, old.attrs)
            position.setdefault(new, len(position))
            return new

        new, _ = rebuild(graph, visit)
        if stats is not None:
            counts = {"merged": len(graph) - len(new), "operands reordered": reordered}
            stats.update({k: v for k, v in counts.items() if v})
        return new
