"""A group input's view at launch time: the buffer with its movement ops applied as torch views."""
from __future__ import annotations

import torch

from axon.ir import Node, OpKind
from axon.ir.shapes import concrete
from .groups import Access

K = OpKind


def view_of(access: Access, values: dict[Node, torch.Tensor], env: dict[str, int]) -> torch.Tensor:
    """`access.buffer`'s tensor seen through `access.view`, without copying (asserted)."""
    t = values[access.buffer]
    for m in access.view:
        a = m.attrs
        if m.op == K.PERMUTE:
            t = t.permute(a.perm)
        elif m.op == K.EXPAND:
            t = t.expand(concrete(a.shape, env))
        elif m.op == K.SLICE:
            index = [slice(None)] * t.dim()
            for axis, start, stop, step in zip(a.axes, a.starts, a.stops, a.steps):
                index[axis] = slice(start, stop, step)
            t = t[tuple(index)]
        else:
            assert m.op == K.RESHAPE
            t = t.view(concrete(a.shape, env))  # groups() folds a reshape only of contiguous values
    return t
