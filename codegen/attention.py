"""Attention kernels: out[..., M, E] = softmax(f(q[..., M, D] @ k[..., D, N])) @ v[..., N, E] in one kernel
that never stores the M x N scores (flash attention's forward, as in Triton's fused-attention tutorial).

One program takes BLOCK_M query rows of one batch element (grid axis 1, split into the batch
coordinates like the matmul template) and walks the keys BLOCK_N at a time: the score tile s = q @ k,
then `f` (the IR's own elementwise ops on the scores, emitted over the tile's coordinates: a scale, a
causal mask from iota comparisons; a stored mask or bias is loaded over the tile), then the online
softmax: the running row maximum m and sum l, with acc rescaled by exp(m_old - m_new) whenever the
maximum grows; out = acc / l at the end. Keys
past N score -inf. A row whose scores are all -inf gives 0 / 0 = NaN, as the reference's softmax does.

The fusion pass (`passes/fusion/claim.py`, `_claim_attention`) decides when the pattern is one kernel: the
scores, probabilities and row statistics must have no reader outside it but the backward below. When
the graph holds the gradient (a training step), the forward kernel also stores each row's log-sum-exp,
m + log(l), and `AttentionBackwardKernel` computes dq, dk and dv from it in one more launch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import triton

from axon.ir import OpKind
from axon.ir.shapes import concrete
from . import configs as gpu
from .expr import Emitter
from .groups import CodegenError, KernelGroup
from .launch import Launch, broadcast_strides, contiguous_strides, layout_strides, meta_view
from .matmul import MAX_BATCH, MIN_TILE
from .ops_triton import INF, dot, dot_helpers, program_id
from .target import Target

K = OpKind
INTERPRETER_TILE = 64  # largest BLOCK_M / BLOCK_N in the interpreter
GPU_TILE = 64          # on a GPU: q, acc and a k/v block of head size <= 128 stay in registers/SMEM
FMA_HELD = 20480       # tile elements a full-precision f32 program may hold at 8 warps (~80 per thread)


@dataclass
class AttentionKernel:
    group: KernelGroup
    name: str = "attention_kernel"
    wide: bool = False
    target: Target = Target()

    def __post_init__(self):
        matmuls = [n for n in self.group.nodes if n.op == K.MATMUL]
        self.s, self.o = matmuls[0], matmuls[-1]
        self.mx = next(n for n in self.group.nodes if n.op == K.MAX)
        self.x = self.mx.inputs[0]
        by_node = {a.node: a for a in self.group.inputs}
        self.q, self.k, self.v = (by_node[n] for n in (*self.s.inputs, self.o.inputs[1]))
        self.sides = [a for a in self.group.inputs if a not in (self.q, self.k, self.v)]  # a mask input
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
        # a row's log-sum-exp, [.., M, 1], when the graph holds the backward (`passes/attention.py`)
        self.lse = next((o for o in self.group.outputs if o.op == K.ADD and o.shape[-1] == 1
                         and tuple(o.shape) != tuple(self.o.shape)), None)
        self.layouts = [o for o in self.group.outputs if o is not self.o and o is not self.lse]

    # --- source --------------------------------------------------------------------------------------
    def source(self) -> str:
        batch = range(self.batch_rank)
        strides = []
        for x, (r, c) in (("q", "md"), ("k", "dn"), ("v", "ne")):
            strides += [f"{x}_stride_batch{d}" for d in batch] + [f"{x}_stride_{r}", f"{x}_stride_{c}"]
        sides = [f"side{j}_ptr" for j in range(len(self.sides))]
        args = ["q_ptr", "k_ptr", "v_ptr", *sides, *_tail_args(self, strides)]
        scores, em = self._scores()
        body = self._start() + self._loop(scores) + self._store()
        types = f"softmax(f({self.q.node.type} @ {self.k.node.type})) @ {self.v.node.type} -> {self.o.type}"
        return _file(self, f"Attention kernel (online softmax; the scores are never stored): {types}", em,
                     args, body)

    def _dot(self, a: str, b: str) -> str:
        """A dot of two tiles in the inputs' dtype, accumulated in f32."""
        return dot(a, b, self.s.dtype, self.target)

    def _start(self) -> list[str]:
        lines = [f"pid_m = {program_id(0, self.wide)}", f"pid_b = {program_id(1, self.wide)}"]
        lines += _batch_coords(self.batch_rank)
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
            f"m_i = tl.full([BLOCK_M], -{INF}, tl.float32)  # running row maximum of the scores",
            "l_i = tl.zeros([BLOCK_M], tl.float32)        # running row sum of exp(score - m_i)",
            "acc = tl.zeros([BLOCK_M, BLOCK_E], tl.float32)",
        ]

    def _scores(self):
        """The IR's ops from the score tile `s` to x (what the softmax reads), over the tile."""
        b = self.batch_rank

        def coord(d: int) -> str:
            return f"i{d}" if d < b else ("offs_m[:, None]" if d == b else "offs_n[None, :]")

        em = Emitter.over(self.rank, coord, "[BLOCK_M, BLOCK_N]", self.score_ops)
        names = {self.s: "s", **{a.node: f"side{j}" for j, a in enumerate(self.sides)}}
        lines = _side_loads(len(self.sides), self.batch_rank)
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
            "m_n_mask = m_mask[:, None] & n_mask[None, :]",
            "k = tl.load(k_ptr + k_batch + offs_d[:, None] * k_stride_d + offs_n[None, :] * k_stride_n,",
            "            mask=d_mask[:, None] & n_mask[None, :], other=0)",
            f"s = {self._dot('q', 'k')}  # the score tile, in f32",
            "# the scores' ops, as in the graph",
            *scores,
            f"x = tl.where(n_mask[None, :], x, -{INF})  # keys past N take no weight",
            "# online softmax: rescale what was summed when the row maximum grows",
            "m_new = tl.maximum(m_i, tl.max(x, 1))",
            f"m_safe = tl.where(m_new == -{INF}, 0.0, m_new)  # rows with no finite score yet: exp(-inf) = 0",
            "alpha = tl.exp(m_i - m_safe)",
            "p = tl.exp(x - m_safe[:, None])",
            "l_i = l_i * alpha + tl.sum(p, 1)",
            "v = tl.load(v_ptr + v_batch + offs_n[:, None] * v_stride_n + offs_e[None, :] * v_stride_e,",
            "            mask=n_mask[:, None] & e_mask[None, :], other=0)",
            f"acc = acc * alpha[:, None] + {self._dot('p', 'v')}",
            "m_i = m_new",
        ]
        return ["for start in range(0, N, BLOCK_N):", *[f"    {line}" for line in loop]]

    def _store(self) -> list[str]:
        lines = ["out = acc / l_i[:, None]", "mask = m_mask[:, None] & e_mask[None, :]"]
        for j, o in enumerate(self.group.outputs):
            batch = " + ".join(f"i{d} * out{j}_stride{d}" for d in range(self.batch_rank)) or "0"
            rm, re = f"out{j}_stride{self.batch_rank}", f"out{j}_stride{self.batch_rank + 1}"
            if o is self.lse:
                lines += [f"# output {j} ({o.type}): each row's log-sum-exp, for the backward",
                          f"tl.store(out{j}_ptr + {batch} + offs_m * {rm}, m_i + tl.log(l_i), mask=m_mask)"]
                continue
            what = "in its copy's layout" if o in self.layouts else "contiguous"
            lines += [f"# output {j} ({o.type}), {what}",
                      f"tl.store(out{j}_ptr + {batch} + offs_m[:, None] * {rm} + offs_e[None, :] * {re}, "
                      f"out, mask=mask)"]
        return lines

    # --- launch --------------------------------------------------------------------------------------
    def prepare(self, env: dict[str, int]) -> Launch:
        views = [meta_view(a, env) for a in (self.q, self.k, self.v, *self.sides)]
        shape = concrete(self.o.shape, env)
        batch, m, e = shape[:-2], shape[-2], shape[-1]
        n, d = views[2][0].shape[-2], views[0][0].shape[-1]
        n_batch = math.prod(batch)
        if n_batch > MAX_BATCH:
            raise CodegenError(f"attention: a batch of {n_batch} is more than grid axis 1 takes "
                               f"({MAX_BATCH})")
        strides: list[int] = []
        for view, _ in views[:3]:
            strides += broadcast_strides(view.shape[:-2], view.stride()[:-2], batch)
            strides += view.stride()[-2:]
        for view, _ in views[3:]:
            strides += broadcast_strides(view.shape, view.stride(), concrete(self.s.shape, env))
        for o in self.group.outputs:
            strides += layout_strides(o, env) if o in self.layouts else contiguous_strides(
                concrete(o.shape, env))
        meta = _blocks(m, n, d, e, self.s.dtype, self.target, backward=False)
        grid = (triton.cdiv(m, meta["BLOCK_M"]), n_batch)
        configs = _configs(meta, self.s.dtype, self.target, backward=False)
        return Launch(grid, tuple(arg for _, arg in views), tuple(self.group.outputs),
                      (*strides, *batch, m, n, d, e), configs[0] if configs else meta, configs)


