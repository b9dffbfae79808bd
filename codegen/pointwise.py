"""Pointwise kernels: a flat 1-D loop over the iteration space's elements, each input read through its
own (broadcast) strides, one line of Triton per IR node, any number of outputs.

The launcher turns every input's view (movement ops plus broadcasting to the space) into strides, so a
permuted, sliced or expanded input costs index arithmetic, never a copy. An output of the space's shape
is written at the flat index; a smaller one (a per-row value the group also computes) is written through
its own strides only where its broadcast coordinates are 0, so each element is written once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import triton

from axon.ir import OpKind
from axon.ir.shapes import concrete
from .expr import Emitter, broadcast_axes
from .groups import Access, KernelGroup
from .launch import (ArgView, Launch, broadcast_strides, contiguous_strides, fitted, group_values,
                     layout_strides, meta_view, warps)
from .ops_triton import full_tile, program_id
from .target import Target

K = OpKind
BLOCK = 1024  # elements per program


@dataclass
class PointwiseKernel:
    group: KernelGroup
    name: str = "pointwise_kernel"
    wide: bool = False  # int64 indexing
    target: Target = Target()

    def __post_init__(self):
        self.outs = self.group.outputs
        self.space = tuple(self.group.space) or tuple(self.outs[0].shape)
        self.rank = len(self.space)
        self.seeds = [a for a in self.group.inputs if any(  # rand's scalar operands: seed, offset
            m.op == K.RAND and a.node in m.inputs for m in self.group.nodes)]
        self.rands = [m for m in self.group.nodes if m.op == K.RAND]
        # Inputs indexed over their own shape rather than the space: the operand of a reshape copy.
        self.own_space = [a for a in self.group.inputs if self.group.nodes[0].op == K.RESHAPE
                          and len(self.group.nodes) == 1 and a.node is self.group.nodes[0].inputs[0]]
        # Outputs smaller than the space: written through strides, where broadcast coordinates are 0.
        # Outputs in a copy's layout (a permute/reshape chain of a member): written through strides.
        self.layouts = [o for o in self.outs if o.op in (K.PERMUTE, K.RESHAPE) and len(self.group.nodes) > 1]
        self.partial = {o: broadcast_axes(o.shape, self.space) for o in self.outs if o not in self.layouts
                        and (len(o.shape) != self.rank or broadcast_axes(o.shape, self.space))}
        self.partial.update({o: [] for o in self.layouts})

    # --- source --------------------------------------------------------------------------------------
    def source(self) -> str:
        ins = self.group.inputs
        ptrs = [f"in{j}_ptr" for j in range(len(ins))] + [f"out{k}_ptr" for k in range(len(self.outs))]
        strides = [f"in{j}_stride{d}" for j, a in enumerate(ins) if a not in self.seeds
                   for d in range(self._rank_of(a))]
        strides += [f"rand{r}_stride{d}" for r in range(len(self.rands)) for d in range(self.rank)]
        strides += [f"out{k}_stride{d}" for k, o in enumerate(self.outs) if o in self.partial
                    for d in range(self.rank)]
        sizes = [f"size{d}" for d in range(self.rank)]
        sizes += [f"in{j}_size{d}" for j, a in enumerate(ins) if a in self.own_space
                  for d in range(len(a.node.shape))]
        sizes.append("n_elements")
        em = Emitter.over(self.rank, lambda d: f"i{d}", "[BLOCK]", self.group.nodes)
        body = [
            f"pid = {program_id(0, self.wide)}",
            "offs = pid * BLOCK + tl.arange(0, BLOCK)",
            "mask = offs < n_elements",
        ]
        body += self._coordinates()
        names: dict = {}
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
                offset = em.index(f"in{j}_stride", a.space_group(self.rank)) if self.rank else "offs * 0"
                body.append(f"x{j} = tl.load(in{j}_ptr + {offset}, mask=mask)")
                names[a.key] = f"x{j}"
        for k, n in enumerate(self.group.nodes):
            var = f"{n.op.value}{k}"
            body.append(f"# {self.group.labels[k]}" if self.group.labels else "")
            if n.op in (K.RESHAPE, K.PERMUTE, K.EXPAND, K.SLICE) and n.inputs[0] not in names:
                body.append(f"{var} = {names[ins[0].node]}")  # a copy: the load in the strides' order
            else:
                body += em.emit(n, var, names)
            names[n] = var
        for k, o in enumerate(self.outs):
            value = full_tile(names[o], "[BLOCK]", o.dtype) if o in self.partial else names[o]
            if o in self.partial:
                where = " & ".join(["mask"] + [f"(i{d} == 0)" for d in self.partial[o]])
                body.append(f"tl.store(out{k}_ptr + {em.index(f'out{k}_stride') if self.rank else '0'}, "
                            f"{value}, mask={where})")
            else:
                body.append(f"tl.store(out{k}_ptr + offs, {value}, mask=mask)")
        head = "\n".join(f"#   {line}" for line in self.group.labels)
        args = ",\n    ".join(ptrs + strides + sizes + ["BLOCK: tl.constexpr"])
        text = [
            f"# Pointwise kernel over [{', '.join(map(str, self.space))}], computing:\n{head}",
            "import triton\nimport triton.language as tl\n",
            *em.helper_source(),
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
        where = "the iteration space" if not prefix else f"input {prefix[2:-1]}'s own shape"
        sizes = ", ".join(f"{prefix}size{d}" for d in range(rank))
        lines = [f"# coordinates of each element in {where} [{sizes}]", f"{prefix}rem = offs"]
        for d in reversed(range(1, rank)):
            lines += [f"{prefix}i{d} = {prefix}rem % {prefix}size{d}",
                      f"{prefix}rem = {prefix}rem // {prefix}size{d}"]
        lines.append(f"{prefix}i0 = {prefix}rem")
        return lines

    # --- launch --------------------------------------------------------------------------------------
    def prepare(self, env: dict[str, int]) -> Launch:
        shape = concrete(self.space, env)
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
                strides += broadcast_strides(view.shape, view.stride(), shape, a.group)
        for n in self.rands:
            rshape = concrete(n.shape, env)
            strides += broadcast_strides(rshape, contiguous_strides(rshape), shape)
        for o in self.outs:
            if o in self.layouts:
                strides += layout_strides(o, env)
            elif o in self.partial:
                oshape = concrete(o.shape, env)
                strides += broadcast_strides(oshape, contiguous_strides(oshape), shape)
        n_el = math.prod(shape)
        values = group_values(self.group)  # a long fused chain (optimizer updates) holds many blocks
        block = BLOCK // fitted(BLOCK, values, self.target)
        return Launch((triton.cdiv(n_el, block),), tuple(args), tuple(self.outs),
                      (*strides, *shape, *own_sizes, n_el),
                      {"BLOCK": block, **warps(self.target, block, values)})
