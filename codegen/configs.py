"""GPU launch configs of the templates that tile a product (matmul, conv2d): how large a tile, and the
(BLOCK_K, warps, pipeline stages) alternatives a tuner may choose from.

The numbers come from ahead-of-time compiles for sm_90 (`axon compile --target sm_90`, `codegen/aot.py`):
- a `tl.dot` on tensor cores (16-bit operands, or f32 as TF32) keeps a 128 x 128 f32 accumulator in
  about 100 registers at 8 warps; a full-precision f32 dot is lowered to FMAs, which hold operand
  fragments in registers too: at 128 x 128 it spills at 4 warps, so its tile stops at 64 x 64;
- the f64/integer loop holds a BLOCK_M x BLOCK_K x BLOCK_N product: 32 x 32 tiles;
- an epilogue holds more tile-sized values (its operands, results and temporaries) at once, so the tile
  shrinks until `values x BLOCK_M x BLOCK_N` fits TILE_BUDGET, and takes 8 warps once a thread would
  hold more than WARPS_4_ELEMENTS tile elements at 4 (a conv's gathered input block counts too: its
  row/column/mask/address tiles took a 64 x 32 x 32 f32 conv to 255 registers and spills at 4 warps,
  144 registers at 8).
Configs whose operand buffers exceed the target's shared memory are left out; the AOT sweep and the
runtime tuner drop any that spill.
"""
from __future__ import annotations

import triton

from axon.ir import DType
from .target import Target

MIN_TILE = 16                 # tl.dot's smallest block in every dimension
TILE_CAP = {"tensor": 128, "fma": 64, "loop": 32}
TILE_BUDGET = 40960           # tile elements x values held at once, per program
WARPS_4_ELEMENTS = 8192       # beyond this many (tile elements x values), 8 warps
GATHER_VALUES = 4             # index tiles (rows, columns, mask, address) of a gathered operand block
MAX_CONFIGS = 3               # tried by the tuner: each is one more compile on a cold start
# (BLOCK_K, num_stages) by kind of dot, the first the default; both at the preferred number of warps,
# then the first at the other (MAX_CONFIGS in all).
K_STAGES = {
    "tensor": ((64, 3), (32, 4)),
    "tf32": ((32, 3), (64, 3)),
    "fma": ((16, 3), (32, 3)),
    "loop": ((4, 1), (8, 1)),
}


def dot_kind(dtype: DType, target: Target) -> str:
    """How a product of `dtype` operands is computed: tensor cores, f32 FMAs, or the broadcast loop."""
    if dtype in (DType.F16, DType.BF16, DType.I8) or dtype.is_fp8:  # (i8, fp8: qmatmul's codes)
        return "tensor"
    if dtype == DType.F32:
        return "tf32" if target.dot_precision == "tf32" else "fma"
    return "loop"


def tile(m: int, n: int, values: int, kind: str) -> tuple[int, int]:
    """BLOCK_M, BLOCK_N for an m x n output: the next powers of two, capped by the kind of dot, then
    halved (the larger first) while `values` tiles do not fit the budget."""
    cap = TILE_CAP["tensor" if kind == "tf32" else kind]
    low = MIN_TILE if kind != "loop" else 4
    bm = min(max(low, triton.next_power_of_2(m)), cap)
    bn = min(max(low, triton.next_power_of_2(n)), cap)
    while values * bm * bn > TILE_BUDGET and max(bm, bn) > low:
        if bm >= bn:
            bm //= 2
        else:
            bn //= 2
    return bm, bn


def configs(blocks: dict, k: int, values: int, dtype: DType, target: Target,
            block_k: int | None = None, gathered: int = 0) -> tuple[dict, ...]:
    """`blocks` (BLOCK_M, BLOCK_N, ...) with each BLOCK_K (unless fixed by `block_k`), warps and stages
    to try, the preferred first, within the target's shared memory per block. `gathered`: elements of an
    operand block whose addresses the kernel computes per element (conv's implicit im2col), which
    holds GATHER_VALUES index tiles in registers besides the tile."""
    kind = dot_kind(dtype, target)
    bm, bn = blocks["BLOCK_M"], blocks["BLOCK_N"]
    preferred = 8 if values * bm * bn + GATHER_VALUES * gathered > WARPS_4_ELEMENTS else 4
    low = MIN_TILE if kind != "loop" else 1
    size = dtype.torch.itemsize
    out: list[dict] = []
    for warps in (preferred, 12 - preferred):
        for bk, stages in K_STAGES[kind]:
            bk = block_k or min(bk, max(low, triton.next_power_of_2(k)))
            smem = stages * (bm + bn) * bk * size if kind != "loop" else 0
            config = {**blocks, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages,
                      "enable_fp_fusion": True}
            if smem <= target.limits.smem_per_block and config not in out:
                out.append(config)
    return tuple(out[:MAX_CONFIGS])
