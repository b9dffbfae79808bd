"""The graph builder: interning, promotion with Python scalars, the movement helpers' Python-like
semantics and shortcuts, refusal of API misuse with `IRTypeError`; `Graph`'s indexes; the networkx
export and the DOT text made from it."""
from __future__ import annotations

import math
import re

import networkx as nx
import pytest
import torch

from axon.show import to_dot
from axon.ir import DType, GraphBuilder, Init, IRTypeError, Node, OpKind, Sym, evaluate
from axon.ir.ops import FLOAT_ONLY_UNARY, UNARY

K = OpKind
F64, F32, F16, BF16, I64, I32, U8, BOOL = (DType.F64, DType.F32, DType.F16, DType.BF16, DType.I64,
                                           DType.I32, DType.U8, DType.BOOL)
BATCH, SEQ = Sym.of("batch"), Sym.of("seq")


def builder_with(dtype: DType = F32, shape=(2, 3)) -> tuple[GraphBuilder, Node]:
    b = GraphBuilder()
    return b, b.input("x", dtype, shape)


def ops_in(b: GraphBuilder) -> list[OpKind]:
    return [n.op for n in b.build().nodes]


# --- interning --------------------------------------------------------------------------------------


def test_structurally_equal_nodes_are_one_object():
    b, x = builder_with()
    y = b.add(b.relu(x), 1.0)
    count = len(b)
    assert b.add(b.relu(x), 1.0) is y
    assert b.const(1, F32) is b.const(1.0, F32)  # the literal is normalized to the dtype first
    assert len(b) == count


@pytest.mark.parametrize("make", [
    lambda b, x: (b.sum(x, 0), b.sum(x, 1)),
    lambda b, x: (b.sum(x, 0), b.sum(x, 0, keepdim=True)),
    lambda b, x: (b.const(1.0, F32), b.const(1.0, F16)),
    lambda b, x: (b.const(1.0, F32), b.const(1.0, F32, (2, 3))),
    lambda b, x: (b.const(0.0, F32), b.const(-0.0, F32)),
    lambda b, x: (b.sub(x, b.exp(x)), b.sub(b.exp(x), x)),
    lambda b, x: (b.pad(x, [(0, 1), (0, 0)]), b.pad(x, [(0, 1), (0, 0)], value=-0.0)),
], ids=["axes", "keepdim", "dtype", "shape", "signed_zero", "operand_order", "pad_signed_zero"])
def test_different_nodes_stay_distinct(make):
    b, x = builder_with()
    first, second = make(b, x)
    assert first is not second


def test_nan_constants_are_one_value():
    b, _ = builder_with()
    assert b.const(math.nan, F32) is b.const(float("nan"), F32)
    assert b.tensor([math.nan, 1.0], F32) is b.tensor([float("nan"), 1.0], F32)


def test_signed_zero_constants_keep_their_sign():
    b, _ = builder_with()
    neg, pos = b.const(-0.0, F32), b.const(0.0, F32)
    assert math.copysign(1, neg.attrs.value) == -1 and math.copysign(1, pos.attrs.value) == 1


# --- promotion with Python scalars ------------------------------------------------------------------


@pytest.mark.parametrize("dtype, scalar, result", [
    (F16, 2, F16),      # a Python number takes the tensor's type, as in PyTorch
    (F16, 2.5, F16),
    (BF16, 1, BF16),
    (I32, 2, I32),
    (U8, 3, U8),
    (I32, 2.5, F32),    # a float with an integer tensor: the default float
    (BOOL, 2, I64),
    (BOOL, 2.5, F32),
    (F32, True, F32),   # a bool scalar never widens anything
    (I32, True, I32),
    (BOOL, True, BOOL),
])
def test_python_scalar_promotion(dtype, scalar, result):
    b, x = builder_with(dtype)
    cond = b.input("cond", BOOL, (2, 3))
    for y in (b.where(cond, x, scalar), b.where(cond, scalar, x)):  # where: any dtype, bool too
        assert y.dtype == result
        assert all(i.dtype == result for i in y.inputs[1:])
        assert (x in y.inputs) == (dtype == result)  # the tensor is cast only if it must be


@pytest.mark.parametrize("a, b_, result", [(F16, F32, F32), (F16, BF16, F32), (I32, F16, F16),
                                           (BOOL, I32, I32), (I32, I64, I64)])
