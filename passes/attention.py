"""Attention as the passes see it: `softmax(f(q @ k)) @ v` found in a graph of primitive ops, and its
gradient written the way flash attention's backward computes it.

The IR has no attention op: the prelude writes softmax as max, sub, exp, sum and div. `match` finds
the pattern from its last matmul. Autodiff (`passes/autodiff.py`) calls `backward` for a match whose
inner values nothing else reads: instead of the primitive rules (which read the probabilities, so a
training step stores the [.., M, N] matrix), the gradient is

    lse = max + log(sum)                 the row's log-sum-exp (the forward kernel's by-product)
    d   = rowsum(dout * out)             one value per query row
    p   = exp(x - lse)                   the probabilities again, from the scores
    dv  = p^T @ dout,  dp = dout @ v^T
    dx  = p * (dp - d)                   softmax's backward: sum_j p_ij dp_ij = dout_i . out_i
    ds  = f's gradient applied to dx     (the graph's own rules: a scale, a mask's where)
    dq  = ds @ k^T,  dk = q^T @ ds

which is equal to the primitive rules' result (the max's gradient is zero: softmax does not change
when a row is shifted) and lets fusion (`_claim_attention`) compute everything from lse down in one
kernel that recomputes the scores block by block and stores neither p nor ds.
"""
from __future__ import annotations

from dataclasses import dataclass

from axon.ir import GraphBuilder, Node, OpKind
from axon.ir.ops import ELEMENTWISE, MOVEMENT, OPS
from axon.ir.rewrite import cone

K = OpKind
SIDE_SOURCES = frozenset({K.CONST, K.IOTA, K.INPUT, K.PARAM, K.TENSOR})  # what a mask may be made from


@dataclass(frozen=True)
class Attention:
    """The nodes of one `softmax(f(q @ k)) @ v`."""

    out: Node              # the weighted sum: matmul(p, v)
    scores: Node           # s = matmul(q, k)
    x: Node                # f(s): what the softmax reads
    mx: Node               # max(x) over the last axis (keepdim)
    total: Node            # sum(exp(x - mx)) (keepdim)
    probs: Node            # div(exp(x - mx), total)
    chain: tuple[Node, ...]  # f's ops from s to x, in order (empty when x is s)
    inner: frozenset[Node]   # scores, chain, softmax's nodes (not out)
    side: frozenset[Node]    # f's other operands and what they are computed from

    @property
    def q(self) -> Node:
        return self.scores.inputs[0]

    @property
    def k(self) -> Node:
        return self.scores.inputs[1]

    @property
    def v(self) -> Node:
        return self.out.inputs[1]


@dataclass(frozen=True)
class Scores:
    """x = f(q @ k): the score matmul and f's elementwise ops on it."""

    s: Node                   # matmul(q, k)
    x: Node                   # f(s)
    chain: tuple[Node, ...]   # f's ops from s to x, in order (empty when x is s)
    side: frozenset[Node]     # f's other operands and what they are computed from


def scores_of(x: Node) -> Scores | None:
    """Walk back from x through elementwise ops of x's shape to one matmul of that shape, or None."""
    shape, chain, side, n = tuple(x.shape), [], set(), x
    while n.op != K.MATMUL:
        if n.op not in ELEMENTWISE:
            return None
        chain.append(n)
        main = [i for i in n.inputs if tuple(i.shape) == shape and _reaches_matmul(i, shape)]
        if len(main) != 1:
            return None
        for i in n.inputs:
            if i is not main[0]:
                side |= cone([i])  # a side operand: constants, iota and ops on them
        n = main[0]
    if tuple(n.shape) != shape:
        return None
    return Scores(n, x, tuple(reversed(chain)), frozenset(side))


def match(o: Node) -> Attention | None:
    """The attention pattern ending at matmul `o`, or None: `o = div(e, sum(e)) @ v` with
    `e = exp(x - max(x))` over the last axis and `x` computed from one matmul `s` by elementwise ops
    (each of their other operands is a side value; whether it may be recomputed is the caller's call)."""
    if o.op != K.MATMUL or o.inputs[0].op != K.DIV:
        return None
    p = o.inputs[0]
    e, total = p.inputs
    last = (len(p.shape) - 1,)
    if e.op != K.EXP or not _row_reduce(total, K.SUM, e, last) or e.inputs[0].op != K.SUB:
        return None
    x, mx = e.inputs[0].inputs
    sc = scores_of(x) if _row_reduce(mx, K.MAX, x, last) and tuple(x.shape) == tuple(p.shape) else None
    if sc is None:
        return None
    inner = {p, e, total, e.inputs[0], mx, sc.s, *sc.chain}
    return Attention(o, sc.s, x, mx, total, p, sc.chain, frozenset(inner), sc.side)


