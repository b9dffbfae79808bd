"""The `train` block, checked into a `TrainSpec` (the training loop that runs it comes with a later issue).

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
from dataclasses import dataclass, field

from axon.ir import AxonError, Node, Span
from axon.ir.errors import Note, did_you_mean

from . import ast as A
from .elaborator import Elaborator, Frame
from .errors import ArityError, AxonNameError, AxonTypeError, AxonValueError
from .augment_block import AugmentSpec, check_augment_item
from .prune_block import PruneSpec, check_prune_item
from .typecheck import ANY_DTYPE, dtype_of
from .values import INT_LIMIT, Scope, describe, show


@dataclass(frozen=True)
class CallSpec:
    """A configuration call such as `adam(lr = 1e-3)`: its name and constant keyword arguments."""

    name: str
    kwargs: tuple[tuple[str, object], ...]
    span: Span
    call: A.Call = field(repr=False, compare=False)  # where each option was given

    def get(self, key: str, default=None):
        return dict(self.kwargs).get(key, default)


@dataclass(frozen=True)
class LossSpec:
    fn: str
    args: tuple[str, ...]      # names, in call order
    params: tuple[str, ...]    # the loss function's parameter each of `args` is bound to
    outputs: tuple[str, ...]   # those that are model outputs
    labels: tuple[str, ...]    # those the model does not define: fed from the data set
    span: Span


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


# Every optimizer also takes the gradient clipping and the learning-rate schedule (`axon.optim`).
STEP_OPTIONS = ("clip", "schedule", "warmup", "step_size", "gamma", "eta_min", "start_factor")
OPTIMIZERS = {
    "sgd": ("lr", "momentum", "weight_decay", "nesterov", *STEP_OPTIONS),
    "adam": ("lr", "betas", "eps", "weight_decay", *STEP_OPTIONS),
    "adamw": ("lr", "betas", "eps", "weight_decay", *STEP_OPTIONS),
    "rmsprop": ("lr", "alpha", "eps", "momentum", "weight_decay", *STEP_OPTIONS),
    "adagrad": ("lr", "eps", "weight_decay", *STEP_OPTIONS),
}
SCHEDULES = ("constant", "step", "cosine")
EARLY_STOP = ("patience", "min_delta", "metric")
# Ranges of the numeric options: (lowest, lowest excluded, highest); every one must be finite.
OPTION_RANGES = {"lr": (0, True, None), "eps": (0, True, None), "weight_decay": (0, False, None),
                 "momentum": (0, False, None), "alpha": (0, False, 1), "min_delta": (0, False, None),
                 "clip": (0, True, None), "gamma": (0, True, None), "eta_min": (0, False, None),
                 "start_factor": (0, True, 1)}
COUNT_OPTIONS = {"patience": 0, "warmup": 0, "step_size": 1}  # the int options, with their least value
# Options that only mean something beside another's value: option -> (the other option, that value).
APPLIES_WITH = {"step_size": ("schedule", "step"), "gamma": ("schedule", "step"),
                "eta_min": ("schedule", "cosine")}
OPTION_WORDS = {"lr": "the learning rate", "clip": "the maximum gradient norm 'clip'"}
MAX_COUNT = 2**31 - 1  # epochs, batch size, patience: beyond this a setting is a typo
KEYS = ("data", "loss", "optim", "epochs", "batch", "early_stop", "seed", "prune", "adversarial", "augment")
BLOCKS = ("prune", "augment")  # the settings given as blocks: prune { ... }
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
    for key in REQUIRED:
        if key not in items:
            raise ArityError(f"the train block for '{td.model}' needs '{key} = ...'", td.span)
    optim = _call(items["optim"], "the optimizer")
    _known_options(optim, OPTIMIZERS, "optimizer")
    early = _call(items["early_stop"], "early_stop") if "early_stop" in items else None
    if early is not None:
        _known_options(early, {"early_stop": EARLY_STOP}, "setting")
    return TrainSpec(
        model=td.model, data=_call(items["data"], "the data set"),
        loss=_loss(program, td, items["loss"]), optimizer=optim,
        epochs=_count(items["epochs"], "epochs"),
        batch=_count(items["batch"], "batch") if "batch" in items else None,
        early_stop=early,
        seed=_count(items["seed"], "seed", 0, INT_LIMIT - 1) if "seed" in items else None,
        span=td.span, prune=check_prune_item(items["prune"]) if "prune" in items else None,
        adversarial=_adversarial(items["adversarial"]) if "adversarial" in items else None,
        augment=check_augment_item(items["augment"]) if "augment" in items else None)


def _adversarial(it: A.TrainItem) -> CallSpec:
    """`adversarial = fgsm(eps = 0.1)` or `pgd(eps = 0.1, steps = 5, step_size = 0.05, alpha = 0.5)`."""
    spec = _call(it, "adversarial training")
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
                raise AxonValueError(f"'steps' must be an int of at least 1, got {_shown(value)}", where[key])
        elif not number or (key == "alpha" and not 0 <= value <= 1) or (key != "alpha" and value <= 0):
            words = "in [0, 1]" if key == "alpha" else "a positive number"
            raise AxonValueError(f"'{key}' must be {words}, got {_shown(value)}", where[key])
    if "eps" not in given:
        raise ArityError(f"'{spec.name}' needs eps = <the perturbation's size>", spec.span)
    return spec


def _call(it: A.TrainItem, what: str) -> CallSpec:
    if not isinstance(it.value, A.Call):
        raise AxonTypeError(f"{what} must be a call such as name(option = value)", it.value.span)
    call = it.value
    if call.args:
        raise ArityError(f"'{call.func}' takes options by name (name = value)", call.args[0].span)
    return CallSpec(call.func, tuple((k.name, _const(k.value)) for k in call.kwargs), call.span, call)


def _known_options(spec: CallSpec, table: dict, what: str) -> None:
    if spec.name not in table:
        raise AxonNameError(f"unknown {what} '{spec.name}'", spec.span,
                            hint=did_you_mean(spec.name, table) or f"known: {', '.join(table)}")
    for key, value in spec.kwargs:
        if key not in table[spec.name]:
            raise ArityError(f"'{spec.name}' has no option '{key}'", spec.span,
                             hint=did_you_mean(key, table[spec.name]))
        where = next(k.span for k in spec.call.kwargs if k.name == key)
        problem = _option_problem(key, value)
        if problem is not None:
            kind, words = problem
            raise kind(f"{OPTION_WORDS.get(key, repr(key))} must be {words}, got {_shown(value)}", where)
    _option_conflicts(spec)


def _shown(v) -> str:
    return f'"{v}"' if isinstance(v, str) else show(v)


def _option_conflicts(spec: CallSpec) -> None:
    """Options that each are fine but do not go together: an option that would be ignored, a schedule
    missing its period, nesterov without momentum."""
    given = dict(spec.kwargs)
    where = {k.name: k.span for k in spec.call.kwargs}
    for key, (other, value) in APPLIES_WITH.items():
        if key in given and given.get(other) != value:
            raise ArityError(f"'{key}' applies only with {other} = {_shown(value)}", where[key])
    if "start_factor" in given and not given.get("warmup"):
        raise ArityError("'start_factor' applies only with a warmup > 0", where["start_factor"])
    if given.get("schedule") == "step" and "step_size" not in given:
        raise ArityError('schedule = "step" needs step_size = <steps between decays>', where["schedule"])
    if given.get("nesterov") and not given.get("momentum"):
        raise AxonValueError("nesterov = true needs a momentum > 0", where["nesterov"])


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _option_problem(key: str, v) -> tuple[type, str] | None:
    """What is wrong with an optimizer or early_stop option's value, as (error class, "must be ..."
    words), or None."""
    if key == "betas":
        if not (isinstance(v, tuple) and len(v) == 2 and all(_is_number(b) for b in v)):
            return AxonTypeError, "a list of two numbers [beta1, beta2]"
        return None if all(0 <= b < 1 for b in v) else (AxonValueError, "two numbers in [0, 1)")
    if key == "nesterov":
        return None if isinstance(v, bool) else (AxonTypeError, "true or false")
    if key == "metric":
        return None if isinstance(v, str) else (AxonTypeError, "a string")
    if key == "schedule":
        if not isinstance(v, str):
            return AxonTypeError, "a string"
        return None if v in SCHEDULES else (AxonValueError, "one of " + ", ".join(map(_shown, SCHEDULES)))
    if key in COUNT_OPTIONS:
        least = COUNT_OPTIONS[key]
        if isinstance(v, bool) or not isinstance(v, int):
            return AxonTypeError, "an int"
        return None if least <= v <= MAX_COUNT else (AxonValueError, f"in [{least}, {MAX_COUNT:,}]")
    if not _is_number(v):
        return AxonTypeError, "a number"
    low, open_low, high = OPTION_RANGES.get(key, (None, False, None))
    words = "a finite number" if low is None else (
        f"a finite number {'>' if open_low else '>='} {low}" if high is None
        else f"in {'(' if open_low else '['}{low}, {high}]")
    bad = not math.isfinite(v) or (low is not None and (v < low or (open_low and v == low))) or (
        high is not None and v > high)
    return (AxonValueError, words) if bad else None


def _count(it: A.TrainItem, what: str, least: int = 1, most: int | None = None) -> int:
    most = MAX_COUNT if most is None else most
    v = _const(it.value)
    if isinstance(v, bool) or not isinstance(v, int):
        raise AxonTypeError(f"'{what}' must be an int, got {show(v)}", it.value.span)
    if not least <= v <= most:
        raise AxonValueError(f"'{what}' must be in [{least}, {most:,}], got {v}", it.value.span)
    return v


def _loss(program, td: A.TrainDef, it: A.TrainItem) -> LossSpec:
    call = it.value
    if not isinstance(call, A.Call):
        raise AxonTypeError("the loss must be a call such as cross_entropy(logits, label)", call.span)
    el = Elaborator(program)
    known = el.visible(Frame("train", None, Scope(None), True, False))  # what user code can call
    fn = known.get(call.func)
    if fn is None:
        raise AxonNameError(f"unknown loss function '{call.func}'", call.func_span,
                            hint=did_you_mean(call.func, known))
    for a in list(call.args) + [k.value for k in call.kwargs]:
        if not isinstance(a, A.Name):
            raise AxonTypeError("the loss's arguments must be names of model outputs or labels",
                                a.span)
    # Bound like any call (the same arity errors, at the loss line); a bound argument is its A.Name.
    kwargs = [(k.name, k.value, k.span) for k in call.kwargs]
    bound = el.bind(call, fn.name, *_signature(fn), list(call.args), kwargs)
    given = [(p, v.name) for p, (v, _span) in bound.items() if isinstance(v, A.Name)]
    params, args = tuple(p for p, _ in given), tuple(a for _, a in given)
    outputs, inputs = _declared(program.user.models[td.model])
    used = tuple(a for a in args if a in outputs)
    if not used:
        raise AxonNameError(f"the loss uses no output of '{td.model}'", call.span,
                            hint=f"outputs: {', '.join(outputs) or 'none'}")
    labels = tuple(dict.fromkeys(a for a in args if a not in outputs and a not in inputs))
    return LossSpec(call.func, args, params, used, labels, call.span)


def _signature(fn) -> tuple[tuple[str, ...], dict]:
    """The parameter names of a built-in or an Axon function, and which have defaults."""
    if isinstance(fn, A.FnDef):
        return tuple(p.name for p in fn.params), {p.name: None for p in fn.params if p.default is not None}
    return fn.params, fn.defaults


def _declared(model: A.ModelDef) -> tuple[list[str], list[str]]:
    """The names of a model's outputs and inputs, wherever they sit in its body."""
    outputs, inputs, todo = [], [], list(model.body)
    while todo:
        st = todo.pop()
        if isinstance(st, A.Output):
            outputs.append(st.name)
        elif isinstance(st, A.InputDecl):
            inputs.append(st.name)
        elif isinstance(st, A.For):
            todo.extend(st.body)
        elif isinstance(st, A.If):
            todo.extend(st.then + st.orelse)
    return outputs, inputs


