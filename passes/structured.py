"""Structured pruning: whole neurons, channels or heads removed by rewriting the graph to smaller shapes.

A *channel group* is every (node, axis) of a graph that indexes the same channels as one seed axis (the
output columns of a dense layer's weight, the output channels of a convolution's, the heads of an
attention split), found by following the dataflow both ways: through pointwise ops (broadcast operands
join only where they carry the axis), matmul (its contraction ties the operands' axes; that is where a
group usually ends, in the next layer's weight rows), conv2d, permutes, reductions over other axes,
reshapes (a channel may become a block of a merged axis: conv channels flattened into a dense layer's
inputs are blocks of 16 rows; heads split from a projection are blocks of 8 columns) and the random
numbers of dropout. Each member records where channel c lies on its axis: the indices
o * C * inner + c * inner + j (o < outer, j < inner).

What a group cannot get past is refused with the node and the reason, so nothing is half-rewritten: a
model input or output with the axis (the model's interface would change), a reduction over it (a
normalization reads every channel: removing some changes all), a slice, pad, concat, gather or take
along it, a reshape that splits a channel across axes, a grouped convolution, two routes giving one axis
different layouts.

`shrink(graph, seed, keep)` rebuilds the graph with only the kept channels of the seed's group: its
parameters sliced (`slice_params` slices the values the same way), reshapes, constants and random
numbers of the group at the new sizes, every other node re-typed by the builder.
"""
from __future__ import annotations

import fnmatch
import math
import os
from collections import deque
from dataclasses import dataclass, replace

import torch

from axon.ir import AxonError, Graph, GraphBuilder, Node, OpKind
from axon.ir.ops import BINARY, ELEMENTWISE, REDUCE, UNARY

K = OpKind
POINTWISE = UNARY | BINARY | ELEMENTWISE | {K.WHERE, K.CAST}


class StructureError(AxonError):
    """A structure that cannot be removed, with the node and why."""


@dataclass(frozen=True)
class Member:
    node: Node
    axis: int
    outer: int = 1
    inner: int = 1


@dataclass
class Group:
    """The (node, axis) pairs tied to one seed, and its channel count."""

    seed: tuple[str, int]          # (parameter or node label, axis) it was found from
    channels: int
    members: dict[tuple[int, int], Member]
    produced: frozenset = frozenset()  # the weights whose output axis the channels are

    def params(self) -> dict[str, Member]:
        return {m.node.attrs.name: m for m in self.members.values() if m.node.op == K.PARAM}

    def producers(self) -> dict[str, Member]:
        """The weights whose output axis the channels are (the columns of a dense layer, a conv's
        output channels): what the channels are ranked by."""
        return {name: m for name, m in self.params().items() if m.node in self.produced}


# --- sizes -----------------------------------------------------------------------------------------
_PRIMES = (1000003, 1000033, 1000037, 1000039, 1000081, 1000099, 1000117, 1000121, 1000133, 1000151)


def _sizes(graph: Graph) -> dict[str, int]:
    """A stand-in size per symbolic dimension: distinct large primes, so the products of a reshape's
    axes match exactly when they match symbolically."""
    names = sorted({str(d) for n in graph.nodes for d in n.shape if not isinstance(d, int)})
    if len(names) > len(_PRIMES):
        raise StructureError(f"structured pruning handles up to {len(_PRIMES)} symbolic sizes, this graph "
                             f"has {len(names)}")
    return dict(zip(names, _PRIMES))


def _shape(node: Node, env) -> tuple[int, ...]:
    from axon.ir.shapes import concrete

    return concrete(node.shape, env)


