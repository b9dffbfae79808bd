"""A plan: a graph's launch list at one set of concrete sizes, made ready so that a call does almost nothing
in Python but call the kernels.

Made once per set of sizes (`make`): every launch prepared (grid, strides, block sizes), every
intermediate placed in one arena (`memory`), literal tensors made, and each launch turned into a `Step`:
the kernel's call bound to its grid, its scalars and options fixed, and each tensor argument either a
tensor fixed for the plan (an intermediate's view of the arena, a literal) or a slot in the call's list
of *dynamic* tensors (the inputs and parameters given, the outputs made fresh). A call then checks its
tensors against the plan's signature, fills that list and runs the steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from axon.codegen import CompiledKernel, compile_group
from axon.codegen.cache import needs_wide
from axon.codegen.launch import ArgView, Launch
from axon.ir import Graph, Node, OpKind
from axon.ir.evaluate import EvalContext
from axon.ir.shapes import concrete
from .memory import MemoryPlan, allocate_arena, plan_graph

K = OpKind


@dataclass
class Step:
    """One launch made ready: `call(*args, *scalars, **meta)` with args[pos] = dynamic[i] (seen through
    `view` when it is one with an offset) for each (pos, i, view) of `slots`."""

    kernel: CompiledKernel
    launch: Launch
    call: object
    args: tuple                                  # tensors fixed for the plan; None where a slot goes
    slots: tuple[tuple[int, int, ArgView | None], ...]
    scalars: tuple

    def arguments(self, dynamic: list[torch.Tensor]) -> list:
        args = list(self.args)
        for pos, i, view in self.slots:
            args[pos] = dynamic[i] if view is None else view.of(dynamic[i])
        return args

    def run(self, dynamic: list[torch.Tensor]) -> None:
        if self.call is None:  # an empty grid: nothing to compute
            return
        if not self.slots:  # every tensor fixed for the plan
            self.call(*self.args, *self.scalars, **self.launch.meta)
            return
        args = list(self.args)
        for pos, i, view in self.slots:
            args[pos] = dynamic[i] if view is None else view.of(dynamic[i])
        self.call(*args, *self.scalars, **self.launch.meta)


@dataclass
class Plan:
    """The launch list at one set of concrete sizes, with the buffers it reuses across calls."""

    env: dict[str, int]
    launches: list[tuple[CompiledKernel, Launch]]  # each kernel with its prepared launch
    buffers: dict[Node, torch.Tensor]      # intermediates: typed views into `arena`, made once
    constants: dict[Node, torch.Tensor]    # literal tensors, made once
    fresh: list[Node]                      # graph outputs made by kernels: a new tensor each call
    index_checks: list[tuple[str, int, int, str]]  # (input name, lowest, axis size, what) per index input
    memory: MemoryPlan | None = None       # where each buffer lives in the arena
    arena: torch.Tensor | None = None      # the bytes every buffer is a view of
    bound: list[Node] = field(default_factory=list)    # inputs then parameters: dynamic[0:len(bound)]
    signature: list[tuple] = field(default_factory=list)  # (name, is_input, node, dtype, shape) of `bound`
    fresh_specs: list[tuple] = field(default_factory=list)  # (shape, dtype) of each fresh output
    steps: list[Step] = field(default_factory=list)
    outputs: list[tuple[str, int | None, torch.Tensor | None]] = field(default_factory=list)
    ready: list[list[str]] = field(default_factory=list)  # per step: the graph outputs it finishes
    tuned: bool = False                    # each launch's config chosen (on a GPU, at the first call)

    def match(self, inputs, params, device) -> dict[Node, torch.Tensor] | None:
        """The call's tensors by node if they are exactly what this plan was made for (names, dtypes,
        shapes, device, contiguous), else None (the caller then checks them one by one)."""
        if len(inputs) + len(params) != len(self.signature):
            return None
        where = -1 if device.type == "cpu" else device.index  # Tensor.get_device(): -1 on the CPU
        values = {}
        for name, is_input, node, dtype, shape in self.signature:
            t = (inputs if is_input else params).get(name)
            if not isinstance(t, torch.Tensor) or t.dtype is not dtype or t.shape != shape \
                    or t.get_device() != where or not t.is_contiguous():
                return None
            values[node] = t
        return values


def make(graph: Graph, kernels: list[CompiledKernel], env: dict[str, int], device: torch.device,
         reuse: bool) -> Plan:
    outputs = set(graph.outputs.values())
    memory = plan_graph([k.group for k in kernels], graph, env, reuse)
    arena, buffers = allocate_arena(memory, env, device)
    constants: dict[Node, torch.Tensor] = {}
    for node in graph.nodes:
        if node.op == K.TENSOR:
            value = EvalContext().literal(node.attrs.data, node.dtype).reshape(node.shape)
            constants[node] = value.to(node.dtype.torch).to(device)
    launches, fresh = [], []
    for kernel in kernels:
        if needs_wide(kernel.group, env):
            kernel = compile_group(kernel.group, wide=True)
        launch = kernel.prepare(env)
        fresh += [node for node in launch.outputs if node in outputs]
        assert all(n in buffers for n in launch.outputs if n not in outputs), "an output not planned"
        launches.append((kernel, launch))
    plan = Plan(env, launches, buffers, constants, fresh, index_inputs(kernels, env), memory, arena)
    plan.bound = [*graph.inputs.values(), *graph.params.values()]
    plan.signature = [(n.name, n.op == K.INPUT, n, n.dtype.torch, torch.Size(concrete(n.shape, env)))
                      for n in plan.bound]
    plan.fresh_specs = [(tuple(concrete(n.shape, env)), n.dtype.torch) for n in fresh]
    slot = {n: i for i, n in enumerate([*plan.bound, *fresh])}
    plan.steps = [step(kernel, launch, slot, {**buffers, **constants}) for kernel, launch in launches]
    plan.outputs = [(name, slot.get(node), constants.get(node)) for name, node in graph.outputs.items()]
    plan.ready = [[name for name, node in graph.outputs.items() if node in launch.outputs]
                  for _, launch in launches]
    return plan


def step(kernel: CompiledKernel, launch: Launch, slot: dict[Node, int],
         fixed: dict[Node, torch.Tensor]) -> Step:
    """`launch` made ready: fixed tensors viewed once; a dynamic tensor is passed as it is when its view
    starts where it does (the kernel gets strides and sizes as scalars, a pointer is all it reads of a
    tensor), else viewed per call."""
    args: list = []
    slots = []
    for pos, v in enumerate((*launch.inputs, *(ArgView(o) for o in launch.outputs))):
        if v.node in fixed:
            args.append(v.of(fixed[v.node]))
        else:
            args.append(None)
            slots.append((pos, slot[v.node], v if v.offset else None))
    call = kernel.fn[launch.grid] if kernel.fn is not None and math.prod(launch.grid) else None
    return Step(kernel, launch, call, tuple(args), tuple(slots), tuple(launch.scalars))


def index_inputs(kernels: list[CompiledKernel], env) -> list[tuple[str, int, int, str]]:
    """Graph inputs used (directly or through views) as the index of a gather or take (which also
    takes negative indices, counted from the end)."""
    checks = []
    for k in kernels:
        reads = {a.node: a.buffer for a in k.group.inputs}
        for node in k.group.nodes:  # a fused gather sits anywhere in its group
            index = reads.get(node.inputs[1]) if node.op in (K.GATHER, K.TAKE) else None
            if index is not None and index.op == K.INPUT:
                size = concrete(node.inputs[0].shape, env)[node.attrs.axis]
                lowest = -size if node.op == K.TAKE else 0
                checks.append((index.name, lowest, size, f"{node.op} (axis {node.attrs.axis})"))
    return checks
