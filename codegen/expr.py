"""Triton for the elementwise members of a group, over a tile of its iteration space.

Every template with elementwise work (pointwise kernels, fused reductions, matmul and conv2d epilogues)
emits its members through one `Emitter`. The template says how a coordinate of the iteration space is
written in its tile (`coord(d)`: `i0` in a flat pointwise block, `i1[None, :]` for a column of a row
block, `offs_m[:, None]` in a matmul tile) and the shape a constant takes (`tile`); the emitter writes
one line per node. Values of different shapes in one tile broadcast as in the IR: right-aligned.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from axon.ir import DType, Node, OpKind
from axon.ir.op_quant import per_group
from axon.ir.ops import MOVEMENT, QUANT
from .groups import CodegenError
from .ops_triton import EXPR, FLOAT_EXPR, FP8_TO_F32, HELPERS, LOW_FLOATS, cast, literal, tl_dtype
from .quant import quant_lines

K = OpKind


@dataclass
class Emitter:
    rank: int                       # axes of the iteration space
    coord: Callable[[int], str]     # axis -> its coordinate in the tile
    tile: str                       # the tile's shape, e.g. "[BLOCK]" (for constants)
    rands: list[Node]               # rand members: rand{r}_stride{d} arguments give their element index
    helpers: set[str]

    @classmethod
    def over(cls, rank: int, coord: Callable[[int], str], tile: str, members) -> Emitter:
        return cls(rank, coord, tile, [m for m in members if m.op == K.RAND], set())

    def index(self, strides: str, group: tuple[int, int] | None = None) -> str:
        """sum_d coord(d) * {strides}{d}: an element offset from per-axis strides; `group` (axis of the
        space, size) reads a per-group value: coordinate // size along that axis."""
        terms = [f"({self.coord(d)} // {group[1]}) * {strides}{d}" if group and d == group[0] else
                 f"{self.coord(d)} * {strides}{d}" for d in range(self.rank)]
        return " + ".join(terms) if terms else "0"

    def zeros(self) -> str:
        return f"tl.zeros({self.tile}, tl.int32)"

    def emit(self, n: Node, var: str, names: dict[Node, str]) -> list[str]:
        lines = self._emit(n, var, names)
        self.helpers.update(helpers_called(lines))
        return lines

    def _emit(self, n: Node, var: str, names: dict[Node, str]) -> list[str]:
        lines = self._value(n, var, names)
        if n.dtype == DType.BF16 and n.op not in MOVEMENT and n.op != K.CONST:
            # computed in f32 as `var_f32`, then rounded (round_bf16 repeats the value it rounds)
            assert lines[-1].startswith(f"{var} = "), lines[-1]
            lines[-1] = f"{var}_f32" + lines[-1][len(var):]
            lines.append(f"{var} = {cast(f'{var}_f32', DType.F32, DType.BF16)}")
        return lines

    def _value(self, n: Node, var: str, names: dict[Node, str]) -> list[str]:
        """The lines computing `n` as `var`; a bf16 value's last line computes it in f32."""
        dt = n.dtype
        if dt == DType.BF16 and n.op not in MOVEMENT and n.op != K.CONST:
            dt = DType.F32
        if n.op == K.CONST and dt.is_fp8:  # by its bits (as quantize's result would hold it)
            import torch
            bits = int(torch.tensor(float(n.attrs.value)).to(dt.torch).view(torch.uint8))
            return [f"{var} = tl.full({self.tile}, {bits}, tl.uint8).to({tl_dtype(dt)}, bitcast=True)"]
        if n.op == K.CONST:
            return [f"{var} = tl.full({self.tile}, {literal(n.attrs.value, dt)}, {tl_dtype(dt)})"]
        if n.op == K.IOTA:
            lead = self.rank - len(n.shape)
            coord = self.zeros() if n.shape[n.attrs.axis] == 1 else f"({self.coord(lead + n.attrs.axis)})"
            return [f"{var} = {cast(coord + ' + ' + self.zeros(), DType.I32, dt)}"]
        if n.op == K.RAND:
            r = self.rands.index(n)
            index = f"({self.index(f'rand{r}_stride')}) + {self.zeros()}"
            if len(n.inputs) == 2:  # the counter's offset (i64; the cast to uint32 wraps as Philox's)
                index = f"{index} + {names[n.inputs[1]]}"
            return [
                f"rand_index{r} = ({index}).to(tl.uint32)",
                f"bits{r}, _, _, _ = tl.philox({names[n.inputs[0]]}, rand_index{r}, "
                f"rand_index{r} * 0 + {n.attrs.stream}, rand_index{r} * 0, rand_index{r} * 0)",
                f"{var} = {cast(f'tl.uint_to_uniform_float(bits{r})', DType.F32, dt)}",
            ]
        if n.op in MOVEMENT:  # an alias: the element keeps its position in the iteration space
            return [f"{var} = {names[n.inputs[0]]}"]
        if n.op in QUANT:
            return self._quant(n, var, names)
        if dt.is_fp8 and n.op != K.CAST:  # (a cast to fp8 is refused by `cast`, with its own reason)
            raise CodegenError(f"no Triton code generation for '{n.op}' giving {dt}: fp8 values are made "
                               f"by 'quantize' only")
        src = n.inputs[0].dtype
        if n.op == K.CAST:
            return [f"{var} = {cast(*self._wide(names[n.inputs[0]], src), dt)}"]  # (bf16: to f32 here)
        template = EXPR.get(n.op) or (FLOAT_EXPR[n.op] if src.is_float else "{a}")
        operands = [self._wide(names[i], i.dtype)[0] for i in n.inputs]
        expr = template.format(**dict(zip("abc", operands)))
        if dt in LOW_FLOATS:  # computed in f32 (made so: sign's literals are i32), rounded to dt
            return [f"{var} = {cast(f'({typed(expr, DType.F32)})', DType.F32, dt)}"]
        return [f"{var} = {typed(expr, dt)}"]  # (bf16: typed as f32, see _emit)

    def _quant(self, n: Node, var: str, names: dict) -> list[str]:
        """quantize, dequantize, fake_quantize: operands in f32; a per-group scale and zero point are
        the template's per-group loads (`Access.group`), keyed (node, (axis, group))."""
        grouped = per_group(n)
        operands = []
        for k, i in enumerate(n.inputs):
            name = names.get((i, grouped)) if k and grouped else None
            if name is None:
                if k and grouped and i.op != K.CONST and i.shape[grouped[0]] != 1:
                    raise CodegenError(f"'{n.op}' in groups of {grouped[1]} reads its operand {i.op} "
                                       f"{i.type} per group: it must be stored, or a constant")
                name = names[i]
            operands.append(name if k == 2 or i.dtype.is_int else self._wide(name, i.dtype)[0])
        x, scale, *zp = operands
        return quant_lines(n, var, x, scale, zp[0] if zp else None)

    @staticmethod
    def _wide(name: str, dtype: DType) -> tuple[str, DType]:
        """An operand in its compute dtype: f16 and bf16 as f32 (bf16 through the `_to_f32` helper,
        which also passes on a template's f32 tile given under a bf16 node, as attention's scores), fp8
        widened by its bits."""
        if dtype.is_fp8:
            return f"{FP8_TO_F32[dtype]}({name})", DType.F32
        if dtype == DType.BF16:
            return f"_to_f32({name})", DType.F32
        return (cast(name, dtype, DType.F32), DType.F32) if dtype in LOW_FLOATS else (name, dtype)

    def helper_source(self) -> list[str]:
        """The helpers the lines call, and those they call in turn."""
        return helper_sources(self.helpers)