# --- the group search ------------------------------------------------------------------------------
def find_group(graph: Graph, node: Node, axis: int, label: str) -> Group:
    """The channel group of `axis` of `node` (a parameter or a reshape's output), or StructureError."""
    env = _sizes(graph)
    users = graph.users()
    outputs = {id(n): name for name, n in graph.outputs.items()}
    axis %= len(node.shape)
    channels = _shape(node, env)[axis]
    start = Member(node, axis)
    members: dict[tuple[int, int], Member] = {}
    produced: set[Node] = set()
    todo = deque([start])

    def visit(m: Member, via: Node) -> None:
        key = (id(m.node), m.axis)
        got = members.get(key)
        if got is None:
            members[key] = m
            todo.append(m)
        elif (got.outer, got.inner) != (m.outer, m.inner):
            raise StructureError(f"{label}: axis {m.axis} of {_show(m.node)} is reached with two layouts of "
                                 f"the channels (via {_show(via)}): they are mixed there")

    while todo:
        m = todo.popleft()
        n = m.node
        if id(n) in outputs:
            raise StructureError(f"{label}: the model's output '{outputs[id(n)]}' has this dimension "
                                 f"(axis {m.axis} of {_show(n)}): removing channels would change it")
        if n.op == K.INPUT:
            raise StructureError(f"{label}: the model's input '{n.attrs.name}' has this dimension")
        # backwards: what this node's axis is made of
        for other in _backward(n, m, env, label):
            visit(other, n)
        # forwards: what reads it
        for user in dict.fromkeys(users[n]):
            for other in _forward(user, n, m, env, label):
                visit(other, user)
        if n.op in (K.MATMUL, K.CONV2D):
            w = n.inputs[1]
            if n.op == K.MATMUL and m.axis == len(n.shape) - 1 and w.op == K.PARAM:
                produced.add(w)
            if n.op == K.CONV2D and m.axis == 1 and w.op == K.PARAM:
                produced.add(w)
    return Group((label, axis), channels, members, frozenset(produced))


def _show(n: Node) -> str:
    if n.op in (K.PARAM, K.INPUT):
        return f"'{n.attrs.name}'"
    return f"{n.op.value} -> [{', '.join(map(str, n.shape))}]"


def _aligned(src_rank: int, dst_rank: int, axis: int) -> int:
    """An axis under numpy broadcasting (right-aligned) in a tensor of another rank (-1: none)."""
    a = axis - (src_rank - dst_rank)
    return a if 0 <= a < dst_rank else -1


def _backward(n: Node, m: Member, env, label: str) -> list[Member]:
    """The members among `n`'s operands that `n`'s axis `m.axis` is computed from."""
    if n.op in POINTWISE or n.op == K.EXPAND:
        return _aligned_operands(n, n.inputs, m, env)
    if n.op == K.MATMUL:
        a, b = n.inputs
        r = len(n.shape)
        if m.axis == r - 1:
            return [Member(b, len(b.shape) - 1, m.outer, m.inner)]
        if m.axis == r - 2:
            return [Member(a, len(a.shape) - 2, m.outer, m.inner)]
        return _aligned_operands(n, n.inputs, m, env)
    if n.op == K.CONV2D:
        if m.axis > 1:
            raise StructureError(f"{label}: the spatial axis {m.axis} of a conv2d cannot be pruned")
        return [Member(n.inputs[1] if m.axis == 1 else n.inputs[0], 0, m.outer, m.inner)]
    if n.op in REDUCE:
        return [Member(n.inputs[0], _reduced_to_source(n, m.axis), m.outer, m.inner)]
    if n.op == K.PERMUTE:
        return [Member(n.inputs[0], n.attrs.perm[m.axis], m.outer, m.inner)]
    if n.op == K.RESHAPE:
        return [_through_reshape(_shape(n, env), _shape(n.inputs[0], env), m, n.inputs[0], label, n)]
    if n.op in (K.PARAM, K.CONST, K.RAND) or n.op == K.IOTA and n.attrs.axis != m.axis:
        return []
    raise StructureError(f"{label}: the channels pass through {_show(n)}, which structured pruning "
                         f"cannot resize")


def _aligned_operands(n: Node, operands, m: Member, env) -> list[Member]:
    """The operands that carry `n`'s axis under broadcasting (not those of size 1 there)."""
    out = []
    size = _shape(n, env)[m.axis]
    for i in operands:
        a = _aligned(len(n.shape), len(i.shape), m.axis)
        if a >= 0 and _shape(i, env)[a] == size:
            out.append(Member(i, a, m.outer, m.inner))
    return out


