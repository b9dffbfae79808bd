"""Indexing and layout kernels (gather, take, pad, concat): a flat 1-D loop over the output's elements,
each element's coordinates turned into the address of the input element it copies.

Like pointwise kernels, every input is read through its own strides, so a permuted, sliced or expanded
operand (or index) costs index arithmetic, never a copy.

- gather (take_along_axis): the index at the output's coordinates replaces the coordinate along `axis`.
- take (index_select, embedding lookup): the output's coordinates are x's, with the index's own coordinates
  standing in for axis `axis`.
- pad: x is loaded where the output's coordinates, shifted back by the padding before each axis, fall inside
  x; the pad value (held in x's dtype) everywhere else.
- concat: input k holds the range [start_k, start_k+1) along `axis`; one masked load per input, each masked
  to its own range. The starts are launch scalars, so sizes along the axis may be symbolic.
- pack_int4: output byte i along the last axis holds x's elements 2i (low nibble) and 2i+1 (high nibble);
  unpack_int4: output element j is nibble j % 2 of byte j // 2, sign-extended for i8 (`ir/op_quant.py`).

Out-of-range indices: the reference evaluator raises an error for an index >= the axis size or < 0
(take: < -size; a negative index counts from the end, as in torch.take), and the runtime checks index
inputs on the host before a launch. A kernel never reads out of bounds for one:
the load is masked off and the element is NaN for float outputs, 0 (False) for integer and bool outputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import triton

from axon.ir import DType, OpKind
from axon.ir.shapes import concrete
from .groups import CodegenError, KernelGroup
from .launch import Launch, meta_view, warps
from .ops_triton import NAN, literal, program_id, tl_dtype
from .target import Target

K = OpKind
BLOCK = 1024  # elements per program
OPS = (K.GATHER, K.TAKE, K.PAD, K.CONCAT, K.PACK_INT4, K.UNPACK_INT4)


@dataclass
class IndexKernel:
    group: KernelGroup
    name: str = "index_kernel"
    wide: bool = False  # int64 indexing
    target: Target = Target()

    def __post_init__(self):
        (self.node,) = self.group.nodes
        if self.node.op not in OPS:
            raise CodegenError(f"the index kernel computes {', '.join(map(str, OPS))}, not '{self.node.op}'")
        self.rank = len(self.node.shape)
        self.ranks = [len(a.node.shape) for a in self.group.inputs]
        self.index_t = "tl.int64" if self.wide else "tl.int32"

    # --- source --------------------------------------------------------------------------------------
    def source(self) -> str:
        op = self.node.op
        emit = {K.GATHER: self._gather, K.TAKE: self._take, K.PAD: self._pad, K.CONCAT: self._concat,
                K.PACK_INT4: self._pack, K.UNPACK_INT4: self._unpack}[op]
        extra_sizes, steps = emit()
        ptrs = [f"in{j}_ptr" for j in range(len(self.group.inputs))] + ["out_ptr"]
        strides = [f"in{j}_stride{d}" for j, rank in enumerate(self.ranks) for d in range(rank)]
        sizes = [f"size{d}" for d in range(self.rank)] + extra_sizes + ["n_elements"]
        body = [
            f"pid = {program_id(0, self.wide)}",
            "offs = pid * BLOCK + tl.arange(0, BLOCK)",
            "mask = offs < n_elements",
            *_coordinates(self.rank),
            f"# {self.group.labels[0]}" if self.group.labels else "",
            *steps,
            "tl.store(out_ptr + offs, out, mask=mask)",
        ]
        head = "\n".join(f"#   {line}" for line in self.group.labels)
        args = ",\n    ".join(ptrs + strides + sizes + ["BLOCK: tl.constexpr"])
        return "\n".join([
            f"# Index kernel ({op}) over {self.node.type}, computing:\n{head}",
            "import triton\nimport triton.language as tl\n",
                f"@triton.jit\ndef {self.name}(\n    {args},\n):",
            *[f"    {line}" for line in body if line],
        ]) + "\n"

    def _missing(self) -> str:
        """What an out-of-range index reads: NaN for floats, 0 (False) otherwise."""
        return NAN if self.node.dtype.is_float else "0"

    def _load_index(self, coords: list[str], axis: int) -> list[str]:
        """Lines loading the index (input 1) at `coords`, with a mask of the indices inside x's axis
        (take counts a negative index from the end, as torch.take; gather does not)."""
        offset = _offset("in1", coords)
        wrap = [f"index += tl.where(index < 0, in0_size{axis}, 0)  # a negative index counts from the end"]
        return [
            f"index = tl.load(in1_ptr + {offset}, mask=mask)",
            *(wrap if self.node.op == K.TAKE and self.group.inputs[1].node.dtype != DType.U8 else []),
            f"in_range = (index >= 0) & (index < in0_size{axis})  # outside: masked off, never read",
            f"index = tl.where(in_range, index, 0).to({self.index_t})",
        ]

    def _load_x(self, coords: list[str]) -> str:
        return (f"out = tl.load(in0_ptr + {_offset('in0', coords)}, mask=mask & in_range, "
                f"other={self._missing()})")

    def _gather(self) -> tuple[list[str], list[str]]:
        axis = self.node.attrs.axis
        coords = [f"i{d}" for d in range(self.rank)]
        x_coords = ["index" if d == axis else c for d, c in enumerate(coords)]
        return [f"in0_size{axis}"], [
            f"# the index at each output element picks x's coordinate along axis {axis}",
            *self._load_index(coords, axis),
            self._load_x(x_coords),
        ]

    def _take(self) -> tuple[list[str], list[str]]:
        axis, q = self.node.attrs.axis, self.ranks[1]
        index_coords = [f"i{axis + e}" for e in range(q)]  # the index's axes sit where x's axis was
        x_coords = [f"i{d}" for d in range(axis)] + ["index"]
        x_coords += [f"i{d - 1 + q}" for d in range(axis + 1, self.ranks[0])]
        where = f"output axes {axis}..{axis + q - 1} are the index's" if q else "a scalar index"
        return [f"in0_size{axis}"], [
            f"# {where}; its value is x's coordinate on axis {axis}",
            *self._load_index(index_coords, axis),
            self._load_x(x_coords),
        ]

    def _pad(self) -> tuple[list[str], list[str]]:
        pads = self.node.attrs.pads
        x_coords, inside, sizes = [], [], []
        for d, (lo, hi) in enumerate(pads):
            x_coords.append(f"(i{d} - {lo})" if lo else f"i{d}")
            if lo:
                inside.append(f"(i{d} >= {lo})")
            if hi:
                inside.append(f"(i{d} < {lo} + in0_size{d})" if lo else f"(i{d} < in0_size{d})")
                sizes.append(f"in0_size{d}")
        value = literal(self.node.attrs.value, self.node.dtype)
        return sizes, [
            "# x's coordinates are the output's shifted back by the padding before each axis",
            f"inside = {' & '.join(inside) or 'mask'}",
            f"x = tl.load(in0_ptr + {_offset('in0', x_coords)}, mask=mask & inside)",
            f"out = tl.where(inside, x, tl.full([BLOCK], {value}, {tl_dtype(self.node.dtype)}))",
        ]

    def _concat(self) -> tuple[list[str], list[str]]:
        axis, n = self.node.attrs.axis, len(self.group.inputs)
        lines = [f"# input k holds the output's range [start<k>, start<k+1>) along axis {axis} "
                 f"(start0 = 0, the last ends at size{axis})"]
        for k in range(n):
            bounds = [f"(i{axis} >= start{k})"] if k else []
            bounds += [f"(i{axis} < start{k + 1})"] if k < n - 1 else []
            coords = [f"i{d}" for d in range(self.rank)]
            if k:
                coords[axis] = f"(i{axis} - start{k})"
            load = f"tl.load(in{k}_ptr + {_offset(f'in{k}', coords)}, mask=in{k}_mask)"
            lines.append(f"in{k}_mask = {' & '.join(['mask'] + bounds)}")
            if k:
                lines += [f"x{k} = {load}", f"out = tl.where(in{k}_mask, x{k}, out)"]
            else:
                lines.append(f"out = {load}")
        return [f"start{k}" for k in range(1, n)], lines

    def _pack(self) -> tuple[list[str], list[str]]:
        last = self.rank - 1
        coords = [f"i{d}" for d in range(last)]
        pair = [_offset("in0", coords + [f"(2 * i{last} + {k})"]) for k in (0, 1)]
        return [], [
            "# x's elements 2i (low nibble) and 2i + 1 (high nibble) along the last axis, low 4 bits each",
            f"lo = tl.load(in0_ptr + {pair[0]}, mask=mask).to(tl.int32) & 15",
            f"hi = tl.load(in0_ptr + {pair[1]}, mask=mask).to(tl.int32) & 15",
            "out = (lo | (hi << 4)).to(tl.uint8)",
        ]

    def _unpack(self) -> tuple[list[str], list[str]]:
        last = self.rank - 1
        coords = [f"i{d}" for d in range(last)] + [f"(i{last} // 2)"]
        signed = ["nibble = (nibble ^ 8) - 8  # sign-extended"] if self.node.dtype == DType.I8 else []
        return [], [
            "# nibble i % 2 (low first) of byte i // 2 along the last axis",
            f"byte = tl.load(in0_ptr + {_offset('in0', coords)}, mask=mask).to(tl.int32)",
            f"nibble = tl.where(i{last} % 2 == 0, byte & 15, byte >> 4)",
            *signed,
            f"out = nibble.to({tl_dtype(self.node.dtype)})",
        ]

    # --- launch --------------------------------------------------------------------------------------
    def prepare(self, env: dict[str, int]) -> Launch:
        shape = concrete(self.node.shape, env)
        views = [meta_view(a, env) for a in self.group.inputs]
        strides = [s for view, _ in views for s in view.stride()]
        x_shape = tuple(views[0][0].shape)
        op, attrs = self.node.op, self.node.attrs
        if op in (K.GATHER, K.TAKE):
            extra = [x_shape[attrs.axis]]
        elif op == K.PAD:
            extra = [x_shape[d] for d, (_, hi) in enumerate(attrs.pads) if hi]
        elif op in (K.PACK_INT4, K.UNPACK_INT4):
            extra = []
        else:  # concat: where each input after the first starts along the axis
            extra = [0]
            for view, _ in views[:-1]:
                extra.append(extra[-1] + view.shape[attrs.axis])
            extra = extra[1:]
        n_el = math.prod(shape)
        return Launch((triton.cdiv(n_el, BLOCK),), tuple(arg for _, arg in views), (self.node,),
                      (*strides, *shape, *extra, n_el), {"BLOCK": BLOCK, **warps(self.target, BLOCK)})


def _offset(prefix: str, coords: list[str]) -> str:
    """The address offset of `coords` through the strides of input `prefix` ("offs * 0" at rank 0)."""
    return " + ".join(f"{c} * {prefix}_stride{d}" for d, c in enumerate(coords)) or "offs * 0"


def _coordinates(rank: int) -> list[str]:
    """Lines splitting the flat index `offs` into output coordinates `i0, i1, ...` (row-major)."""
    if rank == 0:
        return []
    sizes = ", ".join(f"size{d}" for d in range(rank))
    lines = [f"# coordinates of each element in the output [{sizes}]", "rem = offs"]
    for d in reversed(range(1, rank)):
        lines += [f"i{d} = rem % size{d}", f"rem = rem // size{d}"]
    lines.append("i0 = rem")
    return lines