def backward(b: GraphBuilder, a: Attention, mapping: dict[Node, Node], dout: Node) -> dict[Node, Node]:
    """The gradients of q, k and v (old nodes -> new nodes of `b`) from `dout`, the gradient of `a.out`,
    as the module docstring writes them. `mapping` takes old nodes to `b`'s."""
    matmul_grad = OPS[K.MATMUL].grad
    last = len(a.out.shape) - 1
    lse = b.add(mapping[a.mx], b.log(mapping[a.total]))
    d = b.sum(b.mul(dout, mapping[a.out]), last, keepdim=True)
    p = b.exp(b.sub(mapping[a.x], lse))
    dp, dv = matmul_grad(b, a.out, [p, mapping[a.v]], mapping[a.out], dout)
    g = b.mul(p, b.sub(dp, d))
    for n in reversed(a.chain):  # back through f, by the ops' own rules
        ins = [mapping[i] for i in n.inputs]
        grads = OPS[n.op].grad(b, n, ins, mapping[n], g)
        (g,) = [dg for i, dg in zip(n.inputs, grads) if i in a.inner]
    dq, dk = matmul_grad(b, a.scores, [mapping[a.q], mapping[a.k]], mapping[a.scores], g)
    out: dict[Node, Node] = {}
    for old, new in ((a.q, dq), (a.k, dk), (a.v, dv)):
        out[old] = b.add(out[old], new) if old in out else new  # q and k may be one value
    return out


@dataclass(frozen=True)
class Backward:
    """The nodes of the gradient `backward` writes for one attention, as a graph holds it after
    clean-up (a training step, or the backward half of a partition, which recomputes the scores):
    what a flash-style backward kernel computes from q, k, v, dout and the row values lse and d."""

    scores: Scores            # s = q @ k and f, recomputed by the kernel
    region: frozenset[Node]   # elementwise ops over the [.., M, N] tile, from x - lse to ds
    probs: Node               # exp(x - lse)
    ds: Node                  # the scores' gradient: read by dq's and dk's matmuls only
    dp: Node                  # matmul(dout, v^T), read by the region only
    dq: Node                  # matmul(ds, k^T): [.., M, D]
    dk: Node                  # matmul(q^T, ds): [.., D, N]
    dv: Node                  # matmul(p^T, dout): [.., N, E]
    probs_t: Node             # p^T, dv's left operand
    side: frozenset[Node]     # constants, index comparisons, stored values the region reads (a mask)

    @property
    def recomputed(self) -> frozenset[Node]:
        """What the kernel computes again from q and k: the scores and f's ops."""
        return frozenset({self.scores.s, *self.scores.chain})


def head_of(n: Node) -> bool:
    """Could n start an attention backward: `x - lse` (lse one value per row) read by one exp?"""
    if n.op != K.SUB or len(n.shape) < 2 or n.shape[-1] == 1:
        return False
    x, lse = n.inputs
    return tuple(lse.shape) == tuple(n.shape[:-1]) + (1,) and tuple(x.shape) == tuple(n.shape)


def find_backward(head: Node, users: dict[Node, list[Node]], outputs) -> Backward | str | None:
    """The attention backward starting at `head` = x - lse (see `head_of`) in a graph (users: node ->
    readers; outputs: the graph's output nodes): None if it is not one (no q, k and v gradients
    below it), a reason if it is but not in the form one kernel computes, else its nodes."""
    sc = scores_of(head.inputs[0])
    if sc is None or [u.op for u in users[head]] != [K.EXP]:
        return None
    probs = users[head][0]
    found = _matmuls(head, probs, users)
    if found is None:
        return None
    ds, dq, dk, dv = found
    region = _region(sc, ds, users)
    if isinstance(region, str):
        return region
    nodes, dp, side = region
    if head not in nodes or probs not in nodes:
        return "the scores' gradient does not come from the recomputed probabilities"
    if len(users[ds]) != 2:
        return "the scores' gradient is read by other ops than the q and k gradients' matmuls"
    for n in (*nodes, dp):
        if n in outputs:
            return "a value of the backward over the [.., M, N] tile is a graph output"
        allowed = {dq, dk} if n is ds else ({dv.inputs[0]} if n is probs else set())
        others = [u for u in users[n] if u not in nodes and u not in allowed]
        if others:
            return f"a value of the backward over the [.., M, N] tile is also read by a {others[0].op}"
    return Backward(sc, frozenset(nodes), probs, ds, dp, dq, dk, dv, dv.inputs[0], side)


