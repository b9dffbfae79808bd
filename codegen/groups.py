"""Kernel groups: which IR nodes one kernel computes, and the default grouping (one kernel per node).

A group reads its external values through `Access`es: a buffer (a graph input, a parameter, a literal, or
another group's output) seen through a chain of movement ops (permute, expand, slice, reshape of a
contiguous buffer) that the kernel folds into its index arithmetic, so no copy is made for them.
Fusion replaces `groups` with a function that forms larger groups; code generation does not change.
"""
from __future__ import annotations

from dataclasses import dataclass

from axon.ir import AxonError, Graph, Node, OpKind
from axon.ir.op_quant import per_group
from axon.ir.ops import ELEMENTWISE, REDUCE

K = OpKind
INLINE_SOURCES = frozenset({K.CONST, K.IOTA, K.RAND})  # computed inside the consuming kernel
BUFFER_SOURCES = frozenset({K.INPUT, K.PARAM, K.TENSOR})  # made by the host, never by a kernel
FOLDED_MOVEMENT = frozenset({K.PERMUTE, K.EXPAND, K.SLICE, K.RESHAPE})
# Ops with a kernel template of their own, by group kind.
TEMPLATES = {K.MATMUL: "matmul", K.QMATMUL: "matmul", K.BSMATMUL: "matmul", K.CONV2D: "conv2d",
             K.GATHER: "index", K.TAKE: "index", K.PAD: "index",
             K.CONCAT: "index", K.PACK_INT4: "index", K.UNPACK_INT4: "index"}


class CodegenError(AxonError):
    """A graph (or a group) that code generation cannot lower."""


@dataclass(frozen=True)
class Access:
    """How a kernel reads an external value: `buffer` seen through the movement ops `view` (in order).

    `group` = (axis, size) reads a per-group scale or zero point of a quantization op: the value has the
    space's shape but for that axis (of its own shape), which is `size` times shorter, and the element
    at coordinate c along it is read at c // size. Such a load is the kernel's value `key`, apart from
    any plain load of the same node."""

    buffer: Node
    view: tuple[Node, ...] = ()
    group: tuple[int, int] | None = None

    @property
    def node(self) -> Node:
        return self.view[-1] if self.view else self.buffer

    @property
    def key(self):
        """How the kernel's code names the loaded value: the node, or (node, group) per group."""
        return self.node if self.group is None else (self.node, self.group)

    def space_group(self, rank: int) -> tuple[int, int] | None:
        """`group` with its axis in an iteration space of `rank` axes (the value right-aligned in it)."""
        if self.group is None:
            return None
        return rank - len(self.node.shape) + self.group[0], self.group[1]


def reads_of(m: Node, access) -> list[Access]:
    """How member `m` reads each of its operands (`access(v)` for a plain read): a per-group scale and
    zero point of a quantization op are read per group."""
    grouped = per_group(m)
    out = [access(i) for i in m.inputs]
    if grouped:
        out[1:] = [Access(a.buffer, a.view, grouped) for a in out[1:]]
    return out


def grouped_operands(graph: Graph) -> set[Node]:
    """Values some quantization op reads per group (an inline iota or rand could not be)."""
    return {i for n in graph.nodes if per_group(n) for i in n.inputs[1:]}


@dataclass(frozen=True)
class KernelGroup:
    """The IR nodes one kernel computes (`nodes`, in topological order), what it reads (`inputs`) and
    the values that leave it (`outputs`, each written to its own contiguous buffer)."""

    kind: str  # "pointwise", "reduce", "matmul", "conv2d" or "index"
    nodes: tuple[Node, ...]
    inputs: tuple[Access, ...]
    outputs: tuple[Node, ...]
    labels: tuple[str, ...] = ()  # one line per node for the kernel's header comment
    space: tuple = ()             # the iteration space (fused groups; else the output's shape)
    axes: tuple[int, ...] = ()    # reduce: the reduced axes of `space`
    persistent: bool = False      # reduce: whole rows in one block
    prologue: tuple[Node, ...] = ()  # matmul: the members computing its right operand in the K loop


def fused_groups(graph: Graph, fused) -> list[KernelGroup]:
    """Kernel groups from a fusion plan (`passes.fusion.fuse(graph).groups`, in launch order): each
    group's members computed in one kernel; what they read from outside is an `Access` (a stored value
    through the movement ops that view it); a member is stored when another kernel reads it or it is a
    graph output."""
    index = graph.index()
    outputs = set(graph.outputs.values())
    owned = {n for fg in fused for n in fg.nodes}
    plans = []
    for fg in fused:
        members = fg.members(index)
        inside = set(members)
        first = [m for m in fg.nodes if m.op in TEMPLATES][:1] if fg.kind != "reduce" else []
        # a template's operands come first, by position (a prologue's in place of the value it computes);
        # then what the other members read (an epilogue loads its operands over the output tile, even one
        # the template also reads)
        prologue = [p for m in first for p in _prologue(m, fg)]
        operands = [a for m in first for i in m.inputs for a in _template_reads(i, prologue, owned)]
        others: dict[Access, None] = {}  # an ordered set: a kernel may read hundreds of values
        for m in members:
            if m not in first and m not in prologue:
                for i, a in zip(m.inputs, reads_of(m, lambda v: _access(v, owned))):
                    if i not in inside:
                        others.setdefault(a)
        reads = operands + list(others)
        # a kernel never loads what it computes: it would read the buffer before writing it
        assert not any(a.buffer in inside for a in reads), f"a {fg.kind} group reads its own value"
        if fg.kind == "copy" and members[0].op != K.RESHAPE:
            # a permute/expand/slice copy reads its operand through itself: the load is the movement
            (a,) = reads
            reads = [Access(a.buffer, (*a.view, members[0]))]
        plans.append((fg, members, reads, tuple(prologue)))
    stored = {a.buffer for _, _, reads, _ in plans for a in reads} | outputs
    result = []
    for fg, members, reads, prologue in plans:
        outs = tuple(n for n in sorted(fg.nodes, key=index.__getitem__) if n in stored)
        if not outs:  # dead code (nothing reads it, no output names it): no kernel
            continue
        labels = tuple(_label(n, index) for n in members)
        kind = "pointwise" if fg.kind == "copy" else fg.kind
        result.append(KernelGroup(kind, tuple(members), tuple(reads), outs, labels, tuple(fg.space),
                                  tuple(fg.axes), fg.persistent, prologue))
    return result


