"""Memory planning: the intermediates of a launch list share one byte arena by liveness.

An intermediate (a kernel output that is not a graph output) is *live* from the launch that writes it to
the last launch that reads it, both included. Two intermediates whose live ranges are disjoint may use
the same bytes; two whose ranges meet may not. A kernel's outputs are live at its own launch, as are its
inputs, so a kernel never writes over what it reads, and two outputs of one kernel never share bytes.

Placement is "greedy by size" (as TFLite's arena planner): buffers are placed largest first, each at
the lowest-waste gap (best fit) between the byte ranges of the already placed buffers whose live ranges
meet its own, or after the last of them. It is sound by construction (a buffer only ever avoids the
byte ranges of buffers it meets in time) and near the lower bound in practice: the arena is never
smaller than the largest set of buffers live at one launch, which the plan reports next to it.
Best fit must look at every placed buffer that meets the one it places, and in a training step the
activations kept for the backward pass meet almost everything: that scan is one vectorized pass over
the placed buffers (`_Arena`), not a Python loop over pairs.

Graph inputs, parameters, literals and graph outputs are never in the arena: outputs are fresh tensors
each call (the caller keeps them), the rest belong to the caller. Every buffer starts at a multiple of
`ALIGN` bytes, so each is a contiguous, correctly typed view (`arena[a:b].view(dtype).view(shape)`).

>>> steps = [((), ("a",)), (("a",), ("b",)), (("b",), ("c",)), (("c",), ("out",))]
>>> p = plan_memory(steps, {"a": 1000, "b": 1000, "c": 1000, "out": 1000}, outputs={"out"})
>>> p.without_reuse, p.size       # a and c are never live together: they share bytes
(3072, 2048)
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from axon.ir import Graph, Node
from axon.ir.shapes import concrete

ALIGN = 256  # bytes: every buffer's offset (CUDA's allocator aligns to 256 or more as well)

Step = tuple[Sequence[Hashable], Sequence[Hashable]]  # (what a launch reads, what it writes)


def padded(nbytes: int) -> int:
    """`nbytes` rounded up to a multiple of ALIGN: the room a buffer takes in the arena."""
    return -(-nbytes // ALIGN) * ALIGN


@dataclass(frozen=True)
class Placed:
    """One intermediate's place: `nbytes` at byte `offset`, live from launch `first` to `last`."""

    node: Hashable
    nbytes: int
    first: int   # the launch that writes it
    last: int    # the last launch that reads it (`first` when none does)
    offset: int

    @property
    def end(self) -> int:
        return self.offset + padded(self.nbytes)

    def meets(self, other: Placed) -> bool:
        """Live at a common launch: the two must not share bytes."""
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class MemoryPlan:
    """Where each intermediate lives in the arena, and the figures that judge the plan."""

    buffers: tuple[Placed, ...]  # in the order they are written
    size: int                    # arena bytes
    launches: int
    reuse: bool

    @property
    def without_reuse(self) -> int:
        """Bytes the intermediates take with a buffer each (the arena when reuse is off)."""
        return sum(padded(b.nbytes) for b in self.buffers)

    def live_bytes(self) -> list[int]:
        """Bytes live at each launch (the arena can never be smaller than the largest of them)."""
        delta = [0] * (self.launches + 1)
        for b in self.buffers:
            delta[b.first] += padded(b.nbytes)
            delta[b.last + 1] -= padded(b.nbytes)
        out, total = [], 0
        for d in delta[:-1]:
            total += d
            out.append(total)
        return out

    def peak(self) -> tuple[int, int]:
        """(bytes, launch) of the largest live set; the first such launch on ties; (0, -1) if empty."""
        live = self.live_bytes()
        if not live or not max(live):
            return 0, -1
        top = max(live)
        return top, live.index(top)

    def live_at(self, launch: int) -> list[Placed]:
        return [b for b in self.buffers if b.first <= launch <= b.last]


