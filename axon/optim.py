"""Optimizers as IR, so forward, loss, backward and update compile into one training-step graph.

Each optimizer is a function that builds one parameter's update in a `GraphBuilder`: from the parameter
`p`, its gradient `g`, its state tensors (inputs of the step graph, typed like `p`, zero at the start),
the step count `t` (1 at the first update) and the learning rate `lr` (scalar inputs, so schedules and
Adam's bias correction need no recompile), it returns the new parameter and the new states. The rules are
torch.optim's, operation for operation. `make_update` applies one to every parameter; `Schedule` gives
the learning rate of each step on the host.

>>> from axon.ir import DType, GraphBuilder
>>> b = GraphBuilder()
>>> w = b.param("w", DType.F32, (3,)); gw = b.input("grad.w", DType.F32, (3,))
>>> new, inputs, states = make_update(b, {"w": w}, {"w": gw}, {"name": "adam", "lr": 1e-3})
>>> sorted(inputs), sorted(b.build().inputs)
(['state.m.w', 'state.v.w'], ['grad.w', 'lr', 'state.m.w', 'state.v.w', 'step'])
>>> Schedule(0.1, "step", step_size=2, gamma=0.5)(3)  # step 3 is the first of the second period
0.05
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from axon.frontend.errors import AxonNameError, AxonValueError
from axon.ir import DType, GraphBuilder, Node
from axon.ir.dtypes import promote
from axon.ir.errors import did_you_mean

STEP_INPUT, LR_INPUT = "step", "lr"
# `step` and `lr` are f64 scalars, as torch keeps them in Python floats: in f32, 1 - 0.999**t loses four
# digits at t = 1 and lr = 0.1 is off by 1.5e-8. Coefficients are computed from them in f64, then cast
# to each parameter's dtype (what torch does when it passes a float scalar to an f32 kernel).
SCALAR_DTYPE = DType.F64
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: scale = max_norm / (total_norm + 1e-6)
SCHEDULES = ("constant", "step", "cosine")
# Options read on the host (the base rate and its schedule) or before the update (clipping): every
# optimizer takes them, and none reaches an update rule.
SCHEDULE_OPTIONS = ("warmup", "step_size", "gamma", "eta_min", "start_factor")  # fields of `Schedule`
HOST_OPTIONS = ("lr", "schedule", *SCHEDULE_OPTIONS)
CLIP_OPTION = "clip"


def state_input_name(slot: str, param: str) -> str:
    """The step graph's input holding one state tensor of one parameter: `state.m.fc1.w`."""
    return f"state.{slot}.{param}"


# --- the update rules (one parameter each) ------------------------------------------------------------
# Written with torch's in-place ops (lerp, addcmul, addcdiv) spelled out in their order of evaluation.

def _scalar(b: GraphBuilder, value: Node, like: Node) -> Node:
    """An f64 scalar coefficient in the parameter's dtype."""
    return b.cast(value, like.dtype)


def _l2(b: GraphBuilder, g: Node, p: Node, weight_decay: float) -> Node:
    """torch's (coupled) weight decay: the L2 penalty's gradient `wd * p` added to `g`."""
    return b.add(g, b.mul(p, weight_decay)) if weight_decay != 0 else g


def _lerp(b: GraphBuilder, start: Node, end: Node, weight: float) -> Node:
    """torch.lerp with a constant weight, in the form torch picks for it (exact at the nearer end)."""
    if weight < 0.5:
        return b.add(start, b.mul(b.sub(end, start), weight))
    return b.sub(end, b.mul(b.sub(end, start), 1.0 - weight))


def _addcmul(b: GraphBuilder, x: Node, value, t1: Node, t2: Node) -> Node:
    return b.add(x, b.mul(b.mul(value, t1), t2))      # x + value * t1 * t2


def _addcdiv(b: GraphBuilder, x: Node, value, t1: Node, t2: Node) -> Node:
    return b.add(x, b.div(b.mul(value, t1), t2))      # x + value * t1 / t2


