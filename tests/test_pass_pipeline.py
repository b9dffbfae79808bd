"""The default pipeline as a whole: on the example model, on random graphs (evaluation unchanged,
every pass verified), and at scale (10,000-node chains and wide graphs, no recursion, linear time).

Times are measured by bench/ir_scale.py, never asserted here.
"""
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings

from axon.ir import DType, GraphBuilder, Sym, verify
from axon.ir.text import parse_graph
from axon.passes import DEFAULT_PIPELINE, PassManager, parse_pipeline
from passcheck import assert_same_values
from strategies import graphs, random_inputs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mlp.axir"


def test_example_model_shrinks_and_computes_the_same():
    g = verify(parse_graph(EXAMPLE.read_text()))
    pm = PassManager(DEFAULT_PIPELINE, verify=True)
    out = pm.run(g)
    assert len(out) == len(g) - 7  # the 1.0/1.0, the *1, the two transposes, the dead exp(-logits)
    assert {r.name: r.stats for r in pm.report} == {
        "fold": {"folded to const": 1}, "simplify": {"mul_one": 1, "permute_permute": 1}, "cse": {},
        "dce": {"dropped dead node": 2}}
    batch = random_inputs(g, torch.Generator().manual_seed(0))[0]["x"].shape[0]
    assert_same_values(g, out, label=torch.randint(0, 10, (batch,), generator=torch.Generator()))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_random_graphs_evaluate_the_same_after_the_pipeline(g):
    out = PassManager(DEFAULT_PIPELINE, verify=True).run(g)
    assert len(out) <= len(g) + sum(n.op.value == "where" for n in g.nodes)  # never grows (but expands)
    assert_same_values(g, out)
    again = PassManager(DEFAULT_PIPELINE, verify=True).run(out)  # cse can expose work for simplify,
    assert len(again) <= len(out)                                  # but a second round never undoes


# --- scale -------------------------------------------------------------------------------------------

N = 10_000


def _run_each_pass(g):
    """Every pass alone, then the whole pipeline; all verified."""
    for p in parse_pipeline(DEFAULT_PIPELINE):
        PassManager([p], verify=True).run(g)
    return PassManager(DEFAULT_PIPELINE, verify=True).run(g)


def test_ten_thousand_foldable_nodes_in_a_chain():
    b = GraphBuilder("chain")
    x = b.input("x", DType.F32, (Sym.of("n"),))
    c = b.const(0.0, DType.F32)
    for i in range(N // 2):
        c = b.add(b.mul(c, 0.5), float(i % 3))  # every step folds into the next
    b.output("y", b.add(x, c))
    g = b.build()
    out = _run_each_pass(g)
    assert [n.op.value for n in out.nodes] == ["input", "const", "add"]
    assert_same_values(g, out)


def test_ten_thousand_rewrites_in_a_chain():
    b = GraphBuilder("chain")
    x = b.input("x", DType.F32, (3, 4))
    h = x
    for i in range(N):
        h = b.neg(h) if i % 4 < 2 else b.transpose(h)  # pairs that cancel: neg(neg), transpose(transpose)
    b.output("y", h)
    g = b.build()
    out = _run_each_pass(g)
    assert len(out) == 1 and out.outputs["y"] is out.inputs["x"]
    assert_same_values(g, out)


def test_wide_graph():
    b = GraphBuilder("wide")
    x = b.input("x", DType.F32, (Sym.of("batch"), 4))
    w = b.param("w", DType.F32, (4, 4))
    leaves = [b.add(b.matmul(b.mul(x, i / 7), w), b.mul(x, 1.0)) for i in range(N // 4)]
    for i in range(N // 8):
        b.param(f"unused{i}", DType.F32, (4,))
    while len(leaves) > 1:  # a balanced tree of sums, written operands-swapped half the time
        leaves = [b.add(a, c) if i % 2 else b.add(c, a) for i, (a, c) in
                  enumerate(zip(leaves[::2], leaves[1::2]))] + leaves[len(leaves) // 2 * 2:]
    b.output("y", leaves[0])
    g = b.build()
    assert len(g) > N
    out = PassManager(DEFAULT_PIPELINE, verify=True).run(g)  # every pass sees about 10,000 nodes
    assert len(out.params) == 1 and len(out) == len(g) - N // 8 - 2  # unused params, x * 1.0 and 1.0
    assert_same_values(g, out)
