"""An executable: a graph's kernels as a launch list, run on tensors.

Compiling makes one kernel per group (`codegen`). The first call at a set of concrete sizes makes a
*plan* (`plan.py`): every launch prepared and bound (grid, strides, block sizes, which tensor goes where —
no Python work left for a call but the calls themselves) and every intermediate buffer placed in one
arena, where buffers never live at the same time share bytes (`memory`); later calls at the same sizes
reuse it. On a GPU the first call also tunes each launch that has several configs (`tune.py`). A call
checks the inputs (names, dtypes, shapes, index ranges; one comparison per tensor when they are what the
last call's plan was made for), allocates the outputs and runs the list.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch

from axon.codegen import CompiledKernel, compile_group, groups
from axon.codegen.cache import allocate
from axon.ir import AxonError, EvalError, Graph, Node, OpKind
from axon.ir.evaluate import _check_bound, bind_symbols, check_names
from . import plan as plans
from .device import choose
from .memory import MemoryPlan, plan_graph
from .plan import Plan

K = OpKind
NO_REUSE = "AXON_NO_REUSE"  # set to 1: every intermediate gets bytes of its own (to rule reuse out)


class RunError(AxonError):
    """Inputs a compiled model cannot run on: missing, unknown, of the wrong dtype or shape, or indices
    out of range."""


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
        self._last: Plan | None = None
        self._tune_store = None

    def __call__(self, inputs: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor] | None = None,
                 *, poison: bool = False, check_indices: bool = True,
                 on_ready: Callable[[str, torch.Tensor], None] | None = None) -> dict[str, torch.Tensor]:
        """Run on named inputs and parameters; returns the named outputs (tensors on the device).

        `poison` fills every buffer with NaN (the largest integer for integers) right before the launch
        that writes it (tests: an element no kernel writes shows, never masked by an earlier buffer's
        values in the same bytes).
        `check_indices` checks on the host that index inputs (token ids, labels) are in range; kernels
        never read out of bounds, but an out-of-range index would give NaN or 0 silently.
        `on_ready(name, tensor)` is called for each output as soon as the launch that writes it is issued
        (data-parallel training sends the first gradients while the backward goes on), in launch order;
        outputs no launch writes (an input passed through, a literal) come last.
        """
        values, plan = self.bind(inputs, params, check_indices=check_indices)
        device = self.device
        dynamic = [values[n] for n in plan.bound]
        dynamic += [allocate(n, plan.env, device, True) if poison
                    else torch.empty(shape, dtype=dt, device=device)
                    for n, (shape, dt) in zip(plan.fresh, plan.fresh_specs)]
        if not plan.tuned:
            self._tune(plan, dynamic)
        slots = {name: i for name, i, _ in plan.outputs} if on_ready is not None else {}
        for step, ready in zip(plan.steps, plan.ready):
            if poison:
                for node in step.launch.outputs:
                    if node in plan.buffers:
                        _poison(plan.buffers[node])
            step.run(dynamic)
            for name in ready if on_ready is not None else ():
                on_ready(name, dynamic[slots[name]])
        # a literal is shared by every call: the caller gets a copy of it
        out = {name: dynamic[i] if i is not None else literal.clone() for name, i, literal in plan.outputs}
        if on_ready is not None:
            done = {name for ready in plan.ready for name in ready}
            for name in [n for n in out if n not in done]:  # (in the graph's order: the same on every rank)
                on_ready(name, out[name])
        return out

    def bind(self, inputs: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor] | None = None,
             *, check_indices: bool = True) -> tuple[dict[Node, torch.Tensor], Plan]:
        """A call's checks without its launches: the inputs and parameters by graph node (on the device,
        contiguous) and the plan at their sizes, made if new (`cuda_graphs` replays that plan)."""
        params = params or {}
        plan = self._last
        values = plan.match(inputs, params, self.device) if plan is not None else None
        if values is None:  # not the last call's kind of tensors: every check, one by one
            values = self._bind(inputs, params)
            env = bind_symbols(self.graph, {n: values[self.graph.inputs[n]] for n in self.graph.inputs})
            plan = self._last = self.plan(env)
        if check_indices and plan.index_checks:
            self._check_indices(plan, inputs)
        return values, plan

    def plan(self, env: dict[str, int]) -> Plan:
        key = tuple(sorted(env.items()))
        if key not in self._plans:
            plan = plans.make(self.graph, self.kernels, dict(env), self.device, self.reuse)
            plan.tuned = self.device.type != "cuda"  # nothing to choose in the interpreter
            if self.device.type == "cuda":  # compile its kernels in parallel before the first call
                from axon.codegen.target import native
                from . import tune, warm

                store = self._store()
                warm.compile_ahead(plan, native(), lambda launch, kernel: store.get(
                    tune.key_of(kernel.path.name, launch)))
            self._plans[key] = plan
        return self._plans[key]

    def _store(self):
        from . import tune

        if self._tune_store is None:
            self._tune_store = tune.Store.for_device(torch.cuda.get_device_name(self.device))
        return self._tune_store

    def memory_plan(self, env: dict[str, int]) -> MemoryPlan:
        """Where each intermediate lives at the sizes `env` (`memory.format_plan` prints it)."""
        return plan_graph([k.group for k in self.kernels], self.graph, env, self.reuse)

    def _tune(self, plan: Plan, dynamic: list[torch.Tensor]) -> None:
        """On a GPU, at a plan's first call: each launch with several configs takes the fastest that
        neither spills nor fails to launch, timed on this call's tensors (`tune.py`)."""
        from . import tune

        for i, step in enumerate(plan.steps):
            if len(step.launch.configs) > 1:
                args = [*step.arguments(dynamic), *step.scalars]
                step.launch = tune.on_gpu(step.kernel, step.launch, args, self._store())
                plan.launches[i] = (step.kernel, step.launch)
        plan.tuned = True

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
        for name, lowest, size, what in plan.index_checks:
            t = inputs[name]
            if t.numel() == 0:
                continue
            lo, hi = int(t.min()), int(t.max())
            if lo < lowest or hi >= size:
                raise RunError(f"input '{name}' is the index of a {what} of size {size}, but its values "
                               f"span [{lo}, {hi}] (valid: [{lowest}, {size - 1}])")


def _poison(t: torch.Tensor) -> None:
    if t.is_floating_point():
        t.fill_(float("nan"))
    elif t.dtype != torch.bool:
        t.fill_(torch.iinfo(t.dtype).max)
