"""Fusion's second sweep: whole kernel groups merge (a pure producer recomputed in its readers, a
pointwise kernel into the template or reduction that reads or feeds it), kept in topological order on
`kernel_dag`."""
from __future__ import annotations

import heapq
import itertools

import networkx as nx

from axon.ir import Node
from axon.ir.ops import ELEMENTWISE
from ..kernel_dag import OrderedDag
from .groups import (BUFFER_SOURCES, EPILOGUE_TEMPLATES, FUSED_REDUCE, MAX_PASSES, K, FusedGroup,
                     broadcast_shapes, depends_on_reduction, first_of, fits_row, is_single, row_level)


class MergeGroups:
    """The part of `walk.Fuser` that merges whole groups after the walk."""

    # --- merging whole groups ------------------------------------------------------------------------
    def _merge_groups(self) -> None:
        """Second sweep over the kernel graph: recompute pure producers (no stored operand but single
        values: a dropout mask from rand) in each kernel that reads them, and merge a producer kernel
        with a consumer kernel when one template can run both and no other path joins them. Producers
        are visited in topological order. After a merge only pairs with the merged kernel can change,
        and a refused pair (p, a) cannot become possible unless a's kind, space or layouts changed (more
        members only add reductions to chain and views to check, and paths only grow): then p is
        visited again."""
        for g in list(self.groups):
            if self._pure(g):
                self._dissolve(g)
        q = self.quotient()
        dag = OrderedDag(nx.topological_sort(q), q.edges)
        queue: list[tuple[float, int, FusedGroup]] = []  # (position, tie-break, group)
        queued: dict[FusedGroup, float] = {}  # group -> its position when queued
        ties = itertools.count()

        def visit(g: FusedGroup) -> None:
            if queued.get(g) != dag.position(g):
                queued[g] = dag.position(g)
                heapq.heappush(queue, (dag.position(g), next(ties), g))

        for g in dag:
            visit(g)
        while queue:
            at, _, a = heapq.heappop(queue)
            if queued.get(a) != at:
                continue  # merged away, or moved and queued again
            del queued[a]
            for b in sorted(dag.successors(a), key=first_of):
                merged = self._merged_kind(a, b)
                if merged is None or dag.other_path(a, b):
                    continue
                aliases = self._view_links(a, b, len(merged[1]))
                if aliases is None:
                    continue
                b.add_local(aliases)
                kind, space, axes = merged
                shape = (kind, tuple(space), tuple(axes), bool(a.layouts or b.layouts), False)
                again = [p for g in (a, b) if _shape(g) != shape for p in dag.predecessors(g) if p is not a]
                self._merge(a, b, *merged)
                queued.pop(b, None)
                for g in dag.contract(a, b) + again:
                    visit(g)
                break

    def _pure(self, g: FusedGroup) -> bool:
        """Only elementwise ops on single values and sources (no stored operand of more than one
        element), stored for nobody but elementwise readers: cheaper recomputed where read."""
        if g.kind != "pointwise" or g.closed or any(n in self.outputs for n in g.nodes):
            return False
        for n in g.nodes:
            if any(e.op in BUFFER_SOURCES and not is_single(e.shape) or e in self.owner
                   for e in self._external(n, g)):
                return False
            for u in self.users[n]:
                if self.owner.get(u) is g:
                    continue
                if not (u.op in ELEMENTWISE or u.op in FUSED_REDUCE) or u not in self.owner:
                    return False
                host = self.owner[u]
                if host.closed or broadcast_shapes(host.space, g.space) != tuple(host.space):
                    return False
        return True

    def _dissolve(self, g: FusedGroup) -> None:
        """Make pure group g's nodes local to every kernel that reads them."""
        readers = {self.owner[u] for n in g.nodes for u in self.users[n] if self.owner.get(u) is not g}
        for n in g.nodes:
            del self.owner[n]
            self.local.add(n)
        for h in readers:
            h.add_local(g.nodes + g.local)
            self.rows.forget(h)
        del self.groups[g]

    def _merged_kind(self, a: FusedGroup, b: FusedGroup):
        """(kind, space, axes) of producer kernel a merged with its consumer b, or None."""
        if a.closed or b.closed:
            return None
        if a.kind == "pointwise" and b.kind == "pointwise":
            space = broadcast_shapes(a.space, b.space)
            if any(g.layouts and space != tuple(g.space) for g in (a, b)):
                return None
            return ("pointwise", space, ()) if space in (tuple(a.space), tuple(b.space)) else None
        if a.layouts and b.kind == "reduce" or b.layouts and a.kind == "reduce":
            return None
        if a.kind in EPILOGUE_TEMPLATES and b.kind == "pointwise":
            return (a.kind, a.space, ()) if broadcast_shapes(a.space, b.space) == tuple(a.space) else None
        if a.kind == "pointwise" and b.kind == "reduce":
            fits = broadcast_shapes(b.space, a.space) == tuple(b.space)
            return ("reduce", b.space, b.axes) if fits else None
        if a.kind == "reduce" and b.kind == "pointwise":
            if broadcast_shapes(a.space, b.space) != tuple(a.space):
                return None
            return ("reduce", a.space, a.axes) if self._passes_ok(a, b) else None
        if a.kind == "reduce" and b.kind == "reduce":
            if tuple(a.space) != tuple(b.space) or a.axes != b.axes or not self._passes_ok(a, b):
                return None
            return ("reduce", a.space, a.axes)
        return None

    def _view_links(self, a: FusedGroup, b: FusedGroup, rank: int) -> list[Node] | None:
        """The movement ops through which b reads a's values: aliases once merged, or None if one of
        them moves elements (the value must then be stored, so the kernels stay apart). Found from
        the smaller side: down from b's members' operands, or up from a's values through their views."""
        if len(a.nodes) <= len(b.nodes) + len(b.local):
            links = self._views_up(a, b)
        else:
            links = set()
            for m in b.nodes + b.local:
                for i in m.inputs:
                    chain = []
                    while i in self.views:
                        chain.append(i)
                        i = i.inputs[0]
                    if chain and self.owner.get(i) is a:
                        links.update(chain)
        if not all(self._alias(c, rank) for c in links):
            return None
        return sorted(links, key=self.index.__getitem__)

    def _views_up(self, a: FusedGroup, b: FusedGroup) -> set[Node]:
        """The views on the way from a value of a to a member of b (views have one operand, so the
        views over a value form a tree: a view is on such a way if a member of b reads it or a view
        above it that is)."""
        found: set[Node] = set()
        for x in a.nodes:
            parent: dict[Node, Node | None] = {}
            stack = [(v, None) for v in self.users[x] if v in self.views]
            while stack:
                v, up = stack.pop()
                if v in parent:
                    continue
                parent[v] = up
                readers = self.users[v]
                if any(self.owner.get(u) is b or u in b._locals for u in readers):
                    w = v
                    while w is not None and w not in found:
                        found.add(w)
                        w = parent[w]
                stack += [(u, v) for u in readers if u in self.views]
        return found

    def _merge(self, a: FusedGroup, b: FusedGroup, kind, space, axes) -> None:
        if a.chains is not None and b.chains is not None:
            self.rows.merge(a, b)
        else:
            self.rows.forget(a)
        a.kind, a.space, a.axes = kind, tuple(space), tuple(axes)
        a.nodes = sorted(a.nodes + b.nodes, key=self.index.__getitem__)  # two sorted runs: linear
        if len(b.local) > len(a.local):  # add the fewer (the order of `local` means nothing)
            a.local, b.local, a._locals, b._locals = b.local, a.local, b._locals, a._locals
        a.add_local(b.local)
        a.layouts += b.layouts
        a.first, a.last = min(a.first, b.first), max(a.last, b.last)
        a.reach, a.after = min(a.reach, b.reach), max(a.after, b.after)
        self.owner.update(dict.fromkeys(b.nodes, a))
        self.joins += zip(b.nodes, itertools.repeat(a))
        del self.groups[b]  # refusals now inside a are dropped at the end of run()

    def _chain(self, g: FusedGroup, x: Node) -> int:
        """Reductions on the longest path to value x inside group g (x itself counts): x is computed
        in pass `_chain` of a looped kernel."""
        return self.rows.chain(g, x)

    def _passes_ok(self, a: FusedGroup, b: FusedGroup) -> bool:
        """Would a and b merged make at most MAX_PASSES passes (or hold whole rows)?"""
        return fits_row(a.space, a.axes) or self.rows.merged_top(a, b) < MAX_PASSES

    def _needs_rows(self, g: FusedGroup) -> bool:
        """Does reduce group g compute a full-row value or a reduction after one of its reductions?"""
        for n in g.nodes:
            if n.op == K.GATHER:
                return True
            full = n.op in FUSED_REDUCE or not row_level(n.shape, g)
            if full and any(depends_on_reduction(g, i) for i in n.inputs):
                return True
        return False


def _shape(g: FusedGroup) -> tuple:
    """What a producer's merge with g depends on besides g's members."""
    return g.kind, tuple(g.space), tuple(g.axes), bool(g.layouts), g.closed
