"""A matmul's (or convolution's) weight prologue: the weight dequantized block by block inside the K
loop, so the full-precision weight never exists in memory (`passes/fusion/prologue.py` claims it).

The group reads, in place of the weight, its stored codes (`b_ptr`: i8/u8/i32/fp8 codes of the [K, N]
weight, or u8 bytes holding two int4 codes each along N), then the dequantize's scale (`s_ptr`) and zero
point (`z_ptr`), each of shape () (per tensor) or [K or 1 or K / group, N or 1 or N / group]. Each
[BLOCK_K, BLOCK_N] block of codes is loaded, unpacked (int4: nibble n % 2 of byte n // 2, the low one
first, sign-extended for i8) and dequantized by the same lines the elementwise kernel uses
(`codegen/quant.py`), so the operand equals the evaluator's dequantized weight bit for bit; then it goes
to `tl.dot` as any operand does. A scale (zero point) constant along K is loaded once, before the loop.

A conv2d weight [O, C/G, KH, KW] is read as the implicit GEMM's B block (k = (c, kh, kw) by output
channel, `codegen/conv.py`), with a scale per tensor or per output channel (`w_ptr`, `s_ptr`, `z_ptr`).
"""
from __future__ import annotations

from dataclasses import dataclass

from axon.ir import DType, OpKind
from axon.ir.op_quant import per_group
from axon.ir.shapes import concrete
from .groups import KernelGroup
from .launch import broadcast_strides, meta_view
from .ops_triton import FP8_TO_F32, cast
from .quant import quant_lines
from .target import Target

K = OpKind
COORD = ("offs_k[:, None]", "offs_n[None, :]")  # the block's coordinates along K and N
MASK = ("k_mask[:, None]", "n_mask[None, :]")


@dataclass
class WeightPrologue:
    group: KernelGroup
    target: Target = Target()
    conv: bool = False  # the weight of a conv2d (else a matmul's [K, N] operand)

    def __post_init__(self):
        self.deq = self.group.prologue[-1]
        self.packed = self.group.prologue[0].op == K.UNPACK_INT4
        self.codes = self.group.prologue[0].dtype if self.packed else self.deq.inputs[0].dtype
        self.params = list(self.group.inputs[2:2 + len(self.deq.inputs) - 1])  # scale, zero point
        self.names = ["s", "z"][:len(self.params)]
        self.grouped = per_group(self.deq)
        self.ptr, self.mask = ("w_ptr", "w_mask") if self.conv else ("b_ptr", "b_mask")

    @property
    def extra(self) -> int:
        """Inputs the prologue reads besides the codes."""
        return len(self.params)

    @property
    def values(self) -> int:
        """Block-sized values it adds to a program's registers: the codes and the scale."""
        return 2

    def pointers(self) -> list[str]:
        return [f"{x}_ptr" for x in self.names]

    def strides(self) -> list[str]:
        return [f"{x}_stride_{d}" for x, a in zip(self.names, self.params) if a.node.shape
                for d in ("o" if self.conv else "kn")]

    def _varies(self, a, axis: int) -> bool:
        """Does operand `a` (a scale or zero point) change along the weight's `axis` (0: K, 1: N)? (A
        conv2d's varies along its output channels, N, only.)"""
        if self.conv:
            return axis == 1 and bool(a.node.shape) and a.node.shape[0] != 1
        return bool(a.node.shape) and a.node.shape[axis] != 1

    def _load(self, x: str, a, axes) -> str:
        """Load scale/zero point `x` over the block's `axes` (those it varies along)."""
        if not a.node.shape or not axes:
            return f"tl.load({x}_ptr)"
        if self.conv:  # per output channel
            return f"tl.load({x}_ptr + oc[None, :] * {x}_stride_o, mask=oc_mask[None, :], other=0)"
        terms = []
        for d in axes:
            coord = COORD[d]
            if self.grouped and self.grouped[0] == d:
                coord = f"({coord} // {self.grouped[1]})"
            terms.append(f"{coord} * {x}_stride_{'kn'[d]}")
        mask = " & ".join(MASK[d] for d in axes)
        return f"tl.load({x}_ptr + {' + '.join(terms) or '0'}, mask={mask}, other=0)"

    def hoisted(self) -> list[str]:
        """Scales and zero points constant along K, loaded once before the loop."""
        lines = []
        for x, a in zip(self.names, self.params):
            if not self._varies(a, 0):
                axes = [1] if self._varies(a, 1) else []
                lines.append(f"{x} = {self._load(x, a, axes)}  # the same in every K block")
        return ["# the weight's dequantization parameters that are the same along K", *lines] if lines else []

    def block(self, var: str) -> list[str]:
        """The lines making `var`, the [BLOCK_K, BLOCK_N] weight block, from its codes."""
        signed = self.codes == DType.I8
        how = f"per group of {self.grouped[1]}" if self.grouped else f"scale {self.params[0].node.type}"
        lines = [f"# the weight block, dequantized in registers ({self.codes} codes, {how})"]
        if self.packed:
            lines += [
                "# two int4 codes a byte along N: nibble n % 2 of byte n // 2, the low one first",
                f"{var}_byte = tl.load({self.ptr} + offs_k[:, None] * b_stride_k",
                "                 + (offs_n // 2)[None, :] * b_stride_n, mask=b_mask, other=0).to(tl.int32)",
                f"{var}_q = tl.where((offs_n % 2 == 0)[None, :], {var}_byte & 15, {var}_byte >> 4)",
            ]
            if signed:
                lines.append(f"{var}_q = ({var}_q ^ 8) - 8  # sign-extended")
        else:
            other = "" if self.codes.is_fp8 else ", other=0"  # (fp8: no literal; masked after)
            at = "w_k[:, None] + oc[None, :] * w_stride_o" if self.conv else \
                "offs_k[:, None] * b_stride_k + offs_n[None, :] * b_stride_n"
            lines += [f"{var}_q = tl.load({self.ptr} + {at}, mask={self.mask}{other})"]
        for x, a in zip(self.names, self.params):
            if self._varies(a, 0):
                axes = [0, 1] if self._varies(a, 1) else [0]
                lines.append(f"{x} = {self._load(x, a, axes)}")
        q = f"{var}_q"
        if self.codes.is_fp8:
            q = f"{FP8_TO_F32[self.codes]}({q})"
        scale = self.params[0].node.dtype
        s = "s" if scale == DType.F32 else cast("s", scale, DType.F32)
        lines += quant_lines(self.deq, var, q, s, "z" if len(self.params) > 1 else None)
        if self.codes.is_fp8:
            lines.append(f"{var} = tl.where({self.mask}, {var}, 0.0)  # zeros outside the weight")
        return lines

    def prepare(self, env) -> tuple[list, list[int]]:
        """The scale's (zero point's) argument views, and their strides over the [K, N] weight."""
        wshape = concrete(self.deq.shape, env)
        args, strides = [], []
        for a in self.params:
            view, arg = meta_view(a, env)
            args.append(arg)
            if a.node.shape:
                full = broadcast_strides(view.shape, view.stride(), wshape, self.grouped)
                strides += full[:1] if self.conv else full
        return args, strides
