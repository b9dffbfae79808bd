"""Conv2d kernels as an implicit GEMM: out[N, O, OH, OW] = conv2d(x[N, C, H, W], w[O, C/G, KH, KW]).

Per group g of the convolution the output is one matrix product, never built in memory:
- rows m = (n, oh, ow): one output pixel each, M = N * OH * OW of them;
- columns: the group's output channels, O/G of them;
- reduction k = (c, kh, kw): an input channel of the group and a kernel tap, K = C/G * KH * KW.
Entry (m, k) of the "A" matrix is the input pixel x[n, g*C/G + c, ih, iw] with ih = oh*sh - ph + kh*dh and
iw = ow*sw - pw + kw*dw; the loads compute those coordinates per K block and mask off the ones outside the
image (that mask is the zero padding) and the ragged block edges. "B" is the weight, read in place.

One program computes one BLOCK_M x BLOCK_N tile of one group: grid axis 0 walks the tiles (output channels
fastest, so programs running together share an input patch), grid axis 1 is the group. Both operands are
read through their own strides, so an input stored NHWC and permuted to NCHW (or a permuted weight) is
index arithmetic, never a copy. The output is written through its strides.

f32, f16 and bf16 use `tl.dot` with an f32 accumulator (16-bit operands on tensor cores; f32 at full
precision like torch's default, or TF32 where PyTorch's matmul precision allows it); as `tl.dot` needs
every block dim >= 16, blocks are padded (masked) when K or O/G is small (a depthwise conv has
K = KH*KW and one output channel per group). f64 has no portable `tl.dot`: it accumulates a broadcast
multiply summed over each K block, in f64. Block sizes come from the sizes, in `prepare`; on a GPU the
launch carries configs (warps, pipeline stages) for the runtime's tuner.

A padded tap contributes 0 * w: a NaN weight reaches every output pixel of its channel, as in torch's f64
CPU conv (its f32 CPU conv skips padded taps, so there the border stays finite).
"""
from __future__ import annotations

from dataclasses import dataclass

import triton

from axon.ir import DType, OpKind
from axon.ir.shapes import concrete
from . import configs as gpu
from .epilogue import Epilogue
from .groups import CodegenError, KernelGroup
from .launch import Launch, contiguous_strides, meta_view
from .expr import helper_sources, helpers_called
from .ops_triton import cast, dot, dot_helpers, program_id, tl_dtype
from .prologue import WeightPrologue
from .target import Target

MIN_TILE = 16           # tl.dot's smallest block in every dimension
MIN_LOOP_TILE = 4       # smallest BLOCK_M/N/K of the f64 loop (no tl.dot, so no floor of 16)
MAX_GROUPS = 65535      # CUDA's limit on grid axis 1, which carries the group
# Caps on the block sizes by target and kernel. On a GPU, BLOCK_M x BLOCK_N comes from `configs.tile` (by
# the kind of dot and the epilogue's size) and BLOCK_K is capped by the kind of dot (the gathered input
# block and the weights share shared memory; the f64 loop holds a BLOCK_M x BLOCK_K x BLOCK_N product).
# The interpreter pays per program and per op far more than per element, so it takes the largest
# BLOCK_M its element budget allows (few programs).
GPU_BLOCK_K = {"tensor": 64, "tf32": 32, "fma": 32, "loop": 8}
GATHER_BLOCK = 4096  # BLOCK_M x BLOCK_K of the gathered input: 128 x 64 spilled at 8 warps (bf16, sm_90)
INTERPRETER_DOT = {"BLOCK_N": 64, "BLOCK_K": 128}
INTERPRETER_LOOP = {"BLOCK_N": 64, "BLOCK_K": 64}
INTERPRETER_A_BLOCK = 1 << 16   # elements of the gathered input block (BLOCK_M x BLOCK_K) per K step
INTERPRETER_PRODUCT = 1 << 18   # elements of the f64 loop's BLOCK_M x BLOCK_K x BLOCK_N product
K_WASTE = 1.25                  # a BLOCK_K whose blocks cover over 1.25 K is halved while that pads less