def sgd(b: GraphBuilder, p: Node, g: Node, state: Mapping[str, Node], t: Node, lr: Node, *,
        momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
        nesterov: bool = False) -> tuple[Node, dict[str, Node]]:
    """torch.optim.SGD. The momentum buffer is `g` itself at the first step (t == 1), then
    `momentum * buf + (1 - dampening) * g`."""
    g = _l2(b, g, p, weight_decay)
    new: dict[str, Node] = {}
    if momentum != 0:
        later = b.add(b.mul(state["buf"], momentum), g if dampening == 0 else b.mul(g, 1.0 - dampening))
        buf = new["buf"] = b.where(b.eq(t, 1.0), g, later)
        g = b.add(g, b.mul(buf, momentum)) if nesterov else buf
    return b.sub(p, b.mul(g, _scalar(b, lr, p))), new


def adam(b: GraphBuilder, p: Node, g: Node, state: Mapping[str, Node], t: Node, lr: Node, *,
         betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
         decoupled: bool = False) -> tuple[Node, dict[str, Node]]:
    """torch.optim.Adam (and AdamW with `decoupled`: `p *= 1 - lr * wd` instead of L2 in `g`)."""
    beta1, beta2 = betas
    if decoupled and weight_decay != 0:
        p = b.mul(p, _scalar(b, b.sub(1.0, b.mul(lr, weight_decay)), p))
    elif weight_decay != 0:
        g = _l2(b, g, p, weight_decay)
    m = _lerp(b, state["m"], g, 1.0 - beta1)
    v = _addcmul(b, b.mul(state["v"], beta2), 1.0 - beta2, g, g)
    step_size = b.div(lr, b.sub(1.0, b.pow(beta1, t)))                    # lr / bias_correction1
    bias2_sqrt = b.sqrt(b.sub(1.0, b.pow(beta2, t)))
    denom = b.add(b.div(b.sqrt(v), _scalar(b, bias2_sqrt, p)), eps)        # eps outside the sqrt
    return _addcdiv(b, p, _scalar(b, b.neg(step_size), p), m, denom), {"m": m, "v": v}


def adamw(b: GraphBuilder, p: Node, g: Node, state: Mapping[str, Node], t: Node, lr: Node, *,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 1e-2) -> tuple[Node, dict[str, Node]]:
    """torch.optim.AdamW: Adam with decoupled weight decay (torch's default 1e-2)."""
    return adam(b, p, g, state, t, lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled=True)


def rmsprop(b: GraphBuilder, p: Node, g: Node, state: Mapping[str, Node], t: Node, lr: Node, *,
            alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
            weight_decay: float = 0.0) -> tuple[Node, dict[str, Node]]:
    """torch.optim.RMSprop, not centered."""
    g = _l2(b, g, p, weight_decay)
    v = _addcmul(b, b.mul(state["v"], alpha), 1.0 - alpha, g, g)
    avg = b.add(b.sqrt(v), eps)
    if momentum > 0:
        buf = b.add(b.mul(state["buf"], momentum), b.div(g, avg))
        return b.sub(p, b.mul(buf, _scalar(b, lr, p))), {"v": v, "buf": buf}
    return _addcdiv(b, p, _scalar(b, b.neg(lr), p), g, avg), {"v": v}


def adagrad(b: GraphBuilder, p: Node, g: Node, state: Mapping[str, Node], t: Node, lr: Node, *,
            lr_decay: float = 0.0, eps: float = 1e-10,
            weight_decay: float = 0.0) -> tuple[Node, dict[str, Node]]:
    """torch.optim.Adagrad with its initial accumulator 0 (the state starts at zero)."""
    g = _l2(b, g, p, weight_decay)
    if lr_decay != 0:
        lr = b.div(lr, b.add(b.mul(b.sub(t, 1.0), lr_decay), 1.0))      # lr / (1 + (t - 1) * lr_decay)
    total = b.add(state["sum"], b.mul(g, g))
    std = b.add(b.sqrt(total), eps)
    return _addcdiv(b, p, _scalar(b, b.neg(lr), p), g, std), {"sum": total}


# --- the registry -------------------------------------------------------------------------------------

UpdateRule = Callable[..., tuple[Node, dict[str, Node]]]


