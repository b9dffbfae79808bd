"""The structures behind fusion's cycle checks, against brute force on random graphs: the spine labels
only ever certify true dependences, `Dependence` answers exactly what ancestor sets answer (with its
memory of earlier searches), and `OrderedDag` finds other paths as networkx does and keeps a topological
order through every contraction."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import networkx as nx
import pytest

from axon.ir import DType, GraphBuilder
from axon.passes.dependence import FIRST, NONE_BEFORE, Dependence, Spine
from axon.passes.kernel_dag import OrderedDag


def random_graph(rng: random.Random, size: int):
    """A random DAG of elementwise ops: each new node reads one or two earlier values."""
    b = GraphBuilder()
    values = [b.input(f"x{k}", DType.F32, (3,)) for k in range(rng.randint(1, 3))]
    while len(b) < size:
        a = rng.choice(values[-8:] if rng.random() < 0.7 else values)
        values.append(b.add(a, rng.choice(values)) if rng.random() < 0.6 else b.exp(a))
    for k, v in enumerate(values[-3:]):
        b.output(f"y{k}", v)
    return b.build()


def ancestors(graph) -> dict:
    anc = {}
    for n in graph.nodes:
        anc[n] = set().union(*([anc[i] | {i} for i in n.inputs] or [set()]))
    return anc


@dataclass(eq=False)
class Group:
    nodes: list = field(default_factory=list)
    first: int = FIRST
    last: int = -1
    reach: int = FIRST
    after: int = NONE_BEFORE


@pytest.mark.parametrize("seed", range(12))
def test_spine_certificates_are_true_dependences(seed):
    g = random_graph(random.Random(seed), 80)
    spine, anc = Spine(g, g.index(), g.users()), ancestors(g)
    for x in g.nodes:
        for v in g.nodes:
            if x is not v and spine.reach[x] <= spine.after[v]:
                assert x in anc[v]


@pytest.mark.parametrize("seed", range(12))
def test_dependence_answers_as_ancestor_sets_do(seed):
    rng = random.Random(100 + seed)
    g = random_graph(rng, 90)
    index, anc = g.index(), ancestors(g)
    spine = Spine(g, index, g.users())
    groups = [Group() for _ in range(6)]
    owner = {}
    for n in g.nodes:  # members spread over the groups, in definition order (as the walk adds them)
        if rng.random() < 0.5:
            grp = rng.choice(groups)
            grp.nodes.append(n)
            owner[n] = grp
            grp.first, grp.last = min(grp.first, index[n]), max(grp.last, index[n])
            grp.reach, grp.after = min(grp.reach, spine.reach[n]), max(grp.after, spine.after[n])
    deps = Dependence(spine, owner)
    now = len(g.nodes)
    for _ in range(300):  # many questions of each group: the remembered searches must stay right
        grp, e = rng.choice(groups), rng.choice(g.nodes)
        truth = owner.get(e) is grp or any(m in anc[e] for m in grp.nodes)
        assert deps.depends(e, grp, now) == truth
        h = rng.choice(groups)
        if h is not grp:
            assert deps.group_depends(h, grp, now) == any(m in anc[y] for y in h.nodes for m in grp.nodes)


@pytest.mark.parametrize("seed", range(40))
def test_ordered_dag_matches_networkx_through_contractions(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 30)
    edges = {(a, b) for a in range(n) for b in range(a + 1, min(n, a + 6)) if rng.random() < 0.35}
    order = list(range(n))
    dag, ref = OrderedDag(order, sorted(edges)), nx.DiGraph()
    ref.add_nodes_from(order)
    ref.add_edges_from(edges)
    for _ in range(40):
        if not ref.number_of_edges():
            break
        a, b = rng.choice(sorted(ref.edges))
        others = ref.copy()
        others.remove_edge(a, b)
        assert dag.other_path(a, b) == nx.has_path(others, a, b)
        if dag.other_path(a, b):
            continue
        dag.contract(a, b)
        ref = nx.contracted_nodes(ref, a, b, self_loops=False)
        assert set(dag) == set(ref.nodes)
        for v in ref.nodes:
            assert set(dag.successors(v)) == set(ref.successors(v))
            assert set(dag.predecessors(v)) == set(ref.predecessors(v))
        assert all(dag.position(u) < dag.position(v) for u, v in ref.edges), "not a topological order"
