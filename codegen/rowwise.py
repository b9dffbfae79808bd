"""Fused reductions: one kernel per block of rows for sum/mean/max/min with the elementwise work around
them (softmax, log-softmax, layernorm, rmsnorm, cross-entropy forward and backward).

The iteration space is seen as [rows, cols]: kept axes -> row, reduced axes -> column, through index
arithmetic (any axes, any strides). Values in the kernel are tiles: a full value is [BLOCK_ROWS,
BLOCK_COLS], a row value (a reduction's result and what is computed from it) is [BLOCK_ROWS, 1], so the
two broadcast against each other as in the IR.

Two shapes of kernel:
- persistent (the group computes full-row values from a reduction, e.g. `exp(x - max) / sum`): one
  column block holds the whole row; every value is computed once, in graph order;
- looped (only a prologue and row values): full values are computed and reduced block by block of
  columns, row values after the loop. Works for rows of any length, symbolic ones included.
Accumulates in f32 (f64 for f64, i64 for integers); max/min propagate NaN like torch.amax. A gather
of one element per row along the reduced axis (cross-entropy's label) is a masked sum over the row,
NaN for an index out of range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton

from axon.ir import DType, Node, OpKind
from axon.ir.shapes import concrete
from .expr import Emitter, broadcast_axes
from .groups import KernelGroup
from .launch import (Launch, broadcast_strides, contiguous_strides, fitted, group_values, meta_view,
                     warps)
from .ops_triton import INF, NAN, cast, full_tile, program_id, tl_dtype
from .target import Target

K = OpKind
REDUCTIONS = frozenset({K.SUM, K.MEAN, K.MAX, K.MIN})
TILE_ELEMENTS = 4096     # rows * cols held by one program
LOOP_BLOCK_COLS = 1024   # column block of the looped kernel, for long rows


@dataclass
class RowKernel:
    group: KernelGroup
    name: str = "row_kernel"
    wide: bool = False
    target: Target = Target()

    def __post_init__(self):
        g = self.group
        self.space = tuple(g.space)
        self.rank = len(self.space)
        self.axes = tuple(g.axes)
        self.kept = [d for d in range(self.rank) if d not in self.axes]
        self.row_shape = tuple(1 if d in self.axes else s for d, s in enumerate(self.space))
        self.rands = [m for m in g.nodes if m.op == K.RAND]
        self.seeds = [a for a in g.inputs if any(m.op == K.RAND and a.node in m.inputs for m in g.nodes)]
        self.is_row = {n: self._row_level(n) for n in g.nodes}
        self.row_inputs = [a for a in g.inputs if self._row_level(a.node, member=False)]

    def _row_level(self, n: Node, member: bool = True) -> bool:
        """A row value ([BLOCK_ROWS, 1]): a reduction's or row gather's result, or constant along the
        reduced axes."""
        if member and (n.op in REDUCTIONS or n.op == K.GATHER):
            return True
        return not broadcast_axes_outside(n.shape, self)

    # --- source --------------------------------------------------------------------------------------
    def source(self) -> str:
        g = self.group
        ins, outs = g.inputs, g.outputs
        ptrs = [f"in{j}_ptr" for j in range(len(ins))] + [f"out{k}_ptr" for k in range(len(outs))]
        strides = [f"in{j}_stride{d}" for j, a in enumerate(ins) if a not in self.seeds
                   for d in range(self.rank)]
        strides += [f"rand{r}_stride{d}" for r in range(len(self.rands)) for d in range(self.rank)]
        strides += [f"out{k}_stride{d}" for k in range(len(outs)) for d in range(self.rank)]
        sizes = [f"size{d}" for d in range(self.rank)] + ["n_rows", "n_cols"]
        self.em = Emitter.over(self.rank, self._coord, "[BLOCK_ROWS, 1]", g.nodes)
        self.names: dict[Node, str] = {}
        body = [
            f"rows = {program_id(0, self.wide)} * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)",
            "row_mask = rows < n_rows",
            *_decompose("rows", self.kept, "r"),
        ]
        for j, a in enumerate(ins):
            if a in self.seeds:
                body.append(f"seed{j} = tl.load(in{j}_ptr)  # a scalar")
                self.names[a.node] = f"seed{j}"
        body += self._loads(row=True)
        if g.persistent:
            body += self._columns("0")
            body += self._loads(row=False)
            body += self._members(self.group.nodes, looped=False)
            body += self._stores(full=True) + self._stores(full=False)
        else:
            body += self._passes()
        blocks = ["BLOCK_ROWS: tl.constexpr", "BLOCK_COLS: tl.constexpr"]
        args = ",\n    ".join(ptrs + strides + sizes + blocks)
        head = "\n".join(f"#   {line}" for line in g.labels)
        mode = "persistent: whole rows in one block" if g.persistent else "looped over column blocks"
        return "\n".join([
            f"# Row kernel over [{', '.join(map(str, self.space))}], reducing axes {list(self.axes)} "
            f"({mode}), computing:\n{head}",
            "import triton\nimport triton.language as tl\n",
            *self.em.helper_source(),
            f"\n@triton.jit\ndef {self.name}(\n    {args},\n):",
            *[f"    {line}" for line in body if line],
        ]) + "\n"

    def _passes(self) -> list[str]:
        """The looped kernel: pass k walks the row's column blocks, computing the full values it needs
        (recomputing those of earlier passes from the loads, so nothing full-size is kept) and
        accumulating the reductions whose operand is ready in pass k; after it, those reductions are
        final and the row values that depend on them are computed."""
        nodes = self.group.nodes
        loop, after = self._schedule()
        count = 1 + max([loop[n] for n in nodes if n in loop] + [0])
        reductions = [n for n in nodes if n.op in REDUCTIONS or n.op == K.GATHER]
        full_outs = [o for o in self.group.outputs if not self.is_row[o]]
        lines = self._members([n for n in nodes if self.is_row[n] and after.get(n) == 0
                               and n not in reductions], looped=False)
        for k in range(count):
            targets = [r.inputs[0] for r in reductions if loop[r] == k]
            targets += [r.inputs[1] for r in reductions if loop[r] == k and r.op == K.GATHER]
            targets += [o for o in full_outs if loop[o] == k]
            needed = self._needed(targets, loop, k)
            accs = [r for r in reductions if loop[r] == k]
            lines += [f"# pass {k + 1} of {count} over the row's columns"]
            lines += [self._init(r) for r in accs]
            used = {i for m in needed + accs for i in m.inputs}
            body = self._columns("col_start") + self._loads(row=False, used=used)
            body += self._members(needed, looped=True)
            body += [x for r in accs for x in self._accumulate(r)]
            body += self._stores(full=True, only=[o for o in full_outs if loop[o] == k])
            lines += ["for col_start in range(0, n_cols, BLOCK_COLS):", *["    " + x for x in body]]
            for r in accs:
                lines += self._finish(r)
            lines += self._members([n for n in nodes if self.is_row[n] and after.get(n) == k + 1
                                    and n not in reductions], looped=False)
        return lines + self._stores(full=False)

    def _schedule(self) -> tuple[dict[Node, int], dict[Node, int]]:
        """loop[n]: the pass in which full value n (or reduction n's operand) is computed; after[n]: the
        pass after which row value n is known (0: before the first)."""
        loop: dict[Node, int] = {}
        after: dict[Node, int] = {}

        def need(i: Node) -> int:
            return after[i] if i in after else loop.get(i, 0)

        for n in self.group.nodes:
            if n.op in REDUCTIONS or n.op == K.GATHER:
                loop[n] = max(need(i) for i in n.inputs)
                after[n] = loop[n] + 1
            elif self.is_row[n]:
                after[n] = max([after.get(i, 0) for i in n.inputs] + [0])
            else:
                loop[n] = max([need(i) for i in n.inputs] + [0])
        return loop, after

    def _needed(self, targets, loop, k: int) -> list[Node]:
        """The full values pass k computes: the targets and the full values they are made from."""
        want, stack = set(), list(targets)
        while stack:
            m = stack.pop()
            if m in want or m not in loop or self.is_row[m] or m.op in REDUCTIONS or m.op == K.GATHER:
                continue
            want.add(m)
            stack += list(m.inputs)
        return [n for n in self.group.nodes if n in want]

    def _coord(self, d: int) -> str:
        return f"r{d}[:, None]" if d not in self.axes else f"c{d}[None, :]"

    def _columns(self, start: str) -> list[str]:
        return [
            f"cols = {start} + tl.arange(0, BLOCK_COLS)",
            "col_mask = cols < n_cols",
            *_decompose("cols", list(self.axes), "c"),
            "mask = row_mask[:, None] & col_mask[None, :]",
        ]

    def _offset(self, prefix: str, dims, group: tuple[int, int] | None = None) -> str:
        """sum over `dims` of coordinate * stride; `group` (axis, size): a per-group value's axis."""
        terms = [f"({self._coord(d)} // {group[1]}) * {prefix}{d}" if group and d == group[0]
                 else f"{self._coord(d)} * {prefix}{d}" for d in dims]
        return " + ".join(terms) if terms else "tl.zeros([BLOCK_ROWS, 1], tl.int32)"

    def _loads(self, row: bool, used=None) -> list[str]:
        lines = []
        for j, a in enumerate(self.group.inputs):
            if a in self.seeds or (a in self.row_inputs) != row or (used is not None and a.node not in used):
                continue
            group = a.space_group(self.rank)
            if row:
                off = self._offset(f"in{j}_stride", self.kept, group)
                lines.append(f"x{j} = tl.load(in{j}_ptr + ({off}) + tl.zeros([BLOCK_ROWS, 1], tl.int32), "
                             f"mask=row_mask[:, None])")
            else:
                off = self._offset(f"in{j}_stride", range(self.rank), group)
                lines.append(f"x{j} = tl.load(in{j}_ptr + {off}, mask=mask)")
            self.names[a.key] = f"x{j}"
        return lines

    def _members(self, nodes, looped: bool = False) -> list[str]:
        lines = []
        for n in nodes:
            k = self.group.nodes.index(n)
            var = f"{n.op.value}{k}"
            lines.append(f"# {self.group.labels[k]}" if self.group.labels else "")
            if n.op in REDUCTIONS:
                lines += self._reduce(n, var)
            elif n.op == K.GATHER:
                lines += self._gather(n, var)
            else:
                lines += self.em.emit(n, var, self.names)
            self.names[n] = var
        return lines

    # reductions ------------------------------------------------------------------------------------
    def _acc_dtype(self, n: Node) -> DType:
        src = n.inputs[0].dtype
        return DType.F64 if src == DType.F64 else (DType.F32 if src.is_float else DType.I64)

    def _fill(self, n: Node) -> str:
        src = n.inputs[0].dtype
        if n.op in (K.SUM, K.MEAN):
            return "0"
        if n.op == K.MAX:
            return f"-{INF}" if src.is_float else str(torch.iinfo(src.torch).min)
        return INF if src.is_float else str(torch.iinfo(src.torch).max)

    def _masked(self, n: Node) -> list[str]:
        """The operand as a full tile in the accumulation dtype, the fill outside the rows' columns."""
        x = self.names[n.inputs[0]]
        tile = f"{x} + tl.zeros([BLOCK_ROWS, BLOCK_COLS], {x}.dtype)"
        full = cast(tile, n.inputs[0].dtype, self._acc_dtype(n))
        return [f"v = tl.where(mask, {full}, {self._fill(n)})"]

    def _combine(self, n: Node, acc: str) -> str:
        if n.op in (K.SUM, K.MEAN):
            return f"{acc} + v"
        better = "v > " + acc if n.op == K.MAX else "v < " + acc
        nan = " | (v != v)" if n.inputs[0].dtype.is_float else ""
        return f"tl.where(({better}){nan}, v, {acc})  # a NaN sticks"

    def _final(self, n: Node, acc: str, var: str) -> list[str]:
        red = {K.SUM: "tl.sum", K.MEAN: "tl.sum", K.MAX: "tl.max", K.MIN: "tl.min"}[n.op]
        lines = [f"{var} = {red}({acc}, axis=1)[:, None]"]
        if n.op in (K.MAX, K.MIN) and n.inputs[0].dtype.is_float:
            lines.append(f"{var} = tl.where(tl.max(({acc} != {acc}).to(tl.int32), axis=1)[:, None] > 0, "
                         f"{NAN}, {var})")
        if n.op == K.MEAN:
            lines.append(f"{var} = {var} / n_cols")
        lines.append(f"{var} = {cast(var, self._acc_dtype(n), n.dtype)}")
        return lines

    def _reduce(self, n: Node, var: str) -> list[str]:
        return self._masked(n) + self._final(n, "v", var)

    def _init(self, n: Node) -> str:
        k = self.group.nodes.index(n)
        if n.op == K.GATHER:
            return f"acc{k} = tl.zeros([BLOCK_ROWS, BLOCK_COLS], {tl_dtype(n.dtype)})"
        return f"acc{k} = tl.full([BLOCK_ROWS, BLOCK_COLS], {self._fill(n)}, {tl_dtype(self._acc_dtype(n))})"

    def _accumulate(self, n: Node) -> list[str]:
        k = self.group.nodes.index(n)
        if n.op == K.GATHER:
            x, idx = n.inputs
            (axis,) = self.axes
            return [f"acc{k} += tl.where(mask & (c{axis}[None, :] == {self.names[idx]}), "
                    f"{self.names[x]}, 0).to({tl_dtype(n.dtype)})"]
        return self._masked(n) + [f"acc{k} = {self._combine(n, f'acc{k}')}"]

    def _finish(self, n: Node) -> list[str]:
        k = self.group.nodes.index(n)
        var = f"{n.op.value}{k}"
        lines = [f"# {self.group.labels[k]}" if self.group.labels else ""]
        if n.op == K.GATHER:
            lines += self._gather_final(n, f"tl.sum(acc{k}, axis=1)[:, None]", var)
        else:
            lines += self._final(n, f"acc{k}", var)
        self.names[n] = var
        return lines

    def _gather(self, n: Node, var: str) -> list[str]:
        x, idx = n.inputs
        (axis,) = self.axes
        hit = f"mask & (c{axis}[None, :] == {self.names[idx]})"
        picked = f"tl.sum(tl.where({hit}, {self.names[x]}, 0), axis=1)"
        return self._gather_final(n, picked + "[:, None]", var)

    def _gather_final(self, n: Node, picked: str, var: str) -> list[str]:
        """The picked element; NaN (0 for integers) where the index is out of range, as the index kernel."""
        ix = self.names[n.inputs[1]]
        (axis,) = self.axes
        bad = NAN if n.dtype.is_float else "0"
        return [f"{var} = {picked}",
                f"{var} = tl.where(({ix} >= 0) & ({ix} < size{axis}), {var}, {bad}).to({tl_dtype(n.dtype)})"]

    # stores -----------------------------------------------------------------------------------------
    def _stores(self, full: bool, only=None) -> list[str]:
        lines = []
        for k, o in enumerate(self.group.outputs):
            if self.is_row[o] == full or (only is not None and o not in only):
                continue
            value = self.names[o]
            if full:
                bmask = " & ".join(["mask"] + [f"({self._coord(d)} == 0)" for d in
                                               broadcast_axes(o.shape, self.space)])
                value = full_tile(value, "[BLOCK_ROWS, BLOCK_COLS]", o.dtype)
                lines.append(f"tl.store(out{k}_ptr + {self._offset(f'out{k}_stride', range(self.rank))}, "
                             f"{value}, mask={bmask})")
            else:
                dims = [] if o.op in REDUCTIONS or o.op == K.GATHER else \
                    [d for d in broadcast_axes(o.shape, self.row_shape) if d not in self.axes]
                bmask = " & ".join(["row_mask[:, None]"] + [f"({self._coord(d)} == 0)" for d in dims])
                value = full_tile(value, "[BLOCK_ROWS, 1]", o.dtype)
                lines.append(f"tl.store(out{k}_ptr + {self._offset(f'out{k}_stride', self.kept)}, "
                             f"{value}, mask={bmask})")
        return lines

    # --- launch --------------------------------------------------------------------------------------
    def prepare(self, env: dict[str, int]) -> Launch:
        shape = concrete(self.space, env)
        args, strides = [], []
        for a in self.group.inputs:
            view, arg = meta_view(a, env)
            args.append(arg)
            if a not in self.seeds:
                strides += broadcast_strides(view.shape, view.stride(), shape, a.group)
        for n in self.rands:
            rshape = concrete(n.shape, env)
            strides += broadcast_strides(rshape, contiguous_strides(rshape), shape)
        for o in self.group.outputs:
            strides += self._out_strides(o, shape, env)
        n_rows = math.prod(shape[d] for d in self.kept)
        n_cols = math.prod(shape[d] for d in self.axes)
        if self.group.persistent or n_cols <= TILE_ELEMENTS:
            block_cols = triton.next_power_of_2(max(n_cols, 1))
        else:
            block_cols = LOOP_BLOCK_COLS
        block_rows = min(max(1, TILE_ELEMENTS // block_cols), triton.next_power_of_2(max(n_rows, 1)))
        values = group_values(self.group)  # a long fused chain (optimizer updates) holds many tiles
        block_rows = max(1, block_rows // fitted(block_rows * block_cols, values, self.target))
        return Launch((triton.cdiv(n_rows, block_rows),), tuple(args), tuple(self.group.outputs),
                      (*strides, *shape, n_rows, n_cols),
                      {"BLOCK_ROWS": block_rows, "BLOCK_COLS": block_cols,
                       **warps(self.target, block_rows * block_cols, values)})

    def _out_strides(self, o: Node, shape, env) -> list[int]:
        """Where each output element goes, per axis of the space: a reduction's result (with or without
        its reduced axes) is laid out in row order; other values through their broadcast strides."""
        if o.op in REDUCTIONS or o.op == K.GATHER:
            row = [shape[d] if d not in self.axes else 1 for d in range(self.rank)]
            return list(contiguous_strides(row))
        oshape = concrete(o.shape, env)
        return broadcast_strides(oshape, contiguous_strides(oshape), shape)


def broadcast_axes_outside(shape, kernel: RowKernel) -> list[int]:
    """Axes along which a value of `shape` varies although they are reduced: a full-row value."""
    lead = kernel.rank - len(shape)
    return [lead + d for d, s in enumerate(shape) if s != 1 and lead + d in kernel.axes]


def _decompose(index: str, dims: list[int], prefix: str) -> list[str]:
    """Lines that split a flat index over `dims` (row-major) into coordinates {prefix}{d}."""
    if not dims:
        return []
    rem = f"{index[:3]}_rem"
    lines = [f"# {index} -> coordinates along axes {dims}", f"{rem} = {index}"]
    for d in reversed(dims[1:]):
        lines += [f"{prefix}{d} = {rem} % size{d}", f"{rem} = {rem} // size{d}"]
    lines.append(f"{prefix}{dims[0]} = {rem}")
    return lines
