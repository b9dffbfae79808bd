"""`torch.compile(model, backend="axon")`: Dynamo's graphs compiled to Axon kernels.

Registered under the `torch_dynamo_backends` entry point (pyproject.toml), so the name works after `pip
install` with no import of axon. For each graph Dynamo hands over:

1. it is traced to core ATen ops (`make_fx` with `core_aten_decompositions()`, functionalized: an
   in-place update of a buffer becomes a value copied back after the call), symbolically where Dynamo
   marked sizes dynamic, so one compile serves every size;
2. `frontend/fx_import.py` turns it into Axon IR; where every op has a translation the whole graph is one
   `CompiledModel`; otherwise the graph is split (`CapabilityBasedPartitioner`): the regions Axon
   supports are compiled, the other nodes run eagerly, and `axon.explain(model, *inputs)` lists the ops
   left to eager with their counts and the regions formed;
3. a call runs the compiled model; when gradients are wanted the call is recorded for torch.autograd
   through Axon's own autodiff (`axon/autograd.py`): the backward is derived and partitioned by Axon
   from the same graph, so every op Axon imports is differentiable without importing ATen's backward ops.
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

import torch

from axon.frontend.fx_import import Imported, Unsupported, import_fx, op_name, supported


@dataclass
class Report:
    """What one compile did: the graph's ATen ops, those left to eager PyTorch (with why), the regions."""

    ops: Counter = field(default_factory=Counter)
    unsupported: Counter = field(default_factory=Counter)
    why: dict[str, str] = field(default_factory=dict)
    regions: list[int] = field(default_factory=list)    # node count of each region Axon compiled
    whole: bool = False
    symbolic: list[str] = field(default_factory=list)   # the symbolic sizes the compiled graph keeps

    def __str__(self) -> str:
        if self.whole:
            return f"one Axon region: the whole graph ({sum(self.ops.values())} ATen ops)"
        lines = [f"{len(self.regions)} Axon region(s) of {', '.join(map(str, self.regions)) or 'no'} "
                 f"node(s); left to eager PyTorch:"]
        for op, n in self.unsupported.most_common():
            lines.append(f"  {op} x{n}: {self.why.get(op, 'no Axon translation')}")
        return "\n".join(lines)


REPORTS: list[Report] = []  # the compiles of this process, newest last (axon.explain reads them)


def axon_backend(gm: torch.fx.GraphModule, example_inputs, **options):
    """The Dynamo backend: `torch.compile(model, backend="axon")`."""
    report = Report()
    REPORTS.append(report)
    held = [n.target for n in gm.graph.nodes if n.op == "get_attr"]
    if held:  # tensors the graph holds (an optimizer's state): tracing could touch them, so: eager
        report.unsupported["(the whole graph)"] += 1
        report.why["(the whole graph)"] = f"it holds tensors of its own ({', '.join(map(str, held[:3]))}), " \
                                          f"which Axon does not trace"
        return gm.forward
    try:
        aten_gm = trace(gm, example_inputs)
    except Exception as e:  # never a failure: a graph Axon cannot trace runs as Dynamo gave it
        report.unsupported["(the whole graph)"] += 1
        report.why["(the whole graph)"] = f"not traceable to functional ATen ops ({type(e).__name__}: " \
                                          f"{str(e).splitlines()[0][:160]})"
        return gm.forward
    device = next((t.device for t in example_inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))
    report.ops.update(_op_names(aten_gm))
    try:
        runner = Runner(import_fx(aten_gm, "dynamo"), device)
        report.whole = True
        report.symbolic = sorted({str(d) for n in runner.imported.graph.inputs.values() for d in n.shape
                                  if not isinstance(d, int)})
        return runner
    except Unsupported:
        pass
    return partial_graph(aten_gm, device, report)


