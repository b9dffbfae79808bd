"""Compiled models inside `torch.autograd`: a compiled forward and a compiled backward behind one
`torch.autograd.Function`, so `loss.backward()` flows through Axon kernels and ordinary PyTorch alike.

>>> import axon, torch
>>> model = axon.compile("examples/mlp.axon")                          # doctest: +SKIP
>>> opt = torch.optim.Adam(model.parameters(), lr=1e-3)                 # doctest: +SKIP
>>> x = torch.nn.Linear(10, 64)(torch.randn(32, 10))                    # doctest: +SKIP
>>> torch.nn.functional.cross_entropy(model(x), labels).backward()     # doctest: +SKIP

Design note.

- When a call needs gradients (grad mode on and some floating-point input or parameter tensor requires
  them), the inputs and parameters that require grad are the `wrt` set. For each distinct set, the
  model's graph is split once by `passes.partition` into a forward graph (outputs plus `saved.<k>`) and
  a backward graph (`saved.<k>`, `dout.<output>` -> `grad.<name>`), both compiled to kernels and
  cached on the model. Other calls take the plain executable, untouched.
- The forward hands the backward only what the partition chose (`ctx.save_for_backward`), so the
  activations kept alive between forward and backward are the deliberate set, not every
  intermediate; torch's version counters catch an in-place change to any of them.
- Outputs the loss does not use arrive as None (grads are not materialized) and are fed to the
  backward as zeros. Integer outputs are non-differentiable; integer inputs never get gradients.
- Once differentiable: the backward is itself compiled kernels, not torch ops, so a second-order
  gradient (create_graph=True) raises instead of silently being wrong.
- An input or parameter that only outputs without a gradient depend on gets None, as in torch (so an
  optimizer with momentum or weight decay leaves it alone), not zeros.
- Running statistics (`update.<name>` outputs of a model compiled with training=True) are written back
  into `model.params` by `CompiledModel.run`, never handed to an optimizer.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from axon.driver import executable
from axon.ir import EvalError
from axon.ir.evaluate import check_names
from axon.passes.autodiff import DOUT_PREFIX, GRAD_PREFIX
from axon.passes.partition import Partition, partition
from axon.runtime import Executable, RunError


@dataclass(frozen=True)
class Differentiated:
    """A model's forward and backward for one set of `wrt` names, compiled."""

    partition: Partition
    forward: Executable
    backward: Executable
    inputs: tuple[str, ...]   # the model's inputs, in order
    params: tuple[str, ...]   # the model's parameters, in order
    outputs: tuple[str, ...]  # the model's outputs, in order
    reach: dict               # each differentiated name -> the outputs that depend on it


def needs_grad(model, inputs: Mapping[str, object]) -> bool:
    """Whether a call must record for autograd: grad mode on, and a floating-point input or parameter
    of the model that requires grad."""
    if not torch.is_grad_enabled():
        return False
    return bool(_wrt(model, inputs))


def run(model, inputs: Mapping[str, torch.Tensor], **options) -> dict[str, torch.Tensor]:
    """The model's named outputs, recorded for autograd (see the module note)."""
    try:
        check_names(model.graph, inputs, model.params)
    except EvalError as e:
        raise RunError(e.message) from None
    d = differentiated(model, _wrt(model, inputs))
    tensors = [inputs[n] for n in d.inputs] + [model.params[n] for n in d.params]
    outs = _Apply.apply(d, options, *tensors)
    return dict(zip(d.outputs, outs))


def differentiated(model, wrt) -> Differentiated:
    """The compiled forward/backward pair of `model` for the names `wrt`, made once per set."""
    cache = model.__dict__.setdefault("_differentiated", {})
    key = frozenset(wrt)
    if key not in cache:
        g = model.graph
        order = [n for n in [*g.inputs, *g.params] if n in key]
        p = partition(g, order)
        fusion = getattr(model, "fusion", True)  # as the model's own kernels were made
        forward, backward = (executable(h, model.device, fusion=fusion) for h in (p.forward, p.backward))
        cache[key] = Differentiated(p, forward, backward, tuple(g.inputs), tuple(g.params), tuple(g.outputs),
                                    _reach(g, key))
    return cache[key]


