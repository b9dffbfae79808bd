"""What a GAN run shows of itself: the modes its samples cover and a picture of them (PNG, written
atomically). Used by `axon train` on a GAN's train block (`axon/gan_trainer.py`) and `examples/gan.py`."""
from __future__ import annotations

from pathlib import Path

import torch

from axon.codegen.files import atomic_write
from axon.data import mode_coverage, ring

TITLES = {"ema": "weight average", "last": "last weights"}


def coverage(samples: torch.Tensor, info: dict) -> dict:
    """`mode_coverage` of the samples on the data set's ring, as a JSON-ready record."""
    c = mode_coverage(samples, info["modes"], info["radius"], info["std"])
    return {"covered": c.covered, "modes": info["modes"], "quality": round(c.quality, 4),
            "shares": [round(s, 4) for s in c.shares]}


def rule(info: dict) -> str:
    reach = 3 * info["std"]
    return (f"a mode counts when >= 1/{4 * info['modes']} of the samples lie within {reach:g} "
            f"(3 std) of its centre; quality = share of samples within {reach:g} of some mode")


def plot_samples(path: Path, real: torch.Tensor, drawn: dict[str, torch.Tensor], cover: dict[str, dict],
                 info: dict, title: str, losses: dict[str, tuple[list, list]] | None = None) -> None:
    """One panel per set of samples (`drawn`: name -> [N, 2]) over the real data, the modes' 3-std
    circles drawn when the data set has modes; and a panel of loss curves when `losses` is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(drawn) + (1 if losses else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 5), squeeze=False)
    axes = axes[0]
    centres = ring(info["modes"], info["radius"]) if "modes" in info else []
    for ax, (name, samples) in zip(axes, drawn.items()):
        ax.scatter(real[:2000, 0], real[:2000, 1], s=2, c="0.8", label="real")
        ax.scatter(samples[:, 0], samples[:, 1], s=2, c="tab:blue", label="generated")
        for cx, cy in centres:
            ax.add_patch(plt.Circle((cx, cy), 3 * info["std"], fill=False, color="tab:red", lw=1))
        words = TITLES.get(name, name)
        c = cover.get(name)
        ax.set_title(f"{words}: {c['covered']}/{c['modes']} modes, {c['quality']:.0%} near a mode" if c
                     else words)
        ax.set_xlim(-1.1, 1.1)
        ax.set_ylim(-1.1, 1.1)
        ax.set_aspect("equal")
        ax.legend(loc="lower right", markerscale=4)
    if losses:
        ax = axes[-1]
        for name, (xs, ys) in losses.items():
            ax.plot(xs, ys, label=name)
        ax.set_xlabel("step")
        ax.set_title("losses")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, writer=lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    finally:
        plt.close(fig)
