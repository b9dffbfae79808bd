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
  activation, residual add, scaling).
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

import heapq
import itertools
from dataclasses import dataclass, field

import networkx as nx

from axon.ir import DType, Graph, Node, OpKind
from axon.ir.ops import ELEMENTWISE
from . import attention
from .dependence import FIRST, NONE_BEFORE, Dependence, Spine
from .kernel_dag import OrderedDag
from .row_passes import RowPasses

K = OpKind
ATTENTION_DTYPES = (DType.F32, DType.F16, DType.BF16)  # tl.dot operands; the softmax runs in f32
MAX_ROW = 4096  # columns a persistent (one-pass) reduction holds in one block
MAX_PASSES = 4  # passes a looped reduction kernel makes over its rows (reads of its operands)
MAX_HEAD = 256  # head size an attention kernel holds per query row (q and the accumulator)
BUFFER_SOURCES = frozenset({K.INPUT, K.PARAM, K.TENSOR})
INLINE_SOURCES = frozenset({K.CONST, K.IOTA, K.RAND})
FOLDED_MOVEMENT = frozenset({K.PERMUTE, K.EXPAND, K.SLICE, K.RESHAPE})
FUSED_REDUCE = frozenset({K.SUM, K.MEAN, K.MAX, K.MIN})
TEMPLATES = {K.MATMUL: "matmul", K.CONV2D: "conv2d", K.GATHER: "index", K.TAKE: "index", K.PAD: "index",
             K.CONCAT: "index", K.ARGMAX: "reduce", K.ARGMIN: "reduce"}
EPILOGUE_TEMPLATES = frozenset({"matmul", "conv2d"})
ATTENTION = frozenset({"attention", "attention_bwd"})  # claimed whole before the walk: take nothing else


@dataclass(eq=False)
class FusedGroup:
    """The nodes one kernel computes. `nodes` are owned (computed here, stored if used elsewhere);
    `local` are recomputed or aliased in this kernel only (never stored)."""

    kind: str                   # pointwise, reduce, matmul, conv2d, index, copy
    nodes: list[Node]
    space: tuple                # the iteration space's shape (dims may be symbols)
    axes: tuple[int, ...] = ()  # reduce: the reduced axes of `space`
    local: list[Node] = field(default_factory=list)
    closed: bool = False        # takes no other node (index, argmax, copies)
    layouts: list[Node] = field(default_factory=list)  # outputs written in a copy's layout
    # of the owned members: the least and largest graph index and spine labels (`dependence`)
    first: int = field(default=FIRST, repr=False)
    last: int = field(default=-1, repr=False)
    reach: int = field(default=FIRST, repr=False)
    after: int = field(default=NONE_BEFORE, repr=False)
    _locals: set[Node] = field(default_factory=set, repr=False)  # `local`, for membership tests
    chains: dict[Node, int] | None = field(default=None, repr=False)  # `row_passes`, once asked
    top: int = field(default=0, repr=False)

    def __post_init__(self):
        self._locals = set(self.local)

    def add_local(self, nodes) -> list[Node]:
        """Append to `local` what it does not hold yet, in order; returns what was added."""
        added = []
        for m in nodes:
            if m not in self._locals:
                self._locals.add(m)
                self.local.append(m)
                added.append(m)
        return added

    @property
    def persistent(self) -> bool:
        """A reduce group that needs whole rows in one block (values after a reduction over full rows)."""
        return self.kind == "reduce" and self._persistent

    _persistent: bool = False

    def members(self, index: dict[Node, int]) -> list[Node]:
        return sorted(set(self.nodes) | set(self.local), key=index.__getitem__)


@dataclass(frozen=True)
class Refusal:
    """`consumer` was not fused with `producer`'s kernel, and why."""

    producer: Node
    consumer: Node
    reason: str