@dataclass(frozen=True)
class Optimizer:
    """An update rule with what the step graph needs to know about it."""

    name: str
    update: UpdateRule              # (b, p, g, state, t, lr, **options) -> (new p, new state)
    state: tuple[str, ...]          # its state slots, each a tensor typed like the parameter
    defaults: Mapping[str, object]  # the update's options, with torch's defaults
    lr: float                       # torch's default learning rate
    kept_if: Mapping[str, str] = field(default_factory=dict)  # slot -> the option that must be non-zero

    def slots(self, options: Mapping[str, object]) -> tuple[str, ...]:
        """The state slots under these options: SGD keeps no buffer without momentum."""
        return tuple(s for s in self.state if s not in self.kept_if or options[self.kept_if[s]])

    def options(self, given: Mapping[str, object]) -> dict[str, object]:
        """The update's options: `given` (less the host's) over the defaults."""
        for key in given:
            if key not in self.defaults and key not in HOST_OPTIONS and key != CLIP_OPTION:
                known = (*self.defaults, *HOST_OPTIONS, CLIP_OPTION)
                raise AxonNameError(f"'{self.name}' has no option '{key}'", hint=did_you_mean(key, known))
        opts = {k: given.get(k, v) for k, v in self.defaults.items()}
        if opts.get("nesterov") and opts.get("momentum", 0) <= 0:
            raise AxonValueError("nesterov = true needs a momentum > 0")
        return opts


