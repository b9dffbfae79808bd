"""2-D convolution as an implicit GEMM: no im2col buffer is ever written.

The output [N, O, OH, OW] is a matrix product per group g: rows m = (n, oh, ow), columns the group's
output channels, and the reduction k = (c, kh, kw) over the group's input channels and the kernel
window. Each program computes a BLOCK_M x BLOCK_N tile; for each BLOCK_K slice of k it gathers the
input patch elements straight from x (ih = oh*stride - pad + kh*dilation, masked outside the image:
that mask *is* the zero padding) and the weights from w, and accumulates with `tl.dot` in f32 (f64
without tl.dot, by a broadcast product). Both operands are read through their strides, so an input
stored channels-last (a permuted view) costs nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import triton

from axon.ir import DType, OpKind
from axon.ir.shapes import concrete
from .cache import target
from .groups import KernelGroup
from .launch import Launch, meta_view
from .ops_triton import program_id, tl_dtype

K = OpKind
MIN_TILE = 16  # tl.dot needs every block dimension >= 16


@dataclass
class Conv2dKernel:
    group: KernelGroup
    name: str = "conv2d_kernel"
    wide: bool = False  # int64 indexing

    def __post_init__(self):
        (self.node,) = self.group.nodes
        self.attrs = self.node.attrs
        self.dtype = self.node.dtype
        self.interpreted = target().startswith("interpreter")

    def source(self) -> str:
        a = self.attrs
        x_t, w_t = (i.node.type for i in self.group.inputs)
        head = "\n".join(f"#   {line}" for line in self.group.labels)
        args = ["x_ptr", "w_ptr", "out_ptr",
                "x_stride_n", "x_stride_c", "x_stride_h", "x_stride_w",
                "w_stride_o", "w_stride_c", "w_stride_h", "w_stride_w",
                "N", "H", "W", "OH", "OW", "O", "M", "O_GROUP", "C_GROUP", "K",
                "STRIDE_H: tl.constexpr", "STRIDE_W: tl.constexpr", "PAD_H: tl.constexpr",
                "PAD_W: tl.constexpr", "DIL_H: tl.constexpr", "DIL_W: tl.constexpr",
                "KH: tl.constexpr", "KW: tl.constexpr",
                "BLOCK_M: tl.constexpr", "BLOCK_N: tl.constexpr", "BLOCK_K: tl.constexpr"]
        body = [
            "# which tile: rows m = (n, oh, ow), columns = output channels of group g",
            f"pid = {program_id(0, self.wide)}",
            f"g = {program_id(1, self.wide)}",
            "num_pid_n = tl.cdiv(O_GROUP, BLOCK_N)",
            "offs_m = (pid // num_pid_n) * BLOCK_M + tl.arange(0, BLOCK_M)",
            "offs_n = (pid % num_pid_n) * BLOCK_N + tl.arange(0, BLOCK_N)",
            "m_mask = offs_m < M",
            "n_mask = offs_n < O_GROUP",
            "ow = offs_m % OW",
            "oh = (offs_m // OW) % OH",
            "n = offs_m // (OW * OH)",
            "out_channel = g * O_GROUP + offs_n",
            f"acc = tl.zeros((BLOCK_M, BLOCK_N), dtype={self._acc()})",
            "for k0 in range(0, K, BLOCK_K):",
            "    # reduction index k -> (input channel in the group, kh, kw)",
            "    offs_k = k0 + tl.arange(0, BLOCK_K)",
            "    k_mask = offs_k < K",
            "    kw = offs_k % KW",
            "    kh = (offs_k // KW) % KH",
            "    c = g * C_GROUP + offs_k // (KW * KH)",
            "    # the input pixel each (row, k) reads; outside the image is the zero padding",
            "    ih = oh[:, None] * STRIDE_H - PAD_H + kh[None, :] * DIL_H",
            "    iw = ow[:, None] * STRIDE_W - PAD_W + kw[None, :] * DIL_W",
            "    inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)",
            "    x_mask = m_mask[:, None] & k_mask[None, :] & inside",
            "    x = tl.load(x_ptr + n[:, None] * x_stride_n + c[None, :] * x_stride_c + ih * x_stride_h",
            "                + iw * x_stride_w, mask=x_mask, other=0)",
            "    w_mask = k_mask[:, None] & n_mask[None, :]",
            "    w = tl.load(w_ptr + out_channel[None, :] * w_stride_o",
            "                + (offs_k // (KW * KH))[:, None] * w_stride_c + kh[:, None] * w_stride_h",
            "                + kw[:, None] * w_stride_w, mask=w_mask, other=0)",
            *["    " + line for line in self._accumulate()],
            "# store the tile into out[n, out_channel, oh, ow] (contiguous)",
            "mask = m_mask[:, None] & n_mask[None, :]",
            "out_offset = (n[:, None] * O + out_channel[None, :]) * (OH * OW) + (oh * OW + ow)[:, None]",
            f"tl.store(out_ptr + out_offset, acc.to({tl_dtype(self.dtype)}), mask=mask)",
        ]
        return "\n".join([
            f"# Conv2d kernel (implicit GEMM): {x_t} * {w_t} -> {self.node.type}, stride {a.stride}, "
            f"padding {a.padding}, dilation {a.dilation}, groups {a.groups}; computing:\n{head}",
            "import triton\nimport triton.language as tl\n\n",
            f"@triton.jit\ndef {self.name}(\n    " + ",\n    ".join(args) + ",\n):",
            *[f"    {line}" for line in body],
        ]) + "\n"

    def _acc(self) -> str:
        return "tl.float64" if self.dtype == DType.F64 else "tl.float32"

    def _accumulate(self) -> list[str]:
        if self.dtype == DType.F64:  # no portable f64 tl.dot: a broadcast product summed over k
            return ["acc += tl.sum(x[:, :, None] * w[None, :, :], axis=1)"]
        if self.dtype == DType.F32:
            return ['acc = tl.dot(x, w, acc, input_precision="ieee")  # full f32, as torch']
        if self.interpreted:  # the interpreter's low-precision tl.dot is unreliable (triton#11584)
            return ["acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision=\"ieee\")"]
        return ["acc = tl.dot(x, w, acc)  # tensor cores, f32 accumulation"]

    def prepare(self, env: dict[str, int]) -> Launch:
        a = self.attrs
        (xv, xa), (wv, wa) = (meta_view(i, env) for i in self.group.inputs)
        n, c, h, w = xv.shape
        o, cg, kh, kw = wv.shape
        _, _, oh, ow = concrete(self.node.shape, env)
        m, og, k = n * oh * ow, o // a.groups, cg * kh * kw
        cap = 128 if self.interpreted else 64
        block_m = max(MIN_TILE, min(cap, triton.next_power_of_2(m)))
        block_n = max(MIN_TILE, min(64, triton.next_power_of_2(og)))
        block_k = max(MIN_TILE, min(32 if self.dtype == DType.F64 else 64, triton.next_power_of_2(k)))
        if self.dtype == DType.F64:
            block_m = min(block_m, 32)
        grid = (triton.cdiv(m, block_m) * triton.cdiv(og, block_n), a.groups)
        scalars = (*xv.stride(), *wv.stride(), n, h, w, oh, ow, o, m, og, cg, k)
        meta = {"STRIDE_H": a.stride[0], "STRIDE_W": a.stride[1], "PAD_H": a.padding[0],
                "PAD_W": a.padding[1], "DIL_H": a.dilation[0], "DIL_W": a.dilation[1], "KH": kh, "KW": kw,
                "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}
        if math.prod(grid) == 0:
            grid = (0, 1)
        return Launch(grid, (xa, wa), (self.node,), scalars, meta)
