"""Fusion: which IR nodes share a kernel, decided in one place, with a reason for every refusal.

>>> from axon.ir import DType, GraphBuilder
>>> b = GraphBuilder(); x = b.input("x", DType.F32, ("batch", 64)); w = b.param("w", DType.F32, (64, 8))
>>> _ = b.output("y", b.relu(b.add(b.matmul(x, w), b.param("b", DType.F32, (8,)))))
>>> [g.kind for g in fuse(b.build()).groups]
['matmul']

The pass walks the graph once in topological order. Each computed node either joins the kernel group
of one of its producers or starts a group of its own:

- pointwise: elementwise ops over one iteration space (the largest member's shape; smaller members,
  a bias or a per-row scale, are recomputed at every element they broadcast to). A value of a smaller
  shape that leaves the group is stored only where its broadcast coordinates are 0.
- reduce: sum/mean/max/min over the same axes of the same space, with the elementwise ops that feed
  them (prologue), the ops on their results (row values: a softmax's `x - max`, a layernorm's rsqrt),
  and ops that combine full rows with reduced values (`exp(x - max) / sum`). The latter, and a
  reduction of a value that depends on another reduction, need the whole row in one block
  ("persistent"): only for rows of at most MAX_ROW columns of concrete size. Otherwise the kernel loops
  over blocks of columns and takes only the prologue and the row values.
  A gather along the reduced axis with one index per row (cross-entropy's label) joins a persistent
  group too.
- matmul, conv2d: the template plus an epilogue of elementwise ops over its output tile (bias,
  activation, residual add, scaling), and a prologue computing a quantized weight operand block by block
  in the K loop (`dequantize` of stored codes, `unpack_int4` of packed ones: `prologue.py`), claimed
  before the walk, so the float weight is never stored.
- attention: `softmax(f(q @ k)) @ v` (f: a scale, a causal mask from iota comparisons, a stored mask or bias
  loaded over the tile) is claimed before the walk as one kernel with an online softmax that never stores
  the scores, when nothing outside reads the scores or probabilities. Where the graph holds its gradient in
  the form autodiff writes (`passes/attention.py`), the forward kernel also stores each row's log-sum-exp
  and the gradient is one more kernel (dq, dk, dv) that recomputes the probabilities tile by tile.
- index (gather, take, pad, concat), argmax/argmin, and copies (a movement that cannot be a view) take
  no fusion yet: each is a kernel of its own.

Not members of one group but recomputed in each kernel that uses them ("local"): constants, iota, rand,
and chains of elementwise ops on single-element values (Adam's bias corrections); movement ops that
change no element's position in the iteration space (expand, a reshape that only adds or drops unit
axes) are aliases inside a kernel. Every other movement op is a view a reader folds into its index
arithmetic, so the value it views is stored.

Legality: a node joins a group only if the group's template can compute it in its iteration space, and
merging creates no cycle between kernels (checked as groups grow by `dependence`, exact and without an
n x n table; whole kernels merge on `kernel_dag`, kept in topological order; the final kernel graph is
checked with networkx, and a merge found to close a cycle is undone and refused).
"""
from __future__ import annotations

import networkx as nx

from axon.ir import Graph, Node
from .groups import (ATTENTION_DTYPES, MAX_HEAD, MAX_PASSES, MAX_ROW, Fusion, FusedGroup, Refusal)
from .walk import Fuser

__all__ = ["ATTENTION_DTYPES", "MAX_HEAD", "MAX_PASSES", "MAX_ROW", "Fusion", "FusedGroup", "Refusal", "fuse"]


def fuse(graph: Graph) -> Fusion:
    """Group `graph`'s computed nodes into kernels (see the module docstring)."""
    forbidden: set[Node] = set()
    while True:
        fuser = Fuser(graph, forbidden)
        fusion = fuser.run()
        culprit = _cycle_culprit(fusion, fuser)
        if culprit is None:
            return fusion
        forbidden.add(culprit)


def _cycle_culprit(fusion: Fusion, fuser: Fuser) -> Node | None:
    """The latest node to join a group on a cycle of the kernel graph, or None if there is none."""
    q = fuser.quotient()
    if nx.is_directed_acyclic_graph(q):  # linear; find_cycle searches again from every start node
        return None
    cycle = nx.find_cycle(q)
    on_cycle = {g for edge in cycle for g in edge[:2]}
    for n, g in reversed(fuser.joins):
        if g in on_cycle and n not in fuser.forbidden:
            return n
    raise AssertionError("a cycle between kernels that no merge made")