def trace(gm: torch.fx.GraphModule, example_inputs) -> torch.fx.GraphModule:
    """`gm` as core ATen ops, functionalized; sizes symbolic exactly where Dynamo made them so (one
    symbol per Dynamo symbol: a batch shared by inputs stays one size), the others static."""
    from torch._decomp import core_aten_decompositions
    from torch._guards import tracing
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.func import functionalize

    fn = functionalize(gm, remove="mutations")
    # a fake mode and shape environment of its own: symbols made while tracing must not leak into the
    # ones Dynamo builds its guards from; mkldnn off: recurrent layers then decompose into gates Axon
    # compiles, not one fused CPU op
    with torch.no_grad(), tracing(None), torch.backends.mkldnn.flags(enabled=False):
        fakes, mode = _fake_inputs(gm, example_inputs)
        with mode:
            return make_fx(fn, decomposition_table=core_aten_decompositions())(*fakes)


def _fake_inputs(gm, example_inputs):
    """Fake tensors for the example inputs, each size dynamic where Dynamo's placeholder has a symbol."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    # real tensors held by the graph are refused, never touched: tracing must not run an in-place update
    mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=False)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    fakes, symbols = [], {}
    for ph, a in zip(placeholders, example_inputs):
        if not isinstance(a, torch.Tensor):
            fakes.append(a)
            continue
        shown = ph.meta.get("example_value")
        sizes = list(shown.shape) if isinstance(shown, torch.Tensor) else list(a.shape)
        dynamic = [_symbolic(d) for d in sizes]
        ctx = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC if d else DimDynamic.STATIC
                                                      for d in dynamic])
        fake = mode.from_tensor(a, symbolic_context=ctx)
        fakes.append(fake)
        for d, ours in zip(sizes, fake.shape):
            if _symbolic(d):
                symbols.setdefault(str(d.node.expr), ours)
    # a SymInt argument is some tensor's size: ours for the same Dynamo symbol
    fakes = [symbols.get(str(a.node.expr), a) if isinstance(a, torch.SymInt) else a for a in fakes]
    return fakes, mode


def _symbolic(d) -> bool:
    return isinstance(d, torch.SymInt) and not d.node.expr.is_number


class Runner:
    """One compiled region: takes the FX graph's arguments, returns its outputs (a tuple)."""

    def __init__(self, imported: Imported, device, plain_outputs: bool = False, gm=None):
        import axon

        self.imported = imported
        self.plain_outputs = plain_outputs  # aot_autograd wants Tensors, not the Parameters passed in
        self.model = axon.compile(imported.graph, device=device)
        # the strides the FX graph promised for each output (aot_autograd's saved values and gradients
        # are handed to ops, eager ones too, that may read them as laid out so): static ones only
        self.strides = _output_strides(gm) if gm is not None and plain_outputs else []

    def __call__(self, *args):
        inputs = {name: _contiguous(args[i]) for i, name in enumerate(self.imported.inputs) if name}
        out = self.model.run(inputs)
        if self.imported.mutations:
            with torch.no_grad():
                for i, name in self.imported.mutations:
                    args[i].copy_(out[name])
        result = []
        for i, (kind, ref) in enumerate(self.imported.outputs):
            if kind == "input":
                result.append(args[ref].detach() if self.plain_outputs else args[ref])
            elif kind == "out":
                t = out[ref]
                want = self.strides[i] if i < len(self.strides) else None
                if want is not None and t.dim() == len(want) and tuple(t.stride()) != want and t.numel() > 1:
                    t = torch.empty_strided(t.shape, want, dtype=t.dtype, device=t.device).copy_(t)
                result.append(t)
            else:
                result.append(None)
        return tuple(result)


def _plain(fn):
    """`fn` with Parameters it passes through returned as plain tensors (aot_autograd saves Tensors)."""
    def call(*args):
        out = fn(*args)
        return type(out)(o.detach() if isinstance(o, torch.nn.Parameter) else o for o in out) \
            if isinstance(out, (tuple, list)) else out
    return call


def _output_strides(gm) -> list:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    args = out.args[0] if isinstance(out.args[0], (tuple, list)) else [out.args[0]]
    strides = []
    for a in args:
        v = a.meta.get("val") if isinstance(a, torch.fx.Node) else None
        ok = isinstance(v, torch.Tensor) and all(isinstance(s, int) for s in v.stride())
        strides.append(tuple(v.stride()) if ok else None)
    return strides


def _contiguous(t):
    return t.contiguous() if isinstance(t, torch.Tensor) else t


