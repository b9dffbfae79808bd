"""The `block_sparse` pass: matmuls by weights pruned in square blocks become `bsmatmul`s, which skip the
zero blocks (ir/op_bsmatmul.py, the kernel in codegen/matmul.py).

    block_sparse{block=32, layers=h.w|block.*.up.w}

For each weight named (a parameter read directly as a matmul's right operand, [K, N], and nowhere else),
`x @ w` becomes `bsmatmul(x, w, w.blocks, w.blocks_t, w.tiles)`: two new i32 parameters holding the
nonzero blocks by block column and by block row, and an i64 counter of the block products executed. The
indices start as `all_blocks()` (every block: the dense product, so a model whose indices were never
filled computes the right numbers, only slower); `block_index(w)` gives the ones that skip w's zero
blocks, computed on the host when the weights (or the masks) change.

`block_index`, `block_mask` (the blocks of least norm removed) and `nm_mask` (N:M, 2:4 as sparse tensor
cores want it) are here too, next to the pass that consumes their results.
"""
from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import torch

from axon.ir import DType, Graph, GraphBuilder, Init, OpKind, PassError
from axon.ir.op_bsmatmul import BLOCKS, blocks
from axon.ir.rewrite import rebuild
from .manager import register_pass

K = OpKind
INDEX, INDEX_T, TILES = ".blocks", ".blocks_t", ".tiles"


def index_names(weight: str) -> tuple[str, str, str]:
    """The parameters a block-sparse weight brings: its block index, the transposed one, its counter."""
    return weight + INDEX, weight + INDEX_T, weight + TILES


def block_index(w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, index_t) of a [K, N] weight's nonzero blocks: row j of `index` is [count, k-blocks...] of
    block column j, row i of `index_t` the same of block row i (the rest -1), i32."""
    k, n = w.shape
    kb, nb = blocks(k, block), blocks(n, block)
    padded = torch.zeros(kb * block, nb * block, dtype=torch.bool, device=w.device)
    padded[:k, :n] = w.detach() != 0
    nonzero = padded.view(kb, block, nb, block).any(dim=3).any(dim=1).cpu()  # [KB, NB]

    def listed(rows: torch.Tensor, width: int) -> torch.Tensor:
        out = torch.full((rows.shape[0], width + 1), -1, dtype=torch.int32)
        for r in range(rows.shape[0]):
            cols = rows[r].nonzero().flatten()
            out[r, 0] = len(cols)
            out[r, 1:1 + len(cols)] = cols.to(torch.int32)
        return out

    return listed(nonzero.T, kb), listed(nonzero, nb)


def block_norms(w: torch.Tensor, block: int, n: float = 1) -> torch.Tensor:
    """The Ln norm of each block of a [K, N] weight, [KB, NB] (edge blocks over what they hold)."""
    k, nn = w.shape
    kb, nb = blocks(k, block), blocks(nn, block)
    padded = torch.zeros(kb * block, nb * block, dtype=torch.float64)
    padded[:k, :nn] = w.detach().cpu().to(torch.float64).abs()
    parts = padded.view(kb, block, nb, block)
    if n == float("inf"):
        return parts.amax(dim=(1, 3))
    return parts.pow(n).sum(dim=(1, 3)).pow(1 / n)


def block_mask(w: torch.Tensor, block: int, amount: float, n: float = 1,
               previous: torch.Tensor | None = None) -> torch.Tensor:
    """A mask removing the round(amount * blocks) blocks of least Ln norm (already removed blocks first),
    ties as torch.topk breaks them."""
    norms = block_norms(w if previous is None else w * previous, block, n)
    if previous is not None:
        norms = torch.where(block_norms(previous, block, 1) == 0, torch.full_like(norms, -1.0), norms)
    drop = round(amount * norms.numel())
    keep = torch.ones(norms.numel(), dtype=torch.bool)
    if drop:
        keep[torch.topk(norms.flatten(), k=drop, largest=False).indices] = False
    keep = keep.view(norms.shape)
    full = keep.repeat_interleave(block, 0).repeat_interleave(block, 1)[:w.shape[0], :w.shape[1]]
    return full.to(dtype=w.dtype, device=w.device)


def nm_mask(w: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """N:M sparsity along the contraction axis of a [K, N] weight: in every run of m consecutive rows of a
    column, the n entries of largest magnitude kept (K a multiple of m)."""
    k, cols = w.shape
    if k % m:
        raise ValueError(f"{n}:{m} sparsity groups {m} rows along K; K = {k} is not a multiple of {m}")
    groups = w.detach().abs().reshape(k // m, m, cols)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, torch.topk(groups, k=n, dim=1).indices, True)
    return keep.reshape(k, cols).to(w.dtype)


def weights_read_by_matmul(graph: Graph) -> dict[str, str | None]:
    """Each rank-2 float parameter -> None when it is only ever the right operand of matmuls (a
    block-sparse kernel can take it), else why not."""
    users = graph.users()
    out = {}
    for name, p in graph.params.items():
        if not p.dtype.is_float or len(p.shape) != 2:
            continue
        ops = {u.op for u in users[p]}
        if not users[p]:
            out[name] = "unused"
        elif ops != {K.MATMUL} or any(u.inputs[1] is not p or u.inputs[0] is p for u in users[p]):
            out[name] = f"read by {', '.join(sorted(o.value for o in ops))} (not only as a matmul weight)"
        elif p in graph.outputs.values():
            out[name] = "a graph output"
        else:
            out[name] = None
    return out


@register_pass
@dataclass(frozen=True)
class BlockSparse:
    """Matmuls by weights pruned in square blocks -> bsmatmul, which skips the zero blocks."""

    name: ClassVar[str] = "block_sparse"
    block: int = 32
    layers: str = "*"        # weight names or globs separated by '|'

    def selected(self, graph: Graph) -> list[str]:
        if self.block not in BLOCKS:
            raise PassError(f"block_sparse: block must be one of {', '.join(map(str, BLOCKS))}, got "
                            f"{self.block}")
        pats = [p for p in self.layers.split("|") if p]
        return [name for name, why in weights_read_by_matmul(graph).items()
                if why is None and any(fnmatch.fnmatchcase(name, p) for p in pats)]

    def run(self, graph: Graph, stats: Counter | None = None) -> Graph:
        chosen = set(self.selected(graph))
        if not chosen:
            return graph
        made: dict[str, tuple] = {}

        def visit(b: GraphBuilder, node, inputs):
            if node.op != K.MATMUL or node.inputs[1].op != K.PARAM or node.inputs[1].attrs.name not in chosen:
                return None
            w = node.inputs[1]
            name = w.attrs.name
            if name not in made:
                k, n = w.shape
                kb, nb = blocks(k, self.block), blocks(n, self.block)
                i, it, tiles = index_names(name)
                made[name] = (b.param(i, DType.I32, (nb, kb + 1), Init("all_blocks")),
                              b.param(it, DType.I32, (kb, nb + 1), Init("all_blocks")),
                              b.param(tiles, DType.I64, (1,)))
            if stats is not None:
                stats["bsmatmul"] += 1
            return b.bsmatmul(inputs[0], inputs[1], *made[name], self.block)

        new, _ = rebuild(graph, visit)
        return new