def _prologue(m: Node, fg) -> list[Node]:
    """The members of `fg` computing template `m`'s weight (its right operand) in its K loop
    (`passes.fusion.prologue`): a local dequantize it reads, and the unpack_int4 under it."""
    if m.op not in (K.MATMUL, K.CONV2D) or m.inputs[1].op != K.DEQUANTIZE or m.inputs[1] not in fg.local:
        return []
    d = m.inputs[1]
    return [d.inputs[0], d] if d.inputs[0] in fg.local else [d]


def _template_reads(v: Node, prologue: list[Node], owned: set[Node]) -> list[Access]:
    """How a template reads its operand `v`: as a stored value, or, for a weight its prologue computes,
    the stored codes (packed, under an unpack_int4), the scale and the zero point."""
    if v not in prologue:
        return [_access(v, owned)]
    codes = v.inputs[0]
    if codes in prologue:
        codes = codes.inputs[0]
    return [_access(codes, owned)] + [_access(s, owned) for s in v.inputs[1:]]


def _access(v: Node, owned: set[Node]) -> Access:
    """How a kernel reads stored value `v`: the buffer under `v`'s chain of folded movement ops."""
    view = []
    while v.op in FOLDED_MOVEMENT and v not in owned:
        view.append(v)
        v = v.inputs[0]
    return Access(v, tuple(reversed(view)))


def _label(n: Node, index) -> str:
    args = ", ".join(f"%{index[i]}" for i in n.inputs)
    return f"%{index[n]} = {n.op}({args}): {n.type}"


def groups(graph: Graph) -> list[KernelGroup]:
    """The default grouping: one kernel per computed node, in graph order.

    Inline sources (const, iota, rand) are recomputed inside each elementwise consumer; movement ops
    are folded into their consumers' index arithmetic. A value gets a buffer when it is a graph output or
    a consumer cannot compute it inline.
    """
    users = graph.users()
    outputs = set(graph.outputs.values())
    index = graph.index()
    views: dict[Node, Access] = {}
    contiguous: set[Node] = set()  # buffers and reshapes of contiguous values
    inline: set[Node] = set()
    result: list[KernelGroup] = []
    grouped = grouped_operands(graph)

    def access(v: Node) -> Access:
        return views.get(v) or Access(v)

    def label(n: Node) -> str:
        args = ", ".join(f"%{index[i]}" for i in n.inputs)
        return f"%{index[n]} = {n.op}({args}): {n.type}"

    for n in graph.nodes:
        if n.op in BUFFER_SOURCES:
            contiguous.add(n)
        elif n.op in INLINE_SOURCES and n not in outputs and all(u.op in ELEMENTWISE for u in users[n]) \
                and (n not in grouped or n.op == K.CONST):
            inline.add(n)
        elif n.op in FOLDED_MOVEMENT and n not in outputs and _foldable(n, contiguous, inline):
            src = n.inputs[0]
            base = access(src)
            views[n] = Access(base.buffer, base.view + (n,))
            if n.op == K.RESHAPE and src in contiguous:
                contiguous.add(n)
        elif n.op in ELEMENTWISE or n.op in INLINE_SOURCES:
            members = [s for s in n.inputs if s in inline]
            members += [s for m in members for s in m.inputs if s in inline and s not in members]
            members = sorted(set(members), key=index.__getitem__) + [n]
            reads = _reads(members, access)
            result.append(KernelGroup("pointwise", tuple(members), reads, (n,),
                                      tuple(label(m) for m in members)))
            contiguous.add(n)
        elif n.op in REDUCE:
            result.append(KernelGroup("reduce", (n,), (access(n.inputs[0]),), (n,), (label(n),)))
            contiguous.add(n)
        elif n.op in TEMPLATES:
            reads = tuple(access(s) for s in n.inputs)  # by position: concat(x, x) reads x twice
            result.append(KernelGroup(TEMPLATES[n.op], (n,), reads, (n,), (label(n),)))
            contiguous.add(n)
        elif n.op in FOLDED_MOVEMENT:
            # A copy: a graph output that is a view, or a reshape of a value that is not contiguous.
            # The kernel reads the operand in its own row-major order, which is the reshape's order.
            base = access(n.inputs[0])
            read = Access(base.buffer, base.view + (n,)) if _foldable(n, contiguous, inline) else base
            result.append(KernelGroup("pointwise", (n,), (read,), (n,), (label(n),)))
            contiguous.add(n)
        else:
            raise CodegenError(f"%{index[n]} = {n.op}: no kernel template for '{n.op}' yet")
    return result


def _foldable(n: Node, contiguous: set[Node], inline: set[Node]) -> bool:
    src = n.inputs[0]
    if src in inline:
        return False
    return n.op != K.RESHAPE or src in contiguous  # a reshape is a view only of a contiguous value


def _reads(members: list[Node], access) -> tuple[Access, ...]:
    out: dict[Access, None] = {}
    inside = set(members)
    for m in members:
        for s, a in zip(m.inputs, reads_of(m, access)):
            if s not in inside:
                out.setdefault(a)
    return tuple(out)
