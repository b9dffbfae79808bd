"""The `train` block, checked into a `TrainSpec` (run by `axon/trainer.py`; a GAN's, with discriminator and
generator blocks, by `axon/gan_trainer.py`: `gan_block.py`).

    train MLP {
        data   = digits(val = 0.2)
        loss   = cross_entropy(logits, label)
        optim  = adam(lr = 1e-3, weight_decay = 1e-4)
        epochs = 30   batch = 64   early_stop(patience = 5)
    }

Checked now: the model exists; every key is known and given once; `data`, `loss`, `optim` and
`epochs` are present; numbers are numbers in range (`OPTION_RANGES`, `MAX_COUNT`); the optimizer and
its options are known; the loss is a call of a known function, bound to its parameters like any
call, whose arguments are names, each a model output or input or a label (a name the model does not
define, fed from the data set).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from axon.ir import AxonError, Node, Span
from axon.ir.errors import Note, did_you_mean

from . import ast as A
from .elaborator import Elaborator, Frame
from .errors import ArityError, AxonNameError, AxonTypeError, AxonValueError
from .augment_block import AugmentSpec, check_augment_item
from .gan_block import GanSpec, GanStep, check_gan, is_gan
from .prune_block import PruneSpec, check_prune_item
from .typecheck import ANY_DTYPE, dtype_of
from .train_items import (EARLY_STOP, OPTIMIZERS, CallSpec, LossSpec, call_spec, check_loss, count_value,
                          known_options, shown)
from .values import INT_LIMIT, Scope, describe


@dataclass(frozen=True)
class TrainSpec:
    model: str
    data: CallSpec
    loss: LossSpec
    optimizer: CallSpec
    epochs: int
    batch: int | None
    early_stop: CallSpec | None
    seed: int | None
    span: Span
    prune: PruneSpec | None = None
    adversarial: CallSpec | None = None   # fgsm(eps = ...) or pgd(eps = ..., steps = ...)
    augment: AugmentSpec | None = None
    gan: GanSpec | None = None            # a GAN's two steps; `loss` and `optimizer` are then the
                                          # discriminator's (the first step of each round)

    def step(self, role: str) -> "TrainSpec":
        """A GAN's spec with `role`'s loss and optimizer as the spec's own (what `training_graph` builds)."""
        phase: GanStep = getattr(self.gan, role)
        return replace(self, loss=phase.loss, optimizer=phase.optimizer)


KEYS = ("data", "loss", "optim", "epochs", "batch", "early_stop", "seed", "prune", "adversarial", "augment",
        "noise", "samples", "discriminator", "generator")
BLOCKS = ("prune", "augment", "discriminator", "generator")  # the settings given as blocks: prune { ... }
ADVERSARIAL = {"fgsm": ("eps", "alpha"), "pgd": ("eps", "steps", "step_size", "alpha")}
ALIASES = {"optimizer": "optim"}
REQUIRED = ("data", "loss", "optim", "epochs")


def check_train(program, model: str) -> TrainSpec | None:
    """The checked train block of `model` in `program`, or None if it has none."""
    td = program.user.trains.get(model)
    if td is None:
        return None
    return check_train_def(program, td)


def check_train_def(program, td: A.TrainDef) -> TrainSpec:
    models = program.user.models
    if td.model not in models:
        raise AxonNameError(f"train block for unknown model '{td.model}'", td.model_span,
                            hint=did_you_mean(td.model, models))
    items: dict[str, A.TrainItem] = {}
    for it in td.items:
        key = ALIASES.get(it.key, it.key)
        if key not in KEYS:
            raise AxonNameError(f"unknown train setting '{it.key}'", it.span,
                                hint=did_you_mean(it.key, KEYS) or f"known: {', '.join(KEYS)}")
        if isinstance(it.value, A.SettingsBlock) and key not in BLOCKS:
            raise AxonTypeError(f"'{it.key}' takes a value ({it.key} = ...), not a block of settings",
                                it.span)
        if key in items:
            raise AxonNameError(f"train setting '{it.key}' is given twice", it.span,
                                notes=[Note("first given here", items[key].span)])
        items[key] = it
    gan = check_gan(program, td.model, items, td.span) if is_gan(items) else None
    for key in REQUIRED if gan is None else ("data", "epochs"):
        if key not in items:
            raise ArityError(f"the train block for '{td.model}' needs '{key} = ...'", td.span)
    for key in ("noise", "samples") if gan is None else ():
        if key in items:
            raise ArityError(f"'{key}' belongs to a GAN's train block (with discriminator {{ ... }} and "
                             f"generator {{ ... }})", items[key].span)
    if gan is not None:
        for key in ("prune", "adversarial", "augment", "early_stop"):
            if key in items:
                raise ArityError(f"'{key}' is not supported in a GAN's train block", items[key].span)
        optim = gan.discriminator.optimizer
    else:
        optim = call_spec(items["optim"], "the optimizer")
        known_options(optim, OPTIMIZERS, "optimizer")
    early = call_spec(items["early_stop"], "early_stop") if "early_stop" in items else None
    if early is not None:
        known_options(early, {"early_stop": EARLY_STOP}, "setting")
    return TrainSpec(
        model=td.model, data=call_spec(items["data"], "the data set"),
        loss=gan.discriminator.loss if gan else check_loss(program, td.model, items["loss"]), optimizer=optim,
        epochs=count_value(items["epochs"], "epochs"),
        batch=count_value(items["batch"], "batch") if "batch" in items else None,
        early_stop=early,
        seed=count_value(items["seed"], "seed", 0, INT_LIMIT - 1) if "seed" in items else None,
        span=td.span, prune=check_prune_item(items["prune"]) if "prune" in items else None,
        adversarial=_adversarial(items["adversarial"]) if "adversarial" in items else None,
        augment=check_augment_item(items["augment"]) if "augment" in items else None, gan=gan)


