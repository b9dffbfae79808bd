"""How many passes over its rows a looped reduction kernel makes, kept per kernel group as it grows.

A value inside a group is computed in pass `chain` of a looped kernel: the number of reductions (and
row gathers) on the longest path to it inside the group, itself included. Fusion asks for it at every
join into a reduction group and at every merge of two; recounting the whole group each time makes a
group that grows step by step (an unrolled RNN's gradient sums) cost its size squared. Here each
group keeps its counts (`FusedGroup.chains`, made when first asked) and `top`, the most passes any of
its owned values needs (a reduction's own pass does not count against it). A joining node is counted
from its operands; a merge recounts only what lies downstream of the producer's values in the consumer,
and only where the count grows.
"""
from __future__ import annotations

import heapq
from collections.abc import Mapping

from axon.ir import Node, OpKind

K = OpKind
FUSED_REDUCE = frozenset({K.SUM, K.MEAN, K.MAX, K.MIN})
COUNTED = FUSED_REDUCE | {K.GATHER}  # ops that start a new pass over the row


class RowPasses:
    """`chain` and `top` of fusion's groups; `views` are the movement ops readers look through, `owner`
    the group computing each node (both fusion's, shared and updated by it)."""

    def __init__(self, index: Mapping[Node, int], users: Mapping[Node, list[Node]], views: set[Node],
                 owner: Mapping[Node, object]):
        self.index, self.users, self.views, self.owner = index, users, views, owner

    def source(self, i: Node) -> Node:
        """The value under a chain of views."""
        while i in self.views:
            i = i.inputs[0]
        return i

    def chain(self, g, x: Node) -> int:
        return self._of(g).get(x, 0)

    def added(self, g, nodes: list[Node]) -> None:
        """New members of counted group g (none of them read by an older member): count them."""
        self._count(g.chains, sorted(nodes, key=self.index.__getitem__))
        owned = [g.chains[n] - (n.op in FUSED_REDUCE) for n in nodes if self.owner.get(n) is g]
        g.top = max([g.top, *owned])

    def forget(self, g) -> None:
        """g's members changed in another way (pure kernels dissolved into it): count again when asked."""
        g.chains = None

    def merged_top(self, a, b) -> int:
        """`top` of producer group a and consumer group b merged."""
        return self._merged(a, b)[1]

    def merge(self, a, b) -> None:
        """Make a's counts those of a and b merged (before b's members move to a)."""
        grown, top = self._merged(a, b)
        big, small = (a.chains, b.chains) if len(a.chains) >= len(b.chains) else (b.chains, a.chains)
        for n, c in small.items():
            if c > big.get(n, -1):
                big[n] = c
        big.update(grown)
        a.chains, a.top = big, top

    # --- counting -------------------------------------------------------------------------------------
    def _of(self, g) -> dict[Node, int]:
        if g.chains is None:
            g.chains = {}
            self._count(g.chains, sorted(set(g.nodes) | g._locals, key=self.index.__getitem__))
            g.top = max(g.chains[n] - (n.op in FUSED_REDUCE) for n in g.nodes)
        return g.chains

    def _count(self, memo: dict[Node, int], nodes: list[Node]) -> None:
        for n in nodes:
            inner = [memo[i] for i in map(self.source, n.inputs) if i in memo]
            memo[n] = max(inner + [0]) + (n.op in COUNTED)

    def _merged(self, a, b) -> tuple[dict[Node, int], int]:
        """The counts of b's members that grow once a's members are in the group (only b's can: no member
        of a reads one of b, or the kernel graph would have a cycle), and the merged `top`."""
        ma, mb = self._of(a), self._of(b)

        def in_b(u: Node) -> bool:
            return self.owner.get(u) is b or u in b._locals

        def count(x: Node) -> int:
            return max(grown.get(x, 0), mb.get(x, 0), ma.get(x, 0))

        grown: dict[Node, int] = {}
        todo: list[tuple[int, Node]] = []
        queued: set[Node] = set()

        def queue(u: Node) -> None:
            if u not in queued:
                queued.add(u)
                heapq.heappush(todo, (self.index[u], u))

        if len(ma) <= len(mb):  # b's members reading a's values: found from the smaller side
            for x in ma:
                for u in self._readers(x):
                    if in_b(u):
                        queue(u)
        else:
            for u in mb:
                if u not in self.views and any(self.source(i) in ma for i in u.inputs):
                    queue(u)
        while todo:
            _, u = heapq.heappop(todo)
            inner = [count(i) for i in map(self.source, u.inputs) if i in ma or i in mb or i in grown]
            new = max(inner + [0]) + (u.op in COUNTED)
            if new > max(mb.get(u, 0), ma.get(u, 0)):
                grown[u] = new
                for r in self._readers(u):
                    if in_b(r):
                        queue(r)
        top = max([a.top, b.top] + [c - (n.op in FUSED_REDUCE) for n, c in grown.items()
                                    if self.owner.get(n) is b])
        return grown, top

    def _readers(self, x: Node) -> list[Node]:
        """The nodes that read x, directly or through views of it."""
        out, stack = [], list(self.users[x])
        while stack:
            u = stack.pop()
            if u in self.views:
                stack += self.users[u]
            else:
                out.append(u)
        return out