def helpers_called(lines: list[str]) -> set[str]:
    """The helpers (`HELPERS`) that `lines` call."""
    return {h for h in HELPERS for line in lines if _calls(h, line)}


def helper_sources(names) -> list[str]:
    """The source of helpers `names` and of those they call in turn, in a fixed order."""
    need, stack = set(), list(names)
    while stack:
        h = stack.pop()
        if h not in need:
            need.add(h)
            stack += [o for o in HELPERS if o != h and _calls(o, HELPERS[h])]
    return [HELPERS[h] for h in sorted(need)]


def _calls(helper: str, text: str) -> bool:
    return re.search(rf"\b{helper}\(", text) is not None  # (not _to_f32 in _e4m3_to_f32)


def typed(expr: str, dt: DType) -> str:
    """Keep a value in its node's dtype: sign's 1/0 literals are i32 whatever the operand is."""
    return f"({expr}).to({tl_dtype(dt)})" if "tl.where(" in expr and dt != DType.BOOL else expr


def broadcast_axes(shape, space) -> list[int]:
    """Axes of `space` along which a value of `shape` (right-aligned) is broadcast: a stored value of a
    smaller shape is written only where these coordinates are 0."""
    lead = len(space) - len(shape)
    return [lead + d for d, s in enumerate(shape) if s == 1 and space[lead + d] != 1] + list(range(lead))