def _forward(user: Node, src: Node, m: Member, env, label: str) -> list[Member]:
    """The members of `user` (and of its other operands) that `src`'s axis ties."""
    r = len(user.shape)
    if user.op in POINTWISE or user.op == K.EXPAND:
        carried = _shape(src, env)[m.axis] != 1
        return [Member(user, m.axis + (r - len(src.shape)), m.outer, m.inner)] if carried else []
    if user.op == K.MATMUL:
        return _matmul_forward(user, src, m, label)
    if user.op == K.CONV2D:
        return _conv_forward(user, src, m, label)
    if user.op in REDUCE:
        if m.axis in user.attrs.axes:
            raise StructureError(f"{label}: {_show(user)} reduces over the channels, so it reads every "
                                 f"one of them (a normalization?): removing some would change the rest")
        return [Member(user, _source_to_reduced(user, m.axis), m.outer, m.inner)]
    if user.op == K.PERMUTE:
        return [Member(user, user.attrs.perm.index(m.axis), m.outer, m.inner)]
    if user.op == K.RESHAPE:
        return [_through_reshape(_shape(src, env), _shape(user, env), m, user, label, user)]
    raise StructureError(f"{label}: the channels are read by {_show(user)}, which structured pruning "
                         f"cannot resize")


def _matmul_forward(user: Node, src: Node, m: Member, label: str) -> list[Member]:
    a, b = user.inputs
    r = len(user.shape)
    if a is b:
        raise StructureError(f"{label}: {_show(user)} multiplies a value by itself")
    if src is a and m.axis == len(a.shape) - 1 or src is b and m.axis == len(b.shape) - 2:
        # the contraction: the two operands' axes are one set of channels, the result has none
        other, axis = (b, len(b.shape) - 2) if src is a else (a, len(a.shape) - 1)
        return [Member(other, axis, m.outer, m.inner)]
    if src is a and m.axis == len(a.shape) - 2:
        return [Member(user, r - 2, m.outer, m.inner)]
    if src is b and m.axis == len(b.shape) - 1:
        return [Member(user, r - 1, m.outer, m.inner)]
    return [Member(user, m.axis + (r - len(src.shape)), m.outer, m.inner)]  # a batch axis


def _conv_forward(user: Node, src: Node, m: Member, label: str) -> list[Member]:
    x, w = user.inputs
    if user.attrs.groups != 1:
        raise StructureError(f"{label}: a grouped convolution (groups={user.attrs.groups}) ties its "
                             f"channels in groups")
    if m.axis > 1:
        raise StructureError(f"{label}: the spatial axes of a conv2d's operands cannot be pruned")
    if src is x:  # input channels: the weight's axis 1; the batch: the result's
        return [Member(w, 1, m.outer, m.inner) if m.axis == 1 else Member(user, 0, m.outer, m.inner)]
    # the weight's output channels are the result's; its input channels, the input's
    return [Member(user, 1, m.outer, m.inner) if m.axis == 0 else Member(x, 1, m.outer, m.inner)]


def _reduced_to_source(n: Node, axis: int) -> int:
    if n.attrs.keepdim:
        return axis
    kept = [a for a in range(len(n.inputs[0].shape)) if a not in n.attrs.axes]
    return kept[axis]


def _source_to_reduced(n: Node, axis: int) -> int:
    if n.attrs.keepdim:
        return axis
    kept = [a for a in range(len(n.inputs[0].shape)) if a not in n.attrs.axes]
    return kept.index(axis)


def _through_reshape(src: tuple[int, ...], dst: tuple[int, ...], m: Member, dst_node: Node, label: str,
                     where: Node) -> Member:
    """Where channel c of `m` (an axis of a tensor of shape `src`) lies in the same data reshaped to
    `dst`: one axis of it, as (outer, inner), or StructureError when it is split across axes."""
    total = math.prod(src)
    # the channel's layout in the flat index: blocks of `inner`, `C` of them per period, `outer` periods
    after = math.prod(src[m.axis + 1:]) * m.inner
    size = src[m.axis] // (m.outer * m.inner)  # the channel count C
    stride, span = after, after * size          # channel c: flat indices [o * span * ... ]
    acc = 1
    for axis in range(len(dst) - 1, -1, -1):    # the axes of dst, innermost first
        lo, hi = acc, acc * dst[axis]
        if lo <= stride and span <= hi and stride % lo == 0 and hi % span == 0:
            inner = stride // lo
            outer = hi // span
            if dst[axis] == outer * size * inner and total % hi == 0:
                return Member(dst_node, axis, outer, inner)
        acc = hi
    raise StructureError(f"{label}: a reshape ({_show(where)}) splits each channel across axes",
                         hint="pruning whole heads: --granularity head")