def _tile(size: int, cap: int) -> int:
    return min(max(MIN_TILE, triton.next_power_of_2(size)), cap)


def _held(bm: int, bn: int, d: int, e: int, backward: bool) -> int:
    """About how many tile elements a program holds in registers: q and acc (or q, dout, dq) over its
    rows, k and v over its keys, and the score tiles (s, x, p; the backward also dp, ds)."""
    rows_and_keys = (bm + bn) * (d + e)
    return 2 * rows_and_keys + 4 * bm * bn if backward else rows_and_keys + 3 * bm * bn


def _blocks(m: int, n: int, d: int, e: int, dtype, target: Target, backward: bool) -> dict[str, int]:
    """Block sizes: the interpreter takes up to INTERPRETER_TILE rows and keys; a GPU GPU_TILE when its
    dots run on tensor cores, while a full-precision f32 dot (FMAs, operand fragments in registers)
    halves the tile until what a program holds fits 8 warps (`FMA_HELD`; measured for sm_90 with head
    size 64: 64 x 64 spills, 64 x 32 forward and 32 x 16 backward do not)."""
    bd, be = _tile(d, 1 << 30), _tile(e, 1 << 30)
    cap = INTERPRETER_TILE if target.interpreted else GPU_TILE
    bm, bn = _tile(m, cap), _tile(n, cap)
    if not target.interpreted and gpu.dot_kind(dtype, target) == "fma":
        while _held(bm, bn, bd, be, backward) > FMA_HELD and max(bm, bn) > MIN_TILE:
            if bn >= bm:
                bn //= 2
            else:
                bm //= 2
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd, "BLOCK_E": be}


