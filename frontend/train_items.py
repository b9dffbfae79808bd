"""The parts of a train block's settings that several blocks share: configuration calls such as
`adam(lr = 1e-3)` with their options checked, counts, constants, and the loss call checked against the
model (`check_loss`). Used by `train.py` (the block itself) and `gan_block.py` (a GAN's two steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from axon.ir import Span
from axon.ir.errors import did_you_mean

from . import ast as A
from .elaborator import Elaborator, Frame
from .errors import ArityError, AxonNameError, AxonTypeError, AxonValueError
from .values import Scope, show


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
    call: A.Call = field(repr=False, compare=False)


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

def call_spec(it: A.TrainItem, what: str) -> CallSpec:
    if not isinstance(it.value, A.Call):
        raise AxonTypeError(f"{what} must be a call such as name(option = value)", it.value.span)
    call = it.value
    if call.args:
        raise ArityError(f"'{call.func}' takes options by name (name = value)", call.args[0].span)
    return CallSpec(call.func, tuple((k.name, const_value(k.value)) for k in call.kwargs), call.span, call)


def known_options(spec: CallSpec, table: dict, what: str) -> None:
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
            raise kind(f"{OPTION_WORDS.get(key, repr(key))} must be {words}, got {shown(value)}", where)
    _option_conflicts(spec)


def shown(v) -> str:
    return f'"{v}"' if isinstance(v, str) else show(v)


def _option_conflicts(spec: CallSpec) -> None:
    """Options that each are fine but do not go together: an option that would be ignored, a schedule
    missing its period, nesterov without momentum."""
    given = dict(spec.kwargs)
    where = {k.name: k.span for k in spec.call.kwargs}
    for key, (other, value) in APPLIES_WITH.items():
        if key in given and given.get(other) != value:
            raise ArityError(f"'{key}' applies only with {other} = {shown(value)}", where[key])
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
        return None if v in SCHEDULES else (AxonValueError, "one of " + ", ".join(map(shown, SCHEDULES)))
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


def count_value(it: A.TrainItem, what: str, least: int = 1, most: int | None = None) -> int:
    most = MAX_COUNT if most is None else most
    v = const_value(it.value)
    if isinstance(v, bool) or not isinstance(v, int):
        raise AxonTypeError(f"'{what}' must be an int, got {show(v)}", it.value.span)
    if not least <= v <= most:
        raise AxonValueError(f"'{what}' must be in [{least}, {most:,}], got {v}", it.value.span)
    return v


def check_loss(program, model: str, it: A.TrainItem) -> LossSpec:
    """The loss call of `it` (`loss = f(out, label)`) checked against `model`'s outputs and inputs."""
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
    outputs, inputs = declared(program.user.models[model])
    used = tuple(a for a in args if a in outputs)
    if not used:
        raise AxonNameError(f"the loss uses no output of '{model}'", call.span,
                            hint=f"outputs: {', '.join(outputs) or 'none'}")
    labels = tuple(dict.fromkeys(a for a in args if a not in outputs and a not in inputs))
    return LossSpec(call.func, args, params, used, labels, call.span, call)


def _signature(fn) -> tuple[tuple[str, ...], dict]:
    """The parameter names of a built-in or an Axon function, and which have defaults."""
    if isinstance(fn, A.FnDef):
        return tuple(p.name for p in fn.params), {p.name: None for p in fn.params if p.default is not None}
    return fn.params, fn.defaults


def declared(model: A.ModelDef) -> tuple[list[str], list[str]]:
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


def const_value(e):
    """A constant option value: a number, string, bool, or a list of them."""
    if isinstance(e, (A.Num, A.Str, A.Bool)):
        return e.value
    if isinstance(e, A.Unary) and e.op == "-" and isinstance(e.operand, A.Num):
        return -e.operand.value
    if isinstance(e, A.ListLit):
        return tuple(const_value(i) for i in e.items)
    raise AxonTypeError("an option's value must be a constant (number, string, bool or list)", e.span)
