"""The fusion plan's data (kernel groups, refusals, the plan) and the shape rules the walk decides by."""
from __future__ import annotations

from dataclasses import dataclass, field

from axon.ir import DType, Graph, Node, OpKind
from ..dependence import FIRST, NONE_BEFORE

K = OpKind
ATTENTION_DTYPES = (DType.F32, DType.F16, DType.BF16)  # tl.dot operands; the softmax runs in f32
MAX_ROW = 4096  # columns a persistent (one-pass) reduction holds in one block
MAX_PASSES = 4  # passes a looped reduction kernel makes over its rows (reads of its operands)
MAX_HEAD = 256  # head size an attention kernel holds per query row (q and the accumulator)
BUFFER_SOURCES = frozenset({K.INPUT, K.PARAM, K.TENSOR})
INLINE_SOURCES = frozenset({K.CONST, K.IOTA, K.RAND})
FOLDED_MOVEMENT = frozenset({K.PERMUTE, K.EXPAND, K.SLICE, K.RESHAPE})
FUSED_REDUCE = frozenset({K.SUM, K.MEAN, K.MAX, K.MIN})
TEMPLATES = {K.MATMUL: "matmul", K.QMATMUL: "matmul", K.BSMATMUL: "matmul", K.CONV2D: "conv2d",
             K.GATHER: "index", K.TAKE: "index", K.PAD: "index",
             K.CONCAT: "index", K.PACK_INT4: "index", K.UNPACK_INT4: "index", K.ARGMAX: "reduce",
             K.ARGMIN: "reduce"}
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
    prologues: frozenset = frozenset()  # dequantized weights computed inside their matmuls (`prologue`)

    def report(self, why_not: bool = False) -> str:
        """The groups (one line per kernel with its members), and with `why_not` every refusal."""
        index = self.graph.index()
        lines = [f"{len(self.groups)} kernels for {sum(1 for n in self.graph.nodes if is_computed(n))} "
                 f"computed nodes"]
        for k, g in enumerate(self.groups):
            owned = ", ".join(f"%{index[n]} {n.op}" for n in g.nodes)
            pro = [m for m in g.local if m in self.prologues]
            if pro:
                owned += f" (prologue: {', '.join(f'%{index[m]} {m.op}' for m in pro)})"
            extra = f" over axes {list(g.axes)}" + (" (persistent)" if g.persistent else " (looped)") \
                if g.kind == "reduce" and any(n.op in FUSED_REDUCE for n in g.nodes) else ""
            lines.append(f"  k{k} {g.kind}{extra} [{', '.join(map(str, g.space))}]: {owned}")
        if why_not:
            lines.append(f"{len(self.refusals)} refused fusions:" if self.refusals else "no refused fusions")
            for r in self.refusals:
                lines.append(f"  %{index[r.producer]} {r.producer.op} -> %{index[r.consumer]} "
                             f"{r.consumer.op}: {r.reason}")
        return "\n".join(lines)


def is_computed(n: Node) -> bool:
    return n.op not in BUFFER_SOURCES


def first_of(g: FusedGroup) -> int:
    """A group's first member in graph order: launch order among independent kernels."""
    return g.first


# --- shapes ------------------------------------------------------------------------------------------
def is_single(shape) -> bool:
    return all(d == 1 for d in shape)


def broadcast_shapes(a, b) -> tuple | None:
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


def aligned_axes(shape, rank: int) -> list[tuple[int, object]]:
    """The non-unit axes of `shape` right-aligned in a space of `rank` axes: (position, size)."""
    lead = rank - len(shape)
    return [(lead + d, s) for d, s in enumerate(shape) if s != 1]


def keep1(space, axes) -> tuple:
    return tuple(1 if d in axes else s for d, s in enumerate(space))


def row_level(shape, g: FusedGroup) -> bool:
    row = keep1(g.space, g.axes)
    return broadcast_shapes(row, shape) == row


def fits_row(space, axes) -> bool:
    cols = 1
    for a in axes:
        if not isinstance(space[a], int):
            return False
        cols *= space[a]
    return cols <= MAX_ROW


def too_many_passes(space, axes) -> str:
    cols = [space[a] for a in axes]
    return (f"would make more than {MAX_PASSES} passes over rows of {' * '.join(map(str, cols))} columns "
            f"(a row fits one block only if it has at most {MAX_ROW} columns of known size)")


def depends_on_reduction(g: FusedGroup, x: Node) -> bool:
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


def fmt_shape(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"