def partial_graph(gm: torch.fx.GraphModule, device, report: Report):
    """`gm` with the regions Axon supports compiled and the rest left to eager PyTorch."""
    from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
    from torch.fx.passes.operator_support import OperatorSupportBase

    class Support(OperatorSupportBase):
        def is_node_supported(self, submodules, node: torch.fx.Node) -> bool:
            return supported(node)

    for node in gm.graph.nodes:
        if node.op == "call_function" and not supported(node):
            report.unsupported[op_name(node.target)] += 1
    partitioner = CapabilityBasedPartitioner(gm, Support(), allows_single_node_partition=True)
    partitions = partitioner.propose_partitions()
    fused = partitioner.fuse_partitions(partitions)
    for node in list(fused.graph.nodes):
        if node.op != "call_module":
            continue
        sub = getattr(fused, node.target)
        try:
            runner = Runner(import_fx(sub, "dynamo_region"), device)
        except Unsupported as e:  # an argument the translation does not take: this region stays eager
            for n in sub.graph.nodes:
                if n.op == "call_function":
                    report.unsupported[op_name(n.target)] += 1
                    report.why.setdefault(op_name(n.target), str(e.args[0]) if e.args else str(e))
            continue
        report.regions.append(sum(1 for n in sub.graph.nodes if n.op == "call_function"))
        setattr(fused, node.target, _Region(runner, _single(sub)))
    fused.recompile()
    return fused


class _Region(torch.nn.Module):
    """A compiled region standing where the partitioner's submodule was."""

    def __init__(self, runner: Runner, single: bool):
        super().__init__()
        self.runner, self.single = runner, single

    def forward(self, *args):
        out = self.runner(*args)
        return out[0] if self.single else out


def _single(sub: torch.fx.GraphModule) -> bool:
    """Whether the submodule returns one value rather than a tuple (a fused submodule of one output)."""
    out = next(n for n in sub.graph.nodes if n.op == "output")
    return not isinstance(out.args[0], (tuple, list))


def _op_names(gm) -> Counter:
    return Counter(op_name(n.target) for n in gm.graph.nodes if n.op == "call_function")


def explain(model, *inputs, **kwargs) -> str:
    """What `torch.compile(model, backend="axon")` does with these inputs: per graph, whether Axon took it
    whole or in regions, and each op left to eager PyTorch with its count and why."""
    torch._dynamo.reset()
    start = len(REPORTS)
    compiled = torch.compile(model, backend=functools.partial(axon_backend))
    compiled(*inputs, **kwargs)
    reports = REPORTS[start:]
    torch._dynamo.reset()
    return "\n".join(f"graph {i}: {r}" for i, r in enumerate(reports)) or "no graph was compiled"


def axon_aot_backend(gm: torch.fx.GraphModule, example_inputs, **options):
    """`torch.compile(model, backend="axon_aot")`: training through aot_autograd instead: ATen's own
    forward and backward graphs (its partitioner choosing what is saved) each imported and compiled by
    Axon, regions around what Axon cannot import left to eager as in `axon_backend`."""
    from functorch.compile import make_boxed_func
    from torch._decomp import core_aten_decompositions
    from torch._dynamo.backends.common import aot_autograd

    def compiler(graph: torch.fx.GraphModule, inputs):
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        with unset_fake_temporarily():  # Axon's compile makes real tensors (parameters, plans)
            return _aot_compile(graph, inputs)

    def _aot_compile(graph: torch.fx.GraphModule, inputs):
        report = Report()
        REPORTS.append(report)
        report.ops.update(_op_names(graph))
        device = next((t.device for t in inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))
        try:
            fn = Runner(import_fx(graph, "aot"), device, plain_outputs=True, gm=graph)
            report.whole = True
        except Unsupported:
            fn = _plain(partial_graph(graph, device, report))
        return make_boxed_func(fn)

    # the fused attention is not decomposed: its backward (not decomposable) reads the statistics its
    # own forward saves, and a decomposed forward lays them out otherwise (wrong gradients)
    table = {k: v for k, v in core_aten_decompositions().items() if "scaled_dot_product" not in str(k)}
    with torch.backends.mkldnn.flags(enabled=False):  # RNNs as gates, not one fused CPU op (see trace)
        return aot_autograd(fw_compiler=compiler, bw_compiler=compiler, decompositions=table)(gm,
                                                                                              example_inputs)
