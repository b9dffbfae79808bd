"""Input gradients put to use: saliency maps (gradient, integrated gradients, SmoothGrad) and adversarial
examples (FGSM, PGD), all through one compiled gradient graph.

Each function takes `grad(x, feeds) -> (output, dx)`: a compiled call of a model's `vjp` graph (the
forward plus `grad.<input>`; `axon/attrib_cmd.py` builds it) returning the differentiated output and the
gradient of `sum(dout * output)` with respect to the input `x`. What `dout` is picks the quantity: a
one-hot on the target class gives the gradient of that logit (saliency); 1 on a loss output gives the
loss gradient (attacks).

- gradient:   |d logit_t / dx|
- integrated: (x - baseline) * mean over k = 1..N of d logit_t / dx at baseline + (k/N)(x - baseline)
              (Sundararajan et al. 2017, the right Riemann sum), all N points in one batch per example
- smoothgrad: mean over N copies x + noise (sigma = `noise` * (max - min) of x) of d logit_t / dx
              (Smilkov et al. 2017); the noise comes from a seeded generator
- fgsm:       x + eps * sign(d loss / dx), clamped to the data's range (Goodfellow et al. 2015)
- pgd:        `steps` of step_size * sign(grad), each projected back onto the eps-ball around x and the
              data's range, from x itself (Madry et al. 2018, without the random start unless asked)
"""
from __future__ import annotations

from collections.abc import Callable

import torch

Grad = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def one_hot(targets: torch.Tensor, classes: int, like: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(targets.long(), classes).to(like.dtype)


def gradient(grad: Grad, x: torch.Tensor, dout: torch.Tensor) -> torch.Tensor:
    return grad(x, dout)[1]


def integrated(grad: Grad, x: torch.Tensor, dout: torch.Tensor, baseline: torch.Tensor | None = None,
               steps: int = 32) -> torch.Tensor:
    """Integrated gradients of each example, the N interpolation points of one example in one batch."""
    baseline = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
    out = torch.empty_like(x)
    alphas = torch.arange(1, steps + 1, dtype=x.dtype, device=x.device) / steps
    for i in range(x.shape[0]):
        diff = x[i] - baseline[i]
        path = baseline[i].unsqueeze(0) + alphas.view(-1, *([1] * diff.dim())) * diff.unsqueeze(0)
        g = grad(path, dout[i].unsqueeze(0).expand(steps, *dout.shape[1:]))[1]
        out[i] = diff * g.mean(0)
    return out


def smoothgrad(grad: Grad, x: torch.Tensor, dout: torch.Tensor, samples: int = 16, noise: float = 0.15,
               seed: int = 0) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    span = (x.amax() - x.amin()).item() or 1.0
    total = torch.zeros_like(x)
    for _ in range(samples):
        eps = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device) * noise * span
        total += grad(x + eps, dout)[1]
    return total / samples


def fgsm(grad: Grad, x: torch.Tensor, dout: torch.Tensor, eps: float, lo: float | None = None,
         hi: float | None = None) -> torch.Tensor:
    adv = x + eps * torch.sign(grad(x, dout)[1])
    return adv.clamp(lo, hi) if lo is not None or hi is not None else adv


def pgd(grad: Grad, x: torch.Tensor, dout: torch.Tensor, eps: float, steps: int = 10,
        step_size: float | None = None, lo: float | None = None, hi: float | None = None) -> torch.Tensor:
    step_size = step_size if step_size is not None else 2.5 * eps / steps
    adv = x.clone()
    for _ in range(steps):
        adv = adv + step_size * torch.sign(grad(adv, dout)[1])
        adv = torch.max(torch.min(adv, x + eps), x - eps)
        if lo is not None or hi is not None:
            adv = adv.clamp(lo, hi)
    return adv