# --- planning ---------------------------------------------------------------------------------------
def liveness(steps: Sequence[Step], outputs: Iterable[Hashable] = ()) -> dict[Hashable, tuple[int, int]]:
    """(first, last) launch of every value a step writes that is not in `outputs`, in write order.

    Reads of values no step writes (graph inputs, parameters, literals) and of `outputs` are ignored:
    they are not the plan's to place.
    """
    keep = set(outputs)
    ranges: dict[Hashable, list[int]] = {}
    for i, (reads, writes) in enumerate(steps):
        for v in reads:
            if v in ranges:
                ranges[v][1] = i
        for v in writes:
            assert v not in ranges, f"{v} written twice"
            if v not in keep:
                ranges[v] = [i, i]
    return {v: (a, b) for v, (a, b) in ranges.items()}


def plan_memory(steps: Sequence[Step], sizes: Mapping[Hashable, int], outputs: Iterable[Hashable] = (),
                reuse: bool = True) -> MemoryPlan:
    """Places the intermediates of `steps` (launches in order) in one arena; `sizes` are their bytes.

    `reuse=False` gives each buffer bytes of its own (in write order): the same arena without sharing.
    """
    ranges = liveness(steps, outputs)
    if not reuse:
        placed, offset = [], 0
        for v, (first, last) in ranges.items():
            placed.append(Placed(v, sizes[v], first, last, offset))
            offset += padded(sizes[v])
        return MemoryPlan(tuple(placed), offset, len(steps), reuse=False)
    order = sorted(ranges, key=lambda v: -padded(sizes[v]))  # stable: ties in write order
    arena = _Arena(len(order))
    where: dict[Hashable, Placed] = {}
    for v in order:
        first, last = ranges[v]
        if sizes[v]:  # an empty buffer takes no bytes: offset 0 is as good as any
            need = padded(sizes[v])
            offset = arena.best_fit(first, last, need)
            arena.add(first, last, offset, offset + need)
            where[v] = Placed(v, sizes[v], first, last, offset)
    buffers = tuple(where.get(v) or Placed(v, sizes[v], *ranges[v], 0) for v in ranges)
    return MemoryPlan(buffers, arena.size, len(steps), reuse=True)


class _Arena:
    """The placed buffers as arrays (live launches, byte range), so that finding the ones that meet a new
    buffer and the gaps between their bytes is a few array operations instead of a loop over them."""

    def __init__(self, capacity: int):
        self.first, self.last, self.lo, self.hi = (np.empty(capacity, dtype=np.int64) for _ in range(4))
        self.count = 0
        self.size = 0  # the arena's end: the highest byte any placed buffer reaches

    def add(self, first: int, last: int, lo: int, hi: int) -> None:
        k = self.count
        self.first[k], self.last[k], self.lo[k], self.hi[k] = first, last, lo, hi
        self.count += 1
        self.size = max(self.size, hi)

    def best_fit(self, first: int, last: int, need: int) -> int:
        """The start of the smallest gap (the lowest such gap on ties) of at least `need` bytes between
        the byte ranges of the placed buffers live at some launch of first..last, or the end of them."""
        k = self.count
        meets = (self.first[:k] <= last) & (self.last[:k] >= first)
        lo, hi = self.lo[:k][meets], self.hi[:k][meets]
        if not len(lo):
            return 0
        by_offset = np.lexsort((hi, lo))
        lo, hi = lo[by_offset], hi[by_offset]
        taken = np.maximum.accumulate(hi)                 # bytes [0, taken[i]) hold ranges 0..i
        free_from = np.concatenate(([0], taken[:-1]))     # where the gap before range i starts
        gaps = lo - free_from
        fits = np.flatnonzero(gaps >= need)
        if not len(fits):
            return int(taken[-1])
        return int(free_from[fits[np.argmin(gaps[fits])]])