@dataclass
class Conv2dKernel:
    group: KernelGroup
    name: str = "conv2d_kernel"
    wide: bool = False                # int64 indexing
    target: Target = Target()

    def __post_init__(self):
        self.node = next(n for n in self.group.nodes if n.op == OpKind.CONV2D)
        self.x, self.w = self.group.inputs[:2]
        # a weight dequantized in the K loop: w is then its codes, and its scale (zero point) follow
        self.prologue = WeightPrologue(self.group, self.target, conv=True) if self.group.prologue else None
        operands = 2 + (self.prologue.extra if self.prologue else 0)
        self.epilogue = Epilogue(self.group, self.node, operands, skip=self.group.prologue)
        self.attrs = self.node.attrs
        self.dtype = self.node.dtype
        if not self.dtype.is_float:
            raise CodegenError(f"no conv2d kernel for {self.dtype}")
        self.uses_dot = self.dtype != DType.F64
        self.acc = DType.F32 if self.uses_dot else DType.F64
        self.interpreted = self.target.interpreted

    # --- source --------------------------------------------------------------------------------------
    def source(self) -> str:
        strides = [f"x_stride_{d}" for d in "nchw"] + [f"w_stride_{d}" for d in "ochw"]
        strides += [f"out_stride_{d}" for d in "nchw"]
        sizes = ["H", "W", "C_G", "O_G", "OH", "OW", "KH", "KW", "M", "K"]
        blocks = [f"{b}: tl.constexpr" for b in ("BLOCK_M", "BLOCK_N", "BLOCK_K")]
        body = self._tile() + self._loop()
        ptrs = ["x_ptr", "w_ptr"]
        helpers: set[str] = set()
        if self.prologue:
            ptrs += self.prologue.pointers()
            strides[8:8] = self.prologue.strides()  # after the weight's
            helpers |= helpers_called(body)
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
        a = self.attrs
        w_type = self.node.inputs[1].type if self.prologue else self.w.node.type
        types = f"x {self.x.node.type} * w {w_type} -> {self.node.type}"
        head = "\n".join(f"#   {line}" for line in self.group.labels)
        return "\n".join([
            f"# Conv2d kernel (implicit GEMM): {types},",
            f"# stride {a.stride}, padding {a.padding}, dilation {a.dilation}, groups {a.groups}, computing:",
            head,
            "# Per group: rows m = (n, oh, ow), columns = the group's output channels,",
            "# reduction k = (c, kh, kw).",
            "import triton\nimport triton.language as tl\n",
            *helper_sources(helpers),
            *[h for h in (dot_helpers(self.dtype, self.target) if self.uses_dot else [])
              if h not in helper_sources(helpers)],
            f"\n@triton.jit\ndef {self.name}(\n    {args},\n):",
            *[f"    {line}" for line in self._geometry() + body],
        ]) + "\n"

    def _geometry(self) -> list[str]:
        """The convolution's stride, padding and dilation as constants local to the kernel (a module
        global would be re-checked by Triton at every launch)."""
        a = self.attrs
        return ["# the convolution's geometry: (rows, columns) of stride, padding and dilation",
                *[f"{name}_{axis}: tl.constexpr = {value[i]}"
                  for name, value in (("STRIDE", a.stride), ("PAD", a.padding), ("DILATION", a.dilation))
                  for i, axis in enumerate("HW")]]

    def _tile(self) -> list[str]:
        """Which tile: rows (output pixels) by output channels of group `pid_g`, and where they read."""
        return [
            "# which tile: BLOCK_M output pixels by BLOCK_N output channels of group pid_g",
            f"pid = {program_id(0, self.wide)}",
            f"pid_g = {program_id(1, self.wide)}",
            "num_pid_n = tl.cdiv(O_G, BLOCK_N)",
            "pid_m = pid // num_pid_n",
            "pid_n = pid % num_pid_n",
            "offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)",
            "offs_oc = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)",
            "m_mask = offs_m < M",
            "oc_mask = offs_oc < O_G",
            "# row m -> output pixel (n, oh, ow), and the top-left corner of its window in x",
            "ow = offs_m % OW",
            "rem = offs_m // OW",
            "oh = rem % OH",
            "n = rem // OH",
            "ih0 = oh * STRIDE_H - PAD_H",
            "iw0 = ow * STRIDE_W - PAD_W",
            "x_base = n * x_stride_n + pid_g * C_G * x_stride_c  # the group's first input channel",
            "oc = pid_g * O_G + offs_oc  # output channel of each column",
        ]

    def _loop(self) -> list[str]:
        """The K loop: gather an input block (zeros in the padding), load a weight block, accumulate."""
        acc_t = tl_dtype(self.acc)
        offs_k = "(k + tl.arange(0, BLOCK_K)).to(tl.int64)" if self.wide else "k + tl.arange(0, BLOCK_K)"
        lines = self.prologue.hoisted() if self.prologue else []
        lines += [
            f"# accumulate over k = (c, kh, kw), BLOCK_K at a time, in {self.acc}",
            f"acc = tl.zeros((BLOCK_M, BLOCK_N), dtype={acc_t})",
            "for k in range(0, K, BLOCK_K):",
            f"    offs_k = {offs_k}",
            "    k_mask = offs_k < K",
            "    # column k -> input channel c (within the group) and kernel tap (kh, kw)",
            "    kw = offs_k % KW",
            "    k_rem = offs_k // KW",
            "    kh = k_rem % KH",
            "    c = k_rem // KH",
            "    ih = ih0[:, None] + kh[None, :] * DILATION_H",
            "    iw = iw0[:, None] + kw[None, :] * DILATION_W",
            "    # outside the image is the zero padding",
            "    x_mask = m_mask[:, None] & k_mask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)",
            "    # the A block [BLOCK_M, BLOCK_K]: input pixels; the B block [BLOCK_K, BLOCK_N]: weights",
            "    a = tl.load(x_ptr + x_base[:, None] + c[None, :] * x_stride_c + ih * x_stride_h",
            "                + iw * x_stride_w, mask=x_mask, other=0)",
            "    w_mask = k_mask[:, None] & oc_mask[None, :]",
            "    w_k = c * w_stride_c + kh * w_stride_h + kw * w_stride_w",
        ]
        if self.prologue:
            lines += [f"    {line}" for line in self.prologue.block("b")]
        else:
            lines.append("    b = tl.load(w_ptr + w_k[:, None] + oc[None, :] * w_stride_o, mask=w_mask, "
                         "other=0)")
        if self.uses_dot:
            lines.append(f"    acc = {dot('a', 'b', self.dtype, self.target, acc='acc')}")
        else:
            lines += ["    # no portable tl.dot for f64: a broadcast multiply, summed over the K block",
                      "    acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)"]
        return lines

    def _store(self, acc: str) -> list[str]:
        """Write the tile `acc` [BLOCK_M, BLOCK_N] (in the accumulator's dtype) to the output, rounded to
        its dtype. A fusion pass applies its epilogue (bias, activation, residual: pointwise nodes over the
        tile) to `acc` before this store; per row it has n, oh, ow, per column the output channel oc."""
        return [
            f"# write the tile, as {self.dtype}, through the output's strides",
            f"out = {cast(acc, self.acc, self.dtype)}",
            "mask = m_mask[:, None] & oc_mask[None, :]",
            "out_m = n * out_stride_n + oh * out_stride_h + ow * out_stride_w",
            "tl.store(out_ptr + out_m[:, None] + oc[None, :] * out_stride_c, out, mask=mask)",
        ]

    def _fused_store(self, acc: str):
        """The tile through the group's epilogue: per row the pixel (n, oh, ow), per column channel oc."""
        rows = {0: "n[:, None]", 1: "oc[None, :]", 2: "oh[:, None]", 3: "ow[:, None]"}
        value = [f"acc_out = {cast(acc, self.acc, self.dtype)}  # the convolution's value, as {self.dtype}"]
        lines, em = self.epilogue.lines(
            "acc_out", rows.__getitem__, "[BLOCK_M, BLOCK_N]", "m_mask[:, None] & oc_mask[None, :]",
            lambda ptr: f"{ptr} + (n * out_stride_n + oh * out_stride_h + ow * out_stride_w)[:, None] "
                        f"+ oc[None, :] * out_stride_c")
        return value + lines, em

    # --- launch --------------------------------------------------------------------------------------
    def prepare(self, env: dict[str, int]) -> Launch:
        x_view, x_arg = meta_view(self.x, env)
        w_view, w_arg = meta_view(self.w, env)
        shape = concrete(self.node.shape, env)
        n, o, oh, ow = shape
        _, _, h, w = x_view.shape
        _, c_g, kh, kw = w_view.shape
        groups = self.attrs.groups
        if groups > MAX_GROUPS:
            raise CodegenError(f"{self.group.labels[0] if self.group.labels else 'conv2d'}: {groups} groups "
                               f"are more than grid axis 1 takes ({MAX_GROUPS})")
        o_g = o // groups
        m, k = n * oh * ow, c_g * kh * kw
        p_args, p_strides = self.prologue.prepare(env) if self.prologue else ([], [])
        meta = self.blocks(m, o_g, k)
        grid = (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(o_g, meta["BLOCK_N"]), groups)
        configs = self.configs(meta)
        meta = configs[0] if configs else meta
        if self.epilogue.trivial:
            scalars = (*x_view.stride(), *w_view.stride(), *p_strides, *contiguous_strides(shape),
                       h, w, c_g, o_g, oh, ow, kh, kw, m, k)
            return Launch(grid, (x_arg, w_arg, *p_args), (self.node,), scalars, meta, configs)
        extra, more = self.epilogue.prepare(env)
        more = [s for group in more for s in group]
        scalars = (*x_view.stride(), *w_view.stride(), *p_strides, *contiguous_strides(shape), *more,
                   h, w, c_g, o_g, oh, ow, kh, kw, m, k)
        return Launch(grid, (x_arg, w_arg, *p_args, *extra), tuple(self.group.outputs), scalars, meta,
                      configs)

    def configs(self, blocks: dict[str, int]) -> tuple[dict, ...]:
        """On a GPU: `blocks` with each (warps, stages) to try, the first the default (none in the
        interpreter). BLOCK_K stays as `blocks` has it: it was chosen to pad K little."""
        if self.interpreted:
            return ()
        return gpu.configs(blocks, 0, self._values(), self.dtype, self.target, block_k=blocks["BLOCK_K"],
                           gathered=blocks["BLOCK_M"] * blocks["BLOCK_K"])

    def _values(self) -> int:
        values = 2 if self.epilogue.trivial else self.epilogue.values
        return values + (self.prologue.values if self.prologue else 0)

    def blocks(self, m: int, n: int, k: int) -> dict[str, int]:
        """Block sizes for the per-group (m x k) @ (k x n) product: BLOCK_M and BLOCK_N the next power of
        two of their size, at least the smallest tile (tl.dot's 16, padded by the masks) and at most the
        target's cap; BLOCK_K the largest that wastes little on padding (K = 144 takes 32, not 128)."""
        low = MIN_TILE if self.uses_dot else MIN_LOOP_TILE

        def fit(size: int, cap: int) -> int:
            return max(low, min(triton.next_power_of_2(size), cap))

        def padded(block: int) -> int:
            return triton.cdiv(k, block) * block

        def fit_k(cap: int) -> int:
            block = fit(k, cap)
            while block > low and padded(block) > K_WASTE * k and padded(block // 2) < padded(block):
                block //= 2
            return block

        if not self.interpreted:
            kind = gpu.dot_kind(self.dtype, self.target)
            block_m, block_n = gpu.tile(m, n, self._values(), kind)
            # an f32 weight dequantized on FMA units holds the block in registers: half the K block
            block_k = fit_k(GPU_BLOCK_K[kind] // (2 if self.prologue and kind == "fma" else 1))
            # the gathered input block's index tiles live in registers: keep it to GATHER_BLOCK elements
            # (half with a weight prologue: the codes and their scales are registers too)
            gather = GATHER_BLOCK // (2 if self.prologue else 1)
            while block_m * block_k > gather and max(block_m, block_k) > low:
                if block_k > 32 or block_m <= low:
                    block_k //= 2
                else:
                    block_m //= 2
            return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}
        caps = INTERPRETER_DOT if self.uses_dot else INTERPRETER_LOOP
        block_n, block_k = fit(n, caps["BLOCK_N"]), fit_k(caps["BLOCK_K"])
        if self.uses_dot:
            m_cap = INTERPRETER_A_BLOCK // block_k
        else:
            m_cap = INTERPRETER_PRODUCT // (block_k * block_n)
        return {"BLOCK_M": fit(m, m_cap), "BLOCK_N": block_n, "BLOCK_K": block_k}