def _const(e):
    """A constant option value: a number, string, bool, or a list of them."""
    if isinstance(e, (A.Num, A.Str, A.Bool)):
        return e.value
    if isinstance(e, A.Unary) and e.op == "-" and isinstance(e.operand, A.Num):
        return -e.operand.value
    if isinstance(e, A.ListLit):
        return tuple(_const(i) for i in e.items)
    raise AxonTypeError("an option's value must be a constant (number, string, bool or list)", e.span)


# --- the loss, in the model's graph ------------------------------------------------------------------
LOSS_OUTPUT = "loss"


def add_loss(el: Elaborator, td: A.TrainDef, spec: TrainSpec) -> None:
    """Append the train block's loss to the graph of `el` (an `Elaborator` that has just run the
    model): each label becomes an input typed from the loss function's declaration (`labels: i64[*lead]`
    after `logits: f32[*lead, classes]`), and the scalar loss becomes the output `loss`."""
    call = next(it.value for it in td.items if ALIASES.get(it.key, it.key) == "loss")
    model = el.frames[0]
    if LOSS_OUTPUT in el.output_names:
        raise AxonNameError(f"the model already has an output named '{LOSS_OUTPUT}'", spec.span)
    fn = el.visible(model).get(call.func)
    if not isinstance(fn, A.FnDef):
        raise AxonTypeError(f"the loss must call an Axon function, not the built-in '{call.func}'",
                            call.func_span)
    exprs = {p: _arg_expr(call, fn, p) for p in spec.loss.params}  # the binding checked in `_loss`
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