def test_tensor_tensor_promotion_inserts_visible_casts(a, b_, result):
    b = GraphBuilder()
    y = b.add(b.input("a", a, (3,)), b.input("b", b_, (3,)))
    assert y.dtype == result
    assert ops_in(b).count(K.CAST) == (a != result) + (b_ != result)


@pytest.mark.parametrize("op, dtype, result", [
    (K.DIV, I32, F32), (K.POW, I64, F32), (K.DIV, F16, F16), (K.LT, I32, BOOL), (K.EQ, F16, BOOL),
])
def test_binary_result_dtypes(op, dtype, result):
    b, x = builder_with(dtype)
    assert b.binary(op, x, 2).dtype == result


@pytest.mark.parametrize("a, b_, dtype", [(1, 2.0, F32), (1, 2, I64), (True, 2, I64), (1.5, True, F32)])
def test_two_scalars_make_a_scalar_tensor_of_their_promoted_type(a, b_, dtype):
    b, _ = builder_with()
    out = b.add(a, b_)  # as torch.add(1, 2.0): a 0-d tensor
    assert out.shape == () and out.dtype == dtype


@pytest.mark.parametrize("op", sorted(UNARY - {K.NOT}, key=str), ids=str)
def test_float_only_unary_ops_cast_integers_to_f32(op):
    b, x = builder_with(I32)
    y = b.unary(op, x)
    if op in FLOAT_ONLY_UNARY:
        assert y.dtype == F32 and y.inputs[0].op == K.CAST
    else:
        assert y.dtype == I32 and y.inputs[0] is x


# --- reshape ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, target, result", [
    ((2, 3, 4), (-1, 4), (6, 4)),
    ((2, 3, 4), (-1,), (24,)),
    ((2, 3, 4), (2, -1, 2), (2, 6, 2)),
    ((0, 5), (-1, 5), (0, 5)),
    ((BATCH, 4), (-1,), (Sym(("batch",), 4),)),
    ((Sym(("batch",), 4),), (-1, 4), (BATCH, 4)),
    ((BATCH, SEQ, 8), (-1, 8), (Sym(("batch", "seq")), 8)),
    ((BATCH, SEQ, 8), (BATCH, -1), (BATCH, Sym(("seq",), 8))),
    ((Sym(("batch", "seq")), 8), (SEQ, -1, 2), (SEQ, Sym(("batch",), 4), 2)),
])
def test_reshape_infers_the_minus_one(shape, target, result):
    b, x = builder_with(F32, shape)
    assert b.reshape(x, target).shape == result


@pytest.mark.parametrize("shape, target", [
    ((2, 3), (4, -1)),
    ((2, 3), (0, -1)),
    ((BATCH, 3), (2, -1)),
    ((BATCH, 3), (SEQ, -1)),
    ((2, 3), (-1, -1)),
    ((2, 3), (7,)),
    ((BATCH, 3), (3, BATCH, 2)),
])
def test_reshape_that_cannot_fit_is_refused(shape, target):
    b, x = builder_with(F32, shape)
    with pytest.raises(IRTypeError):
        b.reshape(x, target)


def test_reshape_to_the_same_shape_returns_the_node():
    b, x = builder_with(F32, (BATCH, 3))
    assert b.reshape(x, (BATCH, -1)) is x and b.reshape(x, (BATCH, 3)) is x


# --- slice, permute, transpose, pad, concat ---------------------------------------------------------


@pytest.mark.parametrize("start, stop, step", [
    (2, None, 1), (-3, None, 1), (None, -2, 1), (1, 8, 3), (None, None, 2), (-4, -1, 2), (9, None, 1),
    (-100, 3, 1), (9, 100, 4), (-1, None, 5),
])
def test_slice_follows_python_semantics(start, stop, step):
    b, x = builder_with(F32, (3, 10))
    y = b.slice(x, -1, start, stop, step)
    b.output("y", y)
    data = torch.arange(30, dtype=torch.float32).reshape(3, 10)
    want = data[:, start:stop:step]
    assert y.shape == tuple(want.shape)
    torch.testing.assert_close(evaluate(b.build(), {"x": data})["y"], want)


@pytest.mark.parametrize("start, stop, step", [(None, None, 1), (0, None, 1), (-100, 100, 1),
                                               (0, 10, 1), (-10, None, 1)])
def test_full_slice_returns_the_node(start, stop, step):
    b, x = builder_with(F32, (10,))
    assert b.slice(x, 0, start, stop, step) is x


