"""Graphs for data-parallel training: one rank's share of a step equal to one process's whole step.

A rank holds rows [r, r + n) of the global batch. Its gradients, weighted by n / N and summed over the
ranks (`runtime/distributed.py`), equal the one process's gradient of the mean loss over all N rows; what
else must match is the randomness. Dropout draws `rand` over the batch's shape, element i from Philox's
counter i, so the rank's rows would draw the numbers of rows [0, n). `offset_rands` gives every `rand`
whose leading dimension is the batch's the counter offset r * (elements per row), an i64 input
`rows_offset` (r, fed by the rank): each rank then draws exactly the numbers one process draws for its
rows. A `rand` over another leading dimension (not per example) draws the same on every rank, as in one
process. (`axon/data_parallel.py` cuts the step in two at the all-reduce.)
"""
from __future__ import annotations

from math import prod

from axon.ir import DType, Graph, GraphBuilder, Node, OpKind, PassError
from axon.ir.rewrite import rebuild

K = OpKind
ROWS_OFFSET = "rows_offset"


def offset_rands(graph: Graph, batch) -> Graph:
    """`graph` with every `rand` over [batch, ...] drawing from counter offset `rows_offset` * row size."""
    def visit(b: GraphBuilder, node: Node, ins: tuple[Node, ...]) -> Node | None:
        if node.op != K.RAND or len(ins) != 1 or not node.shape or node.shape[0] != batch:
            return None
        row = node.shape[1:]
        if not all(isinstance(d, int) for d in row):
            raise PassError(f"dropout over {node.type} has symbolic sizes after the batch: its row size must "
                            f"be known to give each data-parallel rank its share of the random numbers")
        rows = b.lookup(ROWS_OFFSET) or b.input(ROWS_OFFSET, DType.I64, ())
        offset = b.mul(rows, b.const(prod(row), DType.I64)) if prod(row) != 1 else rows
        return b.rand(ins[0], node.shape, node.attrs.dtype, node.attrs.stream, offset)

    if ROWS_OFFSET in graph.inputs:
        raise PassError(f"the graph already has an input named '{ROWS_OFFSET}'")
    return rebuild(graph, visit)[0]
