"""The kernel graph of a fusion plan, kept in a topological order while kernels are merged.

Fusion's second sweep merges a producer kernel a with a consumer b when no other path joins them (the
merged kernel would otherwise sit on a cycle). Asking networkx for paths, and copying the graph at each
contraction, costs the whole graph per merge. Here every kernel has a position in a topological order
(as in Pearce and Kelly's dynamic topological sort), so:

- "is there another path from a to b" searches forward from a's other successors over kernels placed
  before b only (a path to b cannot leave that window); those it finds are the kernels a leads to;
  kernels that do not lead to one another may share a position, so the window includes b's level;
- contracting b into a puts the merged kernel at b's position and moves the kernels a leads to (the
  ones the search found) just after it, keeping their order; nothing else moves;
- the merged kernel keeps the edge lists of whichever of the two had more, and only the other's
  neighbours are told of the merge, so a kernel that absorbs many small ones does not pay its own
  degree each time.

Positions are floats so that kernels can be moved between two others; when the room runs out, all are
renumbered in order (rarely: the room halves at most with each move into it).

>>> dag = OrderedDag("acbd", [("a", "b"), ("a", "c"), ("c", "b"), ("b", "d")])
>>> dag.other_path("a", "b"), dag.other_path("b", "d")
(True, False)
>>> _ = dag.contract("b", "d"); dag.successors("c"), sorted("acb", key=dag.position)
(['b'], ['a', 'c', 'b'])
"""
from __future__ import annotations

from collections.abc import Hashable, Iterable


class OrderedDag:
    """A DAG over hashable kernels, each with a position in a topological order."""

    def __init__(self, order: Iterable[Hashable], edges: Iterable[tuple[Hashable, Hashable]]):
        self._key = list(order)                          # cell -> kernel
        self._cell = {v: c for c, v in enumerate(self._key)}
        self._pos = [float(c) for c in range(len(self._key))]
        self._succ: list[dict[int, None]] = [{} for _ in self._key]  # dicts: ordered sets of cells
        self._pred: list[dict[int, None]] = [{} for _ in self._key]
        for a, b in edges:
            ca, cb = self._cell[a], self._cell[b]
            assert self._pos[ca] < self._pos[cb], f"{a} -> {b} goes against the order"
            self._succ[ca][cb] = self._pred[cb][ca] = None

    def __contains__(self, v: Hashable) -> bool:
        return v in self._cell

    def __iter__(self):
        return iter(self._cell)

    def position(self, v: Hashable) -> float:
        return self._pos[self._cell[v]]

    def successors(self, v: Hashable) -> list[Hashable]:
        return [self._key[c] for c in self._succ[self._cell[v]]]

    def predecessors(self, v: Hashable) -> list[Hashable]:
        return [self._key[c] for c in self._pred[self._cell[v]]]

    def other_path(self, a: Hashable, b: Hashable) -> bool:
        """Is there a path from a to b other than the edge a -> b?"""
        return self._after(self._cell[a], self._cell[b]) is None

    def contract(self, a: Hashable, b: Hashable) -> list[Hashable]:
        """Merge b into a (a -> b is an edge and the only path from a to b); returns the kernels whose
        position changed, a included."""
        ca, cb = self._cell[a], self._cell[b]
        after = self._after(ca, cb)
        assert after is not None and cb in self._succ[ca], f"{a} -> {b} is not a lone edge"
        moved = sorted(after, key=self._pos.__getitem__)
        self._place_after(cb, moved)
        del self._succ[ca][cb], self._pred[cb][ca]
        keep, gone = (ca, cb) if len(self._succ[ca]) + len(self._pred[ca]) >= \
            len(self._succ[cb]) + len(self._pred[cb]) else (cb, ca)
        for s in self._succ[gone]:
            del self._pred[s][gone]
            self._succ[keep][s] = self._pred[s][keep] = None
        for p in self._pred[gone]:
            del self._succ[p][gone]
            self._succ[p][keep] = self._pred[keep][p] = None
        self._succ[gone], self._pred[gone] = {}, {}
        self._pos[keep] = self._pos[cb]
        self._key[keep] = a
        self._cell[a] = keep
        del self._cell[b]
        return [a, *(self._key[c] for c in moved)]

    def _after(self, ca: int, cb: int) -> set[int] | None:
        """The kernels placed before b (or level with it) that a leads to other than through the edge
        a -> b; None if b is one of them (another path). Unrelated kernels may share a position."""
        bound, seen = self._pos[cb], set()
        stack = [s for s in self._succ[ca] if s != cb]
        while stack:
            v = stack.pop()
            if v == cb:
                return None
            if v not in seen and self._pos[v] <= bound:
                seen.add(v)
                stack.extend(self._succ[v])
        return seen

    def _place_after(self, cb: int, moved: list[int]) -> None:
        """Give `moved` (in order; placed before or level with b, none of them leads to b) positions just
        after b's and before any other successor of theirs (all of which are placed after b)."""
        if not moved:
            return
        inside = set(moved)
        bound = min((self._pos[s] for v in moved for s in self._succ[v] if s not in inside),
                    default=float("inf"))
        start = self._pos[cb]
        step = 1.0 if bound == float("inf") else (bound - start) / (len(moved) + 1)
        if start + step == start or start + step * len(moved) >= bound:
            self._renumber()
            return self._place_after(cb, moved)
        for k, v in enumerate(moved, 1):
            self._pos[v] = start + step * k

    def _renumber(self) -> None:
        """Positions 0, 1, 2, ... in the present order."""
        for k, c in enumerate(sorted(self._cell.values(), key=self._pos.__getitem__)):
            self._pos[c] = float(k)
