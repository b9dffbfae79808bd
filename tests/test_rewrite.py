"""The rewrite engine: `rebuild` copies a graph exactly (or only the kept nodes), `apply_rules` runs local
rules bottom-up to a fixed point on deep graphs without recursion, counts its rewrites and refuses rules
that change types or never settle; `reachable` finds the outputs' cone plus every input."""
from __future__ import annotations

import pytest

from axon.ir import (DType, Graph, GraphBuilder, Init, Node, OpKind, Sym, apply_rules, reachable, rebuild,
                     verify)
from axon.ir.rewrite import MAX_RULE_STEPS
from axon.ir.text import print_graph
from bigraphs import deep_graph

K = OpKind
F32, F16, I64, BOOL = DType.F32, DType.F16, DType.I64, DType.BOOL
BATCH = Sym.of("batch")
DEEP = 5000  # well past Python's default recursion limit of 1000


def negneg(b: GraphBuilder, n: Node) -> Node | None:
    """neg(neg(x)) -> x"""
    if n.op == K.NEG and n.inputs[0].op == K.NEG:
        return n.inputs[0].inputs[0]
    return None


def neg_chain(depth: int) -> Graph:
    b = GraphBuilder("chain")
    h = b.input("x", F32, (BATCH, 3))
    for _ in range(depth):
        h = b.neg(h)
    b.output("y", h)
    return b.build()


def alternating_chain(steps: int) -> Graph:
    """exp(neg(neg(...))) repeated: every other pair of negs cancels, the exps stay."""
    b = GraphBuilder("alternating")
    h = b.input("x", F32, (3,))
    for _ in range(steps):
        h = b.exp(b.neg(b.neg(h)))
    b.output("y", h)
    return b.build()


def mixed_graph() -> Graph:
    """Sources of every kind, symbolic shapes, an unused input and parameter, and dead values."""
    b = GraphBuilder("mixed")
    x = b.input("x", F32, (BATCH, 4))
    seed = b.input("seed", I64, ())
    b.input("unused", F16, (2,))
    w = b.param("w", F32, (4, 4), Init("kaiming", (("fan_in", 4),)))
    b.param("dead_w", F32, (4,))
    h = b.matmul(x, w)
    b.exp(h)  # dead
    h = b.where(b.gt(h, 0.0), h, b.mul(h, 0.01))
    h = b.add(h, b.rand(seed, (BATCH, 4)))
    h = b.add(h, b.tensor([1.0, -0.0, float("nan"), 2.5], F32))
    flat = b.reshape(h, (-1,))
    b.output("y", b.sum(b.reshape(flat, (BATCH, 2, 2)), (1, 2)))
    b.output("flat", flat)
    b.output("again", flat)
    return b.build()


# --- rebuild ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [mixed_graph, lambda: alternating_chain(50), lambda: deep_graph(300)],
                         ids=["mixed", "alternating", "deep"])
def test_identity_rebuild_is_structurally_identical(make):
    g = make()
    for visit in (None, lambda b, node, inputs: None):
        new, mapping = rebuild(g, visit)
        assert print_graph(new) == print_graph(g)
        assert new.name == g.name and list(new.outputs) == list(g.outputs)
        assert list(mapping) == list(g.nodes) and list(mapping.values()) == list(new.nodes)
        assert all(mapping[o] is new.outputs[name] for name, o in g.outputs.items())
        verify(new)


def test_rebuild_keeps_only_what_it_is_told():
    g = mixed_graph()
    live = reachable(g)
    new, mapping = rebuild(g, keep=live)
    assert set(mapping) == live
    assert list(new.nodes) == [mapping[n] for n in g.nodes if n in live]
    assert all(mapping[n].type == n.type and mapping[n].op == n.op for n in live)
    assert len(new) == len(g) - 2  # the dead exp and the unused parameter
    assert "dead_w" not in new.params and "unused" in new.inputs
    assert print_graph(verify(new)) == print_graph(rebuild(new)[0])


def test_rebuild_visit_replaces_nodes_and_the_builder_interns():
    g = neg_chain(4)

    def relu_for_neg(b, node, inputs):
        return b.relu(inputs[0]) if node.op == K.NEG else None

    new, mapping = rebuild(g, relu_for_neg)
    assert [n.op for n in new.nodes] == [K.INPUT] + [K.RELU] * 4
    assert all(mapping[n].op == K.RELU for n in g.nodes[1:])


def test_rebuild_refuses_a_replacement_of_another_type():
    with pytest.raises(AssertionError, match="changed its type to f16"):
        rebuild(neg_chain(2), lambda b, node, inputs: b.cast(inputs[0], F16) if node.op == K.NEG else None)