@dataclass
class Fusion:
    graph: Graph
    groups: list[FusedGroup]      # in launch order
    refusals: list[Refusal]

    def report(self, why_not: bool = False) -> str:
        """The groups (one line per kernel with its members), and with `why_not` every refusal."""
        index = self.graph.index()
        lines = [f"{len(self.groups)} kernels for {sum(1 for n in self.graph.nodes if _computed(n))} "
                 f"computed nodes"]
        for k, g in enumerate(self.groups):
            owned = ", ".join(f"%{index[n]} {n.op}" for n in g.nodes)
            extra = f" over axes {list(g.axes)}" + (" (persistent)" if g.persistent else " (looped)") \
                if g.kind == "reduce" and any(n.op in FUSED_REDUCE for n in g.nodes) else ""
            lines.append(f"  k{k} {g.kind}{extra} [{', '.join(map(str, g.space))}]: {owned}")
        if why_not:
            lines.append(f"{len(self.refusals)} refused fusions:" if self.refusals else "no refused fusions")
            for r in self.refusals:
                lines.append(f"  %{index[r.producer]} {r.producer.op} -> %{index[r.consumer]} "
                             f"{r.consumer.op}: {r.reason}")
        return "\n".join(lines)


def fuse(graph: Graph) -> Fusion:
    """Group `graph`'s computed nodes into kernels (see the module docstring)."""
    forbidden: set[Node] = set()
    while True:
        fuser = _Fuser(graph, forbidden)
        fusion = fuser.run()
        culprit = _cycle_culprit(fusion, fuser)
        if culprit is None:
            return fusion
        forbidden.add(culprit)


def _computed(n: Node) -> bool:
    return n.op not in BUFFER_SOURCES


