"""CUDA graphs: a plan's whole launch list captured once into a `torch.cuda.CUDAGraph`, then replayed,
so a call costs one graph launch instead of one Python-side launch per kernel.

>>> graphed = GraphedExecutable(executable)         # doctest: +SKIP  (CUDA only: DeviceError elsewhere)
>>> out = graphed(inputs, params)                   # doctest: +SKIP  the executable's call, checks, results

A call. The executable checks and binds the inputs as for an ordinary call and picks the plan at their
sizes (`Executable.bind`). The first call at a set of concrete sizes captures: the inputs are copied into
*static buffers* (a graph reads fixed addresses); the executable runs once on them uncaptured (the
warm-up: every kernel compiled and tuned before capture, the plan and its arena made); then once more
under capture, with nothing executed; then the graph replays once for this call's results. Later calls at
those sizes copy the given tensors that are not already the static buffers into them and replay. One
graph per set of sizes, as one plan per set: a shape change captures another graph, and a return to
earlier sizes replays the earlier one.

What stays alive. Each graph holds the plan it ran (its kernels address the plan's arena and literal
tensors), the static outputs it writes (in the graph's private memory pool) and the static buffers it
reads. Static buffers are per input or parameter and shape, shared by every graph of the executable: the
parameters are one set of buffers for all sizes.

Nothing that varies per call is baked into a graph, only addresses and sizes: data, the dropout `seed`,
a training step's `step` and `lr` are tensors the kernels load from static buffers, so each replay sees
this call's values.

Results. Outputs come back as fresh tensors, as from an ungraphed call (each a copy of its static output,
one copy kernel), so a result is never changed by a later call. The exception is `feedback` (output ->
input or parameter, e.g. `new.fc.w` -> `fc.w` for a training step): the graph itself copies that output
into the source's static buffer after the last kernel, and the call returns that buffer, which holds the
new value until the next call updates it in place; passed back as that source, it costs no copy.
`adopt` hands tensors over as the static buffers of their sources (a model's parameters, a trainer's
parameters and optimizer state): the graphs read them in place; a different tensor given for that source
later is copied into the adopted one.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from axon.ir import Node
from .device import DeviceError
from .executable import Executable, Plan, RunError

Shape = tuple[int, ...]


def require_cuda(device: torch.device) -> None:
    """DeviceError unless `device` is a CUDA GPU: CUDA graphs are never silently skipped."""
    if device.type == "cuda":
        return
    why = "device 'cpu' was asked for" if torch.cuda.is_available() else "this machine has no CUDA GPU"
    raise DeviceError(f"CUDA graphs need a CUDA GPU, but the kernels run on the CPU through Triton's "
                      f"interpreter ({why}): run without --cuda-graphs (cuda_graphs=True)")


class CudaGraphs:
    """Capture and replay with `torch.cuda.CUDAGraph` on one CUDA device (the backend of
    `GraphedExecutable`; the tests stand a fake in for it on the CPU)."""

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        require_cuda(self.device)
        self.stream = torch.cuda.Stream(self.device)  # the warm-up runs off the caller's stream

    def warm_up(self, run: Callable[[], object]) -> None:
        """`run` once, uncaptured, on a side stream (as torch's own graph helpers warm up)."""
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            run()
        current.wait_stream(self.stream)

    def capture(self, body: Callable[[], dict]) -> tuple[torch.cuda.CUDAGraph, dict]:
        """(graph, what `body` returned): `body` captured, then the graph replayed once, so the call
        that captured gets its results (capturing executes nothing)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.device):
            with torch.cuda.graph(graph):
                result = body()
            graph.replay()
        return graph, result

    def replay(self, graph: torch.cuda.CUDAGraph) -> None:
        graph.replay()


@dataclass
class Captured:
    """One graph: the launch list of `plan` reading `sources` and writing `outputs`."""

    graph: object                        # the backend's graph (a torch.cuda.CUDAGraph)
    plan: Plan                           # kept alive: the kernels address its arena and literals
    sources: dict[Node, torch.Tensor]    # the static buffer of each input and parameter
    outputs: dict[str, torch.Tensor]     # the static outputs, by name


class GraphedExecutable:
    """`executable`'s calls captured into CUDA graphs and replayed (see the module note).

    `feedback` maps outputs to the input or parameter whose static buffer they update (same type);
    `adopt` hands tensors over as static buffers by input/parameter name; `backend` captures and
    replays (default: `CudaGraphs` on the executable's device, a DeviceError off CUDA)."""

    def __init__(self, executable: Executable, *, feedback: Mapping[str, str] | None = None,
                 adopt: Mapping[str, torch.Tensor] | None = None, backend=None):
        self.executable = executable
        self.backend = backend if backend is not None else CudaGraphs(executable.device)
        self.feedback = {out: self._source(name, f"feedback '{out}' -> '{name}'")
                         for out, name in (feedback or {}).items()}
        self._check_feedback()
        self.graphs: dict[tuple, Captured] = {}         # by the sizes, as the executable's plans
        self._static: dict[tuple[Node, Shape], torch.Tensor] = {}
        self.copies = 0                                 # tensors the last call copied into static buffers
        for name, t in (adopt or {}).items():
            self._adopt(name, t)

    @property
    def graph(self):
        return self.executable.graph

    @property
    def device(self) -> torch.device:
        return self.executable.device

    @property
    def kernels(self):
        return self.executable.kernels

    def __call__(self, inputs: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor] | None = None,
                 *, check_indices: bool = True, poison: bool = False) -> dict[str, torch.Tensor]:
        """The executable's call (same checks, same results), replayed from the graph of these sizes."""
        if poison:
            raise RunError("poison fills each buffer right before the launch that writes it: it checks the "
                           "launch list run without CUDA graphs")
        with torch.no_grad():
            values, plan = self.executable.bind(inputs, params, check_indices=check_indices)
            key = tuple(sorted(plan.env.items()))
            captured = self.graphs.get(key)
            sources = captured.sources if captured else self._sources(values)
            self.copies = _copy_in(sources, values)
            if captured is None:
                captured = self.graphs[key] = self._capture(plan, sources)  # runs this call too
            else:
                self.backend.replay(captured.graph)
            return {name: captured.sources[self.feedback[name]] if name in self.feedback else t.clone()
                    for name, t in captured.outputs.items()}

    # --- capturing -------------------------------------------------------------------------------------
    def _capture(self, plan: Plan, sources: dict[Node, torch.Tensor]) -> Captured:
        g, exe = self.graph, self.executable
        inputs = {name: sources[node] for name, node in g.inputs.items()}
        params = {name: sources[node] for name, node in g.params.items()}

        def run() -> dict[str, torch.Tensor]:
            return exe(inputs, params, check_indices=False)

        def body() -> dict[str, torch.Tensor]:
            out = run()
            for name, node in self.feedback.items():  # after the last kernel, in stream order
                sources[node].copy_(out[name])
            return out

        self.backend.warm_up(run)  # no feedback: a warm-up changes nothing the caller sees
        try:
            graph, outputs = self.backend.capture(body)
        except RuntimeError as e:
            raise RunError(f"capturing the launch list of {g.name} at sizes {plan.env} into a CUDA graph "
                           f"failed: {e}") from e
        assert exe.plan(plan.env) is plan, "the plan captured is not the one kept alive"
        return Captured(graph, plan, sources, outputs)

    def _sources(self, values: Mapping[Node, torch.Tensor]) -> dict[Node, torch.Tensor]:
        """The static buffer of every input and parameter at these sizes (made on first need)."""
        out = {}
        for node, given in values.items():
            key = (node, tuple(given.shape))
            if key not in self._static:
                self._static[key] = torch.empty(key[1], dtype=node.dtype.torch, device=self.device)
            out[node] = self._static[key]
        return out

    # --- checking what was handed over -----------------------------------------------------------------
    def _source(self, name: str, what: str) -> Node:
        g = self.graph
        node = g.inputs.get(name, g.params.get(name))
        if node is None:
            raise RunError(f"{what}: {g.name} has no input or parameter '{name}'")
        return node

    def _check_feedback(self) -> None:
        g = self.graph
        for out, node in self.feedback.items():
            if out not in g.outputs:
                raise RunError(f"feedback '{out}' -> '{node.name}': {g.name} has no output '{out}'")
            if g.outputs[out].type != node.type:
                raise RunError(f"feedback '{out}' -> '{node.name}': the output is {g.outputs[out].type}, "
                               f"the {node.op.value} {node.type}")

    def _adopt(self, name: str, t: torch.Tensor) -> None:
        node = self._source(name, f"adopting '{name}'")
        if t.device != self.device or t.dtype != node.dtype.torch or not t.is_contiguous():
            dtype = str(t.dtype).removeprefix("torch.")
            raise RunError(f"adopting '{name}' as a static buffer: it must be a contiguous {node.dtype} "
                           f"tensor on {self.device}, got {dtype} on {t.device}"
                           + ("" if t.is_contiguous() else ", not contiguous"))
        self._static[(node, tuple(t.shape))] = t


def _copy_in(sources: Mapping[Node, torch.Tensor], values: Mapping[Node, torch.Tensor]) -> int:
    """Copy each given tensor into its static buffer unless it is that buffer; returns how many were
    copied. A given tensor that is another source's static buffer (a fed-back output passed as another
    input) is read before any buffer is written."""
    moves = [(static, values[node]) for node, static in sources.items()
             if values[node].data_ptr() != static.data_ptr() and static.numel()]
    written = {static.data_ptr() for static, _ in moves}
    moves = [(static, given.clone() if given.data_ptr() in written else given) for static, given in moves]
    for static, given in moves:
        static.copy_(given)
    return len(moves)