# --- seeds -----------------------------------------------------------------------------------------
def seeds(graph: Graph, granularity: str) -> list[tuple[str, Node, int]]:
    """The seed axes of a granularity: (label, node, axis). neuron: each matmul weight's output
    columns; channel: each conv2d weight's output channels; head: each reshape that splits a
    projection's output features into [heads, head size], at its heads axis."""
    out = []
    for n in graph.nodes:
        w = n.inputs[1] if n.op in (K.MATMUL, K.CONV2D) else None
        if granularity == "neuron" and n.op == K.MATMUL and w.op == K.PARAM:
            out.append((w.attrs.name, w, len(w.shape) - 1))
        elif granularity == "channel" and n.op == K.CONV2D and w.op == K.PARAM:
            out.append((w.attrs.name, w, 0))
        elif granularity == "head" and n.op == K.RESHAPE and len(n.shape) == len(n.inputs[0].shape) + 1 \
                and n.inputs[0].op == K.MATMUL and n.inputs[0].inputs[1].op == K.PARAM \
                and tuple(n.shape[:-2]) == tuple(n.inputs[0].shape[:-1]):
            out.append((n.inputs[0].inputs[1].attrs.name + ":heads", n, len(n.shape) - 2))
    return list({label: (label, node, axis) for label, node, axis in out}.values())


# --- ranking and the rewrite ----------------------------------------------------------------------
def slice_norms(w: torch.Tensor, n: float, dim: int) -> torch.Tensor:
    """The Ln norm of each slice of `w` along `dim` (torch.nn.utils.prune's _compute_norm)."""
    others = [d for d in range(w.dim()) if d != dim % w.dim()]
    return torch.norm(w.detach(), p=n, dim=others)


def channel_index(m: Member, channels: int, keep: list[int], size: int) -> torch.Tensor:
    """The indices along `m`'s axis (of `size`) that the kept channels occupy."""
    idx = torch.arange(size).view(m.outer, channels, m.inner)
    return idx[:, torch.tensor(keep, dtype=torch.long), :].reshape(-1)


def importance(group: Group, params: dict[str, torch.Tensor], n: float = 2) -> torch.Tensor:
    """Each channel's Ln norm over its slices of the producing weights (one weight: exactly the norms
    torch.nn.utils.prune.ln_structured ranks by), or over all the group's weights when none produces it."""
    chosen = group.producers() or group.params()
    if len(chosen) == 1:
        (name, m), = chosen.items()
        if m.outer == m.inner == 1:  # torch's own computation, so near-ties fall the same way
            return slice_norms(params[name], n, m.axis)
    total = torch.zeros(group.channels, dtype=torch.float64)
    for name, m in chosen.items():
        w = params[name].detach().to(torch.float64)
        moved = w.movedim(m.axis, 0).reshape(m.outer, group.channels, m.inner, -1)
        per = moved.abs().pow(n).sum(dim=(0, 2, 3)) if math.isfinite(n) else moved.abs().amax(dim=(0, 2, 3))
        total = total + per if math.isfinite(n) else torch.maximum(total, per)
    return total.pow(1 / n) if math.isfinite(n) else total


def choose(group: Group, params: dict[str, torch.Tensor], amount: float, n: float = 2) -> list[int]:
    """The channels kept: the size - round(amount * size) of largest norm (torch.topk, largest=True, as
    ln_structured), in ascending order."""
    drop = round(amount * group.channels)
    keep = group.channels - drop
    if keep < 1:
        raise StructureError(f"{group.seed[0]}: pruning {amount} of {group.channels} channels leaves none")
    scores = importance(group, params, n).to(torch.float32)
    return sorted(torch.topk(scores, k=keep, largest=True).indices.tolist())


def slice_params(group: Group, params: dict[str, torch.Tensor], keep: list[int]) -> dict[str, torch.Tensor]:
    """The group's parameters with only the kept channels (the others unchanged)."""
    out = dict(params)
    for name, m in group.params().items():
        w = params[name]
        out[name] = w.index_select(m.axis, channel_index(m, group.channels, keep, w.shape[m.axis]).to(
            w.device)).contiguous()
    return out


