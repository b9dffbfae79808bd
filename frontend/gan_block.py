"""A GAN's train block: two steps over two parameter groups, alternating.

    train GAN {
        data   = gaussians()            # real samples, fed to the model input that is not the noise
        noise  = z                      # the input drawn from N(0, 1) for every step
        samples = sample                # the output drawn each epoch (samples/epoch-N.png)
        epochs = 4   batch = 64
        discriminator {
            params = "disc"             # the parameters named disc.*
            loss   = d_loss(real_score, fake_score)
            optim  = adam(lr = 3e-2, betas = [0.0, 0.99])
            steps  = 1                  # discriminator steps per generator step (k to 1)
        }
        generator {
            params = "gen"
            loss   = g_loss(fake_score) # the non-saturating loss: -log D(G(z))
            optim  = adam(lr = 5e-4, betas = [0.0, 0.99])
            ema    = 0.9                # samples also from a moving average of the generator's weights
        }
    }

Each step differentiates its own loss with respect to its own group only (the other group is read, not
updated), so each is one compiled graph: forward, loss, backward and its optimizer's update. The
losses are model outputs only (a GAN's data has no labels). How the steps alternate, what is saved and
what each epoch draws: `axon/gan_trainer.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

from axon.ir import Span
from axon.ir.errors import did_you_mean

from . import ast as A
from .errors import ArityError, AxonNameError, AxonTypeError, AxonValueError
from .quantize_block import read_settings
from .train_items import (MAX_COUNT, OPTIMIZERS, CallSpec, LossSpec, call_spec, check_loss, const_value,
                          declared, known_options)
from .values import show

ROLES = ("discriminator", "generator")
STEP_KEYS = {"discriminator": ("params", "loss", "optim", "steps"),
             "generator": ("params", "loss", "optim", "ema")}
TOP_KEYS = ("noise", "samples")  # the GAN's settings outside its two blocks


@dataclass(frozen=True)
class GanStep:
    role: str                  # "discriminator" or "generator"
    params: str                # the group: the parameters named "<params>.*"
    loss: LossSpec
    optimizer: CallSpec
    span: Span
    steps: int = 1             # the discriminator's steps per generator step
    ema: float = 0.0           # the generator's weight average's decay (0: none)

    def record(self) -> dict:
        return {"params": self.params, "loss": self.loss.fn, "optimizer": {"name": self.optimizer.name,
                **dict(self.optimizer.kwargs)}, "steps": self.steps, "ema": self.ema}


@dataclass(frozen=True)
class GanSpec:
    noise: str                 # the model input fed N(0, 1)
    samples: str | None        # the model output drawn each epoch
    discriminator: GanStep
    generator: GanStep


def is_gan(items: dict[str, A.TrainItem]) -> bool:
    return any(role in items for role in ROLES)


def check_gan(program, model: str, items: dict[str, A.TrainItem], span: Span) -> GanSpec:
    """The GAN settings of a train block (its items by key)."""
    for role in ROLES:
        if role not in items:
            raise ArityError(f"a GAN's train block needs both a discriminator {{ ... }} and a generator "
                             f"{{ ... }} block; '{role}' is missing", span)
    for key in ("loss", "optim"):
        if key in items:
            raise ArityError(f"'{key}' goes inside the discriminator and generator blocks of a GAN's train "
                             f"block (each step has its own)", items[key].span)
    if "noise" not in items:
        raise ArityError("a GAN's train block needs 'noise = <the model input drawn from N(0, 1)>'", span)
    outputs, inputs = declared(program.user.models[model])
    noise = _name(items["noise"], inputs, "input", model)
    samples = _name(items["samples"], outputs, "output", model) if "samples" in items else None
    d, g = (_step(program, model, items[role], role) for role in ROLES)
    if d.params == g.params:
        raise AxonValueError(f"the discriminator and the generator both train the group '{d.params}': each "
                             f"step needs its own parameters", items["generator"].span)
    return GanSpec(noise, samples, d, g)


def _name(it: A.TrainItem, known: list[str], what: str, model: str) -> str:
    if not isinstance(it.value, A.Name):
        raise AxonTypeError(f"'{it.key}' must name a model {what}, got {show(const_value(it.value))}",
                            it.value.span)
    if it.value.name not in known:
        raise AxonNameError(f"'{model}' has no {what} named '{it.value.name}'", it.value.span,
                            hint=did_you_mean(it.value.name, known) or f"{what}s: {', '.join(known)}")
    return it.value.name


def _step(program, model: str, it: A.TrainItem, role: str) -> GanStep:
    if not isinstance(it.value, A.SettingsBlock):
        raise AxonTypeError(f"'{role}' is a block: {role} {{ params = \"...\"  loss = ...  optim = ... }}",
                            it.span)
    keys = STEP_KEYS[role]
    values, _ = read_settings(it.value.items, keys, role, _value)  # loss and optim: their items
    for key in ("params", "loss", "optim"):
        if key not in values:
            raise ArityError(f"the {role} block needs '{key} = ...'", it.span)
    loss = check_loss(program, model, values["loss"])
    if loss.labels:
        raise AxonNameError(f"the {role}'s loss reads '{loss.labels[0]}', which '{model}' does not define: a "
                            f"GAN's losses take model outputs only", loss.span)
    optim = call_spec(values["optim"], "the optimizer")
    known_options(optim, OPTIMIZERS, "optimizer")
    return GanStep(role, values["params"], loss, optim, it.span, values.get("steps", 1),
                   values.get("ema", 0.0))


def _value(it: A.TrainItem):
    key, e = it.key, it.value
    if key in ("loss", "optim"):
        return it  # checked against the model by the caller
    v = const_value(e)
    if key == "params":
        if not isinstance(v, str) or not v or not all(p.isidentifier() for p in v.split(".")):
            raise AxonTypeError(f"'params' must name a parameter group such as \"disc\" (the parameters "
                                f"disc.*), got {show(v)}", e.span)
        return v
    if key == "steps":
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_COUNT:
            raise AxonValueError(f"'steps' must be an int of at least 1, got {show(v)}", e.span)
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise AxonValueError(f"'ema' must be a decay in [0, 1), got {show(v)}", e.span)
    return float(v)
