"""Matmul kernels: out[..., M, N] = a[..., M, K] @ b[..., K, N], batch dims broadcast, tiled as in Triton's
matmul tutorial.

One program computes one BLOCK_M x BLOCK_N tile of one matrix of the batch: grid axis 0 walks the tiles in
grouped order (GROUP_M tile-rows at a time, so programs running together share A and B tiles in L2), grid
axis 1 is the batch element, split into the output's batch coordinates and read through each operand's own
broadcast strides (0 where it is broadcast). A permuted or sliced operand (a transposed weight) is a view:
its strides say where its elements are, nothing is copied.

f32, f16 and bf16 use `tl.dot` with an f32 accumulator: 16-bit operands on tensor cores (`wgmma` on
sm_90, `mma` on sm_80), f32 at full precision like torch's default (`ieee`), or on TF32 tensor cores when
PyTorch's float32 matmul precision allows it (`Target.dot_precision`). f64 and integers have no
portable `tl.dot`, so they accumulate a broadcast multiply summed over each K block, in f64 or int64
(integers wrap when cast to the output's dtype, as the reference does).
BLOCK_M and BLOCK_N, which fix the grid, come from the size table in `prepare`; on a GPU the launch also
carries alternative configs (BLOCK_K, warps, pipeline stages) for the runtime's tuner, which drops those
that spill or cannot launch (`runtime/tune.py`). In the interpreter every block size is fixed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import triton

from axon.ir import DType, OpKind
from axon.ir.shapes import concrete
from . import configs as gpu
from .epilogue import Epilogue
from .groups import CodegenError, KernelGroup
from .launch import Launch, broadcast_strides, meta_view
from .expr import helper_sources, helpers_called
from .ops_triton import cast, dot, dot_helpers, program_id, qdot, tl_dtype
from .prologue import WeightPrologue
from .target import Target

MATMULS = (OpKind.MATMUL, OpKind.QMATMUL, OpKind.BSMATMUL)
GROUP_M = 8              # tile-rows per group of the program order (L2 reuse)
MIN_TILE = 16            # tl.dot's smallest block in every dimension
MAX_BATCH = 65535        # CUDA's limit on grid axis 1, which carries the batch
INTERPRETER_TILE = 64    # largest BLOCK_M/N/K in the interpreter: its cost grows with tiles and programs
INTERPRETER_LOOP_K = 16  # BLOCK_K of the f64/int loop in the interpreter (it holds an M x K x N product)
# On a GPU, tile sizes and configs (BLOCK_K, warps, stages) come from `configs.py`.


@dataclass
class MatmulKernel:
    group: KernelGroup
    name: str = "matmul_kernel"
    wide: bool = False          # int64 indexing
    target: Target = Target()

    def __post_init__(self):
        self.node = next(n for n in self.group.nodes if n.op in MATMULS)
        self.a, self.b = self.group.inputs[:2]
        # bsmatmul: b's nonzero blocks listed by block column, and the counter of block products
        self.sparse = self.node.op == OpKind.BSMATMUL
        self.block = self.node.attrs.block if self.sparse else None
        # a weight dequantized in the K loop: b is then its codes, and its scale (zero point) follow
        self.prologue = WeightPrologue(self.group, self.target) if self.group.prologue else None
        operands = (5 if self.sparse else 2) + (self.prologue.extra if self.prologue else 0)
        self.epilogue = Epilogue(self.group, self.node, operands, skip=self.group.prologue)
        self.dtype = self.node.dtype
        self.batch_rank = len(self.node.shape) - 2
        # qmatmul: i8 or fp8 codes into an i32 or f32 accumulator, which is its result
        self.codes = self.node.inputs[0].dtype if self.node.op == OpKind.QMATMUL else None
        self.uses_dot = bool(self.codes) or (self.dtype.is_float and self.dtype != DType.F64)
        self.acc = self.dtype if self.codes else DType.F32 if self.uses_dot else \
            (DType.F64 if self.dtype == DType.F64 else DType.I64)
        self.operand = self.codes or self.dtype  # the dtype the dot multiplies (configs, tiles)
        if self.codes and self.codes.is_fp8 and not self.target.interpreted and self.target.arch < 89:
            raise CodegenError(f"{self.group.labels[0] if self.group.labels else 'qmatmul'}: fp8 dots need "
                               f"sm_89 or later (Ada, Hopper), not {self.target.name}; quantize with "
                               f"int8-dynamic for this GPU")

    # --- source --------------------------------------------------------------------------------------
    def source(self) -> str:
        batch = range(self.batch_rank)
        strides = [f"a_stride_batch{d}" for d in batch] + ["a_stride_m", "a_stride_k"]
        strides += [f"b_stride_batch{d}" for d in batch] + ["b_stride_k", "b_stride_n"]
        sizes = [f"batch{d}" for d in batch] + ["M", "N", "K"]
        blocks = [f"{b}: tl.constexpr" for b in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")]
        body = self._tile() + self._batch() + self._loop()
        ptrs = ["a_ptr", "b_ptr"]
        if self.sparse:
            ptrs += ["index_ptr", "index_t_ptr", "tiles_ptr"]
            strides += ["index_stride"]
        helpers = helpers_called(body)
        if self.prologue:
            ptrs += self.prologue.pointers()
            strides += self.prologue.strides()
        if self.epilogue.trivial:
            ptrs += ["out_ptr"]
            body += self._store("acc")
        else:
            ptrs += self.epilogue.pointers()
            strides += self.epilogue.strides()
            lines, em = self._fused_store("acc")
            body += lines
            helpers |= em.helpers
        args = ",\n    ".join(ptrs + strides + sizes + blocks)
        head = "\n".join(f"#   {line}" for line in self.group.labels)
        b_type = self.node.inputs[1].type if self.prologue else self.b.node.type
        types = f"{self.a.node.type} @ {b_type} -> {self.node.type}"
        return "\n".join([
            f"# Matmul kernel: {types}, computing:\n{head}",
            "import triton\nimport triton.language as tl\n",
            *helper_sources(helpers),
            *[h for h in dot_helpers(self.dtype, self.target) if h not in helper_sources(helpers)],
            f"@triton.jit\ndef {self.name}(\n    {args},\n):",
            *[f"    {line}" for line in body],
        ]) + "\n"

    def _tile(self) -> list[str]:
        """Which output tile: programs run down GROUP_M tile-rows before moving right."""
        return [
            "# which output tile: grouped order, GROUP_M tile-rows at a time, for L2 reuse",
            f"pid = {program_id(0, self.wide)}",
            "num_pid_m = tl.cdiv(M, BLOCK_M)",
            "num_pid_n = tl.cdiv(N, BLOCK_N)",
            "num_pid_in_group = GROUP_M * num_pid_n",
            "first_pid_m = (pid // num_pid_in_group) * GROUP_M",
            "group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)",
            "pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m",
            "pid_n = (pid % num_pid_in_group) // group_size_m",
            "offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)",
            "offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)",
            "m_mask = offs_m < M",
            "n_mask = offs_n < N",
        ]

    def _batch(self) -> list[str]:
        """Which matrix of the batch: its coordinates, and where each operand's matrix starts."""
        lines = ["# which matrix of the batch", f"pid_b = {program_id(1, self.wide)}"]
        if not self.batch_rank:
            return lines + ["a_batch = 0", "b_batch = 0"]
        sizes = ", ".join(f"batch{d}" for d in range(self.batch_rank))
        lines += [f"# its coordinates in the output's batch dims [{sizes}]", "rem = pid_b"]
        for d in reversed(range(1, self.batch_rank)):
            lines += [f"i{d} = rem % batch{d}", f"rem = rem // batch{d}"]
        lines.append("i0 = rem")
        lines.append("# each operand's matrix (a stride of 0 where it is broadcast)")
        for x in "ab":
            lines.append(f"{x}_batch = " + " + ".join(f"i{d} * {x}_stride_batch{d}"
                                                      for d in range(self.batch_rank)))
        return lines

    def _loop(self) -> list[str]:
        """The K loop: load an A and a B block (zeros outside the matrices), accumulate their product."""
        acc_t = tl_dtype(self.acc)
        offs_k = "(k + tl.arange(0, BLOCK_K)).to(tl.int64)" if self.wide else "k + tl.arange(0, BLOCK_K)"
        lines = self.prologue.hoisted() if self.prologue else []
        ap, bp = "a_ptr", "b_ptr"
        if self.codes and self.codes.is_fp8:  # fp8 codes read as their bytes (see `qdot`)
            lines.append("# fp8 codes, read as bytes")
            ap, bp = (f"{p}.to(tl.pointer_type(tl.uint8))" for p in (ap, bp))
        if self.sparse:
            offs_k = offs_k.replace("k + ", "kb * BLOCK_K + ")
            lines += [
                f"# accumulate over b's nonzero {self.block}x{self.block} blocks of this column block only "
                f"(index row pid_n: [count, k-blocks...]), in {self.acc}",
                f"acc = tl.zeros((BLOCK_M, BLOCK_N), dtype={acc_t})",
                "row = index_ptr + pid_n * index_stride",
                "count = tl.load(row)",
                "for t in range(0, count):",
                "    kb = tl.load(row + 1 + t)",
                f"    offs_k = {offs_k}",
            ]
        else:
            lines += [
                f"# accumulate over K, BLOCK_K at a time, in {self.acc}",
                f"acc = tl.zeros((BLOCK_M, BLOCK_N), dtype={acc_t})",
                "for k in range(0, K, BLOCK_K):",
                f"    offs_k = {offs_k}",
            ]
        lines += [
            "    k_mask = offs_k < K",
            "    a_mask = m_mask[:, None] & k_mask[None, :]",
            "    b_mask = k_mask[:, None] & n_mask[None, :]",
            f"    a = tl.load({ap} + a_batch + offs_m[:, None] * a_stride_m + offs_k[None, :] * a_stride_k,",
            "                mask=a_mask, other=0)",
        ]
        if self.prologue:
            lines += [f"    {line}" for line in self.prologue.block("b")]
        else:
            lines += [f"    b = tl.load({bp} + b_batch + offs_k[:, None] * b_stride_k"
                      " + offs_n[None, :] * b_stride_n,",
                      "                mask=b_mask, other=0)"]
        if self.codes:
            lines.append(f"    acc = {qdot('a', 'b', self.codes, self.target, acc='acc')}")
        elif self.uses_dot:
            lines.append(f"    acc = {dot('a', 'b', self.dtype, self.target, acc='acc')}")
        else:
            lines += [
                "    # no portable tl.dot for this dtype: a broadcast multiply, summed over the K block",
                f"    a = {cast('a', self.dtype, self.acc)}",
                f"    b = {cast('b', self.dtype, self.acc)}",
                "    acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)",
            ]
        if self.sparse:
            lines += ["# the block products this program executed, counted (measured, not computed)",
                      "tl.atomic_add(tiles_ptr, count.to(tl.int64))"]
        return lines

    def _store(self, acc: str) -> list[str]:
        """Write the tile `acc` to the output, rounded to its dtype. A fusion pass applies its epilogue
        (bias, activation, residual: pointwise nodes over the tile) to `acc` before this store."""
        return [
            f"# write the tile, as {self.dtype}",
            f"out = {cast(acc, self.acc, self.dtype)}",
            "mask = m_mask[:, None] & n_mask[None, :]",
            "tl.store(out_ptr + pid_b * M * N + offs_m[:, None] * N + offs_n[None, :], out, mask=mask)",
        ]

    def _fused_store(self, acc: str):
        """The tile through the group's epilogue: coordinates are the batch element's (scalars), the
        tile's rows and its columns."""
        b = self.batch_rank

        def coord(d: int) -> str:
            return f"i{d}" if d < b else ("offs_m[:, None]" if d == b else "offs_n[None, :]")

        value = [f"acc_out = {cast(acc, self.acc, self.dtype)}  # the matmul's value, as {self.dtype}"]
        lines, em = self.epilogue.lines(
            "acc_out", coord, "[BLOCK_M, BLOCK_N]", "m_mask[:, None] & n_mask[None, :]",
            lambda ptr: f"{ptr} + pid_b * M * N + offs_m[:, None] * N + offs_n[None, :]")
        return value + lines, em

    # --- launch --------------------------------------------------------------------------------------
    def prepare(self, env: dict[str, int]) -> Launch:
        a_view, a_arg = meta_view(self.a, env)
        b_view, b_arg = meta_view(self.b, env)
        shape = concrete(self.node.shape, env)
        batch, (m, n), k = shape[:-2], shape[-2:], a_view.shape[-1]
        n_batch = math.prod(batch)
        if n_batch > MAX_BATCH:
            raise CodegenError(f"{self.group.labels[0] if self.group.labels else 'matmul'}: a batch of "
                               f"{n_batch} matrices is more than grid axis 1 takes ({MAX_BATCH})")
        operand = [broadcast_strides(v.shape[:-2], v.stride()[:-2], batch) + list(v.stride()[-2:])
                   for v in (a_view, b_view)]
        if self.prologue:  # the codes (a weight matrix: the same for every batch element)
            operand[1] = [0] * len(batch) + list(b_view.stride())
            p_args, p_strides = self.prologue.prepare(env)
            b_arg = (b_arg, *p_args)
        elif self.sparse:  # the two block indices and the counter; the index's row stride
            views = [meta_view(x, env) for x in self.group.inputs[2:5]]
            b_arg, p_strides = (b_arg, *(arg for _, arg in views)), [views[0][0].stride()[0]]
        else:
            b_arg, p_strides = (b_arg,), []
        extra, more = self.epilogue.prepare(env) if not self.epilogue.trivial else ([], [])
        iota = any(n.op == OpKind.IOTA for n in self.group.nodes)  # reads batch/row coordinates directly
        if not iota and _foldable(batch, m, operand, more):
            # b is one matrix and everything else walks the batch as rows: one [batch*M, K] @ [K, N]
            batch, m, n_batch = (1,) * len(batch), m * n_batch, 1
        meta = self.blocks(m, n, k)
        configs = self.configs(meta, k)
        meta = configs[0] if configs else meta
        grid = (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), n_batch)
        a_strides, b_strides = operand
        more_flat = [s for group in more for s in group]
        if self.epilogue.trivial:
            return Launch(grid, (a_arg, *b_arg), (self.node,),
                          (*a_strides, *b_strides, *p_strides, *batch, m, n, k), meta, configs)
        return Launch(grid, (a_arg, *b_arg, *extra), tuple(self.group.outputs),
                      (*a_strides, *b_strides, *p_strides, *more_flat, *batch, m, n, k), meta, configs)

    def blocks(self, m: int, n: int, k: int) -> dict[str, int]:
        """The block sizes for an (m x k) @ (k x n) product: in the interpreter each the next power of two
        of its size, between MIN_TILE and INTERPRETER_TILE; on a GPU the tile `configs.tile` picks for
        the kind of dot and the epilogue's size, BLOCK_K coming with each config (`configs`)."""
        if self.sparse:  # the block is the tile: BLOCK_N x BLOCK_K = B x B
            bm = _tile(m, INTERPRETER_TILE if self.target.interpreted else 128)
            meta = {"BLOCK_M": bm, "BLOCK_N": self.block, "BLOCK_K": self.block, "GROUP_M": GROUP_M}
            return meta if self.target.interpreted else {**meta, "num_warps": 4, "num_stages": 3}
        if not self.target.interpreted:
            kind = gpu.dot_kind(self.operand, self.target)
            bm, bn = gpu.tile(m, n, self._values(), kind)
            return {"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": GROUP_M}
        return {"BLOCK_M": _tile(m, INTERPRETER_TILE), "BLOCK_N": _tile(n, INTERPRETER_TILE),
                "GROUP_M": GROUP_M,
                "BLOCK_K": _tile(k, INTERPRETER_TILE if self.uses_dot else INTERPRETER_LOOP_K)}

    def configs(self, blocks: dict[str, int], k: int) -> tuple[dict, ...]:
        """On a GPU: `blocks` with each (BLOCK_K, warps, stages) to try, the first the default (none in
        the interpreter: its blocks are fixed)."""
        if self.target.interpreted or self.sparse:  # bsmatmul: its blocks are fixed by the weight's
            return ()
        return gpu.configs(blocks, k, self._values(), self.operand, self.target)

    def _values(self) -> int:
        values = 2 if self.epilogue.trivial else self.epilogue.values
        return values + (self.prologue.values if self.prologue else 0)


def _foldable(batch, m: int, operand: list[list[int]], more: list[list[int]]) -> bool:
    """Can the batch dims fold into M? When b is the same matrix for every batch element (strides 0)
    and a, the epilogue's operands and outputs all step through the batch exactly as M rows further on
    (stride of batch dim d = stride of M * M * the later batch sizes), a batched matmul is one tall
    matmul: fewer, fuller tiles (a linear layer over [batch, seq, d])."""
    rank = len(batch)
    if not rank or any(operand[1][:rank]):
        return False
    for strides in [operand[0]] + more:
        step = strides[rank] * m  # the M stride times M: the stride the last batch dim must have
        for d in reversed(range(rank)):
            if batch[d] != 1 and strides[d] != step:
                return False
            step *= batch[d]
    return True


def _tile(size: int, cap: int) -> int:
    return min(max(MIN_TILE, triton.next_power_of_2(size)), cap)
