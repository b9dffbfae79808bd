"""The compiler's IR side does work linear in the graph: each stage, on a graph about 3x larger, executes
about 3x as many lines of Axon (and of the libraries it drives, networkx and lark), never 9x.

Work is counted, not timed (speed is never asserted as wall-clock in a test): every line the stage
executes in those packages, through `sys.settrace`, per node of the graph. A stage that scanned a list
per node, rebuilt an index per node or restarted a sweep after every change would multiply its lines
per node by the size ratio. Stages: a training step's elaboration, step graph (autodiff, optimizer
update, clean-up pipeline), fusion, kernel groups and memory plan, for a GPT by its depth and an LSTM
by its unrolled steps (where fusion's merges and groups grow with the steps); and verify, print,
parse, the pipeline, fusion, groups and plan of a long chain (`bigraphs.deep_graph`).

Not counted: work inside C code. The memory plan's best fit compares each buffer with every placed one
in numpy (`runtime/memory._Arena`, quadratic in element operations by design: see its docstring).
`bench/ir_scale.py` measures the times.
"""
from __future__ import annotations

import sys
from pathlib import Path

import lark
import networkx
import pytest

import axon
from axon.codegen import fused_groups
from axon.driver import load_ast
from axon.frontend import training_graph
from axon.ir import Graph, Sym, verify
from axon.ir.text import parse_graph, print_graph
from axon.passes.fusion import fuse
from axon.passes.manager import DEFAULT_PIPELINE, PassManager
from axon.runtime.memory import plan_graph
from axon.trainer import step_graph
from bigraphs import deep_graph

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LINEAR = 1.5  # largest growth of lines per node allowed; quadratic work would grow by the size ratio
PACKAGES = tuple({str(Path(m.__file__).resolve().parent) for m in (
    axon, networkx, lark, sys.modules["axon.ir"], sys.modules["axon.passes"], sys.modules["axon.codegen"],
    sys.modules["axon.runtime"], sys.modules["axon.frontend"])})


def counted(fn):
    """(fn(), lines executed in the packages above)."""
    lines = 0

    def in_frame(frame, event, arg):
        nonlocal lines
        if event == "line":
            lines += 1
        return in_frame

    def on_call(frame, event, arg):
        return in_frame if frame.f_code.co_filename.startswith(PACKAGES) else None

    old = sys.gettrace()
    sys.settrace(on_call)
    try:
        out = fn()
    finally:
        sys.settrace(old)
    return out, lines


def _env(graph: Graph) -> dict[str, int]:
    return {f: 8 for n in graph.nodes for d in n.shape if isinstance(d, Sym) for f in d.factors}


def step_stages(example: str, hparam: str, size: int) -> tuple[int, dict[str, int]]:
    """(nodes of the training step, lines by stage) of examples/<example>.axon with hparam=size."""
    module = load_ast(EXAMPLES / f"{example}.axon")
    work: dict[str, int] = {}
    (loss_graph, spec), work["elaborate"] = counted(lambda: training_graph(module, hparams={hparam: size}))
    optimizer = {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)}
    step, work["step"] = counted(lambda: step_graph(loss_graph, optimizer))
    fusion, work["fuse"] = counted(lambda: fuse(step))
    groups, work["groups"] = counted(lambda: fused_groups(step, fusion.groups))
    _, work["plan"] = counted(lambda: plan_graph(groups, step, _env(step)))
    return len(step), work


def chain_stages(size: int) -> tuple[int, dict[str, int]]:
    g = deep_graph(size)
    work: dict[str, int] = {}
    _, work["verify"] = counted(lambda: verify(g))
    text, work["print"] = counted(lambda: print_graph(g))
    _, work["parse"] = counted(lambda: parse_graph(text))
    _, work["pipeline"] = counted(lambda: PassManager(DEFAULT_PIPELINE).run(g))
    fusion, work["fuse"] = counted(lambda: fuse(g))
    groups, work["groups"] = counted(lambda: fused_groups(g, fusion.groups))
    _, work["plan"] = counted(lambda: plan_graph(groups, g, _env(g)))
    return len(g), work


def assert_linear(small: tuple[int, dict[str, int]], large: tuple[int, dict[str, int]]) -> None:
    (n0, w0), (n1, w1) = small, large
    assert n1 >= 2.8 * n0, "the sizes are too close to tell linear from quadratic"
    growth = {stage: (w1[stage] / n1) / (w0[stage] / n0) for stage in w0}
    slow = {stage: f"{w0[stage] / n0:.0f} -> {w1[stage] / n1:.0f} lines per node ({g:.2f}x)"
            for stage, g in growth.items() if g > LINEAR}
    assert not slow, f"superlinear from {n0} to {n1} nodes: {slow}"


@pytest.fixture
def index_builds(monkeypatch) -> dict[str, int]:
    """Calls of Graph.index() and Graph.users(), each of which builds a dict over every node: called
    per node, they alone would make a stage quadratic."""
    calls = {"index": 0, "users": 0}
    for name in calls:
        def counting(self, _name=name, _method=getattr(Graph, name)):
            calls[_name] += 1
            return _method(self)
        monkeypatch.setattr(Graph, name, counting)
    return calls


@pytest.mark.parametrize("example, hparam, small, large", [
    ("gpt", "layers", 1, 4),    # 582 and 1,700 nodes
    ("lstm", "steps", 6, 24),   # 497 and 1,523 nodes
])
def test_a_training_step_compiles_in_linear_work(example, hparam, small, large, index_builds):
    step_stages(example, hparam, small)  # the first elaboration also loads the prelude
    runs = []
    for size in (small, large):
        index_builds.update(index=0, users=0)
        runs.append((step_stages(example, hparam, size), dict(index_builds)))
    assert_linear(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1], f"indexes built per compile, by size: {runs[0][1]}, {runs[1][1]}"


def test_a_long_chain_goes_through_every_stage_in_linear_work():
    assert_linear(chain_stages(400), chain_stages(1200))