def check_plan(plan: MemoryPlan) -> None:
    """Asserts the plan is sound: aligned, inside the arena, no two buffers live together share a byte."""
    for b in plan.buffers:
        assert b.offset % ALIGN == 0 and (b.nbytes == 0 or b.end <= plan.size), b
    full = [b for b in plan.buffers if b.nbytes]
    for i, a in enumerate(full):
        for c in full[i + 1:]:
            assert not a.meets(c) or a.end <= c.offset or c.end <= a.offset, (a, c)


# --- a graph's launch list ---------------------------------------------------------------------------
def steps_of(groups) -> list[Step]:
    """Each kernel group's reads (its accesses' buffers) and writes (its outputs), in launch order."""
    return [(tuple(a.buffer for a in g.inputs), tuple(g.outputs)) for g in groups]


def nbytes(node: Node, env: Mapping[str, int]) -> int:
    return math.prod(concrete(node.shape, env)) * node.dtype.itemsize


def plan_graph(groups, graph: Graph, env: Mapping[str, int], reuse: bool = True) -> MemoryPlan:
    """The memory plan of `graph`'s kernel `groups` (launch order) at the concrete sizes `env`."""
    steps = steps_of(groups)
    sizes = {n: nbytes(n, env) for _, writes in steps for n in writes}
    return plan_memory(steps, sizes, graph.outputs.values(), reuse)


def allocate_arena(plan: MemoryPlan, env: Mapping[str, int], device) -> tuple[torch.Tensor,
                                                                               dict[Node, torch.Tensor]]:
    """The arena (uint8) and each planned node's typed, contiguous view into it."""
    arena = torch.empty(plan.size, dtype=torch.uint8, device=device)
    views = {}
    for b in plan.buffers:
        raw = arena[b.offset:b.offset + b.nbytes]
        views[b.node] = raw.view(b.node.dtype.torch).view(concrete(b.node.shape, env))
    return arena, views


# --- the report ------------------------------------------------------------------------------------
def format_plan(plan: MemoryPlan, graph: Graph, env: Mapping[str, int], groups: Sequence) -> str:
    """A table of the buffers (value, type, bytes, offset, live launches) and the plan's figures, for
    the plan of `graph`'s kernel `groups` (launch order) at sizes `env`."""
    index = graph.index()
    sizes = ", ".join(f"{k}={v}" for k, v in sorted(env.items())) or "static sizes"
    lines = [f"memory plan of {graph.name} ({sizes}): {len(plan.buffers)} intermediate buffers, "
             f"{plan.launches} launches, {ALIGN}-byte aligned"]
    rows = [(f"%{index[b.node]} = {b.node.op}", f"{b.node.dtype}{list(concrete(b.node.shape, env))}",
             f"{b.nbytes:,}", f"{b.offset:,}", f"{b.first}..{b.last}") for b in plan.buffers]
    head = ("value", "type", "bytes", "offset", "launches")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    for r in [head, *rows]:
        lines.append(f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  "
                     f"{r[3]:>{widths[3]}}  {r[4]}")
    top, at = plan.peak()
    saved = 1 - plan.size / plan.without_reuse if plan.without_reuse else 0.0
    lines.append(f"without reuse: {_size(plan.without_reuse)} (a buffer each)")
    lines.append(f"with reuse:    {_size(plan.size)} (the arena; {saved:.0%} less)"
                 + ("" if plan.reuse else "  [reuse off]"))
    if at >= 0:
        kernel = f" ({groups[at].kind} kernel writing %{index[groups[at].outputs[0]]})"
        lines.append(f"largest live set: {_size(top)} in {len(plan.live_at(at))} buffers, at launch {at}"
                     f"{kernel}")
    written = {n for g in groups for n in g.outputs}
    fresh = [n for n in dict.fromkeys(graph.outputs.values()) if n in written]
    out_bytes = sum(nbytes(n, env) for n in fresh)
    lines.append(f"graph outputs (a fresh tensor each call, not in the arena): {len(fresh)}, "
                 f"{_size(out_bytes)}")
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n:,} B ({n / scale:.1f} {unit})"
    return f"{n:,} B"
