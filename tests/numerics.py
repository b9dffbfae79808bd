"""Comparing numbers: relative error with tolerances set by dtype, NaN never passing silently."""
from __future__ import annotations

import torch

# ‖out − ref‖ / ‖ref‖ allowed, by the dtype the computation ran in.
TOLERANCE = {
    torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2,
    torch.float8_e4m3fn: 1.5e-1, torch.float8_e5m2: 2.5e-1,
}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom > 0 else diff


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None,
                 tol: float | None = None, what: str = "output") -> None:
    """Shapes equal, NaN only where the reference has NaN, infinities equal, relative error in tolerance."""
    assert tuple(out.shape) == tuple(ref.shape), f"{what}: shape {tuple(out.shape)} vs {tuple(ref.shape)}"
    if not out.is_floating_point() and not ref.is_floating_point():
        assert torch.equal(out.cpu(), ref.cpu()), f"{what}: integer/bool values differ"
        return
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.equal(out.isnan(), ref.isnan()), f"{what}: NaN pattern differs"
    inf = ref.isinf()
    assert torch.equal(out[inf], ref[inf]), f"{what}: infinities differ"
    finite = ~(ref.isnan() | inf)
    tol = tol if tol is not None else TOLERANCE[dtype or torch.float32]
    err = rel_err(out[finite], ref[finite])
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"
