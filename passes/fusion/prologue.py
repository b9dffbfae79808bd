"""Fusion claims each stored weight's dequantization as a prologue of the matmuls (or convolutions) that
read it, or says why not.

    param %w.q: u8[K, N/2]   param %w.scale: f32[K/64, N]
    %1 = unpack_int4(%w.q)                    \\
    %2 = dequantize(%1, %w.scale, axes=[0])    > one matmul kernel: each [BLOCK_K, BLOCK_N] block of
    %3 = matmul(%x, %2)                       /  codes is loaded, unpacked and scaled in registers

The dequantized weight is never stored: the claimed nodes are local to every kernel that reads them
(recomputed in each, like a constant), so the memory plan has no buffer for them. Claimed when the
dequantize's codes are a stored tensor (a parameter or input), or `unpack_int4` of one read by nothing
else; its scale and zero point are stored tensors; and every reader is a matmul reading it as its right
operand (a matrix), or a conv2d reading it as its weight (a scale per tensor or per output channel, codes
not packed). Otherwise the dequantize is an elementwise kernel of its own, and the refusal names the
reason (`axon show --stage fused --why-not`).
"""
from __future__ import annotations

from axon.ir import Node
from .groups import BUFFER_SOURCES, K, Refusal

PROLOGUE_READERS = frozenset({K.MATMUL, K.CONV2D})


def weight_prologue(d: Node, users, outputs) -> list[Node] | str:
    """The nodes computing the weight `d` (a dequantize) inside each matmul that reads it, the
    dequantize last; or why they cannot be."""
    codes, *rest = d.inputs
    if d in outputs:
        return "the dequantized weight is a graph output: it must be stored"
    readers = {u.op for u in users[d]}
    for u in dict.fromkeys(users[d]):
        if u.op not in PROLOGUE_READERS or u.inputs[1] is not d or u.inputs[0] is d:
            return f"read by {u.op}" + (" as its left operand" if u.op in PROLOGUE_READERS else "") + \
                ": only a matmul's right operand or a conv2d's weight is dequantized in its K loop"
    if readers == {K.MATMUL} and len(d.shape) != 2:
        return f"a matmul prologue dequantizes a matrix, this weight has rank {len(d.shape)}"
    if K.CONV2D in readers:
        if len(readers) > 1:
            return "read by a matmul and a conv2d"
        if d.attrs.group > 1 or d.attrs.axes not in ((), (0,)) or codes.op == K.UNPACK_INT4:
            return "a conv2d prologue takes a scale per tensor or per output channel, unpacked codes"
    for s in rest:
        if s.op not in BUFFER_SOURCES and s.op != K.CONST:
            return f"its {'scale' if s is rest[0] else 'zero point'} is computed ({s.op}): a prologue " \
                   f"reads stored scales"
    if codes.op in BUFFER_SOURCES:
        return [d]
    if codes.op == K.UNPACK_INT4 and codes.inputs[0].op in BUFFER_SOURCES and users[codes] == [d] \
            and codes not in outputs:
        return [codes, d]
    return f"its codes are computed ({codes.op}): a prologue reads stored codes (or unpacks them)"


class ClaimPrologue:
    """The part of `walk.Fuser` that claims weight prologues before the walk."""

    def _claim_prologues(self, attention: set[Node]) -> set[Node]:
        """Make each claimable dequantize (and the unpack_int4 under it) local: `_add` then takes it into
        every matmul group reading it. `attention`: the nodes attention kernels claimed (their matmuls
        take no prologue). Returns the nodes claimed."""
        claimed: set[Node] = set()
        for d in self.graph.nodes:
            if d.op != K.DEQUANTIZE or d in self.forbidden or d in attention:
                continue
            found = weight_prologue(d, self.users, self.outputs)
            if not isinstance(found, str) and any(u in attention for u in self.users[d]):
                found = "an attention kernel reads it"

            if isinstance(found, str):
                for u in dict.fromkeys(self.users[d]):
                    self.refusals.append(Refusal(d, u, f"no matmul prologue: {found}"))
                continue
            claimed.update(found)
        self.local.update(claimed)
        self.prologues.update(claimed)
        return claimed
