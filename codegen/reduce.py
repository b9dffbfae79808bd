"""Reduction kernels: the input seen as [rows, cols] (kept axes -> row, reduced axes -> col) through
index arithmetic; one program per block of rows, looping over blocks of columns.

When the columns fit in MAX_SINGLE_PASS the launcher picks one column block holding the whole row, so the
loop runs once (a single pass); otherwise it loops over LOOP_BLOCK_COLS columns at a time.
Accumulates in f32 (f64 for f64, i64 for integers); max/min propagate NaN like torch.amax; argmax/argmin
return the first index of the best value (a NaN counts as the best, as in torch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton

from axon.ir import DType, OpKind
from .groups import KernelGroup
from .ops_triton import INF, NAN, cast, program_id, tl_dtype
from .launch import Launch, meta_view, warps
from .target import Target

K = OpKind
MAX_SINGLE_PASS = 4096   # columns reduced in one block, without a loop
LOOP_BLOCK_COLS = 1024   # column block of the looped kernel
TILE_ELEMENTS = 4096     # rows * cols held by one program


@dataclass
class ReduceKernel:
    group: KernelGroup
    name: str = "reduce_kernel"
    wide: bool = False  # int64 indexing
    target: Target = Target()

    def __post_init__(self):
        (self.node,) = self.group.nodes
        (self.input,) = self.group.inputs
        x = self.input.node
        self.axes = self.node.attrs.axes
        self.kept = [d for d in range(len(x.shape)) if d not in self.axes]
        self.src = x.dtype
        self.acc = DType.F64 if x.dtype == DType.F64 else (DType.F32 if x.dtype.is_float else DType.I64)

    def source(self) -> str:
        op, rank = self.node.op, len(self.input.node.shape)
        is_float = self.src.is_float
        strides = [f"in0_stride{d}" for d in range(rank)]
        sizes = [f"size{d}" for d in range(rank)] + ["n_rows", "n_cols"]
        acc_t = tl_dtype(self.acc)
        if op in (K.SUM, K.MEAN):
            fill = "0"
        elif op in (K.MAX, K.ARGMAX):
            fill = f"-{INF}" if is_float else str(torch.iinfo(self.src.torch).min)
        else:
            fill = INF if is_float else str(torch.iinfo(self.src.torch).max)
        body = [
            f"rows = {program_id(0, self.wide)} * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)",
            "row_mask = rows < n_rows",
            *_decompose("rows", self.kept, "row_offset"),
            f"acc = tl.full([BLOCK_ROWS, BLOCK_COLS], {fill}, {acc_t})",
        ]
        if op in (K.ARGMAX, K.ARGMIN):
            body.append("acc_index = tl.full([BLOCK_ROWS, BLOCK_COLS], -1, tl.int64)  # -1: nothing seen yet")
        body += [
            "for col_start in range(0, n_cols, BLOCK_COLS):",
            "    cols = col_start + tl.arange(0, BLOCK_COLS)",
            "    col_mask = cols < n_cols",
            *["    " + line for line in _decompose("cols", list(self.axes), "col_offset")],
            "    mask = row_mask[:, None] & col_mask[None, :]",
            "    x = " + cast(f"tl.load(in0_ptr + row_offset[:, None] + col_offset[None, :], mask=mask, "
                           f"other={fill})", self.src, self.acc),
        ]
        better = "x > acc" if op in (K.MAX, K.ARGMAX) else "x < acc"
        if op in (K.SUM, K.MEAN):
            body.append("    acc += x")
            final = ["result = tl.sum(acc, axis=1)"]
            if op == K.MEAN:
                final.append("result = result / n_cols")
        elif op in (K.MAX, K.MIN):
            nan = " | (x != x)" if is_float else ""
            body.append(f"    acc = tl.where(({better}){nan}, x, acc)  # a NaN sticks")
            red = "tl.max" if op == K.MAX else "tl.min"
            final = [f"result = {red}(acc, axis=1)"]
            if is_float:
                final += ["row_has_nan = tl.max((acc != acc).to(tl.int32), axis=1) > 0",
                          f"result = tl.where(row_has_nan, {NAN}, result)"]
        else:
            nan = " | ((x != x) & (acc == acc))" if is_float else ""
            red = "tl.max" if op == K.ARGMAX else "tl.min"
            body += [f"    take = mask & (({better}){nan} | (acc_index < 0))  # the first best wins",
                     "    acc = tl.where(take, x, acc)",
                     "    acc_index = tl.where(take, cols[None, :], acc_index)"]
            final = [f"best = {red}(tl.where(acc_index >= 0, acc, {fill}), axis=1)"]
            if is_float:
                final += ["row_has_nan = tl.max(((acc != acc) & (acc_index >= 0)).to(tl.int32), axis=1) > 0",
                          "is_best = tl.where(row_has_nan[:, None], acc != acc, acc == best[:, None])"]
            else:
                final.append("is_best = acc == best[:, None]")
            final += ["is_best = is_best & (acc_index >= 0)",
                      "result = tl.min(tl.where(is_best, acc_index, n_cols), axis=1)"]
        body += final
        body.append(f"tl.store(out_ptr + rows, result.to({tl_dtype(self.node.dtype)}), mask=row_mask)")
        args = ",\n    ".join(["in0_ptr", "out_ptr"] + strides + sizes
                               + ["BLOCK_ROWS: tl.constexpr", "BLOCK_COLS: tl.constexpr"])
        head = "\n".join(f"#   {line}" for line in self.group.labels)
        return "\n".join([
            f"# Reduction kernel: {self.input.node.type} -> {self.node.type} over axes "
            f"{list(self.axes)}, computing:\n{head}",
            "import triton\nimport triton.language as tl\n",
                f"@triton.jit\ndef {self.name}(\n    {args},\n):",
            *[f"    {line}" for line in body],
        ]) + "\n"

    def prepare(self, env: dict[str, int]) -> Launch:
        view, arg = meta_view(self.input, env)
        shape = tuple(view.shape)
        n_rows = math.prod(shape[d] for d in self.kept)
        n_cols = math.prod(shape[d] for d in self.axes)
        if n_cols <= MAX_SINGLE_PASS:
            block_cols = triton.next_power_of_2(max(n_cols, 1))  # a symbolic axis may be 0 (a sum: 0)
        else:
            block_cols = LOOP_BLOCK_COLS
        block_rows = min(max(1, TILE_ELEMENTS // block_cols), triton.next_power_of_2(max(n_rows, 1)))
        return Launch((triton.cdiv(n_rows, block_rows),), (arg,), (self.node,),
                      (*view.stride(), *shape, n_rows, n_cols),
                      {"BLOCK_ROWS": block_rows, "BLOCK_COLS": block_cols,
                       **warps(self.target, block_rows * block_cols, 3)})  # x, acc (and its index)


def _decompose(index: str, dims: list[int], offset: str) -> list[str]:
    """Lines that split a flat index over `dims` (row-major) into coordinates, then an offset."""
    if not dims:
        return [f"{offset} = {index} * 0"]
    rem = f"{index[:3]}_rem"  # one name per loop level: Triton wants loop-carried types stable
    lines = [f"# {index} -> coordinates along axes {dims}", f"{rem} = {index}"]
    for d in reversed(dims[1:]):
        lines += [f"i{d} = {rem} % size{d}", f"{rem} = {rem} // size{d}"]
    lines.append(f"i{dims[0]} = {rem}")
    lines.append(f"{offset} = " + " + ".join(f"i{d} * in0_stride{d}" for d in dims))
    return lines
