"""What a training run shows and writes about itself: accuracy counts, the epoch line, the progress bar on
a terminal, and the loss curve (a PNG, written atomically)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from axon.codegen.files import atomic_write


def progress(label: str, total: int, done: int = 0):
    """A tqdm bar on stderr for one epoch's steps (hidden when stderr is not a terminal, so logs and CI
    output stay clean); the caller updates it with each step and the running loss."""
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=label, unit="step", leave=False, dynamic_ncols=True,
                disable=not sys.stderr.isatty())


def correct(out: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Correct predictions and their count: argmax over classes for integer labels, the sign of a logit
    for 0/1 float targets."""
    if not labels.dtype.is_floating_point:
        if out.dim() != labels.dim() + 1:
            return 0.0, 0
        return float((out.argmax(-1) == labels).sum()), labels.numel()
    if out.shape != labels.shape:
        return 0.0, 0
    return float(((out > 0) == (labels > 0.5)).sum()), labels.numel()


def format_epoch(r: dict, epochs: int) -> str:
    """One line per epoch: its losses, then its other validation figures (accuracy, a GAN's modes)."""
    parts = [f"epoch {r['epoch']:>3}/{epochs}"]
    for key, words in LOSSES.items():
        if key in r:
            parts.append(f"{words} {r[key]:.4f}")
    if "val_acc" in r:
        parts.append(f"val acc {r['val_acc']:.2%}")
    parts += [f"{k[4:].replace('_', ' ')} {_figure(v)}" for k, v in r.items()
              if k.startswith("val_") and k not in LOSSES and k != "val_acc"]
    return "  ".join(parts + [f"{r['seconds']:.1f}s"])


LOSSES = {"train_loss": "train loss", "train_loss_g": "generator loss", "val_loss": "val loss"}


def _figure(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def plot(history: list[dict], path: Path, title: str) -> None:
    """Loss curves (and validation accuracy) by epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, words in LOSSES.items():
        if key in history[0]:
            ax.plot(epochs, [r[key] for r in history], label=words)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if "val_acc" in history[0]:
        acc = ax.twinx()
        acc.plot(epochs, [r["val_acc"] for r in history], color="tab:green", label="val acc")
        acc.set_ylabel("val accuracy")
        acc.legend(loc="center right")
    ax.legend(loc="upper right")
    fig.tight_layout()
    try:
        atomic_write(path, writer=lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
