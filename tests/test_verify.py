"""The verifier: graphs broken on purpose (nodes made directly, bypassing the builder that would refuse
them) each raise a `VerifyError` naming the problem and showing the IR around it with the offending line
marked `> `; valid graphs pass unchanged; and `excerpt` never raises, however broken the graph."""
from __future__ import annotations

import pytest

from axon.ir import AxonError, DType, Graph, GraphBuilder, Node, OpKind, Sym, VerifyError, verify
from axon.ir.ops import AxisAttrs, ConstAttrs, InputAttrs, NoAttrs, ParamAttrs, PermuteAttrs
from axon.ir.shapes import TensorType
from axon.ir.text import print_graph
from axon.ir.verify import CONTEXT_LINES, excerpt

K = OpKind
F32, F16, BOOL = DType.F32, DType.F16, DType.BOOL
BATCH = Sym.of("batch")


def T(dtype: DType, *shape) -> TensorType:
    return TensorType(dtype, tuple(shape))


def inp(name: str, dtype: DType = F32, *shape) -> Node:
    shape = shape or (3,)
    return Node(K.INPUT, (), InputAttrs(name, dtype, shape), T(dtype, *shape))


X = inp("x")
Y16 = inp("y", F16)
NEG = Node(K.NEG, (X,), NoAttrs(), T(F32, 3))


# --- one broken graph per invariant ------------------------------------------------------------------
# Each case: a graph, a phrase the message must contain, and text the `> ` line must contain.


def _listed_twice():
    return Graph([X, NEG, NEG], {"o": NEG})


def _unbound_symbol():
    c = Node(K.CONST, (), ConstAttrs(1.0, F32, (Sym.of("k"),)), T(F32, Sym.of("k")))
    return Graph([X, c], {"o": c})


def _unbound_param_symbol():
    w = Node(K.PARAM, (), ParamAttrs("w", F32, (Sym.of("hidden"),)), T(F32, Sym.of("hidden")))
    return Graph([inp("x", F32, BATCH), w], {"o": w})


BROKEN = {
    "wrong_result_dtype": (
        lambda: Graph([X, Node(K.NEG, (X,), NoAttrs(), T(F16, 3))], {}),
        "neg is typed f16[3] but its operands give f32[3]", "neg(%x) : f16[3]"),
    "wrong_result_shape": (
        lambda: Graph([X, Node(K.RELU, (X,), NoAttrs(), T(F32, 4))], {}),
        "relu is typed f32[4] but its operands give f32[3]", "relu(%x) : f32[4]"),
    "too_few_operands": (
        lambda: Graph([X, Node(K.ADD, (X,), NoAttrs(), T(F32, 3))], {}),
        "add has 1 operands, wants 2", "add(%x)"),
    "too_many_operands": (
        lambda: Graph([X, Node(K.NEG, (X, X), NoAttrs(), T(F32, 3))], {}),
        "neg has 2 operands, wants 1", "neg(%x, %x)"),
    "variadic_without_operands": (
        lambda: Graph([X, Node(K.CONCAT, (), AxisAttrs(0), T(F32, 3))], {}),
        "concat has 0 operands, wants at least 1", "concat(axis=0)"),
    "wrong_attrs_class": (
        lambda: Graph([X, Node(K.NEG, (X,), AxisAttrs(0), T(F32, 3))], {}),
        "neg carries AxisAttrs, not NoAttrs", "neg(%x, axis=0)"),
    "not_an_op_kind": (
        lambda: Graph([X, Node("neg", (X,), NoAttrs(), T(F32, 3))], {}),
        "'neg' is not an op kind", "neg(%x)"),
    "used_before_definition": (
        lambda: Graph([NEG, X], {"o": NEG}),
        "an operand of neg is used before it is defined", "neg(%?)"),
    "operand_not_in_node_list": (
        lambda: Graph([NEG], {"o": NEG}),
        "an operand of neg is used before it is defined (or never is)", "neg(%?)"),
    "node_listed_twice": (
        _listed_twice, "neg is listed twice in the node list (at positions 1 and 2)", "%1 = neg(%x)"),
    "duplicate_input_names": (
        lambda: Graph([X, inp("x")], {}), "'x' is declared twice", "input %x: f32[3]"),
    "input_and_param_share_a_name": (
        lambda: Graph([X, Node(K.PARAM, (), ParamAttrs("x", F32, (3,)), T(F32, 3))], {}),
        "'x' is declared twice", "param %x: f32[3]"),
    "output_not_in_graph": (
        lambda: Graph([X], {"o": NEG}), "output 'o' is not a node of the graph", "output %o = %?"),
    "symbol_bound_by_no_input": (
        _unbound_symbol, "symbolic dimension(s) k appear in f32[k] but no input's shape binds them",
        "const(value=1.0) : f32[k]"),
    "param_symbol_bound_by_no_input": (
        _unbound_param_symbol, "hidden appear in f32[hidden]", "param %w: f32[hidden]"),
    "add_of_f32_and_f16": (
        lambda: Graph([X, Y16, Node(K.ADD, (X, Y16), NoAttrs(), T(F32, 3))], {}),
        "add is ill-typed: operands of 'add' have different dtypes f32 and f16", "add(%x, %y)"),
    "where_on_a_float_condition": (
        lambda: Graph([X, Node(K.WHERE, (X, X, X), NoAttrs(), T(F32, 3))], {}),
        "where is ill-typed: the condition of 'where' must be bool", "where(%x, %x, %x)"),
    "permute_with_a_bad_order": (
        lambda: Graph([X, Node(K.PERMUTE, (X,), PermuteAttrs((1,)), T(F32, 3))], {}),
        "permute is ill-typed", "permute(%x, perm=[1])"),
}


