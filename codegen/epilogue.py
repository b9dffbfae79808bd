"""Epilogues: the elementwise ops a fusion plan attaches to a matmul or conv2d, applied to the output
tile in registers before it is stored (bias, activation, residual add, scaling, an optimizer update).

A template with an epilogue passes its tile's coordinates in the output's iteration space (`coord`),
the tile's value, and how it stores a whole-shaped output; the epilogue loads its extra operands through
broadcast strides, emits one line per node, and stores every output the group has (the template's own
result too, if another kernel reads it). A smaller output is written through its strides where its
broadcast coordinates are 0.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from axon.ir import Node
from axon.ir.shapes import concrete
from .expr import Emitter, broadcast_axes
from .groups import KernelGroup
from .launch import broadcast_strides, contiguous_strides, layout_strides, meta_view
from .ops_triton import full_tile


@dataclass
class Epilogue:
    group: KernelGroup
    node: Node           # the template's node (matmul, conv2d)
    operands: int        # how many of the group's inputs the template itself reads
    skip: tuple = ()     # members the template computes itself (a matmul's weight prologue)

    def __post_init__(self):
        self.space = tuple(self.node.shape)
        self.rank = len(self.space)
        self.extra = list(self.group.inputs[self.operands:])
        self.nodes = [n for n in self.group.nodes if n is not self.node and n not in self.skip]
        self.seeds = [a for a in self.extra if any(m.op.value == "rand" and a.node in m.inputs
                                                   for m in self.nodes)]
        self.rands = [m for m in self.nodes if m.op.value == "rand"]
        self.layouts = [o for o in self.group.outputs if o.op.value in ("permute", "reshape")]
        self.partial = {o: broadcast_axes(o.shape, self.space) for o in self.group.outputs
                        if o not in self.layouts and (len(o.shape) != self.rank
                                                      or broadcast_axes(o.shape, self.space))}
        self.partial.update({o: [] for o in self.layouts})

    @property
    def values(self) -> int:
        """About how many tile-sized values a program holds at once: the accumulator, each operand the
        epilogue loads, each output, and its temporaries (every other node, as compilers overlap them)."""
        return 1 + len(self.extra) + len(self.group.outputs) + len(self.nodes) // 2

    @property
    def trivial(self) -> bool:
        """Nothing to fuse: the template stores its own result only."""
        return not self.nodes and self.group.outputs == (self.node,)

    def pointers(self) -> list[str]:
        return ([f"in{j}_ptr" for j in range(len(self.extra))]
                + [f"out{k}_ptr" for k in range(len(self.group.outputs))])

    def strides(self) -> list[str]:
        out = [f"in{j}_stride{d}" for j, a in enumerate(self.extra) if a not in self.seeds
               for d in range(self.rank)]
        out += [f"rand{r}_stride{d}" for r in range(len(self.rands)) for d in range(self.rank)]
        out += [f"out{k}_stride{d}" for k, o in enumerate(self.group.outputs) if o in self.partial
                for d in range(self.rank)]
        return out

    def lines(self, value: str, coord: Callable[[int], str], tile: str, mask: str,
              store_at: Callable[[str], str]) -> tuple[list[str], Emitter]:
        """The epilogue's Triton: `value` is the template's result (in its dtype) over the tile, `mask`
        the tile's valid elements, `store_at(ptr)` the address of a whole-shaped output's elements."""
        em = Emitter.over(self.rank, coord, tile, self.nodes)
        names = {self.node: value}
        body = [f"# the epilogue, over the {self.node.op} tile", f"mask = {mask}"]
        for j, a in enumerate(self.extra):
            if a in self.seeds:
                body.append(f"seed{j} = tl.load(in{j}_ptr)  # a scalar")
                names[a.node] = f"seed{j}"
            else:
                offset = em.index(f"in{j}_stride", a.space_group(self.rank))
                body.append(f"x{j} = tl.load(in{j}_ptr + {offset}, mask=mask, other=0)")
                names[a.key] = f"x{j}"
        labels = dict(zip(self.group.nodes, self.group.labels))
        for k, n in enumerate(self.nodes):
            var = f"{n.op.value}{k}"
            body.append(f"# {labels[n]}" if n in labels else "")
            body += em.emit(n, var, names)
            names[n] = var
        for k, o in enumerate(self.group.outputs):
            v = full_tile(names[o], tile, o.dtype)
            if o in self.partial:
                where = " & ".join([f"({mask})"] + [f"({coord(d)} == 0)" for d in self.partial[o]])
                body.append(f"tl.store(out{k}_ptr + {em.index(f'out{k}_stride')}, {v}, mask={where})")
            else:
                body.append(f"tl.store({store_at(f'out{k}_ptr')}, {v}, mask=mask)")
        return [line for line in body if line], em

    def prepare(self, env) -> tuple[list, list[list[int]]]:
        """The extra inputs' argument views, and the stride arguments (one list per operand, output or
        rand over the output's space), in `strides()` order."""
        shape = concrete(self.space, env)
        args, strides = [], []
        for a in self.extra:
            view, arg = meta_view(a, env)
            args.append(arg)
            if a not in self.seeds:
                strides.append(broadcast_strides(view.shape, view.stride(), shape, a.group))
        for n in self.rands:
            rshape = concrete(n.shape, env)
            strides.append(broadcast_strides(rshape, contiguous_strides(rshape), shape))
        for o in self.group.outputs:
            if o in self.layouts:
                strides.append(layout_strides(o, env))
            elif o in self.partial:
                oshape = concrete(o.shape, env)
                strides.append(broadcast_strides(oshape, contiguous_strides(oshape), shape))
        return args, strides
