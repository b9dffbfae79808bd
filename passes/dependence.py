"""Which values depend on which kernels, for fusion's cycle check: exact answers without an n x n table.

As fusion grows a kernel group g, it asks whether a value e that a candidate node reads depends on a
member of g (then e's kernel runs after g, and fusing would make a cycle between kernels), and whether
any member of another group h does. A table of every node's ancestors answers at once but holds n^2
bits for n nodes; a search back from e answers without one but may walk most of the graph. Three labels,
each made in one pass over the graph, answer most questions in constant time:

- definition order: a node depends only on nodes defined before it, so a value defined before g's
  first member does not depend on g;
- a spine, one longest path through the graph: `reach[x]` is the first spine node x is or leads to,
  `after[v]` the last spine node v is or depends on. `reach[x] <= after[v]` means x leads to the spine,
  along it, and on to v: v depends on x. In a training step the spine runs through the forward pass,
  the loss and the backward pass, so "does this backward value depend on that forward kernel" is
  answered here. A group keeps the least `reach` and the largest `after` of its members.

What they leave open, a search back from the value answers, over nodes defined after g's first
member only, stopping at a member of g or at a node the spine certifies; the nodes it finds free of g
are remembered for g's later questions. Exact in every case: the labels only shortcut the search.

>>> from axon.ir import DType, GraphBuilder
>>> b = GraphBuilder(); x = b.input("x", DType.F32, (3,)); a = b.exp(x); c = b.neg(x)
>>> _ = b.output("y", b.add(b.tanh(a), c)); g = b.build()
>>> spine = Spine(g, g.index(), g.users())
>>> spine.reach[a] <= spine.after[g.outputs["y"]], spine.reach[c] <= spine.after[a]
(True, False)
"""
from __future__ import annotations

from collections.abc import Mapping

from axon.ir import Graph, Node

NONE_BEFORE = -1        # `after` of a node that is not on and does not depend on the spine
FIRST = 1 << 62         # a group's `first` and `reach` before it has members


class Spine:
    """One longest path through the graph and the two labels it gives every node (module docstring)."""

    def __init__(self, graph: Graph, index: Mapping[Node, int], users: Mapping[Node, list[Node]]):
        nodes = graph.nodes
        length: dict[Node, int] = {}  # nodes on the longest path ending at each node
        for n in nodes:
            most = 0
            for i in n.inputs:
                if length[i] > most:
                    most = length[i]
            length[n] = most + 1
        path = [max(nodes, key=length.__getitem__)] if nodes else []
        while path[-1:] and path[-1].inputs:
            path.append(max(path[-1].inputs, key=length.__getitem__))
        at = {n: k for k, n in enumerate(reversed(path))}
        after: dict[Node, int] = {}
        for n in nodes:
            last = at.get(n, NONE_BEFORE)
            for i in n.inputs:
                if after[i] > last:
                    last = after[i]
            after[n] = last
        reach: dict[Node, int] = {}
        for n in reversed(nodes):
            first = at.get(n, FIRST)
            for u in users[n]:
                if reach[u] < first:
                    first = reach[u]
            reach[n] = first
        self.index, self.after, self.reach = index, after, reach


class Dependence:
    """Answers "does this depend on group g" during one fusion walk. Groups are objects with `nodes`
    (owned members), `first` and `last` (their least and largest definition index) and `reach` and
    `after` (the least and largest spine label of their members); `owner` maps a node to its group.

    A node joining a group is the newest node the walk has placed (index `now`), so nothing placed
    before it can depend on it, and what a search learned about nodes placed before `now` stays true.
    """

    def __init__(self, spine: Spine, owner: Mapping[Node, object]):
        self.spine = spine
        self.owner = owner
        self._free: dict[object, set[Node]] = {}  # per group: nodes known not to depend on it
        self._h_free: dict[tuple[object, object], int] = {}  # (g, h): h's size when found free of g

    def depends(self, e: Node, g, now: int) -> bool:
        """Does value e depend on (or belong to) a member of group g?"""
        index, spine = self.spine.index, self.spine
        if self.owner.get(e) is g:
            return True
        if index[e] < g.first:
            return False
        if g.reach <= spine.after[e]:
            return True
        free = self._free.setdefault(g, set())
        if e in free:
            return False
        stack, seen = [e], {e}
        while stack:
            for i in stack.pop().inputs:
                if i in seen or index[i] < g.first or i in free:
                    continue
                if self.owner.get(i) is g or g.reach <= spine.after[i]:
                    return True
                seen.add(i)
                stack.append(i)
        free.update(v for v in seen if index[v] < now)
        return False

    def group_depends(self, h, g, now: int) -> bool:
        """Does a member of group h depend on a member of group g?"""
        if h.last < g.first:
            return False
        if g.reach <= h.after:
            return True
        key = (g, h)
        if self._h_free.get(key) == len(h.nodes):  # no new member since h was found free of g
            return False
        for y in h.nodes:
            if self.spine.index[y] >= g.first and self.depends(y, g, now):
                return True
        if h.last < now:  # members placed later could still come to depend on g's next members
            self._h_free[key] = len(h.nodes)
        return False