# --- apply_rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth, rewrites, result_ops", [
    (1, 0, [K.INPUT, K.NEG]),
    (2, 1, [K.INPUT]),
    (7, 3, [K.INPUT, K.NEG]),
    (DEEP, DEEP // 2, [K.INPUT]),
    (DEEP + 1, DEEP // 2, [K.INPUT, K.NEG]),
])
def test_neg_neg_on_a_chain(depth, rewrites, result_ops):
    new, count = apply_rules(neg_chain(depth), [negneg])
    assert count == rewrites
    live, _ = rebuild(new, keep=reachable(new))
    assert [n.op for n in live.nodes] == result_ops
    assert len(new) <= 3  # interning: the chain collapses onto x, neg(x) and a dead neg(neg(x))
    verify(new)


def test_deep_alternating_chain_reaches_a_fixed_point():
    steps = DEEP // 3
    g = alternating_chain(steps)
    new, count = apply_rules(g, [negneg])
    assert count == steps
    live, _ = rebuild(new, keep=reachable(new))
    assert [n.op for n in live.nodes] == [K.INPUT] + [K.EXP] * steps
    again, more = apply_rules(live, [negneg])  # a fixed point: nothing left to rewrite
    assert more == 0 and print_graph(again) == print_graph(live)


def test_rules_see_rewritten_operands():
    def double(b, n):  # x + x -> x * 2
        if n.op == K.ADD and n.inputs[0] is n.inputs[1]:
            return b.mul(n.inputs[0], 2.0)
        return None

    b = GraphBuilder()
    x = b.input("x", F32, (3,))
    b.output("y", b.add(b.neg(b.neg(x)), b.neg(b.neg(x))))
    new, count = apply_rules(b.build(), [double, negneg])
    assert count == 2  # the shared neg(neg(x)) once, then the add of x and x it became
    y = new.outputs["y"]
    assert y.op == K.MUL and y.inputs[0] is new.inputs["x"]


def test_a_rule_returning_its_node_is_no_rewrite():
    new, count = apply_rules(neg_chain(3), [lambda b, n: n])
    assert count == 0 and print_graph(new) == print_graph(neg_chain(3))


class ToF16:
    """A rule object (no __name__) that changes types."""

    def __call__(self, b, n):
        return b.cast(n, F16) if n.op == K.NEG else None


def to_f16(b, n):
    return b.cast(n, F16) if n.op == K.NEG else None


@pytest.mark.parametrize("rule", [to_f16, ToF16()], ids=["function", "object"])
def test_a_rule_that_changes_a_type_trips_the_assertion(rule):
    with pytest.raises(AssertionError, match=r"changed <neg: f32\[batch, 3\]> to <cast: f16\[batch, 3\]>"):
        apply_rules(neg_chain(2), [rule])


def test_a_non_terminating_rule_set_is_refused():
    def commute(b, n):  # add(a, b) -> add(b, a), forever
        return b.node(K.ADD, (n.inputs[1], n.inputs[0])) if n.op == K.ADD else None

    def to_add(b, n):  # x * 2 -> x + x
        return b.add(n.inputs[0], n.inputs[0]) if n.op == K.MUL else None

    def to_mul(b, n):  # x + x -> x * 2
        if n.op == K.ADD and n.inputs[0] is n.inputs[1]:
            return b.mul(n.inputs[0], 2.0)
        return None

    b = GraphBuilder()
    x, y = b.input("x", F32, (3,)), b.input("y", F32, (3,))
    b.output("o", b.add(x, y))
    with pytest.raises(AssertionError, match="did not reach a fixed point on <add: f32"):
        apply_rules(b.build(), [commute])
    b = GraphBuilder()
    x = b.input("x", F32, (3,))
    b.output("o", b.add(x, x))
    with pytest.raises(AssertionError, match="did not reach a fixed point"):
        apply_rules(b.build(), [to_add, to_mul])
    assert MAX_RULE_STEPS >= 8  # a legitimate chain of a few rewrites on one node is not cut off


# --- reachable --------------------------------------------------------------------------------------


def test_reachable_is_the_outputs_cone_plus_every_input():
    g = mixed_graph()
    live = reachable(g)
    dead = [n for n in g.nodes if n not in live]
    assert [n.op for n in dead] == [K.PARAM, K.EXP]
    assert g.inputs["unused"] in live and g.params["w"] in live
    assert all(i in live for n in live for i in n.inputs)


def test_reachable_without_outputs_and_on_a_deep_chain():
    b = GraphBuilder()
    x = b.input("x", F32, (3,))
    b.exp(x)
    assert reachable(b.build()) == {x}
    g = neg_chain(DEEP)
    assert reachable(g) == set(g.nodes)
