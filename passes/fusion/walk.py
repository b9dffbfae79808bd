"""The fusion walk: each computed node, in topological order, joins a producer's kernel group or starts
its own, with a reason for every refusal; then whole groups merge (`merge`) and the groups are put in
launch order."""
from __future__ import annotations

import networkx as nx

from axon.ir import Graph, Node
from axon.ir.op_quant import per_group
from axon.ir.ops import ELEMENTWISE
from ..dependence import Dependence, Spine
from ..row_passes import RowPasses
from .claim import ClaimAttention
from .groups import (ATTENTION, BUFFER_SOURCES, EPILOGUE_TEMPLATES, FOLDED_MOVEMENT, FUSED_REDUCE,
                     INLINE_SOURCES, MAX_PASSES, TEMPLATES, Fusion, FusedGroup, K, Refusal, aligned_axes,
                     broadcast_shapes, first_of, fits_row, fmt_shape, is_single, keep1, row_level,
                     too_many_passes)
from .merge import MergeGroups
from .prologue import ClaimPrologue


class Fuser(ClaimAttention, ClaimPrologue, MergeGroups):
    def __init__(self, graph: Graph, forbidden: set[Node]):
        self.graph = graph
        self.forbidden = forbidden
        self.index = graph.index()
        self.users = graph.users()
        self.outputs = set(graph.outputs.values())
        self.owner: dict[Node, FusedGroup] = {}
        self.groups: dict[FusedGroup, None] = {}  # an ordered set: groups leave it in any order
        self.refusals: list[Refusal] = []
        self.joins: list[tuple[Node, FusedGroup]] = []
        self.spine = Spine(graph, self.index, self.users)
        self.dependence = Dependence(self.spine, self.owner)
        self.local: set[Node] = set()      # recomputed where used
        self.views: set[Node] = set()      # folded into readers
        self.contiguous: set[Node] = set()
        self.rows = RowPasses(self.index, self.users, self.views, self.owner)
        self.prologues: set[Node] = set()  # dequantized weights computed in their matmuls' K loops

    def run(self) -> Fusion:
        claimed = self._claim_attention()
        claimed |= self._claim_prologues(claimed)
        for n in self.graph.nodes:
            if n not in claimed:
                self._place(n)
        self._merge_groups()
        for g in self.groups:  # whole rows in one block where a row fits, else passes over its columns
            g._persistent = g.kind == "reduce" and self._needs_rows(g) and fits_row(g.space, g.axes)
        members = {g: set(g.nodes) for g in self.groups}
        self.refusals = [r for r in self.refusals if r.producer not in self.local and not (
            self.owner.get(r.producer) is not None and r.consumer in members[self.owner[r.producer]])]
        return Fusion(self.graph, self._ordered(), self.refusals, frozenset(self.prologues))

    # --- classification ------------------------------------------------------------------------------
    def _place(self, n: Node) -> None:
        if n.op in BUFFER_SOURCES:
            self.contiguous.add(n)
        elif self._is_local(n):
            self.local.add(n)
        elif n.op in FOLDED_MOVEMENT and n not in self.outputs and self._foldable(n):
            self.views.add(n)
            if n.op == K.RESHAPE and n.inputs[0] in self.contiguous:
                self.contiguous.add(n)
        elif n.op in ELEMENTWISE or n.op in INLINE_SOURCES:
            self._elementwise(n)
        elif n.op in FUSED_REDUCE:
            self._reduction(n)
        elif n.op == K.GATHER and self._row_gather(n):
            pass
        elif n.op in TEMPLATES:
            kind = TEMPLATES[n.op]
            self._new(n, kind, closed=kind not in EPILOGUE_TEMPLATES)
            self._refuse_all(n, f"a {kind} kernel reads its operands from memory")
        elif not self._layout_output(n):  # a movement op that must be a copy
            self._new(n, "copy", closed=True)
            self._refuse_all(n, "a copy kernel reads its operand from memory")

    def _layout_output(self, n: Node) -> bool:
        """A copy that permutes then reshapes a value its producer kernel computes over its whole space
        (attention's head merge) is that kernel's second output, written in the copy's layout: the
        producer stores each element straight where the copy would put it."""
        chain, src = [n], n.inputs[0]
        while src in self.views:
            chain.append(src)
            src = src.inputs[0]
        ops = [m.op for m in reversed(chain)]  # from the producer's value outwards
        if any(op not in (K.PERMUTE, K.RESHAPE) for op in ops):
            return False
        if K.RESHAPE in ops and K.PERMUTE in ops[ops.index(K.RESHAPE):]:
            return False  # permutes first, then reshapes: the layout is then strides over the space
        g = self.owner.get(src)
        if g is None or g.closed or g.kind in ("copy", "reduce") or n in self.forbidden \
                or src.op in FOLDED_MOVEMENT:
            return False
        # over the whole space: the attention backward's is each of its three matmuls'
        if tuple(src.shape) != tuple(g.space) and not (g.kind == "attention_bwd" and src.op == K.MATMUL):
            return False
        g.layouts.append(n)
        self._add(g, n, tuple(reversed(chain[1:])))
        self.joins.append((n, g))
        return True

    def _is_local(self, n: Node) -> bool:
        if n in self.outputs or not self.users[n]:
            return False
        if not all(u.op in ELEMENTWISE or u.op in FUSED_REDUCE for u in self.users[n]):
            return False
        if n.op in INLINE_SOURCES:  # but a value read per group is loaded (a constant is the same anywhere)
            return n.op == K.CONST or not any(per_group(u) and n in u.inputs[1:] for u in self.users[n])
        # a chain of elementwise ops on single values: recomputing is cheaper than a launch
        return n.op in ELEMENTWISE and is_single(n.shape) and all(
            i in self.local or i.op in BUFFER_SOURCES or i in self.owner for i in n.inputs)

    def _foldable(self, n: Node) -> bool:
        src = n.inputs[0]
        if src in self.local:
            return False
        return n.op != K.RESHAPE or src in self.contiguous

    # --- placing computed nodes ----------------------------------------------------------------------
    def _new(self, n: Node, kind: str, space=None, axes=(), closed=False) -> FusedGroup:
        g = FusedGroup(kind, [], tuple(space if space is not None else n.shape), tuple(axes), closed=closed)
        self.groups[g] = None
        self._add(g, n)
        return g

    def _add(self, g: FusedGroup, n: Node, aliases=()) -> None:
        g.nodes.append(n)
        at = self.index[n]
        g.first, g.last = min(g.first, at), max(g.last, at)
        g.reach, g.after = min(g.reach, self.spine.reach[n]), max(g.after, self.spine.after[n])
        self.owner[n] = g
        self.contiguous.add(n)
        added = g.add_local(self._locals_of(n) + list(aliases))
        if g.chains is not None:  # counted already: count the new members too
            self.rows.added(g, [*added, n])

    def _locals_of(self, n: Node) -> list[Node]:
        out, seen, stack = [], set(), [i for i in n.inputs if i in self.local]
        while stack:
            m = stack.pop()
            if m not in seen:
                seen.add(m)
                out.append(m)
                stack += [i for i in m.inputs if i in self.local]
        return out

    def _producers(self, n: Node) -> list[tuple[Node, FusedGroup, tuple[Node, ...]]]:
        """(producer, its group, the alias chain between) for each operand computed by a kernel, looking
        through local chains and through movement ops that keep positions in the iteration space."""
        found, seen = [], set()
        stack = list(n.inputs)
        while stack:
            i = stack.pop(0)
            if i in seen:
                continue
            seen.add(i)
            if i in self.owner:
                found.append((i, self.owner[i], ()))
            elif i in self.local:
                stack += list(i.inputs)
            elif i in self.views:
                chain, src = [i], i.inputs[0]
                while src in self.views:
                    chain.append(src)
                    src = src.inputs[0]
                if src in self.owner:
                    found.append((src, self.owner[src], tuple(reversed(chain))))
        return found

    def _elementwise(self, n: Node) -> None:
        candidates = self._candidates(n)
        for k, (p, g, chain) in enumerate(candidates):
            reason = self._join_reason(g, n, chain)
            if reason is None:
                if g.kind == "pointwise":
                    g.space = broadcast_shapes(g.space, n.shape) or g.space
                self._join(g, n, chain)
                self._joined_elsewhere(n, candidates[k + 1:])
                return
            self.refusals.append(Refusal(p, n, reason))
        self._new(n, "pointwise")

    def _joined_elsewhere(self, n: Node, others) -> None:
        where = f"%{self.index[n]} joined another producer's kernel (a node joins one kernel)"
        for p, _, _ in others:
            self.refusals.append(Refusal(p, n, where))

    def _candidates(self, n: Node):
        """Producer groups to try, the one holding most of n's operands first (then the latest)."""
        prods = self._producers(n)
        if n in self.forbidden:
            for p, _, _ in prods:
                self.refusals.append(Refusal(p, n, "fusing here would create a cycle between kernels"))
            return []
        count: dict[FusedGroup, int] = {}
        chains: dict[FusedGroup, list[Node]] = {}
        best: dict[FusedGroup, tuple] = {}
        for p, g, chain in prods:
            count[g] = count.get(g, 0) + 1
            # every view n reads of this group's values joins with n: read from memory, a view of a
            # value the kernel computes would be read before the kernel writes it
            chains.setdefault(g, []).extend(m for m in chain if m not in chains[g])
            if g not in best or len(chain) < len(best[g][2]):
                best[g] = (p, g, chain)
        ranked = sorted(best.values(), key=lambda t: (-count[t[1]], -self.index[t[0]]))
        return [(p, g, tuple(chains[g])) for p, g, _ in ranked]

    def _join(self, g: FusedGroup, n: Node, chain=()) -> None:
        self._add(g, n, chain)
        self.joins.append((n, g))

    def _join_reason(self, g: FusedGroup, n: Node, chain) -> str | None:
        if g.closed or g.kind in ATTENTION:
            return f"a {g.kind} kernel takes no epilogue"
        rank = max(len(g.space), len(n.shape))
        for m in chain:
            if not self._alias(m, rank):
                return f"reads %{self.index[m.inputs[0]]} through a {m.op} that moves elements: " \
                       f"the value must be in memory"
        if g.kind == "pointwise":
            space = broadcast_shapes(g.space, n.shape)
            if space is None or space not in (tuple(g.space), tuple(n.shape)):
                return f"iteration spaces {fmt_shape(g.space)} and {fmt_shape(n.shape)} differ"
            if g.layouts and space != tuple(g.space):
                return "the kernel writes an output in another layout over its present space"
        elif g.kind in EPILOGUE_TEMPLATES:
            if broadcast_shapes(g.space, n.shape) != tuple(g.space):
                return (f"the {g.kind} output tile is {fmt_shape(g.space)}, "
                        f"the op is over {fmt_shape(n.shape)}")
            if n.op in INLINE_SOURCES:
                return "a source op starts its own kernel"
        elif g.kind == "reduce":
            reason = self._row_reason(g, n)
            if reason:
                return reason
        return self._cycle_reason(g, n)

    def _alias(self, m: Node, rank: int) -> bool:
        """Is movement op `m` a no-op in an iteration space of `rank` axes (each element keeps its
        position)?"""
        if m in self.outputs:
            return False
        if m.op == K.EXPAND:
            return True
        if m.op != K.RESHAPE:
            return False
        return aligned_axes(m.inputs[0].shape, rank) == aligned_axes(m.shape, rank)

    def _cycle_reason(self, g: FusedGroup, n: Node) -> str | None:
        now = self.index[n]
        for e in self._external(n, g):
            if self.dependence.depends(e, g, now):
                return f"fusing would create a cycle: %{self.index[e]} depends on this kernel"
            other = self.owner.get(e)
            if other is not None and other is not g and self.dependence.group_depends(other, g, now):
                return f"fusing would create a cycle through the kernel computing %{self.index[e]}"
        return None

    def _external(self, n: Node, g: FusedGroup) -> list[Node]:
        """The stored values `n` reads (through local chains and views) from outside group `g`."""
        out, stack, seen = [], list(n.inputs), set()
        while stack:
            i = stack.pop()
            if i in seen or self.owner.get(i) is g:
                continue
            seen.add(i)
            if i in self.local or i in self.views:
                stack += list(i.inputs)
            elif i.op not in BUFFER_SOURCES:
                out.append(i)
        return out

    # --- reductions ----------------------------------------------------------------------------------
    def _reduction(self, n: Node) -> None:
        x = n.inputs[0]
        axes = tuple(sorted(n.attrs.axes))
        for p, g, chain in self._candidates(n):
            reason = self._reduce_reason(g, n, x, axes, chain)
            if reason is None:
                if g.kind == "pointwise":
                    g.kind, g.axes = "reduce", axes
                self._join(g, n, chain)
                self._joined_elsewhere(n, [c for c in self._candidates(n) if c[1] is not g])
                return
            self.refusals.append(Refusal(p, n, reason))
        self._new(n, "reduce", space=x.shape, axes=axes)

    def _reduce_reason(self, g: FusedGroup, n: Node, x: Node, axes, chain) -> str | None:
        if g.closed or g.kind in ATTENTION:
            return f"a {g.kind} kernel takes no epilogue"
        if g.kind in EPILOGUE_TEMPLATES:
            return f"a {g.kind} kernel takes no reduction epilogue"
        for m in chain:
            if not self._alias(m, len(g.space)):
                return f"reads %{self.index[m.inputs[0]]} through a {m.op}: the value must be in memory"
        if tuple(g.space) != tuple(x.shape):
            return f"the reduction runs over {fmt_shape(x.shape)}, the kernel over {fmt_shape(g.space)}"
        if g.kind == "reduce" and tuple(g.axes) != axes:
            return f"reduces axes {list(axes)}, the kernel axes {list(g.axes)}"
        if not fits_row(g.space, axes) and self._chain(g, self._source(x)) >= MAX_PASSES:
            return too_many_passes(g.space, axes)
        return self._cycle_reason(g, n)

    def _row_reason(self, g: FusedGroup, n: Node) -> str | None:
        """Can elementwise `n` run in reduce group `g` (as a full-row value or a row value)?"""
        row = keep1(g.space, g.axes)
        if broadcast_shapes(row, n.shape) == row:
            for i in map(self._source, n.inputs):  # a row value reads no full-row value
                if self.owner.get(i) is g and not row_level(i.shape, g) and i not in self.local:
                    return "a row value from a full-row value"
            return self._keepdim_reason(g, n)
        if broadcast_shapes(g.space, n.shape) != tuple(g.space):
            return f"iteration spaces {fmt_shape(g.space)} and {fmt_shape(n.shape)} differ"
        if not fits_row(g.space, g.axes) and \
                max(self._chain(g, self._source(i)) for i in n.inputs) >= MAX_PASSES:
            return too_many_passes(g.space, g.axes)
        return self._keepdim_reason(g, n)

    def _source(self, i: Node) -> Node:
        """The value under a chain of views."""
        while i in self.views:
            i = i.inputs[0]
        return i

    def _keepdim_reason(self, g: FusedGroup, n: Node) -> str | None:
        for i in map(self._source, n.inputs):
            if self.owner.get(i) is g and i.op in FUSED_REDUCE and not i.attrs.keepdim and i.shape:
                return "the reduction drops its axes (keepdim=false): its value is indexed differently"
        return None

    def _row_gather(self, n: Node) -> bool:
        """A gather of one element per row along a persistent group's reduced axis joins that group."""
        x, idx = n.inputs
        g = self.owner.get(x)
        if g is None or g.kind != "reduce" or g.axes != (n.attrs.axis,) or n in self.forbidden:
            return False
        if tuple(idx.shape) != keep1(g.space, g.axes):
            return False
        if not fits_row(g.space, g.axes) and self._chain(g, x) >= MAX_PASSES:
            return False
        if tuple(x.shape) != tuple(g.space) or idx in self.local:
            return False
        if self._cycle_reason(g, n) is not None:
            return False
        self._join(g, n)
        return True

    def _refuse_all(self, n: Node, reason: str) -> None:
        for p, _, _ in self._producers(n):
            self.refusals.append(Refusal(p, n, reason))

    # --- launch order --------------------------------------------------------------------------------
    def _ordered(self) -> list[FusedGroup]:
        q = self.quotient()
        try:
            return list(nx.lexicographical_topological_sort(q, key=first_of))
        except nx.NetworkXUnfeasible:
            return sorted(self.groups, key=first_of)  # a cycle: fuse() undoes a merge and reruns

    def quotient(self) -> nx.DiGraph:
        """The kernel graph: an edge from each group to every group that reads a value it stores."""
        q = nx.DiGraph()
        q.add_nodes_from(self.groups)
        for g in self.groups:
            for n in g.members(self.index):
                for e in self._external(n, g):
                    other = self.owner.get(e)
                    if other is not None and other is not g:
                        q.add_edge(other, g)
        return q