def _configs(blocks: dict[str, int], dtype, target: Target, backward: bool) -> tuple[dict, ...]:
    """On a GPU: `blocks` at 4 and at 8 warps, the first the default (8 for an FMA tile or the
    backward's 64 x 64 on tensor cores, which hold twice the forward's values); none in the
    interpreter."""
    if target.interpreted:
        return ()
    big_backward = backward and blocks["BLOCK_M"] * blocks["BLOCK_N"] >= 4096
    wide = gpu.dot_kind(dtype, target) == "fma" or big_backward
    return tuple({**blocks, "num_warps": w, "num_stages": 2, "enable_fp_fusion": True}
                 for w in ((8, 4) if wide else (4, 8)))


@dataclass
class AttentionBackwardKernel:
    """dq, dk and dv of attention in one launch that never stores the M x N probabilities or their
    gradient (flash attention's backward; `passes/attention.py` writes the gradient in this form).

    From q, k, v, dout, each row's log-sum-exp (stored by the forward kernel) and d = rowsum(dout * out)
    (a small reduce kernel), for one tile of queries x keys: s = q @ k and f(s) as in the forward,
    p = exp(x - lse), dp = dout @ v^T, then the graph's own ops down to ds (softmax's backward
    p * (dp - d) and f's gradient: a scale, the mask's where). Programs on grid axis 0 below the
    number of key blocks own BLOCK_N keys and walk all queries, accumulating dv += p^T @ dout and
    dk += q^T @ ds; the others own BLOCK_M queries and walk all keys, accumulating dq += ds @ k^T.
    Each program recomputes its tiles, so there are no atomics and the sums are deterministic.
    """

    group: KernelGroup
    name: str = "attention_bwd_kernel"
    wide: bool = False
    target: Target = Target()

    def __post_init__(self):
        nodes = self.group.nodes
        members = set(nodes)
        mm = [n for n in nodes if n.op == K.MATMUL]
        self.dv = next(m for m in mm if m.inputs[0] in members and m.inputs[0].op == K.PERMUTE)
        self.dq = next(m for m in mm if m.inputs[0] in members and m.inputs[1] not in members
                       and m is not self.dv)
        self.dk = next(m for m in mm if m.inputs[1] in members and m.inputs[0] not in members)
        self.ds, self.p = self.dq.inputs[0], self.dv.inputs[0].inputs[0]
        x = self.p.inputs[0].inputs[0]  # p = exp(x - lse)
        scores = _within(x, members)
        self.s = next(m for m in mm if m in scores)
        self.dp = next(m for m in mm if m not in (self.s, self.dq, self.dk, self.dv))
        self.x = x
        self.score_ops = [n for n in nodes if n in scores and n is not self.s]
        below = _within(self.ds, members) - scores - {self.s, self.dp}
        self.region_ops = [n for n in nodes if n in below]
        self.rank = len(self.s.shape)
        self.batch_rank = self.rank - 2
        row = tuple(self.s.shape[:-1]) + (1,)
        self.rows = [a for a in self.group.inputs if tuple(a.node.shape) == row]
        # operands by role; one access read in two roles (dout) is loaded once per tile
        role = {"q": self.s.inputs[0], "k": self.s.inputs[1], "do": self.dp.inputs[0],
                "vt": self.dp.inputs[1], "qt": self.dk.inputs[0], "kt": self.dq.inputs[1],
                "dov": self.dv.inputs[1]}
        by_node = {a.node: a for a in self.group.inputs}
        self.tensors: list = []  # unique accesses, in argument order
        self.role: dict[str, int] = {}
        for r, node in role.items():
            acc = by_node[node]
            if acc not in self.tensors:
                self.tensors.append(acc)
            self.role[r] = self.tensors.index(acc)
        self.roots = {o: _root(o, members) for o in self.group.outputs}  # dq, dk or dv under a layout
        self.sides = [a for a in self.group.inputs if a not in self.tensors and a not in self.rows]

    # --- source --------------------------------------------------------------------------------------
    def source(self) -> str:
        batch = range(self.batch_rank)
        ptrs = [f"t{j}_ptr" for j in range(len(self.tensors))]
        ptrs += [f"row{j}_ptr" for j in range(len(self.rows))]
        ptrs += [f"side{j}_ptr" for j in range(len(self.sides))]
        strides = []
        for j in range(len(self.tensors)):
            strides += [f"t{j}_stride_batch{d}" for d in batch] + [f"t{j}_stride_r", f"t{j}_stride_c"]
        for j in range(len(self.rows)):
            strides += [f"row{j}_stride_batch{d}" for d in batch] + [f"row{j}_stride_m"]
        tile, em = self._tile()
        body = self._start() + ["if pid < num_n:"] + [f"    {line}" for line in self._keys(tile)] \
            + ["else:"] + [f"    {line}" for line in self._queries(tile)]
        return _file(self, f"Attention backward kernel (the probabilities recomputed per tile, never "
                           f"stored): {self.dq.type}, {self.dk.type}, {self.dv.type}", em,
                     [*ptrs, *_tail_args(self, strides)], body)

    def _dot(self, a: str, b: str) -> str:
        """A dot of two tiles in the inputs' dtype, accumulated in f32."""
        return dot(a, b, self.s.dtype, self.target)

    def _start(self) -> list[str]:
        lines = [f"pid = {program_id(0, self.wide)}", f"pid_b = {program_id(1, self.wide)}",
                 "num_n = tl.cdiv(N, BLOCK_N)"]
        lines += _batch_coords(self.batch_rank)
        names = [f"t{j}" for j in range(len(self.tensors))] + [f"row{j}" for j in range(len(self.rows))]
        for x in names:
            terms = " + ".join(f"i{d} * {x}_stride_batch{d}" for d in range(self.batch_rank)) or "0"
            lines.append(f"{x}_batch = {terms}")
        return lines + ["offs_d = tl.arange(0, BLOCK_D)", "offs_e = tl.arange(0, BLOCK_E)",
                        "d_mask = offs_d < D", "e_mask = offs_e < E"]

    def _load(self, role: str, var: str, r: str, c: str) -> str:
        """`var` = the tile of operand `role` over rows offs_{r} and columns offs_{c}."""
        t = f"t{self.role[role]}"
        return (f"{var} = tl.load({t}_ptr + {t}_batch + offs_{r}[:, None] * {t}_stride_r + offs_{c}[None, :] "
                f"* {t}_stride_c, mask={r}_mask[:, None] & {c}_mask[None, :], other=0)")

    def _query_block(self) -> list[str]:
        """What a block of queries brings: q, dout and the row values."""
        lines = ["m_mask = offs_m < M", self._load("q", "q", "m", "d"), self._load("do", "do", "m", "e")]
        if self.role["dov"] != self.role["do"]:
            lines.append(self._load("dov", "dov", "m", "e"))
        for j in range(len(self.rows)):
            lines.append(f"row{j} = tl.load(row{j}_ptr + row{j}_batch + offs_m * row{j}_stride_m, "
                         f"mask=m_mask, other=0)")
        return lines

    def _key_block(self) -> list[str]:
        return ["n_mask = offs_n < N", self._load("k", "k", "d", "n"), self._load("vt", "vt", "e", "n")]

    def _tile(self):
        """The lines computing p and ds over one [BLOCK_M, BLOCK_N] tile (q, k, dout, vt, rows loaded)."""
        b = self.batch_rank

        def coord(d: int) -> str:
            return f"i{d}" if d < b else ("offs_m[:, None]" if d == b else "offs_n[None, :]")

        em = Emitter.over(self.rank, coord, "[BLOCK_M, BLOCK_N]", self.score_ops + self.region_ops)
        names = {self.s: "s", self.dp: "dp", **{a.node: f"side{j}" for j, a in enumerate(self.sides)}}
        row = {a.node: f"row{j}[:, None]" for j, a in enumerate(self.rows)}
        names.update(row)
        lines = ["m_n_mask = m_mask[:, None] & n_mask[None, :]", *_side_loads(len(self.sides), b),
                 f"s = {self._dot('q', 'k')}  # the scores, recomputed",
                 "# the scores' ops, as in the forward"]
        for k, n in enumerate(self.score_ops):
            lines += em.emit(n, f"{n.op.value}{k}", names)
            names[n] = f"{n.op.value}{k}"
        lines += [f"dp = {self._dot('do', 'vt')}  # the probabilities' gradient",
                  "# from the probabilities to the scores' gradient, as in the graph"]
        for k, n in enumerate(self.region_ops):
            if n not in names:
                lines += em.emit(n, f"g_{n.op.value}{k}", names)
                names[n] = f"g_{n.op.value}{k}"
        return lines + [
            "valid = m_mask[:, None] & n_mask[None, :]  # rows past M and keys past N add nothing",
            f"p = tl.where(valid, {names[self.p]}, 0.0)",
            f"ds = tl.where(valid, {names[self.ds]}, 0.0)",
        ], em

    def _keys(self, tile: list[str]) -> list[str]:
        loop = ["offs_m = start + tl.arange(0, BLOCK_M)", *self._query_block(), *tile,
                "acc_dv += " + self._dot("tl.trans(p)",
                                         "dov" if self.role["dov"] != self.role["do"] else "do"),
                self._load("qt", "qt", "d", "m"),
                f"acc_dk += {self._dot('qt', 'ds')}"]
        return [
            "# this program's keys: dk and dv, summed over every block of queries",
            "offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)",
            *self._key_block(),
            "acc_dk = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)",
            "acc_dv = tl.zeros([BLOCK_N, BLOCK_E], tl.float32)",
            "for start in range(0, M, BLOCK_M):",
            *[f"    {line}" for line in loop],
            *self._stores({self.dk: ("acc_dk", "d", "n"), self.dv: ("acc_dv", "n", "e")}),
        ]

    def _queries(self, tile: list[str]) -> list[str]:
        loop = ["offs_n = start + tl.arange(0, BLOCK_N)", *self._key_block(), *tile,
                self._load("kt", "kt", "n", "d"),
                f"acc_dq += {self._dot('ds', 'kt')}"]
        return [
            "# this program's queries: dq, summed over every block of keys",
            "offs_m = (pid - num_n) * BLOCK_M + tl.arange(0, BLOCK_M)",
            *self._query_block(),
            "acc_dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)",
            "for start in range(0, N, BLOCK_N):",
            *[f"    {line}" for line in loop],
            *self._stores({self.dq: ("acc_dq", "m", "d")}),
        ]

    def _stores(self, accs: dict) -> list[str]:
        lines = []
        for j, o in enumerate(self.group.outputs):
            root = self.roots[o]
            if root not in accs:
                continue
            acc, r, c = accs[root]
            batch = " + ".join(f"i{d} * out{j}_stride{d}" for d in range(self.batch_rank)) or "0"
            rs, cs = f"out{j}_stride{self.batch_rank}", f"out{j}_stride{self.batch_rank + 1}"
            what = "contiguous" if o is root else "in its copy's layout"
            lines += [f"# output {j} ({o.type}), {what}",
                      f"tl.store(out{j}_ptr + {batch} + offs_{r}[:, None] * {rs} + offs_{c}[None, :] * {cs}, "
                      f"{acc}, mask={r}_mask[:, None] & {c}_mask[None, :])"]
        return lines

    # --- launch --------------------------------------------------------------------------------------
    def prepare(self, env: dict[str, int]) -> Launch:
        shape = concrete(self.s.shape, env)
        batch, m, n = shape[:-2], shape[-2], shape[-1]
        d, e = concrete(self.dq.shape, env)[-1], concrete(self.dv.shape, env)[-1]
        n_batch = math.prod(batch)
        if n_batch > MAX_BATCH:
            raise CodegenError(f"attention backward: a batch of {n_batch} is more than grid axis 1 takes "
                               f"({MAX_BATCH})")
        views = [meta_view(a, env) for a in (*self.tensors, *self.rows, *self.sides)]
        strides: list[int] = []
        for view, _ in views[:len(self.tensors)]:
            strides += broadcast_strides(view.shape[:-2], view.stride()[:-2], batch)
            strides += view.stride()[-2:]
        n_rows = len(self.tensors) + len(self.rows)
        for view, _ in views[len(self.tensors):n_rows]:
            strides += broadcast_strides(view.shape[:-2], view.stride()[:-2], batch) + [view.stride()[-2]]
        for view, _ in views[n_rows:]:
            strides += broadcast_strides(view.shape, view.stride(), shape)
        for o in self.group.outputs:
            own = o is self.roots[o]
            strides += contiguous_strides(concrete(o.shape, env)) if own else layout_strides(o, env)
        meta = _blocks(m, n, d, e, self.s.dtype, self.target, backward=True)
        grid = (triton.cdiv(n, meta["BLOCK_N"]) + triton.cdiv(m, meta["BLOCK_M"]), n_batch)
        configs = _configs(meta, self.s.dtype, self.target, backward=True)
        return Launch(grid, tuple(arg for _, arg in views), tuple(self.group.outputs),
                      (*strides, *batch, m, n, d, e), configs[0] if configs else meta, configs)