# --- the walk ----------------------------------------------------------------------------------------
class _Fuser:
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

    def run(self) -> Fusion:
        claimed = self._claim_attention()
        for n in self.graph.nodes:
            if n not in claimed:
                self._place(n)
        self._merge_groups()
        for g in self.groups:  # whole rows in one block where a row fits, else passes over its columns
            g._persistent = g.kind == "reduce" and self._needs_rows(g) and _fits_row(g.space, g.axes)
        members = {g: set(g.nodes) for g in self.groups}
        self.refusals = [r for r in self.refusals if r.producer not in self.local and not (
            self.owner.get(r.producer) is not None and r.consumer in members[self.owner[r.producer]])]
        return Fusion(self.graph, self._ordered(), self.refusals)

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
            for b in sorted(dag.successors(a), key=_first):
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
            if any(e.op in BUFFER_SOURCES and not _single(e.shape) or e in self.owner
                   for e in self._external(n, g)):
                return False
            for u in self.users[n]:
                if self.owner.get(u) is g:
                    continue
                if not (u.op in ELEMENTWISE or u.op in FUSED_REDUCE) or u not in self.owner:
                    return False
                host = self.owner[u]
                if host.closed or _broadcast(host.space, g.space) != tuple(host.space):
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
            space = _broadcast(a.space, b.space)
            if any(g.layouts and space != tuple(g.space) for g in (a, b)):
                return None
            return ("pointwise", space, ()) if space in (tuple(a.space), tuple(b.space)) else None
        if a.layouts and b.kind == "reduce" or b.layouts and a.kind == "reduce":
            return None
        if a.kind in EPILOGUE_TEMPLATES and b.kind == "pointwise":
            return (a.kind, a.space, ()) if _broadcast(a.space, b.space) == tuple(a.space) else None
        if a.kind == "pointwise" and b.kind == "reduce":
            return ("reduce", b.space, b.axes) if _broadcast(b.space, a.space) == tuple(b.space) else None
        if a.kind == "reduce" and b.kind == "pointwise":
            if _broadcast(a.space, b.space) != tuple(a.space):
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
        return _fits_row(a.space, a.axes) or self.rows.merged_top(a, b) < MAX_PASSES

    def _needs_rows(self, g: FusedGroup) -> bool:
        """Does reduce group g compute a full-row value or a reduction after one of its reductions?"""
        for n in g.nodes:
            if n.op == K.GATHER:
                return True
            full = n.op in FUSED_REDUCE or not _row_level(n.shape, g)
            if full and any(_depends_on_reduction(g, i) for i in n.inputs):
                return True
        return False

    # --- attention -----------------------------------------------------------------------------------
    def _claim_attention(self) -> set[Node]:
        """Claim each `softmax(f(q @ k)) @ v` (f: elementwise ops on the scores with constants, index
        comparisons and stored values, such as a scale, a causal mask, a padding mask input) as one
        "attention" kernel that never stores the scores: an online softmax over blocks of keys, which also
        stores each row's log-sum-exp when the graph reads it. Claim each attention gradient in the form
        `passes/attention.py` writes (found from exp(x - lse), with or without the forward in the same
        graph) as one "attention_bwd" kernel that recomputes the scores block by block. Refused, with a
        reason, where a value inside is read elsewhere or the templates cannot compute it. Returns the nodes
        claimed."""
        claimed: set[Node] = set()
        backs: dict[Node, attention.Backward] = {}  # by the scores matmul
        for head in self.graph.nodes:
            if not attention.head_of(head):
                continue
            back = attention.find_backward(head, self.users, self.outputs)
            if back is None:
                continue
            reason = back if isinstance(back, str) else self._backward_reason(back)
            if reason is not None:
                self.refusals.append(Refusal(head.inputs[0], head, f"no attention backward kernel: {reason}"))
                continue
            owned = set(back.region) | {back.dp, back.dq, back.dk, back.dv}
            side = self._computed_side(back.scores.side | back.side)
            local = side | back.recomputed | {back.probs_t}
            self._claim("attention_bwd", owned, local, back.dq.shape)
            self.local |= side | {back.probs_t}
            claimed |= owned | side | {back.probs_t}
            backs[back.scores.s] = back
        for o in self.graph.nodes:
            a = attention.match(o)
            if a is None:
                continue
            lse, log = attention.lse_of(a, self.users)
            owned = set(a.inner) | {o} | ({lse, log} if lse is not None else set())
            reason = self._attention_reason(a, owned, backs.get(a.scores))
            if reason is None and claimed & owned:
                reason = "its nodes belong to another attention kernel"
            if reason is not None:
                self.refusals.append(Refusal(o.inputs[0], o, f"no attention kernel: {reason}"))
                continue
            side = self._computed_side(a.side)
            self._claim("attention", owned, side, o.shape)
            self.local |= side
            claimed |= owned | side
        # scores and f that a backward kernel recomputes and no other kernel reads (the backward half
        # of a partition): computed nowhere else. Otherwise the walk places them as usual.
        for back in backs.values():
            inside = set(back.region) | back.recomputed
            if not any(n in self.owner for n in back.recomputed) and all(
                    u in inside for n in back.recomputed for u in self.users[n]):
                self.local |= back.recomputed
                claimed |= back.recomputed
        return claimed

    def _claim(self, kind: str, owned: set[Node], local: set[Node], space) -> None:
        order = self.index.__getitem__
        g = FusedGroup(kind, [], tuple(space), local=sorted(local, key=order))
        self.groups[g] = None
        for n in sorted(owned, key=order):
            self._add(g, n)
            self.joins.append((n, g))

    def _backward_reason(self, back: attention.Backward) -> str | None:
        """Why attention gradient `back` cannot be one kernel, or None."""
        sc, index = back.scores, self.index
        inside = set(back.region) | back.recomputed
        for n in sorted(back.recomputed, key=index.__getitem__):
            others = [u for u in self.users[n] if u not in inside and not _forward_reader(u, sc)]
            if others:
                return f"%{index[n]} {n.op} is also read by %{index[others[0]]} {others[0].op}, so the " \
                       f"scores must be stored"
        nodes = set(back.region) | {back.dq, back.dk, back.dv, back.dp}
        return self._template_reason(sc.s, back.dv, nodes, (back.dp, back.dq, back.dk, back.dv),
                                     sc.side | back.side)

    def _attention_reason(self, a: attention.Attention, owned: set[Node],
                          back: attention.Backward | None) -> str | None:
        """Why attention `a` (owning `owned`; with claimed backward `back`) cannot be a kernel."""
        index, o = self.index, a.out
        region = set(back.region) if back else set()
        for n in sorted(a.inner, key=index.__getitem__):
            if n in self.outputs:
                return f"%{index[n]} {n.op} is a graph output"
            others = [u for u in self.users[n] if u not in owned and u not in region]
            if others:
                return f"%{index[n]} {n.op} is also read by %{index[others[0]]} {others[0].op} outside " \
                       f"it, so it must be stored"
        return self._template_reason(a.scores, o, owned, (o,), a.side)

    def _template_reason(self, s: Node, o: Node, nodes: set[Node], matmuls, side) -> str | None:
        """What the attention templates cannot do here: s the scores, o the matmul with v."""
        if any(n in self.forbidden for n in nodes):
            return "fusing here would create a cycle between kernels"
        if s.dtype not in ATTENTION_DTYPES or any(m.dtype != s.dtype for m in matmuls):
            return f"the template's dots take f32, f16 or bf16 operands of one dtype, these are {s.dtype}"
        q, v = s.inputs[0], o.inputs[1]
        if not all(isinstance(d, int) and d <= MAX_HEAD for d in (q.shape[-1], v.shape[-1])):
            return f"the head sizes must be static and at most {MAX_HEAD}"
        if any(tuple(m.shape[:-2]) != tuple(s.shape[:-2]) for m in matmuls):
            return "the values' batch dims are not the scores'"
        loaded = side - self._computed_side(side)
        for n in sorted(side, key=self.index.__getitem__):
            if n in loaded:
                continue
            if n.op not in ELEMENTWISE and n.op not in INLINE_SOURCES and n.op not in FOLDED_MOVEMENT \
                    or n.op == K.RAND:
                return f"the scores' ops read %{self.index[n]} {n.op}; the template takes elementwise ops " \
                       f"on constants, iota and stored values only"
            if n.op in FOLDED_MOVEMENT and not self._alias(n, len(s.shape)):
                return f"the scores' ops read %{self.index[n]} {n.op} of a computed value, which moves " \
                       f"its elements; the template loads stored values and views of them only"
        return None

    @staticmethod
    def _computed_side(side) -> set[Node]:
        """The side values an attention kernel computes (constants, iota, ops on values); the rest,
        stored values and views of them (a mask input, a folded causal mask), it loads over its tile."""
        loaded = {n for n in side if n.op in BUFFER_SOURCES}
        changed = True
        while changed:
            changed = False
            for n in side:
                if n not in loaded and n.op in FOLDED_MOVEMENT and n.inputs[0] in loaded:
                    loaded.add(n)
                    changed = True
        return set(side) - loaded

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
        if n.op in INLINE_SOURCES:
            return True
        # a chain of elementwise ops on single values: recomputing is cheaper than a launch
        return n.op in ELEMENTWISE and _single(n.shape) and all(
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
                    g.space = _broadcast(g.space, n.shape) or g.space
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
            space = _broadcast(g.space, n.shape)
            if space is None or space not in (tuple(g.space), tuple(n.shape)):
                return f"iteration spaces {_fmt(g.space)} and {_fmt(n.shape)} differ"
            if g.layouts and space != tuple(g.space):
                return "the kernel writes an output in another layout over its present space"
        elif g.kind in EPILOGUE_TEMPLATES:
            if _broadcast(g.space, n.shape) != tuple(g.space):
                return f"the {g.kind} output tile is {_fmt(g.space)}, the op is over {_fmt(n.shape)}"
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
        return _aligned(m.inputs[0].shape, rank) == _aligned(m.shape, rank)

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
            return f"the reduction runs over {_fmt(x.shape)}, the kernel over {_fmt(g.space)}"
        if g.kind == "reduce" and tuple(g.axes) != axes:
            return f"reduces axes {list(axes)}, the kernel axes {list(g.axes)}"
        if not _fits_row(g.space, axes) and self._chain(g, self._source(x)) >= MAX_PASSES:
            return _too_many_passes(g.space, axes)
        return self._cycle_reason(g, n)

    def _row_reason(self, g: FusedGroup, n: Node) -> str | None:
        """Can elementwise `n` run in reduce group `g` (as a full-row value or a row value)?"""
        row = _keep1(g.space, g.axes)
        if _broadcast(row, n.shape) == row:
            for i in map(self._source, n.inputs):  # a row value reads no full-row value
                if self.owner.get(i) is g and not _row_level(i.shape, g) and i not in self.local:
                    return "a row value from a full-row value"
            return self._keepdim_reason(g, n)
        if _broadcast(g.space, n.shape) != tuple(g.space):
            return f"iteration spaces {_fmt(g.space)} and {_fmt(n.shape)} differ"
        if not _fits_row(g.space, g.axes) and \
                max(self._chain(g, self._source(i)) for i in n.inputs) >= MAX_PASSES:
            return _too_many_passes(g.space, g.axes)
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
        if tuple(idx.shape) != _keep1(g.space, g.axes):
            return False
        if not _fits_row(g.space, g.axes) and self._chain(g, x) >= MAX_PASSES:
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
            return list(nx.lexicographical_topological_sort(q, key=_first))
        except nx.NetworkXUnfeasible:
            return sorted(self.groups, key=_first)  # a cycle: fuse() undoes a merge and reruns

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


def _shape(g: FusedGroup) -> tuple:
    """What a producer's merge with g depends on besides g's members."""
    return g.kind, tuple(g.space), tuple(g.axes), bool(g.layouts), g.closed


def _first(g: FusedGroup) -> int:
    """A group's first member in graph order: launch order among independent kernels."""
    return g.first


def _forward_reader(u: Node, sc: attention.Scores) -> bool:
    """Is u part of the forward's softmax over the scores (max, x - max), which its own kernel
    computes?"""
    return u.op in (K.MAX, K.SUB) and u.inputs[0] is sc.x


def _cycle_culprit(fusion: Fusion, fuser: _Fuser) -> Node | None:
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


# --- shapes ------------------------------------------------------------------------------------------
def _single(shape) -> bool:
    return all(d == 1 for d in shape)


def _broadcast(a, b) -> tuple | None:
    """The right-aligned broadcast of two shapes (symbols broadcast only with 1 or themselves)."""
    a, b = tuple(a), tuple(b)
    r = max(len(a), len(b))
    a, b = (1,) * (r - len(a)) + a, (1,) * (r - len(b)) + b
    out = []
    for x, y in zip(a, b):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(out)


def _aligned(shape, rank: int) -> list[tuple[int, object]]:
    """The non-unit axes of `shape` right-aligned in a space of `rank` axes: (position, size)."""
    lead = rank - len(shape)
    return [(lead + d, s) for d, s in enumerate(shape) if s != 1]


def _keep1(space, axes) -> tuple:
    return tuple(1 if d in axes else s for d, s in enumerate(space))


def _row_level(shape, g: FusedGroup) -> bool:
    row = _keep1(g.space, g.axes)
    return _broadcast(row, shape) == row


def _fits_row(space, axes) -> bool:
    cols = 1
    for a in axes:
        if not isinstance(space[a], int):
            return False
        cols *= space[a]
    return cols <= MAX_ROW


def _too_many_passes(space, axes) -> str:
    cols = [space[a] for a in axes]
    return (f"would make more than {MAX_PASSES} passes over rows of {' * '.join(map(str, cols))} columns "
            f"(a row fits one block only if it has at most {MAX_ROW} columns of known size)")


def _depends_on_reduction(g: FusedGroup, x: Node) -> bool:
    """Does value `x` depend, inside group g, on one of g's reductions?"""
    stack, seen = [x], set()
    members = set(g.nodes) | set(g.local)
    while stack:
        m = stack.pop()
        if m in seen or m not in members:
            continue
        seen.add(m)
        if m.op in FUSED_REDUCE or m.op == K.GATHER:
            return True
        stack += list(m.inputs)
    return False


def _fmt(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"