def _marked(text: str) -> list[tuple[int, str]]:
    return [(i, line) for i, line in enumerate(text.splitlines()) if line.startswith("> ")]


@pytest.mark.parametrize("case", BROKEN, ids=str)
def test_broken_graph_names_the_problem_and_marks_the_line(case):
    make, problem, marked_text = BROKEN[case]
    with pytest.raises(VerifyError) as info:
        verify(make())
    err = info.value
    assert isinstance(err, AxonError) and str(err).startswith("error: ")
    assert problem in err.message, err.message
    marked = _marked(err.message)
    assert len(marked) == 1, err.message
    assert marked_text in marked[0][1], err.message
    assert "graph main {" in err.message  # an IR excerpt, not just the node's repr


def test_the_second_declaration_of_a_name_is_the_one_marked():
    with pytest.raises(VerifyError) as info:
        verify(Graph([X, inp("x")], {}))
    lines = info.value.message.splitlines()
    (at, _), = _marked(info.value.message)
    assert lines[at - 1] == "    input %x: f32[3]" and lines[at] == ">   input %x: f32[3]"


# --- valid graphs -----------------------------------------------------------------------------------


def _mlp() -> Graph:
    b = GraphBuilder("mlp")
    x = b.input("x", F32, (BATCH, 4))
    w = b.param("w", F32, (4, 8))
    h = b.relu(b.add(b.matmul(x, w), 1.0))
    b.output("y", b.sum(h, 1))
    b.output("h", h)
    return b.build()


def _symbolic_reshape() -> Graph:
    b = GraphBuilder()
    seq = Sym.of("seq")
    x = b.input("x", F16, (BATCH, seq, 8))
    flat = b.reshape(x, (-1, 8))
    b.output("y", b.reshape(b.exp(flat), (BATCH, seq, 8)))
    return b.build()


def _scaled_symbol() -> Graph:
    b = GraphBuilder()  # an input of size 4*n binds n, as the evaluator reads it
    x = b.input("x", F32, (Sym(("n",), 4),))
    b.output("y", b.reshape(x, (Sym.of("n"), 4)))
    return b.build()


def _empty() -> Graph:
    return GraphBuilder().build()


@pytest.mark.parametrize("make", [_mlp, _symbolic_reshape, _scaled_symbol, _empty])
def test_valid_graph_passes_unchanged(make):
    g = make()
    nodes, outputs, text = g.nodes, dict(g.outputs), print_graph(g)
    assert verify(g) is g
    assert g.nodes is nodes and g.outputs == outputs and print_graph(g) == text


def test_deep_graph_verifies_without_recursion():
    b = GraphBuilder()
    h = b.input("x", F32, (3,))
    for _ in range(5000):
        h = b.neg(h)
    b.output("y", h)
    g = b.build()
    assert verify(g) is g


# --- the excerpt ------------------------------------------------------------------------------------


def test_excerpt_shows_context_lines_on_each_side():
    b = GraphBuilder()
    h = b.input("x", F32, (3,))
    chain = [h]
    for _ in range(20):
        h = b.neg(h)
        chain.append(h)
    g = b.build()
    lines = excerpt(g, chain[10]).splitlines()
    assert len(lines) == 2 * CONTEXT_LINES + 1
    assert lines[CONTEXT_LINES] == ">   %9 = neg(%8) : f32[3]"
    assert excerpt(g, chain[0]).splitlines()[:2] == ["  graph main {", ">   input %x: f32[3]"]


def test_excerpt_of_a_node_outside_the_graph():
    assert excerpt(Graph([X], {}), NEG) == f"  {NEG!r} (not in the node list)"


UNPRINTABLE = Node(K.NEG, (X,), NoAttrs(), None)  # no type at all: the printer cannot write it


@pytest.mark.parametrize("graph", [
    Graph([X, UNPRINTABLE], {"o": UNPRINTABLE}),
    Graph([UNPRINTABLE], {}),
    Graph([X, NEG], {"o": NEG}, name=None),
], ids=["untyped_node", "untyped_node_alone", "unnamed_graph"])
def test_excerpt_never_raises_on_unprintable_graphs(graph):
    text = excerpt(graph, graph.nodes[-1])
    assert "graph cannot be printed" in text


def test_verifier_reports_an_unprintable_node_by_its_repr():
    with pytest.raises(VerifyError, match="neg is typed None but its operands give f32") as info:
        verify(Graph([X, UNPRINTABLE], {}))
    assert "(graph cannot be printed) <neg: None>" in info.value.message


@pytest.mark.parametrize("case", BROKEN, ids=str)
def test_excerpt_never_raises_on_any_node_of_a_broken_graph(case):
    g = BROKEN[case][0]()
    for node in [*g.nodes, *g.outputs.values(), NEG, UNPRINTABLE]:
        assert isinstance(excerpt(g, node), str)
