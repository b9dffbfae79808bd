"""Gather, take, pad and concat as generated Triton kernels, against the reference evaluator and PyTorch.

Irregular shapes, every axis, index dtypes, operands seen through folded views (permute, slice, expand),
a symbolic batch, outputs poisoned with NaN first. These ops move data, so results must match exactly.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from axon.codegen import compile_group, groups
from axon.runtime import run_graph
from axon.ir import DType, EvalError, GraphBuilder, OpKind, Sym, evaluate
from axon.ir.ops import AxisAttrs
from numerics import assert_close

K = OpKind
NAN, INF = float("nan"), float("inf")
SHAPE = (5, 19, 23)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AXON_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernels"))


def values(gen, *shape, dtype=torch.float32):
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) < 0.5
    if not dtype.is_floating_point:
        return torch.randint(-1000, 1000, shape, generator=gen).to(dtype)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def indices(gen, size, *shape, dtype=torch.int64):
    return torch.randint(0, size, shape, generator=gen).to(dtype)


def build(fn, *args, shapes=None):
    """A graph of inputs x0, x1, ... (shapes: the declared ones, `Sym`s allowed) and output `fn(b, *xs)`."""
    b = GraphBuilder("case")
    shapes = shapes or [tuple(a.shape) for a in args]
    xs = [b.input(f"x{i}", DType.from_torch(a.dtype), s) for i, (a, s) in enumerate(zip(args, shapes))]
    b.output("out", fn(b, *xs))
    return b.build(), {f"x{i}": a for i, a in enumerate(args)}


def check(fn, *args, torch_ref=None, shapes=None, folded=False) -> torch.Tensor:
    """Generated kernels vs `evaluate` (and vs `torch_ref`, when given): exact, NaN where NaN."""
    graph, feeds = build(fn, *args, shapes=shapes)
    if folded:  # the views reach the kernel as strides: no copy kernel before it
        (group,) = groups(graph)
        assert group.kind == "index" and all(a.view for a in group.inputs)
    got = run_graph(graph, feeds, poison=True)["out"]
    want = evaluate(graph, feeds)["out"]
    assert got.dtype == want.dtype
    assert_close(got, want, tol=0.0)
    if torch_ref is not None:
        assert_close(got, torch_ref, tol=0.0, what="vs torch")
    return got


# --- gather -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64, torch.uint8])
def test_gather(axis, index_dtype, gen):
    x = values(gen, *SHAPE)
    shape = list(SHAPE)
    shape[axis] = 7
    index = indices(gen, SHAPE[axis], *shape, dtype=index_dtype)
    check(lambda b, x, i: b.gather(x, axis, i), x, index, torch_ref=torch.gather(x, axis, index.long()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.int64, torch.bool])
def test_gather_dtypes(dtype, gen):
    x = values(gen, 37, 53, dtype=dtype)
    index = indices(gen, 53, 37, 11, dtype=torch.int32)
    check(lambda b, x, i: b.gather(x, 1, i), x, index, torch_ref=torch.gather(x, 1, index.long()))


def test_gather_folded_views(gen):
    x = values(gen, 23, 19, 5)  # seen permuted to [5, 19, 23]
    index = indices(gen, 19, 5, 9, 23)  # seen sliced to [5, 4, 23]
    ref = torch.gather(x.permute(2, 1, 0), 1, index[:, 1:9:2])
    check(lambda b, x, i: b.gather(b.permute(x, (2, 1, 0)), 1, b.slice(i, 1, 1, 9, 2)), x, index,
          torch_ref=ref, folded=True)


# --- take ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_take(axis, index_dtype, gen):
    x = values(gen, *SHAPE)
    index = indices(gen, SHAPE[axis], 4, 3, dtype=index_dtype)
    ref = torch.index_select(x, axis, index.long().reshape(-1))
    ref = ref.reshape(SHAPE[:axis] + (4, 3) + SHAPE[axis + 1:])
    check(lambda b, x, i: b.take(x, i, axis), x, index, torch_ref=ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.bool])
def test_take_embedding_symbolic_batch(dtype, gen):
    table = values(gen, 37, 53, dtype=dtype)
    tokens = indices(gen, 37, 7, 11)
    ref = F.embedding(tokens, table) if dtype.is_floating_point else table[tokens]
    check(lambda b, t, i: b.take(t, i, 0), table, tokens, shapes=[(37, 53), (Sym.of("batch"), 11)],
          torch_ref=ref)


def test_take_scalar_index(gen):
    x = values(gen, 19, 23)
    index = torch.tensor(17, dtype=torch.int32)
    check(lambda b, x, i: b.take(x, i, 1), x, index, torch_ref=x[:, 17])


def test_take_folded_views(gen):
    x = values(gen, 19, 29)  # sliced to [19, 23] then permuted to [23, 19]
    index = indices(gen, 23, 3, 6, dtype=torch.int32)  # permuted to [6, 3]
    ref = x[:, 3:26].t()[index.t().long()]
    check(lambda b, x, i: b.take(b.permute(b.slice(x, 1, 3, 26), (1, 0)), b.permute(i, (1, 0)), 0),
          x, index, torch_ref=ref, folded=True)


# --- pad ----------------------------------------------------------------------------------------------
PADS = [((0, 0), (2, 3), (0, 4)), ((1, 0), (0, 0), (3, 1)), ((2, 2), (1, 1), (5, 0))]


@pytest.mark.parametrize("pads", PADS)
@pytest.mark.parametrize("value", [0.0, NAN, -INF, 2.5])
def test_pad(pads, value, gen):
    x = values(gen, *SHAPE)
    flat = [p for lo_hi in reversed(pads) for p in lo_hi]  # torch lists the last axis first
    check(lambda b, x: b.pad(x, pads, value), x, torch_ref=F.pad(x, flat, value=value))


@pytest.mark.parametrize("dtype,value", [(torch.float16, 0.1), (torch.int64, -7.0), (torch.bool, 1.0),
                                         (torch.uint8, 255.0)])
def test_pad_dtypes(dtype, value, gen):
    x = values(gen, 37, 53, dtype=dtype)
    flat = [4, 0, 1, 2]
    ref = F.pad(x.to(torch.uint8), flat, value=value).to(torch.bool) if dtype == torch.bool else \
        F.pad(x, flat, value=value)
    check(lambda b, x: b.pad(x, ((1, 2), (4, 0)), value), x, torch_ref=ref)


def test_pad_folded_view_symbolic_batch(gen):
    x = values(gen, 19, 7)  # permuted to [7 (batch), 19], padded on the static axis only
    ref = F.pad(x.t(), [3, 2], value=-INF)
    check(lambda b, x: b.pad(b.permute(x, (1, 0)), ((0, 0), (3, 2)), -INF), x,
          shapes=[(19, Sym.of("batch"))], torch_ref=ref, folded=True)


# --- concat -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_concat(n, axis, gen):
    xs = []
    for size in [3, 7, 1, 5][:n]:  # sizes along the axis differ
        shape = list(SHAPE)
        shape[axis] = size
        xs.append(values(gen, *shape))
    # b.concat returns a lone input unchanged: build the one-input node directly to test the kernel
    check(lambda b, *xs: b.node(K.CONCAT, xs, AxisAttrs(axis)), *xs, torch_ref=torch.cat(xs, axis))


@pytest.mark.parametrize("dtype", [torch.float16, torch.int64, torch.bool])
def test_concat_same_input_twice(dtype, gen):
    x, y = values(gen, 37, 53, dtype=dtype), values(gen, 37, 4, dtype=dtype)
    graph, _ = build(lambda b, x, y: b.concat([x, y, x], 1), x, y)
    (group,) = groups(graph)
    assert group.inputs[0] == group.inputs[2]  # one Access, read twice
    check(lambda b, x, y: b.concat([x, y, x], 1), x, y, torch_ref=torch.cat([x, y, x], 1))


@pytest.mark.parametrize("axis", [0, 1])
def test_concat_symbolic_batch(axis, gen):
    batch = Sym.of("batch")
    x, y = values(gen, 7, 19), values(gen, 7, 19)
    ref = torch.cat([x, y, x], axis)  # along axis 0 the starts are batch and 2*batch
    check(lambda b, x, y: b.concat([x, y, x], axis), x, y, shapes=[(batch, 19), (batch, 19)], torch_ref=ref)


def test_concat_folded_views(gen):
    x, y, z = values(gen, 23, 5), values(gen, 5, 31), values(gen, 5, 1)
    ref = torch.cat([x.t(), y[:, 2:29:3], z.expand(5, 6)], 1)
    check(lambda b, x, y, z: b.concat([b.permute(x, (1, 0)), b.slice(y, 1, 2, 29, 3), b.expand(z, (5, 6))],
                                      1), x, y, z, torch_ref=ref, folded=True)


# --- out-of-range indices -----------------------------------------------------------------------------
@pytest.mark.parametrize("op", [K.GATHER, K.TAKE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_out_of_range_index_is_masked(op, dtype, gen):
    """No crash and no stray read: NaN for a float output, 0 for an integer one; `evaluate` refuses.
    (Take counts -53..-1 from the end, as torch.take; gather takes no negative index, as torch.gather.)"""
    x = values(gen, 37, 53, dtype=dtype)
    index = indices(gen, 53, 37, 11)
    index[0, :6] = torch.tensor([-1, 53, 10**6, -2**40, -53, -54])
    graph, feeds = build(lambda b, x, i: b.gather(x, 1, i) if op == K.GATHER else b.take(x, i, 1), x, index)
    with pytest.raises(EvalError):
        evaluate(graph, feeds)
    got = run_graph(graph, feeds, poison=True)["out"]
    lowest = 0 if op == K.GATHER else -53
    in_range = (index >= lowest) & (index < 53)
    safe = torch.where(in_range, index % 53, 0)
    if op == K.GATHER:
        ref = torch.gather(x, 1, safe)
    else:  # take along axis 1: out[r, i, j] = x[r, index[i, j]]
        ref, in_range = x[:, safe], in_range.expand(37, 37, 11)
    fill = torch.tensor(NAN if dtype.is_floating_point else 0, dtype=dtype)
    assert_close(got, torch.where(in_range, ref, fill), tol=0.0)


# --- wide indexing and the source ---------------------------------------------------------------------
CASES = {
    "gather": (lambda b, x, i: b.gather(b.permute(x, (1, 0)), 0, i), lambda x, i: torch.gather(x.t(), 0, i)),
    "take": (lambda b, x, i: b.take(x, i, 1), lambda x, i: x[:, i]),
    "pad": (lambda b, x, i: b.pad(x, ((1, 2), (0, 3)), NAN), lambda x, i: F.pad(x, [0, 3, 1, 2], value=NAN)),
    "concat": (lambda b, x, i: b.concat([x, b.slice(x, 1, 2, 5)], 1),
               lambda x, i: torch.cat([x, x[:, 2:5]], 1)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_wide_indexing(case, gen):
    """`wide=True` (int64 index arithmetic, for 2**31+ elements) on a small case: the same result."""
    fn, ref = CASES[case]
    x, index = values(gen, 19, 23), indices(gen, 19, 6, 19, dtype=torch.int32)
    graph, feeds = build(fn, x, index)
    (group,) = [g for g in groups(graph) if g.kind == "index"]
    kernel = compile_group(group, wide=True)
    assert "tl.program_id(0).to(tl.int64)" in kernel.source
    if case in ("gather", "take"):
        assert ".to(tl.int64)" in kernel.source.split("index = tl.where")[1].splitlines()[0]
    (got,) = kernel.run({graph.inputs["x0"]: x, graph.inputs["x1"]: index}, poison=True).values()
    assert_close(got, ref(x, index.long()), tol=0.0)


def test_source_reads_like_a_kernel(gen):
    graph, _ = build(lambda b, x, i: b.gather(x, 1, i), values(gen, 19, 23), indices(gen, 23, 19, 4))
    (group,) = groups(graph)
    source = compile_group(group).source
    assert source.startswith("# Index kernel (gather) over f32[19, 4], computing:\n#   %2 = gather(%0, %1)")
    args = [a.strip() for a in source.split("def index_kernel(")[1].split("):")[0].split(",") if a.strip()]
    assert args[:5] == ["in0_ptr", "in1_ptr", "out_ptr", "in0_stride0", "in0_stride1"]
    assert args[-3:] == ["in0_size1", "n_elements", "BLOCK: tl.constexpr"]
    assert "mask = offs < n_elements" in source and 'other=float("nan")' in source