@pytest.mark.parametrize("start, stop", [(5, 5), (8, 2), (10, None), (None, -10)])
def test_empty_slice_is_an_empty_tensor(start, stop):
    b, x = builder_with(F32, (10, 3))  # as torch's x[8:2]: no element, and no slice node (which keeps
    y = b.slice(x, 0, start, stop)     # 0 <= start < stop <= size)
    assert y.op == K.CONST and y.shape == (0, 3) and y.dtype == F32


@pytest.mark.parametrize("op", [K.AND, K.OR])
def test_logical_ops_take_nonzero_numbers_as_true(op):
    b, x = builder_with(F32)
    y = b.binary(op, x, b.input("i", I32, (2, 3)))  # as torch.logical_and: each operand != 0 first
    assert y.dtype == BOOL and all(i.op == K.CAST and i.dtype == BOOL for i in y.inputs)
    assert b.logical_not(x).inputs[0].op == K.CAST


def test_concat_promotes_like_a_binary_op():
    b, x = builder_with(F32)
    y = b.concat([x, b.input("h", F16, (2, 3)), b.input("i", I64, (2, 3))], 0)  # as torch.cat
    assert y.dtype == F32 and [i.dtype for i in y.inputs] == [F32, F32, F32]


@pytest.mark.parametrize("step", [0, -1])
def test_slice_step_must_be_positive(step):
    b, x = builder_with(F32, (10,))
    with pytest.raises(IRTypeError, match="step must be >= 1"):
        b.slice(x, 0, None, None, step)


def test_symbolic_axis_slices_only_in_full():
    b, x = builder_with(F32, (BATCH, 4))
    assert b.slice(x, 0) is x and b.slice(x, 0, 0, None) is x
    assert b.slice(x, 1, 1, 3).shape == (BATCH, 2)
    for bounds in [(1, None), (None, 2), (0, None, 2)]:
        with pytest.raises(IRTypeError, match="cannot slice the symbolic dimension batch"):
            b.slice(x, 0, *bounds)


def test_permute_and_transpose():
    b, x = builder_with(F32, (2, 3, 4))
    assert b.permute(x, (0, 1, 2)) is x and b.permute(x, (-3, -2, -1)) is x
    assert b.permute(x, (2, 0, 1)).shape == (4, 2, 3)
    assert b.permute(x, (-1, 0, 1)) is b.permute(x, (2, 0, 1))
    assert b.transpose(x).shape == (2, 4, 3)
    assert b.transpose(x, 0, 2).shape == (4, 3, 2)
    assert b.transpose(x, 1, 1) is x


def test_pad_and_concat_shortcuts():
    b, x = builder_with(F32, (2, 3))
    assert b.pad(x, [(0, 0), (0, 0)]) is x
    assert b.pad(x, [(1, 0), (0, 2)]).shape == (3, 5)
    assert b.concat([x], axis=1) is x
    assert b.concat([x, x], axis=-1).shape == (2, 6)


# --- declarations and misuse ------------------------------------------------------------------------


@pytest.mark.parametrize("declare", [
    lambda b: (b.input("x", F32, (3,)), b.input("x", F32, (3,))),
    lambda b: (b.input("x", F32, (3,)), b.input("x", F16, (4,))),
    lambda b: (b.input("x", F32, (3,)), b.param("x", F32, (3,))),
    lambda b: (b.param("w", F32, (3,)), b.param("w", F32, (3,), Init("ones"))),
], ids=["identical", "different_types", "input_then_param", "two_params"])
def test_a_name_is_declared_once(declare):
    with pytest.raises(IRTypeError, match="declared twice"):
        declare(GraphBuilder())


def test_an_output_is_declared_once():
    b, x = builder_with()
    b.output("y", x)
    with pytest.raises(IRTypeError, match="output 'y' is declared twice"):
        b.output("y", b.neg(x))


