"""An executable: a graph's kernels as a launch list, run on tensors.

Compiling makes one kernel per group (`codegen`). The first call at a set of concrete sizes makes a
*plan*: every launch prepared (grid, strides, block sizes — no Python work left for the call but the
call itself) and every intermediate buffer placed in one arena, where buffers never live at the same
time share bytes (`memory`); later calls at the same sizes reuse it. A call checks the inputs (names,
dtypes, shapes, index ranges), allocates the outputs and runs the list.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from axon.codegen import CompiledKernel, compile_group, groups
from axon.codegen.cache import allocate, needs_wide
from axon.codegen.launch import Launch
from axon.ir import AxonError, EvalError, Graph, Node, OpKind
from axon.ir.evaluate import EvalContext, _check_bound, bind_symbols, check_names
from axon.ir.shapes import concrete
from .device import choose
from .memory import MemoryPlan, allocate_arena, plan_graph

K = OpKind
NO_REUSE = "AXON_NO_REUSE"  # set to 1: every intermediate gets bytes of its own (to rule reuse out)


class RunError(AxonError):
    """Inputs a compiled model cannot run on: missing, unknown, of the wrong dtype or shape, or indices
    out of range."""


@dataclass
class Plan:
    """The launch list at one set of concrete sizes, with the buffers it reuses across calls."""

    env: dict[str, int]
    launches: list[tuple[CompiledKernel, Launch]]  # each kernel with its prepared launch
    buffers: dict[Node, torch.Tensor]      # intermediates: typed views into `arena`, made once
    constants: dict[Node, torch.Tensor]    # literal tensors, made once
    fresh: list[Node]                      # graph outputs made by kernels: a new tensor each call
    index_checks: list[tuple[str, int, str]]  # (input name, axis size, what) for index inputs
    memory: MemoryPlan | None = None       # where each buffer lives in the arena
    arena: torch.Tensor | None = None      # the bytes every buffer is a view of


class Executable:
    """`graph` compiled to kernels for `device` (None: CUDA if present, else the interpreter).

    `reuse=False` (or the environment variable AXON_NO_REUSE=1) gives every intermediate bytes of its
    own instead of sharing them by liveness: the same results, more memory.
    """

    def __init__(self, graph: Graph, device: str | torch.device | None = None, *, reuse: bool | None = None,
                 kernel_groups=None):
        self.graph = graph
        self.device = choose(device)
        self.reuse = os.environ.get(NO_REUSE, "") in ("", "0") if reuse is None else reuse
        # the kernels: a fusion plan's groups (codegen.fused_groups), else one kernel per node
        chosen = groups(graph) if kernel_groups is None else kernel_groups
        self.kernels: list[CompiledKernel] = [compile_group(g) for g in chosen]
        self._plans: dict[tuple, Plan] = {}

    def __call__(self, inputs: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor] | None = None,
                 *, poison: bool = False, check_indices: bool = True) -> dict[str, torch.Tensor]:
        """Run on named inputs and parameters; returns the named outputs (tensors on the device).

        `poison` fills every buffer with NaN (the largest integer for integers) right before the launch
        that writes it (tests: an element no kernel writes shows, never masked by an earlier buffer's
        values in the same bytes).
        `check_indices` checks on the host that index inputs (token ids, labels) are in range; kernels
        never read out of bounds, but an out-of-range index would give NaN or 0 silently.
        """
        values, plan = self.bind(inputs, params, check_indices=check_indices)
        env = plan.env
        values.update(plan.constants)
        values.update(plan.buffers)
        for node in plan.fresh:
            values[node] = allocate(node, env, self.device, poison)
        for kernel, launch in plan.launches:
            if poison:
                for node in launch.outputs:
                    if node in plan.buffers:
                        _poison(plan.buffers[node])
            launch.run(kernel.fn, values)
        # a literal is shared by every call: the caller gets a copy of it
        return {name: values[node].clone() if node.op == K.TENSOR else values[node]
                for name, node in self.graph.outputs.items()}

    def bind(self, inputs: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor] | None = None,
             *, check_indices: bool = True) -> tuple[dict[Node, torch.Tensor], Plan]:
        """A call's checks without its launches: the inputs and parameters by graph node (on the device,
        contiguous) and the plan at their sizes, made if new (`cuda_graphs` replays that plan)."""
        values = self._bind(inputs, params or {})
        env = bind_symbols(self.graph, {n: values[self.graph.inputs[n]] for n in self.graph.inputs})
        plan = self.plan(env)
        if check_indices:
            self._check_indices(plan, inputs)
        return values, plan

    def plan(self, env: dict[str, int]) -> Plan:
        key = tuple(sorted(env.items()))
        if key not in self._plans:
            self._plans[key] = self._make_plan(dict(env))
        return self._plans[key]

    def memory_plan(self, env: dict[str, int]) -> MemoryPlan:
        """Where each intermediate lives at the sizes `env` (`memory.format_plan` prints it)."""
        return plan_graph([k.group for k in self.kernels], self.graph, env, self.reuse)

    # --- making a plan -------------------------------------------------------------------------------
    def _make_plan(self, env: dict[str, int]) -> Plan:
        outputs = set(self.graph.outputs.values())
        memory = self.memory_plan(env)
        arena, buffers = allocate_arena(memory, env, self.device)
        constants: dict[Node, torch.Tensor] = {}
        for node in self.graph.nodes:
            if node.op == K.TENSOR:
                value = EvalContext().literal(node.attrs.data, node.dtype).reshape(node.shape)
                constants[node] = value.to(node.dtype.torch).to(self.device)
        launches, fresh = [], []
        for kernel in self.kernels:
            if needs_wide(kernel.group, env):
                kernel = compile_group(kernel.group, wide=True)
            launch = kernel.prepare(env)
            fresh += [node for node in launch.outputs if node in outputs]
            assert all(n in buffers for n in launch.outputs if n not in outputs), "an output not planned"
            launches.append((kernel, launch))
        return Plan(env, launches, buffers, constants, fresh, self._index_inputs(env), memory, arena)

    def _index_inputs(self, env) -> list[tuple[str, int, str]]:
        """Graph inputs used (directly or through views) as the index of a gather or take."""
        checks = []
        for k in self.kernels:
            reads = {a.node: a.buffer for a in k.group.inputs}
            for node in k.group.nodes:  # a fused gather sits anywhere in its group
                index = reads.get(node.inputs[1]) if node.op in (K.GATHER, K.TAKE) else None
                if index is not None and index.op == K.INPUT:
                    size = concrete(node.inputs[0].shape, env)[node.attrs.axis]
                    checks.append((index.name, size, f"{node.op} (axis {node.attrs.axis})"))
        return checks

    # --- checking a call -----------------------------------------------------------------------------
    def _bind(self, inputs, params) -> dict[Node, torch.Tensor]:
        g = self.graph
        try:
            check_names(g, inputs, params)
        except EvalError as e:
            raise RunError(e.message) from None
        values = {}
        for kind, table, given in (("input", g.inputs, inputs), ("parameter", g.params, params)):
            for name, node in table.items():
                t = given[name]
                if not isinstance(t, torch.Tensor):
                    raise RunError(f"{kind} '{name}' must be a torch.Tensor, got {type(t).__name__}")
                values[node] = t.to(self.device).contiguous()
        try:
            env = bind_symbols(g, {n: values[g.inputs[n]] for n in g.inputs})
            for node, t in values.items():
                _check_bound(node, t, "input" if node.op == K.INPUT else "parameter", env)
        except EvalError as e:
            raise RunError(e.message) from None
        return values

    @staticmethod
    def _check_indices(plan: Plan, inputs) -> None:
        for name, size, what in plan.index_checks:
            t = inputs[name]
            if t.numel() == 0:
                continue
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= size:
                raise RunError(f"input '{name}' is the index of a {what} of size {size}, but its values "
                               f"span [{lo}, {hi}]")


def _poison(t: torch.Tensor) -> None:
    if t.is_floating_point():
        t.fill_(float("nan"))
    elif t.dtype != torch.bool:
        t.fill_(torch.iinfo(t.dtype).max)