def shrink(graph: Graph, group: Group, keep: list[int]) -> Graph:
    """`graph` with only the kept channels of `group`: its members' axes at the new sizes."""
    ratio = (len(keep), group.channels)
    by_node: dict[int, list[Member]] = {}
    for m in group.members.values():
        by_node.setdefault(id(m.node), []).append(m)
    b = GraphBuilder(graph.name)
    mapping: dict[Node, Node] = {}
    for n in graph.nodes:
        inputs = [mapping[i] for i in n.inputs]
        attrs = n.attrs
        if id(n) in by_node and hasattr(attrs, "shape"):
            shape = list(attrs.shape)
            for m in by_node[id(n)]:
                shape[m.axis] = shape[m.axis] * ratio[0] // ratio[1]
            attrs = replace(attrs, shape=tuple(shape))
            if n.op == K.TENSOR:
                raise StructureError(f"{group.seed[0]}: a literal tensor has the channels' axis")
        mapping[n] = b.node(n.op, inputs, attrs)
    for name, node in graph.outputs.items():
        b.output(name, mapping[node])
    return b.build()


# --- plans: which groups, which channels -----------------------------------------------------------
GRANULARITIES = ("neuron", "channel", "head")


@dataclass
class Candidate:
    """One prunable structure of a granularity (or why it is not)."""

    label: str                      # the seed: a weight's name, or '<projection>:heads'
    group: Group | None
    reason: str | None = None       # why it cannot be pruned (group None)

    @property
    def name(self) -> str:
        """The layer's name for people: the shared prefix of the producing weights (`block.0.attn`)."""
        if self.group is None:
            return self.label
        names = sorted(self.group.producers() or self.group.params())
        prefix = ".".join(os.path.commonprefix([n.split(".") for n in names]))
        if ":" in self.label:
            return f"{prefix or self.label.split(':')[0]} heads"
        return names[0].rsplit(".", 1)[0] if len(names) == 1 else prefix or self.label


def candidates(graph: Graph, granularity: str, skip: tuple[str, ...] = ()) -> list[Candidate]:
    """Every seed of the granularity with its group, or the reason it cannot be removed; a group
    reached from several seeds (the q, k, v projections of one attention) is listed once."""
    if granularity not in GRANULARITIES:
        raise StructureError(f"unknown granularity '{granularity}': one of {', '.join(GRANULARITIES)}")
    out, seen = [], {}
    for label, node, axis in seeds(graph, granularity):
        try:
            g = find_group(graph, node, axis, label)
        except StructureError as e:
            out.append(Candidate(label, None, str(e.args[0]).split(": ", 1)[-1]))
            continue
        key = frozenset(g.params())
        if key in seen:
            continue
        seen[key] = label
        c = Candidate(label, g)
        if any(fnmatch.fnmatchcase(c.name, p) or fnmatch.fnmatchcase(label, p) for p in skip):
            c = Candidate(label, None, "skipped by name")
        out.append(c)
    if not any(c.group for c in out):
        why = "; ".join(f"{c.label}: {c.reason}" for c in out[:4]) or "it has none"
        raise StructureError(f"{graph.name} has no {granularity} that can be removed ({why})")
    return out


def plan(graph: Graph, params: dict[str, torch.Tensor], granularity: str, amount: float, n: float = 2,
         skip: tuple[str, ...] = ()) -> dict:
    """The structure to remove: {"granularity", "keep": {seed label: kept channels}} (JSON-able), the
    channels of each group ranked by the Ln norm of its producing weights."""
    keep = {c.label: choose(c.group, params, amount, n) for c in candidates(graph, granularity, skip)
            if c.group is not None}
    return {"granularity": granularity, "amount": amount, "norm": n, "keep": keep}


def apply(graph: Graph, structure: dict, params: dict[str, torch.Tensor] | None = None):
    """`graph` (and `params`, when given) with the structure removed: each group found again by its
    seed in the graph as shrunk so far. Returns the graph, or (graph, params)."""
    for label, keep in structure["keep"].items():
        by_label = {lab: (node, axis) for lab, node, axis in seeds(graph, structure["granularity"])}
        if label not in by_label:
            raise StructureError(f"the pruned structure names '{label}', which {graph.name} does not have "
                                 f"as a {structure['granularity']}")
        node, axis = by_label[label]
        group = find_group(graph, node, axis, label)
        if max(keep, default=-1) >= group.channels or len(set(keep)) != len(keep) or not keep:
            raise StructureError(f"the pruned structure keeps channels {keep[:8]} of '{label}', which has "
                                 f"{group.channels}")
        if params is not None:
            params = slice_params(group, params, keep)
        graph = shrink(graph, group, keep)
    return graph if params is None else (graph, params)
