"""The default grouping: one kernel per computed node, sources inline, movement folded into indexing."""
from __future__ import annotations


from axon.codegen import groups
from axon.ir import DType, GraphBuilder, OpKind

K = OpKind


def test_sources_inline_and_views_folded():
    b = GraphBuilder()
    x = b.input("x", DType.F32, (53, 37))
    v = b.slice(b.permute(b.reshape(x, (37, 53)), (1, 0)), 0, 3, 50, 2)
    y = b.add(b.exp(v), b.cast(b.iota((24, 1), 0, DType.I32), DType.F32))
    b.output("y", b.sum(y, 1))
    gs = groups(b.build())
    assert [g.kind for g in gs] == ["pointwise", "pointwise", "pointwise", "reduce"]
    exp, cast, add, total = gs
    assert [n.op for n in exp.nodes] == [K.EXP]
    (read,) = exp.inputs
    assert read.buffer is x and [m.op for m in read.view] == [K.RESHAPE, K.PERMUTE, K.SLICE]
    assert [n.op for n in cast.nodes] == [K.IOTA, K.CAST]  # the iota is computed inside the cast's kernel
    assert [n.op for n in add.nodes] == [K.ADD]
    assert add.outputs == (add.nodes[-1],) and total.inputs[0].buffer is add.outputs[0]


def test_copy_where_a_view_cannot_be_folded():
    b = GraphBuilder()
    x = b.input("x", DType.F32, (37, 53))
    r = b.reshape(b.permute(x, (1, 0)), (53 * 37,))  # not a view of x: needs a copy
    b.output("r", b.neg(r))
    gs = groups(b.build())
    assert [g.nodes[-1].op for g in gs] == [K.RESHAPE, K.NEG]
    assert [m.op for m in gs[0].inputs[0].view] == [K.PERMUTE]


def test_templates_read_operands_through_folded_views():
    b = GraphBuilder()
    x = b.input("x", DType.F32, (4, 5))
    w = b.input("w", DType.F32, (3, 5))
    y = b.matmul(x, b.permute(w, (1, 0)))  # the transpose is folded into the matmul's strides
    b.output("y", b.concat([y, y], axis=0))
    gs = groups(b.build())
    assert [g.kind for g in gs] == ["matmul", "index"]
    assert [m.op for m in gs[0].inputs[1].view] == [K.PERMUTE]
    assert len(gs[1].inputs) == 2  # concat(y, y) reads y twice, by position