_SGD = {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}
_ADAM = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
# Slot names (torch's in brackets): buf (momentum_buffer), m (exp_avg), v (exp_avg_sq, square_avg),
# sum (sum).
OPTIMIZERS: dict[str, Optimizer] = {o.name: o for o in (
    Optimizer("sgd", sgd, ("buf",), _SGD, 1e-3, {"buf": "momentum"}),
    Optimizer("adam", adam, ("m", "v"), _ADAM, 1e-3),
    Optimizer("adamw", adamw, ("m", "v"), {**_ADAM, "weight_decay": 1e-2}, 1e-3),
    Optimizer("rmsprop", rmsprop, ("v", "buf"),
              {"alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "weight_decay": 0.0}, 1e-2, {"buf": "momentum"}),
    Optimizer("adagrad", adagrad, ("sum",), {"lr_decay": 0.0, "eps": 1e-10, "weight_decay": 0.0}, 1e-2),
)}


def optimizer(name: str) -> Optimizer:
    if name not in OPTIMIZERS:
        raise AxonNameError(f"unknown optimizer '{name}'",
                            hint=did_you_mean(name, OPTIMIZERS) or f"known: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


# --- gradient clipping and the whole update -----------------------------------------------------------

def clip_grad_norm(b: GraphBuilder, grads: Mapping[str, Node],
                   max_norm: float | Node) -> tuple[dict[str, Node], Node]:
    """torch.nn.utils.clip_grad_norm_ in the graph: every gradient scaled by
    min(1, max_norm / (total_norm + 1e-6)), where total_norm is the 2-norm of all of them together.
    Returns the clipped gradients and the total norm (before clipping)."""
    if not grads:
        return {}, b.const(0.0, DType.F32)
    # The norm of each tensor, as torch, then of them together (a scalar's is its magnitude).
    norms = [b.sqrt(b.sum(b.mul(g, g)) if g.shape else b.mul(g, g)) for g in grads.values()]
    dtype = norms[0].dtype
    for n in norms[1:]:
        dtype = promote(dtype, n.dtype)
    stacked = b.concat([b.reshape(b.cast(n, dtype), (1,)) for n in norms], 0)
    total = b.sqrt(b.sum(b.mul(stacked, stacked)))
    scale = b.minimum(b.div(max_norm, b.add(total, CLIP_EPS)), 1.0)
    return {name: b.mul(g, b.cast(scale, g.dtype)) for name, g in grads.items()}, total


def make_update(b: GraphBuilder, params: Mapping[str, Node], grads: Mapping[str, Node],
                spec: Mapping[str, object]) -> tuple[dict[str, Node], dict[str, Node], dict[str, Node]]:
    """The optimizer step of every parameter, in `b`.

    `spec` is the optimizer's name and options: `{"name": "adam", "lr": 1e-3, "clip": 1.0, ...}` (from a
    train block: `{"name": s.optimizer.name, **dict(s.optimizer.kwargs)}`). Declares the f64 scalar inputs
    `step` (1 at the first update) and `lr` (the rate of this step, from `Schedule`) and, for each state
    slot of each parameter, an input `state.<slot>.<param>` typed like the parameter (feed zeros first).
    Returns the new parameters by name, the state inputs and the new states (both by input name).
    """
    opt = optimizer(str(spec.get("name")))
    options = opt.options({k: v for k, v in spec.items() if k != "name"})
    assert set(params) == set(grads), f"parameters without gradients: {set(params) ^ set(grads)}"
    t = b.input(STEP_INPUT, SCALAR_DTYPE, ())
    lr = b.input(LR_INPUT, SCALAR_DTYPE, ())
    if spec.get(CLIP_OPTION) is not None:
        grads, _ = clip_grad_norm(b, {k: grads[k] for k in params}, spec[CLIP_OPTION])
    new_params: dict[str, Node] = {}
    state_inputs: dict[str, Node] = {}
    new_states: dict[str, Node] = {}
    for name, p in params.items():
        state = {s: b.input(state_input_name(s, name), p.dtype, p.shape) for s in opt.slots(options)}
        new_params[name], new = opt.update(b, p, grads[name], state, t, lr, **options)
        for slot, node in state.items():
            state_inputs[node.name] = node
            new_states[node.name] = new[slot]
    return new_params, state_inputs, new_states


# --- learning-rate schedules, on the host -------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    """The learning rate of each optimizer step, as torch's schedulers give it.

    `kind` is "constant", "step" (StepLR: times `gamma` every `step_size` steps) or "cosine"
    (CosineAnnealingLR from `lr` to `eta_min` over the steps after the warm-up, `total` steps in all).
    A `warmup` of W steps goes first (LinearLR from `start_factor * lr` to `lr`), and the schedule starts
    after it, as in SequentialLR([LinearLR(start_factor, total_iters=W), schedule], milestones=[W]).
    Past the end, cosine stays at `eta_min` (torch's would rise again).

    >>> s = Schedule(1.0, "cosine", total=4)
    >>> [round(s(t), 3) for t in range(1, 6)]
    [1.0, 0.854, 0.5, 0.146, 0.0]
    """

    lr: float
    kind: str = "constant"
    total: int | None = None
    step_size: int | None = None
    gamma: float = 0.1
    eta_min: float = 0.0
    warmup: int = 0
    start_factor: float = 1.0 / 3.0  # torch's LinearLR default

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise AxonNameError(f"unknown schedule '{self.kind}'",
                                hint=did_you_mean(self.kind, SCHEDULES) or f"known: {', '.join(SCHEDULES)}")
        if self.kind == "step" and (self.step_size is None or self.step_size < 1):
            raise AxonValueError(f"schedule = \"step\" needs a step_size >= 1, got {self.step_size}")
        if self.kind == "cosine" and (self.total is None or self.total <= self.warmup):
            raise AxonValueError(f"schedule = \"cosine\" needs more steps in all ({self.total}) than the "
                                 f"warm-up ({self.warmup})")
        if self.warmup < 0 or not 0 < self.start_factor <= 1:
            raise AxonValueError(f"the warm-up needs warmup >= 0 and start_factor in (0, 1], got "
                                 f"{self.warmup} and {self.start_factor}")

    @classmethod
    def of(cls, spec: Mapping[str, object], total: int | None = None) -> Schedule:
        """The schedule of an optimizer spec (as `make_update` takes it) over `total` steps."""
        opt = optimizer(str(spec.get("name")))
        fields = {k: spec[k] for k in SCHEDULE_OPTIONS if k in spec}
        return cls(float(spec.get("lr", opt.lr)), str(spec.get("schedule", "constant")), total, **fields)

    def __call__(self, t: int) -> float:
        """The learning rate of optimizer step `t` (1 at the first, as the graph's `step` input)."""
        epoch = t - 1  # the schedulers' count: how many times they have stepped before this update
        if epoch < self.warmup:
            return self.lr * (self.start_factor + (1.0 - self.start_factor) * epoch / self.warmup)
        epoch -= self.warmup
        if self.kind == "step":
            return self.lr * self.gamma ** (epoch // self.step_size)
        if self.kind == "cosine":
            span = self.total - self.warmup
            cos = math.cos(math.pi * min(epoch, span) / span)
            return self.eta_min + (self.lr - self.eta_min) * (1.0 + cos) / 2.0
        return self.lr
