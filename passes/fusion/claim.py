"""Fusion claims each attention pattern (`passes/attention.py` finds them) as one kernel before the walk,
or says why not."""
from __future__ import annotations

from axon.ir import Node
from axon.ir.op_quant import per_group
from axon.ir.ops import ELEMENTWISE
from .. import attention
from .groups import (ATTENTION_DTYPES, BUFFER_SOURCES, FOLDED_MOVEMENT, INLINE_SOURCES, MAX_HEAD, K,
                     FusedGroup, Refusal)


class ClaimAttention:
    """The part of `walk.Fuser` that claims attention kernels before the walk."""

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
        if any(per_group(n) for n in nodes):
            return "the template does not read a quantization op's scales per group"
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


def _forward_reader(u: Node, sc: attention.Scores) -> bool:
    """Is u part of the forward's softmax over the scores (max, x - max), which its own kernel
    computes?"""
    return u.op in (K.MAX, K.SUB) and u.inputs[0] is sc.x
