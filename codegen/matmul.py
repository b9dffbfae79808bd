"""Matmul kernels: out[..., M, N] = a[..., M, K] @ b[..., K, N], batch dims broadcast, tiled as in Triton's
matmul tutorial.

One program computes one BLOCK_M x BLOCK_N tile of one matrix of the batch: grid axis 0 walks the tiles in
grouped order (GROUP_M tile-rows at a time, so programs running together share A and B tiles in L2), grid
axis 1 is the batch element, split into the output's batch coordinates and read through each operand's own
broadcast strides (0 where it is broadcast). A permuted or sliced operand (a transposed weight) is a view:
its strides say where its elements are, nothing is copied.

f32, f16 and bf16 use `tl.dot` with an f32 accumulator (f32 at full precision, like torch's default);
f64 and integers have no portable `tl.dot`, so they accumulate a broadcast multiply summed over each K
block, in f64 or int64 (integers wrap when cast to the output's dtype, as the reference does).
On a GPU the kernel is autotuned (BLOCK_K, warps, pipeline stages, keyed on M, N, K); BLOCK_M and BLOCK_N,
which fix the grid, come from the size table in `prepare`. In the interpreter every block size is fixed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import triton

from axon.ir import DType, OpKind
from axon.ir.shapes import concrete
from .cache import target
from .epilogue import Epilogue
from .groups import CodegenError, KernelGroup
from .launch import Launch, broadcast_strides, meta_view
from .ops_triton import cast, program_id, tl_dtype

GROUP_M = 8              # tile-rows per group of the program order (L2 reuse)
MIN_TILE = 16            # tl.dot's smallest block in every dimension
MAX_BATCH = 65535        # CUDA's limit on grid axis 1, which carries the batch
INTERPRETER_TILE = 64    # largest BLOCK_M/N/K in the interpreter: its cost grows with tiles and programs
INTERPRETER_LOOP_K = 16  # BLOCK_K of the f64/int loop in the interpreter (it holds an M x K x N product)
GPU_TILE = 128           # largest BLOCK_M/N of the tl.dot kernel on a GPU
GPU_LOOP_TILE = 32       # largest BLOCK_M/N of the f64/int loop on a GPU (the product lives in registers)
# Autotuned on a GPU, as (BLOCK_K, num_warps, num_stages). Shared memory per program is
# stages * (BLOCK_M + BLOCK_N) * BLOCK_K * 4 bytes: at most 192 KiB for f32 128x128 tiles (H100: 227 KiB).
DOT_CONFIGS = ((32, 4, 4), (64, 4, 3), (32, 8, 4), (64, 8, 3))
LOOP_CONFIGS = ((4, 4, 2), (8, 4, 2), (8, 8, 2), (16, 8, 2))


@dataclass
class MatmulKernel:
    group: KernelGroup
    name: str = "matmul_kernel"
    wide: bool = False          # int64 indexing
    tuned: bool | None = None   # autotuned; None: on a GPU target, not in the interpreter

    def __post_init__(self):
        self.node = next(n for n in self.group.nodes if n.op == OpKind.MATMUL)
        self.a, self.b = self.group.inputs[:2]
        self.epilogue = Epilogue(self.group, self.node, 2)
        self.dtype = self.node.dtype
        self.batch_rank = len(self.node.shape) - 2
        self.uses_dot = self.dtype.is_float and self.dtype != DType.F64
        self.acc = DType.F32 if self.uses_dot else (DType.F64 if self.dtype == DType.F64 else DType.I64)
        if self.tuned is None:
            self.tuned = not target().startswith("interpreter")

    # --- source --------------------------------------------------------------------------------------
    def source(self) -> str:
        batch = range(self.batch_rank)
        strides = [f"a_stride_batch{d}" for d in batch] + ["a_stride_m", "a_stride_k"]
        strides += [f"b_stride_batch{d}" for d in batch] + ["b_stride_k", "b_stride_n"]
        sizes = [f"batch{d}" for d in batch] + ["M", "N", "K"]
        blocks = [f"{b}: tl.constexpr" for b in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")]
        body = self._tile() + self._batch() + self._loop()
        helpers = []
        if self.epilogue.trivial:
            ptrs = ["a_ptr", "b_ptr", "out_ptr"]
            body += self._store("acc")
        else:
            ptrs = ["a_ptr", "b_ptr"] + self.epilogue.pointers()
            strides += self.epilogue.strides()
            lines, em = self._fused_store("acc")
            body += lines
            helpers = em.helper_source()
        args = ",\n    ".join(ptrs + strides + sizes + blocks)
        head = "\n".join(f"#   {line}" for line in self.group.labels)
        types = f"{self.a.node.type} @ {self.b.node.type} -> {self.node.type}"
        return "\n".join([
            f"# Matmul kernel: {types}, computing:\n{head}",
            "import triton\nimport triton.language as tl\n",
            *helpers,
            *self._autotune(),
            f"@triton.jit\ndef {self.name}(\n    {args},\n):",
            *[f"    {line}" for line in body],
        ]) + "\n"

    def _autotune(self) -> list[str]:
        if not self.tuned:
            return []
        configs = [f'        triton.Config({{"BLOCK_K": {k}}}, num_warps={w}, num_stages={s}),'
                   for k, w, s in (DOT_CONFIGS if self.uses_dot else LOOP_CONFIGS)]
        return ["@triton.autotune(", "    configs=[", *configs, "    ],", '    key=["M", "N", "K"],', ")"]

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
        lines = [
            f"# accumulate over K, BLOCK_K at a time, in {self.acc}",
            f"acc = tl.zeros((BLOCK_M, BLOCK_N), dtype={acc_t})",
            "for k in range(0, K, BLOCK_K):",
            f"    offs_k = {offs_k}",
            "    k_mask = offs_k < K",
            "    a_mask = m_mask[:, None] & k_mask[None, :]",
            "    b_mask = k_mask[:, None] & n_mask[None, :]",
            "    a = tl.load(a_ptr + a_batch + offs_m[:, None] * a_stride_m + offs_k[None, :] * a_stride_k,",
            "                mask=a_mask, other=0)",
            "    b = tl.load(b_ptr + b_batch + offs_k[:, None] * b_stride_k + offs_n[None, :] * b_stride_n,",
            "                mask=b_mask, other=0)",
        ]
        if self.dtype == DType.F32:
            lines.append('    acc = tl.dot(a, b, acc, input_precision="ieee")  # full f32, as torch')
        elif self.dtype == DType.BF16 and not self.tuned:
            lines += ["    # the interpreter's bf16 tl.dot multiplies bit patterns (triton#11584): f32 here",
                      '    acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")']
        elif self.uses_dot:
            lines.append("    acc = tl.dot(a, b, acc)  # tensor cores, f32 accumulation")
        else:
            lines += [
                "    # no portable tl.dot for this dtype: a broadcast multiply, summed over the K block",
                f"    a = {cast('a', self.dtype, self.acc)}",
                f"    b = {cast('b', self.dtype, self.acc)}",
                "    acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)",
            ]
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
        extra, more = self.epilogue.prepare(env) if not self.epilogue.trivial else ([], [])
        iota = any(n.op == OpKind.IOTA for n in self.group.nodes)  # reads batch/row coordinates directly
        if not iota and _foldable(batch, m, operand, more):
            # b is one matrix and everything else walks the batch as rows: one [batch*M, K] @ [K, N]
            batch, m, n_batch = (1,) * len(batch), m * n_batch, 1
        strides = [s for group in operand + more for s in group]
        meta = self.blocks(m, n, k)
        grid = (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), n_batch)
        if self.epilogue.trivial:
            return Launch(grid, (a_arg, b_arg), (self.node,), (*strides, *batch, m, n, k), meta)
        a_strides, b_strides = operand
        more_flat = [s for group in more for s in group]
        return Launch(grid, (a_arg, b_arg, *extra), tuple(self.group.outputs),
                      (*a_strides, *b_strides, *more_flat, *batch, m, n, k), meta)

    def blocks(self, m: int, n: int, k: int) -> dict[str, int]:
        """The block sizes for an (m x k) @ (k x n) product: each the next power of two of its size,
        between MIN_TILE and the target's cap. On a GPU the autotuner picks BLOCK_K."""
        if self.tuned:
            cap = GPU_TILE if self.uses_dot else GPU_LOOP_TILE
        else:
            cap = INTERPRETER_TILE
        meta = {"BLOCK_M": _tile(m, cap), "BLOCK_N": _tile(n, cap), "GROUP_M": GROUP_M}
        if not self.tuned:
            meta["BLOCK_K"] = _tile(k, INTERPRETER_TILE if self.uses_dot else INTERPRETER_LOOP_K)
        return meta


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
