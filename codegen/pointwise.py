"""Pointwise kernels: a flat 1-D loop over the output's elements, each input read through its own
(broadcast) strides, one line of Triton per IR node.

The launcher turns every input's view (movement ops plus broadcasting to the output shape) into strides,
so a permuted, sliced or expanded input costs index arithmetic, never a copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import triton

from axon.ir import DType, Node, OpKind
from axon.ir.ops import MOVEMENT
from axon.ir.shapes import concrete
from .groups import Access, KernelGroup
from .ops_triton import (EXPR, FLOAT_EXPR, HELPERS, LOW_FLOATS, cast, compute_dtype, literal, program_id,
                         tl_dtype)
from .launch import ArgView, Launch, broadcast_strides, contiguous_strides, meta_view

K = OpKind
BLOCK = 1024  # elements per program


@dataclass
class PointwiseKernel:
    group: KernelGroup
    name: str = "pointwise_kernel"
    wide: bool = False  # int64 indexing

    def __post_init__(self):
        (self.out,) = self.group.outputs
        self.rank = len(self.out.shape)
        self.seeds = [a for a in self.group.inputs if any(
            m.op == K.RAND and m.inputs[0] is a.node for m in self.group.nodes)]
        self.rands = [m for m in self.group.nodes if m.op == K.RAND]
        # Inputs indexed over their own shape rather than the output's: the operand of a reshape copy.
        self.own_space = [a for a in self.group.inputs if self.group.nodes[0].op == K.RESHAPE
                          and a.node is self.group.nodes[0].inputs[0]]

    # --- source --------------------------------------------------------------------------------------
    def source(self) -> str:
        ins = self.group.inputs
        ptrs = [f"in{j}_ptr" for j in range(len(ins))] + ["out_ptr"]
        strides = [f"in{j}_stride{d}" for j, a in enumerate(ins) if a not in self.seeds
                   for d in range(self._rank_of(a))]
        strides += [f"rand{r}_stride{d}" for r in range(len(self.rands)) for d in range(self.rank)]
        sizes = [f"size{d}" for d in range(self.rank)]
        sizes += [f"in{j}_size{d}" for j, a in enumerate(ins) if a in self.own_space
                  for d in range(len(a.node.shape))]
        sizes.append("n_elements")
        body = [
            f"pid = {program_id(0, self.wide)}",
            "offs = pid * BLOCK + tl.arange(0, BLOCK)",
            "mask = offs < n_elements",
        ]
        body += self._coordinates()
        names: dict[Node, str] = {}
        for j, a in enumerate(ins):
            if a in self.seeds:
                body.append(f"seed{j} = tl.load(in{j}_ptr)  # a scalar")
                names[a.node] = f"seed{j}"
            elif a in self.own_space:
                rank = len(a.node.shape)
                body += self._coordinates(f"in{j}_", rank)
                offset = " + ".join(f"in{j}_i{d} * in{j}_stride{d}" for d in range(rank)) or "offs * 0"
                body.append(f"x{j} = tl.load(in{j}_ptr + {offset}, mask=mask)")
                names[a.node] = f"x{j}"
            else:
                offset = " + ".join(f"i{d} * in{j}_stride{d}" for d in range(self.rank)) or "offs * 0"
                body.append(f"x{j} = tl.load(in{j}_ptr + {offset}, mask=mask)")
                names[a.node] = f"x{j}"
        helpers = set()
        for k, n in enumerate(self.group.nodes):
            var = f"{n.op.value}{k}"
            body.append(f"# {self.group.labels[k]}" if self.group.labels else "")
            lines = self._emit(n, var, names)
            helpers.update(h for h in HELPERS for line in lines if h + "(" in line)
            body += lines
            names[n] = var
        body.append(f"tl.store(out_ptr + offs, {names[self.out]}, mask=mask)")
        head = "\n".join(f"#   {line}" for line in self.group.labels)
        args = ",\n    ".join(ptrs + strides + sizes + ["BLOCK: tl.constexpr"])
        text = [
            f"# Pointwise kernel over {self.out.type}, computing:\n{head}",
            "import triton\nimport triton.language as tl\n",
            'INF = tl.constexpr(float("inf"))\nNAN = tl.constexpr(float("nan"))',
            *[HELPERS[h] for h in sorted(helpers)],
            f"\n@triton.jit\ndef {self.name}(\n    {args},\n):",
            *[f"    {line}" for line in body if line],
        ]
        return "\n".join(text) + "\n"

    def _rank_of(self, a: Access) -> int:
        return len(a.node.shape) if a in self.own_space else self.rank

    def _coordinates(self, prefix: str = "", rank: int | None = None) -> list[str]:
        """Lines splitting the flat index `offs` into coordinates `i0, i1, ...` (row-major)."""
        rank = self.rank if rank is None else rank
        if rank == 0:
            return []
        where = "the output" if not prefix else f"input {prefix[2:-1]}'s own shape"
        sizes = ", ".join(f"{prefix}size{d}" for d in range(rank))
        lines = [f"# coordinates of each element in {where} [{sizes}]", f"{prefix}rem = offs"]
        for d in reversed(range(1, rank)):
            lines += [f"{prefix}i{d} = {prefix}rem % {prefix}size{d}",
                      f"{prefix}rem = {prefix}rem // {prefix}size{d}"]
        lines.append(f"{prefix}i0 = {prefix}rem")
        return lines

    def _emit(self, n: Node, var: str, names: dict[Node, str]) -> list[str]:
        dt = n.dtype
        tl_dt = tl_dtype(dt)
        if n.op == K.CONST:
            return [f"{var} = tl.full([BLOCK], {literal(n.attrs.value, dt)}, {tl_dt})"]
        if n.op == K.IOTA:
            lead = self.rank - len(n.shape)
            coord = "offs * 0" if n.shape[n.attrs.axis] == 1 else f"i{lead + n.attrs.axis}"
            return [f"{var} = {cast(coord, DType.I32, dt)}"]
        if n.op == K.RAND:
            r = self.rands.index(n)
            index = " + ".join(f"i{d} * rand{r}_stride{d}" for d in range(self.rank)) or "offs * 0"
            return [
                f"bits{r}, _, _, _ = tl.philox({names[n.inputs[0]]}, ({index}).to(tl.uint32), "
                f"tl.full([BLOCK], {n.attrs.stream}, tl.uint32), 0, 0)",
                f"{var} = {cast(f'tl.uint_to_uniform_float(bits{r})', DType.F32, dt)}",
            ]
        if n.op in MOVEMENT:  # a copy: the value is the load, in the order the strides give
            return [f"{var} = {names[self.group.inputs[0].node]}"]
        src = n.inputs[0].dtype
        if n.op == K.CAST:
            return [f"{var} = {cast(names[n.inputs[0]], src, dt)}"]
        template = EXPR.get(n.op) or (FLOAT_EXPR[n.op] if src.is_float else "{a}")
        operands = [cast(names[i], i.dtype, compute_dtype(i.dtype)) if i.dtype in LOW_FLOATS else names[i]
                    for i in n.inputs]
        expr = template.format(**dict(zip("abc", operands)))
        if dt in LOW_FLOATS:  # computed in f32, rounded to the node's dtype
            return [f"{var} = {cast(f'({expr})', DType.F32, dt)}"]
        return [f"{var} = {_typed(expr, dt)}"]

    # --- launch --------------------------------------------------------------------------------------
    def prepare(self, env: dict[str, int]) -> Launch:
        shape = concrete(self.out.shape, env)
        args: list[ArgView] = []
        strides: list[int] = []
        own_sizes: list[int] = []
        for a in self.group.inputs:
            view, arg = meta_view(a, env)
            args.append(arg)
            if a in self.own_space:
                strides += view.stride()
                own_sizes += view.shape
            elif a not in self.seeds:
                strides += broadcast_strides(view.shape, view.stride(), shape)
        for n in self.rands:
            rshape = concrete(n.shape, env)
            strides += broadcast_strides(rshape, contiguous_strides(rshape), shape)
        n_el = math.prod(shape)
        return Launch((triton.cdiv(n_el, BLOCK),), tuple(args), (self.out,),
                      (*strides, *shape, *own_sizes, n_el), {"BLOCK": BLOCK})


def _typed(expr: str, dt: DType) -> str:
    """Keep a value in its node's dtype: sign's 1/0 literals are i32 whatever the operand is."""
    return f"({expr}).to({tl_dtype(dt)})" if "tl.where(" in expr and dt != DType.BOOL else expr