def _adversarial(it: A.TrainItem) -> CallSpec:
    """`adversarial = fgsm(eps = 0.1)` or `pgd(eps = 0.1, steps = 5, step_size = 0.05, alpha = 0.5)`."""
    spec = call_spec(it, "adversarial training")
    if spec.name not in ADVERSARIAL:
        raise AxonNameError(f"unknown adversarial attack '{spec.name}'", spec.span,
                            hint=did_you_mean(spec.name, ADVERSARIAL) or "fgsm or pgd")
    given = dict(spec.kwargs)
    where = {k.name: k.span for k in spec.call.kwargs}
    for key, value in given.items():
        if key not in ADVERSARIAL[spec.name]:
            raise ArityError(f"'{spec.name}' has no option '{key}'", where[key],
                             hint=did_you_mean(key, ADVERSARIAL[spec.name]))
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if key == "steps":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise AxonValueError(f"'steps' must be an int of at least 1, got {shown(value)}", where[key])
        elif not number or (key == "alpha" and not 0 <= value <= 1) or (key != "alpha" and value <= 0):
            words = "in [0, 1]" if key == "alpha" else "a positive number"
            raise AxonValueError(f"'{key}' must be {words}, got {shown(value)}", where[key])
    if "eps" not in given:
        raise ArityError(f"'{spec.name}' needs eps = <the perturbation's size>", spec.span)
    return spec


# --- the loss, in the model's graph ------------------------------------------------------------------
LOSS_OUTPUT = "loss"


def add_loss(el: Elaborator, td: A.TrainDef, spec: TrainSpec) -> None:
    """Append the train block's loss to the graph of `el` (an `Elaborator` that has just run the
    model): each label becomes an input typed from the loss function's declaration (`labels: i64[*lead]`
    after `logits: f32[*lead, classes]`), and the scalar loss becomes the output `loss`."""
    call = spec.loss.call
    model = el.frames[0]
    if LOSS_OUTPUT in el.output_names:
        raise AxonNameError(f"the model already has an output named '{LOSS_OUTPUT}'", spec.span)
    fn = el.visible(model).get(call.func)
    if not isinstance(fn, A.FnDef):
        raise AxonTypeError(f"the loss must call an Axon function, not the built-in '{call.func}'",
                            call.func_span)
    exprs = {p: _arg_expr(call, fn, p) for p in spec.loss.params}  # the binding checked in `check_loss`
    for label in spec.loss.labels:
        pname = spec.loss.params[spec.loss.args.index(label)]
        param = next(p for p in fn.params if p.name == pname)
        dims = _label_dims(el, fn, call, exprs, param)
        if dims is None or param.type.name in ANY_DTYPE:
            raise AxonTypeError(f"cannot tell the type of the label '{label}' from '{call.func}'",
                                exprs[pname].span,
                                hint=f"declare it in the model: input {label}: <dtype>[...]")
        model.vars[label] = el.b.input(label, dtype_of(param.type), dims)
    loss = el.eval(call)
    if not isinstance(loss, Node) or loss.shape != ():
        raise AxonTypeError(f"the loss must be a scalar tensor, got {describe(loss)}", call.span)
    el.b.output(LOSS_OUTPUT, loss)


def _arg_expr(call: A.Call, fn: A.FnDef, pname: str) -> A.Expr:
    """The argument of `call` bound to parameter `pname` (given by position or by name)."""
    for p, a in zip(fn.params, call.args):
        if p.name == pname:
            return a
    return next(k.value for k in call.kwargs if k.name == pname)


def _label_dims(el: Elaborator, fn: A.FnDef, call: A.Call, exprs: dict, param: A.Param) -> tuple | None:
    """The label's shape: match the other arguments against their declared types in a scratch frame,
    then read the label's pattern with the sizes they bound. None when a size stays unknown; an
    argument that does not fit its type is reported as the call would report it."""
    if param.type is None or param.type.dims is None:
        return None
    model = el.frames[0]
    known = {name: (model.vars[a.name], a.span) for name, a in exprs.items()
             if isinstance(a, A.Name) and a.name in model.vars}
    scratch = Frame(fn.name, call.span, Scope(None), False, True)
    el.frames.append(scratch)
    try:
        for p in fn.params:
            if p.name in known:
                value, span = known[p.name]
                scratch.vars[p.name] = el._argument(fn, p, value, span, scratch)
        dims: list = []
        for d in param.type.dims:
            if isinstance(d, A.DimRest):
                bound = scratch.vars.get(d.name) if d.name else None
                if not isinstance(bound, tuple):
                    return None
                dims.extend(bound)
            elif isinstance(d, A.Name) and d.name not in scratch.vars:
                return None
            else:
                try:
                    dims.append(el.eval(d))
                except AxonError:  # a size the other arguments do not determine
                    return None
        return tuple(dims)
    finally:
        el.frames.pop()
