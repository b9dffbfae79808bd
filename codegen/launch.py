"""What one kernel launch needs, worked out once per set of concrete sizes (`prepare`), so running a
launch is only: take the tensors, make the prepared views, call the kernel.

Every buffer a kernel reads or writes is contiguous (the runtime allocates them so, and makes inputs so),
so a view of a buffer — the movement ops an `Access` folds — is fixed by the buffer's shape alone: its
sizes, strides and offset are computed here on `meta` tensors, never on data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import triton

from axon.ir import Node
from axon.ir.shapes import concrete
from .groups import Access
from .views import view_of


@dataclass(frozen=True)
class ArgView:
    """A tensor argument: buffer `node`, seen with `size`/`stride`/`offset` (None: the buffer as it is)."""

    node: Node
    size: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None
    offset: int = 0

    def of(self, t: torch.Tensor) -> torch.Tensor:
        if self.size is None:
            return t
        return t.as_strided(self.size, self.stride, t.storage_offset() + self.offset)


@dataclass(frozen=True)
class Launch:
    """One kernel call at fixed sizes: `fn[grid](*inputs, *outputs, *scalars, **meta)`.

    `meta` holds the block sizes (constexpr arguments) and, on a GPU, the launch options (`num_warps`,
    `num_stages`). `configs` are the alternatives a tuner may pick from (same grid; `meta` is the
    first), empty where the kernel has one way to run."""

    grid: tuple[int, ...]
    inputs: tuple[ArgView, ...]
    outputs: tuple[Node, ...]
    scalars: tuple[int, ...]
    meta: dict = field(default_factory=dict)
    configs: tuple[dict, ...] = ()

    def run(self, fn, values: dict[Node, torch.Tensor]) -> None:
        if not math.prod(self.grid):
            return
        args = [v.of(values[v.node]) for v in self.inputs]
        fn[self.grid](*args, *(values[o] for o in self.outputs), *self.scalars, **self.meta)


VALUE_ELEMENTS_PER_THREAD = 64   # tile elements x values a thread holds at the warps chosen
MAX_VALUE_ELEMENTS = 16 * 32 * 128  # ... at most: 16 warps with about 128 registers for values each


def group_values(group) -> int:
    """About how many tile-sized values a kernel of `group` holds at once: what it loads, what it stores,
    and its temporaries (half its nodes: the compiler overlaps the rest)."""
    return len(group.inputs) + len(group.outputs) + (len(group.nodes) + 1) // 2


def fitted(tile_elements: int, values: int, target) -> int:
    """The factor (a power of two) by which a tile of `tile_elements` must shrink on a GPU for `values`
    of it to fit the registers of 16 warps (1 in the interpreter, which has no registers to run out of)."""
    if target.interpreted:
        return 1
    factor = 1
    while values * tile_elements // factor > MAX_VALUE_ELEMENTS and tile_elements // factor > 32:
        factor *= 2
    return factor


def warps(target, tile_elements: int, values: int = 1) -> dict:
    """Launch options of a kernel whose programs hold `values` tiles of `tile_elements` elements: on a
    GPU, enough warps for about VALUE_ELEMENTS_PER_THREAD value-elements per thread (4 to 16 warps);
    nothing in the interpreter. FMA contraction is asked for explicitly (Triton's default, which 3.9
    warns will change)."""
    if target.interpreted:
        return {}
    wanted = triton.next_power_of_2(max(1, values * tile_elements // (32 * VALUE_ELEMENTS_PER_THREAD)))
    return {"num_warps": min(16, max(4, wanted)), "enable_fp_fusion": True}


def meta_buffer(node: Node, env) -> torch.Tensor:
    """A data-less contiguous tensor standing for `node`'s buffer."""
    return torch.empty(concrete(node.shape, env), dtype=node.dtype.torch, device="meta")


def meta_view(access: Access, env) -> tuple[torch.Tensor, ArgView]:
    """The view `access` makes of its buffer, as a meta tensor (for sizes and strides) and an ArgView."""
    if not access.view:
        t = meta_buffer(access.buffer, env)
        return t, ArgView(access.buffer)
    t = view_of(access, {access.buffer: meta_buffer(access.buffer, env)}, env)
    return t, ArgView(access.buffer, tuple(t.shape), tuple(t.stride()), t.storage_offset())


def contiguous_strides(shape) -> tuple[int, ...]:
    out, step = [], 1
    for size in reversed(shape):
        out.append(step)
        step *= size
    return tuple(reversed(out))


def broadcast_strides(vshape, vstride, shape, group: tuple[int, int] | None = None) -> list[int]:
    """Strides over `shape` of a value of shape `vshape` broadcast into it (0 on stretched axes). With
    `group` = (axis, size) the value is read per group along its `axis` (`Access.group`): there it is
    `size` times shorter and keeps its stride (the kernel divides the coordinate)."""
    from .groups import CodegenError

    lead = len(shape) - len(vshape)
    if lead < 0:
        raise CodegenError(f"cannot broadcast {list(vshape)} to {list(shape)}")
    out = [0] * lead
    for d, (size, stride) in enumerate(zip(vshape, vstride)):
        if group is not None and d == group[0]:
            if size * group[1] != shape[lead + d]:
                raise CodegenError(f"a per-group value {list(vshape)} (groups of {group[1]} on axis {d}) "
                                   f"does not fit {list(shape)}")
            out.append(stride)
            continue
        if size not in (1, shape[lead + d]):
            raise CodegenError(f"cannot broadcast {list(vshape)} to {list(shape)}")
        out.append(0 if size == 1 and shape[lead + d] != 1 else stride)
    return out


def layout_strides(node: Node, env) -> list[int]:
    """Where a kernel writes the elements of `node`, a chain of permutes then reshapes of a value it
    computes over its whole space: strides over that space into `node`'s contiguous buffer (the copy's
    layout, inverted on a meta tensor: undo the reshapes, which are views of a contiguous buffer, then
    the permutes)."""
    t = meta_buffer(node, env)
    v = node
    while v.op.value in ("permute", "reshape"):
        src = concrete(v.inputs[0].shape, env)
        if v.op.value == "reshape":
            t = t.view(src)
        else:
            inverse = [0] * len(v.attrs.perm)
            for d, p in enumerate(v.attrs.perm):
                inverse[p] = d
            t = t.permute(inverse)
        v = v.inputs[0]
    return list(t.stride())