def _tail_args(kernel, strides: list[str]) -> list[str]:
    """An attention kernel's arguments after its input pointers: output pointers, the inputs' strides
    (given), the side values' and the outputs' strides, the sizes and the block sizes."""
    rank, n_out = kernel.rank, len(kernel.group.outputs)
    strides = strides + [f"side{j}_stride{d}" for j in range(len(kernel.sides)) for d in range(rank)]
    strides += [f"out{j}_stride{d}" for j in range(n_out) for d in range(rank)]
    return [*(f"out{j}_ptr" for j in range(n_out)), *strides,
            *(f"batch{d}" for d in range(kernel.batch_rank)), "M", "N", "D", "E",
            *(f"{b}: tl.constexpr" for b in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_E"))]


def _file(kernel, title: str, em: Emitter, args: list[str], body: list[str]) -> str:
    """The kernel's source file: a header naming what it computes, the imports, the jitted function."""
    head = "\n".join(f"#   {line}" for line in kernel.group.labels)
    return "\n".join([
        f"# {title}, computing:\n{head}",
        "import triton\nimport triton.language as tl\n",
        *em.helper_source(),
        *dot_helpers(kernel.s.dtype, kernel.target),
        f"@triton.jit\ndef {kernel.name}(\n    " + ",\n    ".join(args) + ",\n):",
        *[f"    {line}" for line in body],
    ]) + "\n"


def _side_loads(count: int, batch_rank: int) -> list[str]:
    """Stored values the scores' ops read (a mask input), loaded over the tile (broadcast strides)."""
    lines = []
    for j in range(count):
        batch = "".join(f"i{d} * side{j}_stride{d} + " for d in range(batch_rank))
        lines.append(f"side{j} = tl.load(side{j}_ptr + {batch}offs_m[:, None] * side{j}_stride{batch_rank} + "
                     f"offs_n[None, :] * side{j}_stride{batch_rank + 1}, mask=m_n_mask, other=0)")
    return lines


def _batch_coords(batch_rank: int) -> list[str]:
    """i0, i1, ...: the batch coordinates of grid axis 1's program pid_b."""
    if not batch_rank:
        return []
    lines = ["rem = pid_b"]
    for d in reversed(range(1, batch_rank)):
        lines += [f"i{d} = rem % batch{d}", f"rem = rem // batch{d}"]
    return lines + ["i0 = rem"]


def _within(x, members: set) -> set:
    """x and the members it is computed from."""
    out, stack = set(), [x]
    while stack:
        n = stack.pop()
        if n in members and n not in out:
            out.add(n)
            stack.extend(n.inputs)
    return out


def _root(o, members: set):
    """The matmul under output o's chain of layout movements (o itself if it is one)."""
    while o.op != K.MATMUL:
        o = o.inputs[0]
    return o
