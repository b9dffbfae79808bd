"""Block-sparse matmul: `bsmatmul(a, b, index, index_t, tiles)` is `a @ b` for a weight `b` pruned in
square blocks, computed over b's nonzero blocks only.

    bsmatmul(a: f[..., M, K], b: f[K, N], index: i32[NB, KB + 1], index_t: i32[KB, NB + 1],
             tiles: i64[1]) -> f[..., M, N]
    block B (attribute): KB = ceil(K / B), NB = ceil(N / B)

`index` lists b's nonzero blocks by block column: row j is [count, k-block, k-block, ...] (the rest -1),
so the kernel of output column block j multiplies only those `count` blocks. `index_t` lists the same
blocks by block row (b's transpose by block column), which is what the gradient with respect to `a`
(g @ b^T, another bsmatmul) walks. Both are built on the host from b's nonzero blocks, once, when the
mask changes (`passes/block_sparse.block_index`). `tiles` is a counter, not an operand of the value: each
kernel program adds the block products it executed to it (an atomic add), so the saving is measured,
not computed; the reference evaluator leaves it alone.

The value is `a @ b`: the blocks the index leaves out must be zero in `b` (the pass that makes a
bsmatmul, `passes/block_sparse.py`, takes the index from b's own zeros, and a pruned run's masks keep
them zero). The reference evaluator computes `a @ b` densely, so a nonzero block the index omits is a
difference the kernel tests would see. The gradients: a's is a bsmatmul of g by b^T over `index_t`,
b's is the dense a^T @ g (a pruned run masks it); the indices have none.
"""
from __future__ import annotations

import math

import torch

from .errors import IRDTypeError, IRShapeError
from .dtypes import DType
from .ops import BlockAttrs, OpKind, register, register_grad
from .shapes import TensorType, format_dim

K = OpKind
BLOCKS = (16, 32, 64)  # tl.dot's smallest tile is 16; larger blocks skip less


def blocks(size: int, block: int) -> int:
    return -(-size // block)


def _infer(attrs: BlockAttrs, ts: list[TensorType]) -> TensorType:
    a, b, index, index_t, tiles = ts
    if attrs.block not in BLOCKS:
        raise IRShapeError(f"'bsmatmul' takes a block of {', '.join(map(str, BLOCKS))}, got {attrs.block}")
    if a.rank < 2 or b.rank != 2:
        raise IRShapeError(f"'bsmatmul' takes a of rank >= 2 and a weight b of rank 2, got {a} and {b}")
    if not a.dtype.is_float or a.dtype != b.dtype:
        raise IRDTypeError(f"'bsmatmul' multiplies floats of one dtype, got {a.dtype} and {b.dtype}")
    if index.dtype != DType.I32 or index_t.dtype != DType.I32:
        raise IRDTypeError(f"'bsmatmul' block indices are i32, got {index.dtype} and {index_t.dtype}")
    if tiles.dtype != DType.I64 or tuple(tiles.shape) != (1,):
        raise IRDTypeError(f"'bsmatmul' counts tile products in an i64[1], got {tiles}")
    if a.shape[-1] != b.shape[-2]:
        raise IRShapeError(f"'bsmatmul' inner dimensions differ: {a} @ {b} "
                           f"({format_dim(a.shape[-1])} vs {format_dim(b.shape[-2])})")
    k, n = b.shape
    if not isinstance(k, int) or not isinstance(n, int):
        raise IRShapeError(f"'bsmatmul' takes a weight of static shape, got {b}")
    kb, nb = blocks(k, attrs.block), blocks(n, attrs.block)
    if tuple(index.shape) != (nb, kb + 1) or tuple(index_t.shape) != (kb, nb + 1):
        raise IRShapeError(f"'bsmatmul' of a {k}x{n} weight in blocks of {attrs.block} takes indices of "
                           f"shapes [{nb}, {kb + 1}] and [{kb}, {nb + 1}], got {index} and {index_t}")
    return TensorType(a.dtype, tuple(a.shape[:-1]) + (n,))


def _ref(attrs, xs, ctx):
    return torch.matmul(xs[0], xs[1])


def _grad(b, node, ins, out, g):
    x, w, index, index_t, tiles = ins
    gx = b.bsmatmul(g, b.transpose(w), index_t, index, tiles, node.attrs.block)
    rows = math.prod(x.shape[:-1]) if all(isinstance(d, int) for d in x.shape[:-1]) else -1
    xr = b.reshape(x, (rows, x.shape[-1]))
    gr = b.reshape(g, (rows, g.shape[-1]))
    return [gx, b.matmul(b.transpose(xr), gr), None, None, None]


register(K.BSMATMUL, BlockAttrs, 5, _infer, _ref)
register_grad(K.BSMATMUL, _grad)
