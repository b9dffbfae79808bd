"""The PyTorch twin of a graph: every IR node run as the torch op of its reference rule (the rules of
`axon.ir.evaluate`), on the device, with no Axon in the loop. Any model Axon compiles has this PyTorch
counterpart computing the same thing; the bench checks the two against each other before timing."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from axon.ir import Graph, Node, OpKind
from axon.ir.evaluate import EvalContext, run_op
from axon.ir.ops import OPS
from axon.ir.shapes import concrete

K = OpKind
# The clean-up passes the PyTorch twin's graph goes through (what a person writing the model in PyTorch
# would have written: no folded constants left, no duplicate work); never Axon's fusion.
TWIN_PIPELINE = ("fold", "simplify", "cse", "dce")


@dataclass
class Twin:
    """A graph as a plain PyTorch function: `fn(*inputs, *params) -> tuple of outputs`, in the orders
    of `inputs`, `params` and `outputs`. Traceable by torch.compile (no host syncs, no Axon types in the
    call) and differentiable by autograd."""

    fn: Callable
    inputs: list[str]
    params: list[str]
    outputs: list[str]

    def __call__(self, inputs: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]) -> dict:
        args = [inputs[n] for n in self.inputs] + [params[n] for n in self.params]
        return dict(zip(self.outputs, self.fn(*args)))


def twin(graph: Graph, env: Mapping[str, int], device: torch.device, *, exact_rand: bool = False) -> Twin:
    """The PyTorch twin of `graph` at the concrete sizes `env`.

    Literals (const, tensor, iota) are made once on the device. `rand` draws with torch.rand on the
    device (fast, other numbers than Axon's), or with `exact_rand` Axon's own Philox stream through the
    reference rule on the host (for checking, never timed). Index ops skip the reference's host-side
    range check (Axon checks the inputs once before timing)."""
    sources = list(graph.inputs.values()) + list(graph.params.values())
    slot = {node: i for i, node in enumerate(sources)}
    last_use: dict[Node, int] = {}
    for i, node in enumerate(graph.nodes):
        for src in node.inputs:
            last_use[src] = i
    keep = set(graph.outputs.values())
    steps = []   # (slot of the result, op function, slots of the operands, slots to free after)
    constants: dict[int, torch.Tensor] = {}
    for i, node in enumerate(graph.nodes):
        if node.op in (K.INPUT, K.PARAM):
            continue
        slot[node] = len(slot)
        ctx = EvalContext(dict(env), out=node.type)
        if node.op in (K.CONST, K.TENSOR, K.IOTA):
            constants[slot[node]] = run_op(node.op, node.attrs, node.type, [], ctx).to(device)
            continue
        free = tuple(slot[s] for s in set(node.inputs) if last_use.get(s) == i and s not in keep)
        steps.append((slot[node], _op_fn(node, ctx, device, exact_rand), tuple(slot[s] for s in node.inputs),
                      free))
    out_slots = tuple(slot[n] for n in graph.outputs.values())
    width = len(slot)

    def fn(*args):
        values = list(args) + [None] * (width - len(args))
        for s, t in constants.items():
            values[s] = t
        for s, op, operands, free in steps:
            values[s] = op([values[j] for j in operands])
            for j in free:
                values[j] = None
        return tuple(values[s] for s in out_slots)

    return Twin(fn, list(graph.inputs), list(graph.params), list(graph.outputs))


def _op_fn(node: Node, ctx: EvalContext, device: torch.device, exact_rand: bool) -> Callable:
    """One node as a function of its operand tensors."""
    attrs, dtype = node.attrs, node.dtype.torch
    held = ctx.compute_dtype(node.dtype)

    def hold(x):
        x = x.to(dtype)
        return x if held == dtype else x.to(held)

    if node.op == K.RAND:
        shape = concrete(attrs.shape, ctx.env)
        if exact_rand:
            return lambda xs: run_op(node.op, attrs, node.type, [x.cpu() for x in xs], ctx).to(device)
        return lambda xs: hold(torch.rand(shape, device=device, dtype=torch.float32))
    if node.op == K.GATHER:
        return lambda xs: hold(torch.gather(xs[0], attrs.axis, xs[1].to(torch.int64)))
    if node.op == K.TAKE:
        axis = attrs.axis

        def take(xs):
            x, idx = xs
            out = torch.index_select(x, axis, idx.reshape(-1).to(torch.int64))
            return hold(out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:])))
        return take
    if node.op == K.PAD and node.dtype.torch != torch.bool:
        import torch.nn.functional as F

        flat = [p for lo_hi in reversed(attrs.pads) for p in lo_hi]
        value = ctx.literal(attrs.value, node.dtype).item()  # once, on the host
        return lambda xs: hold(F.pad(xs[0], flat, value=value))
    ref = OPS[node.op].ref
    return lambda xs: hold(ref(attrs, xs, ctx))


def twin_graph(graph: Graph) -> Graph:
    """The graph the twin runs: `graph` through the clean-up passes only."""
    from axon.driver import optimize
    from axon.passes.manager import registered_passes

    known = registered_passes()
    pipeline = ",".join(p for p in TWIN_PIPELINE if p in known)
    return optimize(graph, pipeline, verify=True, out=lambda *a, **k: None)[0] if pipeline else graph