MISUSE = {
    "input_dtype_as_string": lambda b, x: b.input("z", "f32", (3,)),
    "param_dtype_as_string": lambda b, x: b.param("w", "f16", (3,)),
    "const_dtype_as_string": lambda b, x: b.const(1.0, "f32"),
    "cast_to_a_string": lambda b, x: b.cast(x, "f16"),
    "iota_dtype_as_string": lambda b, x: b.iota((3,), 0, "i64"),
    "tensor_dtype_as_string": lambda b, x: b.tensor([], "f32"),
    "float_size_in_input": lambda b, x: b.input("z", F32, (3.0,)),
    "string_shape": lambda b, x: b.input("z", F32, "3"),
    "string_constant": lambda b, x: b.const("1", F32),
    "none_constant": lambda b, x: b.const(None, F32),
    "string_operand": lambda b, x: b.add(x, "1"),
    "list_operand": lambda b, x: b.mul(x, [1, 2, 3]),
    "string_tensor": lambda b, x: b.tensor(["a", "b"], F32),
    "fractional_int_constant": lambda b, x: b.const(1.5, I32),
    "float_reduce_axis": lambda b, x: b.sum(x, 1.0),
    "bool_reduce_axis": lambda b, x: b.sum(x, True),
    "float_permute_axes": lambda b, x: b.permute(x, (1.0, 0.0)),
    "float_identity_permute": lambda b, x: b.permute(x, (0.0, 1.0)),
    "float_transpose_axis": lambda b, x: b.transpose(x, 0.0, 1),
    "float_concat_axis": lambda b, x: b.concat([x, x], 1.0),
    "float_slice_axis": lambda b, x: b.slice(x, 1.0, 0, 1),
    "float_slice_bound": lambda b, x: b.slice(x, 1, 0.5, 2),
    "float_slice_step": lambda b, x: b.slice(x, 1, 0, 2, 1.5),
    "float_take_axis": lambda b, x: b.take(x, b.const(0, I64, (2,)), 1.0),
    "float_gather_axis": lambda b, x: b.gather(x, 0.0, b.const(0, I64, (2, 3))),
    "float_iota_axis": lambda b, x: b.iota((3,), 0.0),
    "out_of_range_axis": lambda b, x: b.sum(x, 2),
    "repeated_axis": lambda b, x: b.sum(x, (1, -1)),
    "fractional_pad": lambda b, x: b.pad(x, [(0.5, 0), (0, 0)]),
    "string_pad_value": lambda b, x: b.pad(x, [(1, 0), (0, 0)], value="0"),
    "float_conv_stride": lambda b, x: b.conv2d(b.input("i", F32, (1, 1, 4, 4)),
                                               b.param("w", F32, (1, 1, 2, 2)), stride=1.5),
    "float_reshape_size": lambda b, x: b.reshape(x, (3, 2.0)),
    "bool_reshape_size": lambda b, x: b.reshape(x, (True, 6)),
    "string_reshape_sizes": lambda b, x: b.reshape(x, "6"),
    "negative_reshape_sizes": lambda b, x: b.reshape(x, (-2, -3)),
    "float_expand_size": lambda b, x: b.expand(x, (2, 3.0)),
    "bad_input_name": lambda b, x: b.input("2x", F32, (3,)),
    "bad_output_name": lambda b, x: b.output("y z", x),
    "add_of_bools_and_a_scalar_bool": lambda b, x: b.add(b.input("m", BOOL, (3,)), True),
    # found in review: each used to raise a raw Python exception or build a nonsense node
    "expand_to_negative_size": lambda b, x: b.expand(x, (-1, 3)),
    "reshape_minus_two_with_symbol": lambda b, x: b.reshape(b.input("s", F32, (BATCH, 4)), (-2, -1)),
    "huge_integer_constant": lambda b, x: b.const(10**400, F32),
    "huge_integer_scalar": lambda b, x: b.add(x, 10**400),
    "pad_pair_of_one": lambda b, x: b.pad(x, [(1,), (0, 0)]),
    "ragged_literal": lambda b, x: b.tensor([[1, 2], [3]], F32),
    "where_on_a_python_bool": lambda b, x: b.where(True, x, 1.0),
    "relu_of_a_float": lambda b, x: b.relu(3.0),
    "node_of_another_builder": lambda b, x: b.relu(GraphBuilder().input("x", F32, (3,))),
    "concat_of_floats": lambda b, x: b.concat([1.0], 0),
    "concat_axis_out_of_range": lambda b, x: b.concat([x], 99),
    "float_conv_groups": lambda b, x: b.conv2d(b.input("i", F32, (1, 2, 4, 4)),
                                               b.param("w", F32, (2, 1, 2, 2)), groups=2.0),
    "empty_conv_kernel": lambda b, x: b.conv2d(b.input("i", F32, (1, 1, 4, 4)),
                                               b.param("w", F32, (1, 1, 0, 3))),
    "symbol_named_like_a_number": lambda b, x: b.input("z", F32, (Sym.of("2"),)),
    "symbol_named_like_a_product": lambda b, x: b.input("z", F32, (Sym.of("a*b"),)),
}