def _reach(g, names) -> dict[str, frozenset[str]]:
    """For each input/parameter in `names`, the outputs whose values depend on it."""
    depends: dict = {}
    for node in g.nodes:
        own = {node.name} if node.op.value in ("input", "param") and node.name in names else set()
        depends[node] = own.union(*(depends[i] for i in node.inputs))
    reach: dict[str, set[str]] = {name: set() for name in names}
    for out, node in g.outputs.items():
        for name in depends[node]:
            reach[name].add(out)
    return {name: frozenset(outs) for name, outs in reach.items()}


def _wrt(model, inputs: Mapping[str, object]) -> list[str]:
    """Names of the floating-point inputs and parameters whose tensors require grad."""
    g = model.graph
    given = [(name, inputs.get(name), node) for name, node in g.inputs.items()]
    given += [(name, model.params.get(name), node) for name, node in g.params.items()]
    return [name for name, t, node in given if isinstance(t, torch.Tensor) and t.requires_grad
            and node.dtype.is_float and t.is_floating_point()]


class _Apply(torch.autograd.Function):
    """forward: the compiled forward graph; backward: the compiled backward graph."""

    @staticmethod
    def forward(ctx, d: Differentiated, options: dict, *tensors: torch.Tensor):
        ctx.set_materialize_grads(False)
        n = len(d.inputs)
        inputs, params = dict(zip(d.inputs, tensors[:n])), dict(zip(d.params, tensors[n:]))
        out = d.forward(inputs, params, **options)
        p = d.partition
        kept = [inputs[k] if k in inputs else params[k] for k in p.kept]
        ctx.save_for_backward(*[out[s] for s in p.saved], *kept)
        ctx.d = d
        ctx.devices = [t.device for t in tensors]
        ctx.meta = {name: (out[name].shape, out[name].dtype, out[name].device) for name in p.outputs}
        results, seen = [], set()
        for name in d.outputs:
            t = out[name]
            if id(t) in seen or any(t is x for x in tensors):  # one tensor per output, never an input
                t = t.clone()
            seen.add(id(t))
            results.append(t)
        ctx.mark_non_differentiable(*[t for t in results if not t.is_floating_point()])
        return tuple(results)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):
        # torch runs a backward in grad mode exactly when create_graph=True: refuse, as a second-order
        # gradient through compiled kernels would silently be missing
        if torch.is_grad_enabled():
            raise RunError("a compiled model's backward is compiled kernels, not torch ops, so it has no "
                           "gradient of its own: create_graph=True (a gradient penalty, a Hessian) is not "
                           "supported through it")
        d: Differentiated = ctx.d
        p = d.partition
        given = dict(zip(d.outputs, grads))
        if all(given.get(name) is None for name in p.outputs):
            return (None, None) + (None,) * len(ctx.devices)
        stored = ctx.saved_tensors
        feeds = dict(zip(p.saved, stored))
        kept = dict(zip(p.kept, stored[len(p.saved):]))
        for name in p.outputs:
            g = given.get(name)
            shape, dtype, device = ctx.meta[name]
            feeds[DOUT_PREFIX + name] = torch.zeros(shape, dtype=dtype, device=device) if g is None else g
        bwd = d.backward.graph
        feeds.update({k: v for k, v in kept.items() if k in bwd.inputs})
        params = {k: v for k, v in kept.items() if k in bwd.params}
        out = d.backward(feeds, params)
        result = []
        for name, device in zip([*d.inputs, *d.params], ctx.devices):
            g = out.get(GRAD_PREFIX + name)
            unused = all(given.get(o) is None for o in d.reach.get(name, ()))  # as torch: None, not 0
            result.append(None if g is None or unused else g.to(device))
        return (None, None, *result)