def lse_of(a: Attention, users) -> tuple[Node | None, Node | None]:
    """add(max, log(sum)) of attention a, and its log, if the graph computes them."""
    for u in users[a.mx]:
        other = [i for i in u.inputs if i is not a.mx]
        if u.op == K.ADD and len(other) == 1 and other[0].op == K.LOG and other[0].inputs[0] is a.total:
            return u, other[0]
    return None, None


def _matmuls(head: Node, probs: Node, users):
    """(ds, dq, dk, dv): the scores' gradient below `head` (x - lse) that one matmul reads on the left
    (dq) and another on the right (dk), and dv = p^T @ dout; or None."""
    tile = tuple(head.shape)
    below, stack = set(), [head]
    while stack:
        n = stack.pop()
        if n not in below:
            below.add(n)
            stack += [u for u in users[n] if u.op in ELEMENTWISE and tuple(u.shape) == tile]
    reads = [(n, u) for n in below for u in users[n] if u.op == K.MATMUL]
    dss = {n for n, u in reads if u.inputs[0] is n} & {n for n, u in reads if u.inputs[1] is n}
    transposes = [u for u in users[probs] if u.op == K.PERMUTE and _swaps_last(u)]
    dvs = [m for t in transposes for m in users[t] if m.op == K.MATMUL and m.inputs[0] is t]
    if len(dss) != 1 or len(transposes) != 1 or len(users[transposes[0]]) != 1 or len(dvs) != 1:
        return None
    (ds,) = dss
    mms = [u for u in users[ds] if u.op == K.MATMUL]
    dq = next(u for u in mms if u.inputs[0] is ds and u.inputs[1] is not ds)
    dk = next(u for u in mms if u.inputs[1] is ds and u.inputs[0] is not ds)
    return ds, dq, dk, dvs[0]


def _region(sc: Scores, ds: Node, users):
    """(region, dp, side): the elementwise ops over the tile that ds is computed from, the one matmul
    among their operands (dout @ v^T) and the constant cones and stored values they read; or a reason.
    [.., M, 1] values they read (lse, rowsum(dout * out)) the kernel loads per query row."""
    tile = tuple(sc.x.shape)
    row = tile[:-1] + (1,)
    recomputed = {sc.s, *sc.chain}
    region, rows, side, dps, stack = set(), [], set(), [], [ds]
    while stack:
        n = stack.pop()
        if n in region or n in recomputed or n in sc.side or n in side or n in rows or n in dps:
            continue
        if n.op in ELEMENTWISE and tuple(n.shape) == tile:
            region.add(n)
            stack += list(n.inputs)
        elif n.op == K.MATMUL and tuple(n.shape) == tile:
            dps.append(n)
        elif tuple(n.shape) == row and n.op not in (K.CONST, K.IOTA):
            rows.append(n)
        elif all(c.op in ELEMENTWISE or c.op in SIDE_SOURCES or c.op in MOVEMENT for c in cone([n])):
            side |= cone([n])
        else:
            return f"the scores' gradient reads a {n.op} of shape {list(n.shape)}, which the kernel " \
                   f"cannot load over its tile"
    if len(dps) != 1:
        return "the probabilities' gradient is not one matmul of dout and the values"
    return region, dps[0], frozenset(side)


def _swaps_last(t: Node) -> bool:
    r = len(t.attrs.perm)
    return tuple(t.attrs.perm) == (*range(r - 2), r - 1, r - 2)


def _row_reduce(r: Node, op, x: Node, axes) -> bool:
    return r.op == op and r.inputs[0] is x and tuple(r.attrs.axes) == axes and r.attrs.keepdim


def _reaches_matmul(n: Node, shape) -> bool:
    """Does a chain of elementwise ops over `shape` lead from a matmul of that shape to `n`?"""
    while n.op in ELEMENTWISE:
        full = [i for i in n.inputs if tuple(i.shape) == tuple(shape)]
        if len(full) != 1:
            return any(_reaches_matmul(i, shape) for i in full)
        n = full[0]
    return n.op == K.MATMUL and tuple(n.shape) == tuple(shape)