def test_numpy_integer_axes_are_accepted():
    import numpy as np

    b, x = builder_with()
    assert b.sum(x, np.int64(1)).shape == (2,)


def test_floor_and_ceil_keep_integers_integer():
    b, x = builder_with(I64, (3,))
    b.output("f", b.floor(x))
    b.output("c", b.ceil(x))
    out = evaluate(b.build(), {"x": torch.tensor([16777217, -3, 5])})
    assert out["f"].dtype == torch.int64 and out["f"].tolist() == [16777217, -3, 5]
    assert out["c"].tolist() == [16777217, -3, 5]


def test_symbol_factors_are_kept_sorted():
    assert Sym(("seq", "batch")) == Sym(("batch", "seq"))


@pytest.mark.parametrize("case", MISUSE, ids=str)
def test_api_misuse_is_an_ir_type_error(case):
    b, x = builder_with()
    with pytest.raises(IRTypeError):
        MISUSE[case](b, x)


# --- Graph's indexes --------------------------------------------------------------------------------


def test_users_index_and_declaration_order():
    b = GraphBuilder()
    a = b.input("a", F32, (3,))
    w = b.param("w", F32, (3,))
    c = b.input("c", F32, (3,))
    v = b.param("v", F32, (3,))
    s = b.add(a, w)
    sq = b.mul(s, s)
    t = b.add(sq, c)
    b.output("t", t)
    g = b.build()
    assert list(g.inputs) == ["a", "c"] and list(g.params) == ["w", "v"]
    assert g.inputs["c"] is c and g.params["v"] is v
    users = g.users()
    assert list(users) == list(g.nodes)
    assert users[a] == [s] and users[s] == [sq, sq] and users[t] == [] and users[v] == []
    index = g.index()
    assert all(g.nodes[i] is n for n, i in index.items()) and len(index) == len(g)
    assert all(index[i] < index[n] for n in g.nodes for i in n.inputs)


def test_a_built_graph_does_not_change_when_building_goes_on():
    b, x = builder_with()
    g = b.build()
    b.output("y", b.neg(x))
    assert len(g) == 1 and g.outputs == {}


# --- networkx and DOT -------------------------------------------------------------------------------


def _diamond():
    b = GraphBuilder("diamond")
    x = b.input("x", F32, (BATCH, 3))
    w = b.param("w", F32, (3, 3))
    h = b.matmul(x, w)
    y = b.add(b.relu(h), b.mul(h, h))  # mul(h, h): two operands, one edge
    b.output("y", b.sum(y, 1))
    b.output("h", h)
    return b.build()


def _deep():
    b = GraphBuilder()
    h = b.input("x", F32, (3,))
    for i in range(2000):
        h = b.add(h, float(i % 3)) if i % 2 else b.tanh(h)
    b.output("y", h)
    return b.build()


@pytest.mark.parametrize("make", [_diamond, _deep])
def test_networkx_export(make):
    g = make()
    nxg = g.to_networkx()
    edges = {(i, j) for j, n in enumerate(g.nodes) for i in (g.index()[s] for s in n.inputs)}
    assert nxg.number_of_nodes() == len(g)
    assert set(nxg.edges()) == edges and nxg.number_of_edges() == len(edges)
    assert nx.is_directed_acyclic_graph(nxg)
    order = list(nx.topological_sort(nxg))
    where = {n: k for k, n in enumerate(order)}
    assert all(where[i] < where[j] for i, j in edges)
    assert sorted(order) == list(range(len(g)))
    for i, n in enumerate(g.nodes):
        assert nxg.nodes[i]["op"] == n.op.value and nxg.nodes[i]["type"] == str(n.type)


def test_dot_has_one_line_per_node_and_edge():
    g = _diamond()
    dot = to_dot(g).splitlines()
    assert dot[0] == 'digraph "diamond" {' and dot[-1] == "}"
    nodes = [line for line in dot if re.fullmatch(r'  n\d+ \[label=".*"\];', line)]
    edges = [line for line in dot if re.fullmatch(r"  n\d+ -> n\d+;", line)]
    assert len(nodes) == len(g) and len(edges) == g.to_networkx().number_of_edges()
    assert len(dot) == 3 + len(nodes) + len(edges)
    assert '  n0 [label="x\\nf32[batch, 3]"];' in dot
    assert "  n2 -> n3;" in dot  # matmul(x, w) feeds relu
