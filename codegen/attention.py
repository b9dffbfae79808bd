"""Attention kernels: out[..., M, E] = softmax(f(q[..., M, D] @ k[..., D, N])) @ v[..., N, E] in one kernel
that never stores the M x N scores (flash attention's forward, as in Triton's fused-attention tutorial).

One program takes BLOCK_M query rows of one batch element (grid axis 1, split into the batch
coordinates like the matmul template) and walks the keys BLOCK_N at a time: the score tile s = q @ k,
then `f` (the IR's own elementwise ops on the scores, emitted over the tile's coordinates: a scale, a
causal mask from iota comparisons), then the online softmax: the running row maximum m and sum l,
with acc rescaled by exp(m_old - m_new) whenever the maximum grows; out = acc / l at the end. Keys
past N score -inf. A row whose scores are all -inf gives 0 / 0 = NaN, as the reference's softmax does.

The fusion pass (`passes/fusion.py`, `_claim_attention`) decides when the pattern is one kernel: the
scores, probabilities and row statistics must have no reader outside it. A training step's backward
reads the probabilities, so there the pattern stays a matmul, a fused softmax and a matmul.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import triton

from axon.ir import OpKind
from axon.ir.shapes import concrete
from .expr import Emitter
from .groups import CodegenError, KernelGroup
from .launch import Launch, broadcast_strides, contiguous_strides, layout_strides, meta_view
from .matmul import MAX_BATCH, MIN_TILE
from .ops_triton import program_id

K = OpKind
INTERPRETER_TILE = 64  # largest BLOCK_M / BLOCK_N in the interpreter
GPU_TILE = 64          # on a GPU: q, acc and a k/v block of head size <= 128 stay in registers/SMEM


@dataclass
class AttentionKernel:
    group: KernelGroup
    name: str = "attention_kernel"
    wide: bool = False

    def __post_init__(self):
        matmuls = [n for n in self.group.nodes if n.op == K.MATMUL]
        self.s, self.o = matmuls[0], matmuls[-1]
        self.mx = next(n for n in self.group.nodes if n.op == K.MAX)
        self.x = self.mx.inputs[0]
        self.q, self.k, self.v = self.group.inputs[:3]
        self.rank = len(self.s.shape)
        self.batch_rank = self.rank - 2
        # the scores' ops: members that x depends on, after s (the side operands among them)
        members = set(self.group.nodes)
        within, stack = set(), [self.x]
        while stack:
            n = stack.pop()
            if n in members and n not in within and n is not self.s:
                within.add(n)
                stack.extend(n.inputs)
        self.score_ops = [n for n in self.group.nodes if n in within]
        self.layouts = [o for o in self.group.outputs if o is not self.o]

    # --- source --------------------------------------------------------------------------------------
    def source(self) -> str:
        batch = range(self.batch_rank)
        strides = []
        for x, (r, c) in (("q", "md"), ("k", "dn"), ("v", "ne")):
            strides += [f"{x}_stride_batch{d}" for d in batch] + [f"{x}_stride_{r}", f"{x}_stride_{c}"]
        for j in range(len(self.group.outputs)):
            strides += [f"out{j}_stride{d}" for d in range(self.rank)]
        outs = [f"out{j}_ptr" for j in range(len(self.group.outputs))]
        sizes = [f"batch{d}" for d in batch] + ["M", "N", "D", "E"]
        blocks = [f"{b}: tl.constexpr" for b in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_E")]
        args = ",\n    ".join(["q_ptr", "k_ptr", "v_ptr", *outs, *strides, *sizes, *blocks])
        scores, em = self._scores()
        body = self._start() + self._loop(scores) + self._store()
        head = "\n".join(f"#   {line}" for line in self.group.labels)
        types = f"softmax(f({self.q.node.type} @ {self.k.node.type})) @ {self.v.node.type} -> {self.o.type}"
        return "\n".join([
            f"# Attention kernel (online softmax; the scores are never stored): {types}, computing:\n{head}",
            "import triton\nimport triton.language as tl\n",
            'INF = tl.constexpr(float("inf"))\nNAN = tl.constexpr(float("nan"))\n',
            *em.helper_source(),
            f"@triton.jit\ndef {self.name}(\n    {args},\n):",
            *[f"    {line}" for line in body],
        ]) + "\n"

    def _start(self) -> list[str]:
        lines = [f"pid_m = {program_id(0, self.wide)}", f"pid_b = {program_id(1, self.wide)}"]
        if self.batch_rank:
            lines.append("rem = pid_b")
            for d in reversed(range(1, self.batch_rank)):
                lines += [f"i{d} = rem % batch{d}", f"rem = rem // batch{d}"]
            lines.append("i0 = rem")
        for x in ("q", "k", "v"):
            terms = " + ".join(f"i{d} * {x}_stride_batch{d}" for d in range(self.batch_rank)) or "0"
            lines.append(f"{x}_batch = {terms}")
        return lines + [
            "offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)",
            "offs_d = tl.arange(0, BLOCK_D)",
            "offs_e = tl.arange(0, BLOCK_E)",
            "m_mask = offs_m < M",
            "d_mask = offs_d < D",
            "e_mask = offs_e < E",
            "# this program's query rows, kept for the whole loop",
            "q = tl.load(q_ptr + q_batch + offs_m[:, None] * q_stride_m + offs_d[None, :] * q_stride_d,",
            "            mask=m_mask[:, None] & d_mask[None, :], other=0)",
            "m_i = tl.full([BLOCK_M], -INF, tl.float32)  # running row maximum of the scores",
            "l_i = tl.zeros([BLOCK_M], tl.float32)        # running row sum of exp(score - m_i)",
            "acc = tl.zeros([BLOCK_M, BLOCK_E], tl.float32)",
        ]

    def _scores(self):
        """The IR's ops from the score tile `s` to x (what the softmax reads), over the tile."""
        b = self.batch_rank

        def coord(d: int) -> str:
            return f"i{d}" if d < b else ("offs_m[:, None]" if d == b else "offs_n[None, :]")

        em = Emitter.over(self.rank, coord, "[BLOCK_M, BLOCK_N]", self.score_ops)
        names = {self.s: "s"}
        lines = []
        for k, n in enumerate(self.score_ops):
            var = f"{n.op.value}{k}"
            lines += em.emit(n, var, names)
            names[n] = var
        lines.append(f"x = {names[self.x]}")
        return lines, em

    def _loop(self, scores: list[str]) -> list[str]:
        loop = [
            "offs_n = start + tl.arange(0, BLOCK_N)",
            "n_mask = offs_n < N",
            "k = tl.load(k_ptr + k_batch + offs_d[:, None] * k_stride_d + offs_n[None, :] * k_stride_n,",
            "            mask=d_mask[:, None] & n_mask[None, :], other=0)",
            's = tl.dot(q, k, input_precision="ieee")  # the score tile, full f32 as torch',
            "# the scores' ops, as in the graph",
            *scores,
            "x = tl.where(n_mask[None, :], x, -INF)  # keys past N take no weight",
            "# online softmax: rescale what was summed when the row maximum grows",
            "m_new = tl.maximum(m_i, tl.max(x, 1))",
            "m_safe = tl.where(m_new == -INF, 0.0, m_new)  # rows with no finite score yet: exp(-inf) = 0",
            "alpha = tl.exp(m_i - m_safe)",
            "p = tl.exp(x - m_safe[:, None])",
            "l_i = l_i * alpha + tl.sum(p, 1)",
            "v = tl.load(v_ptr + v_batch + offs_n[:, None] * v_stride_n + offs_e[None, :] * v_stride_e,",
            "            mask=n_mask[:, None] & e_mask[None, :], other=0)",
            'acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")',
            "m_i = m_new",
        ]
        return ["for start in range(0, N, BLOCK_N):", *[f"    {line}" for line in loop]]

    def _store(self) -> list[str]:
        lines = ["out = acc / l_i[:, None]", "mask = m_mask[:, None] & e_mask[None, :]"]
        for j, o in enumerate(self.group.outputs):
            batch = " + ".join(f"i{d} * out{j}_stride{d}" for d in range(self.batch_rank)) or "0"
            rm, re = f"out{j}_stride{self.batch_rank}", f"out{j}_stride{self.batch_rank + 1}"
            what = "in its copy's layout" if o in self.layouts else "contiguous"
            lines += [f"# output {j} ({o.type}), {what}",
                      f"tl.store(out{j}_ptr + {batch} + offs_m[:, None] * {rm} + offs_e[None, :] * {re}, "
                      f"out, mask=mask)"]
        return lines

    # --- launch --------------------------------------------------------------------------------------
    def prepare(self, env: dict[str, int]) -> Launch:
        views = [meta_view(a, env) for a in (self.q, self.k, self.v)]
        shape = concrete(self.o.shape, env)
        batch, m, e = shape[:-2], shape[-2], shape[-1]
        n, d = views[2][0].shape[-2], views[0][0].shape[-1]
        n_batch = math.prod(batch)
        if n_batch > MAX_BATCH:
            raise CodegenError(f"attention: a batch of {n_batch} is more than grid axis 1 takes "
                               f"({MAX_BATCH})")
        strides: list[int] = []
        for view, _ in views:
            strides += broadcast_strides(view.shape[:-2], view.stride()[:-2], batch)
            strides += view.stride()[-2:]
        for o in self.group.outputs:
            strides += layout_strides(o, env) if o in self.layouts else contiguous_strides(shape)
        from .cache import target

        cap = INTERPRETER_TILE if target().startswith("interpreter") else GPU_TILE
        meta = {"BLOCK_M": _tile(m, cap), "BLOCK_N": _tile(n, cap), "BLOCK_D": _tile(d, 1 << 30),
                "BLOCK_E": _tile(e, 1 << 30)}
        grid = (triton.cdiv(m, meta["BLOCK_M"]), n_batch)
        return Launch(grid, tuple(arg for _, arg in views), tuple(self.group.outputs),
                      (*strides, *batch, m, n, d, e), meta)


def _tile(size: int, cap: int) -> int:
    return min(max(MIN_TILE, triton.next_power_of_2(size)), cap)
