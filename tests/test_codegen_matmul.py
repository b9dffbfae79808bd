"""Generated matmul kernels against the reference evaluator and torch.matmul.

Irregular shapes (ragged tiles in M, N and K), broadcast batches, operands that are views (transposed,
sliced), every dtype the template handles, a symbolic batch, NaN propagation, int64 indexing, the
autotuned (GPU) variant of the source, and a golden source.
"""
from __future__ import annotations

import pytest
import torch

from axon.codegen import CodegenError, compile_group, groups
from axon.runtime import run_graph
from axon.codegen import matmul as mm
from axon.codegen.cache import load_kernel, write_cached
from axon.codegen.matmul import MatmulKernel
from axon.codegen.target import Target, parse
from axon.ir import DType, GraphBuilder, Sym, evaluate
from numerics import assert_close


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AXON_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernels"))


INTERPRETER, SM90 = Target(), parse("sm_90", tf32=False)


def values(gen, *shape, dtype=torch.float32):
    if not dtype.is_floating_point:
        return torch.randint(-9, 10, shape, generator=gen).to(dtype)
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 6 - 3).to(dtype)


def torch_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch's answer, integers exact in int64 and wrapped to their dtype."""
    if a.is_floating_point():
        return torch.matmul(a, b)
    return torch.matmul(a.long(), b.long()).to(a.dtype)


def matmul_graph(a_shape, b_shape, dtype=DType.F32, a_view=None, b_view=None):
    """`out = matmul(view(x), view(w))`; a view is a function of the builder and the input."""
    b = GraphBuilder("mm")
    x, w = b.input("x", dtype, a_shape), b.input("w", dtype, b_shape)
    x = a_view(b, x) if a_view else x
    w = b_view(b, w) if b_view else w
    b.output("out", b.matmul(x, w))
    return b.build()


def check(a, b_, shapes=None, a_view=None, b_view=None, want=None):
    """Generated kernels (output poisoned with NaN first) vs `evaluate` and vs torch (`want`, or
    torch.matmul of the inputs when there are no views)."""
    shapes = shapes or (tuple(a.shape), tuple(b_.shape))
    graph = matmul_graph(*shapes, DType.from_torch(a.dtype), a_view, b_view)
    feeds = {"x": a, "w": b_}
    got = run_graph(graph, feeds, poison=True)["out"]
    ref = evaluate(graph, feeds)["out"]
    want = torch_matmul(a, b_) if want is None else want
    dtype = a.dtype if a.is_floating_point() else None
    assert got.dtype == ref.dtype == want.dtype
    assert_close(got, ref, dtype=dtype, what="vs evaluate")
    assert_close(got, want, dtype=dtype, what="vs torch")
    return got


@pytest.mark.parametrize("m,k,n", [
    (1, 1, 1), (37, 53, 29), (1, 53, 29), (37, 53, 1), (1, 53, 1),
    (37, 5, 29),     # K smaller than the smallest block
    (19, 150, 23),   # K over two blocks and ragged
    (130, 7, 70),    # several tiles in M and N, ragged in both
])
def test_irregular_shapes(m, k, n, gen):
    check(values(gen, m, k), values(gen, k, n))


def test_grouped_program_order(gen, monkeypatch):
    """16x16 tiles: 10 tile-rows make one full group of GROUP_M = 8 and a ragged one of 2."""
    monkeypatch.setattr(mm, "INTERPRETER_TILE", 16)
    check(values(gen, 150, 21), values(gen, 21, 35))


def test_empty_k_gives_zeros(gen):
    out = check(values(gen, 3, 0), values(gen, 0, 4))
    assert torch.equal(out, torch.zeros(3, 4))


@pytest.mark.parametrize("a_shape,b_shape", [
    ((5, 1, 37, 53), (3, 53, 29)),   # both broadcast: out [5, 3, 37, 29]
    ((2, 3, 19, 23), (23, 7)),       # a matrix against a batch
    ((19, 23), (4, 23, 7)),
    ((4, 1, 19, 23), (1, 3, 23, 7)),
])
def test_batched_broadcast(a_shape, b_shape, gen):
    check(values(gen, *a_shape), values(gen, *b_shape))


def test_transposed_operands_are_folded(gen):
    """a = x^T, b = w^T (a linear layer's weight): both permutes fold into the kernel's strides."""
    x, w = values(gen, 53, 37), values(gen, 3, 29, 53)
    graph = matmul_graph(x.shape, w.shape, a_view=lambda b, v: b.permute(v, (1, 0)),
                         b_view=lambda b, v: b.permute(v, (0, 2, 1)))
    (group,) = groups(graph)
    assert group.kind == "matmul" and all(a.view for a in group.inputs)  # views, no copy kernels
    check(x, w, a_view=lambda b, v: b.permute(v, (1, 0)), b_view=lambda b, v: b.permute(v, (0, 2, 1)),
          want=torch.matmul(x.T, w.transpose(1, 2)))


def test_sliced_operands_are_folded(gen):
    """Strided slices in K (step 2), in M, and in a batch dim."""
    x, w = values(gen, 4, 40, 107), values(gen, 53, 31)
    check(x, w, a_view=lambda b, v: b.slice(b.slice(b.slice(v, 2, 1, 107, 2), 1, 3, 40), 0, 1, 4),
          b_view=lambda b, v: b.slice(v, 1, 2, 31),
          want=torch.matmul(x[1:, 3:, 1::2], w[:, 2:]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16,
                                   torch.int32, torch.int64, torch.int8, torch.uint8])
def test_dtypes(dtype, gen):
    a, b_ = values(gen, 2, 37, 53, dtype=dtype), values(gen, 53, 29, dtype=dtype)
    if dtype == torch.uint8:
        a, b_ = a.abs(), b_.abs()
    check(a, b_)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int8])
def test_integers_wrap_like_the_reference(dtype, gen):
    """The sums overflow the dtype: computed in int64, then wrapped (as the reference casts)."""
    top = torch.iinfo(dtype).max
    a = torch.randint(top // 2, top, (19, 53), generator=gen).to(dtype)
    b_ = torch.randint(top // 2, top, (53, 23), generator=gen).to(dtype)
    check(a, b_)


def test_symbolic_batch(gen):
    batch = Sym.of("batch")
    check(values(gen, 7, 37, 53), values(gen, 53, 29), shapes=((batch, 37, 53), (53, 29)))
    check(values(gen, 37, 53), values(gen, 53, 29), shapes=((batch, 53), (53, 29)))  # a symbolic M


def test_nan_poisons_its_row_only(gen):
    a, b_ = values(gen, 2, 37, 53), values(gen, 53, 29)
    a[1, 5, 40] = float("nan")
    out = check(a, b_)
    assert out[1, 5].isnan().all()
    out[1, 5] = 0.0
    assert not out.isnan().any()


def test_nan_poisons_its_column_only(gen):
    a, b_ = values(gen, 37, 53, dtype=torch.float64), values(gen, 53, 29, dtype=torch.float64)
    b_[0, 28] = float("nan")
    out = check(a, b_)
    assert out[:, 28].isnan().all() and not out[:, :28].isnan().any()


@pytest.mark.parametrize("dtype", [DType.F32, DType.I64])
def test_wide_indexing_same_answer(dtype, gen):
    graph = matmul_graph((3, 1, 19, 23), (2, 23, 17), dtype, b_view=lambda b, v: b.slice(v, 2, 0, 17))
    (group,) = groups(graph)
    narrow, wide = compile_group(group), compile_group(group, wide=True)
    assert "tl.program_id(0).to(tl.int64)" in wide.source and "program_id(0).to" not in narrow.source
    assert "offs_k = (k + tl.arange(0, BLOCK_K)).to(tl.int64)" in wide.source
    feeds = {graph.inputs["x"]: values(gen, 3, 1, 19, 23, dtype=dtype.torch),
             graph.inputs["w"]: values(gen, 2, 23, 17, dtype=dtype.torch)}
    (a,) = narrow.run(feeds, poison=True).values()
    (b_,) = wide.run(feeds, poison=True).values()
    assert torch.equal(a, b_)


def test_too_many_batch_elements_is_refused():
    graph = matmul_graph((mm.MAX_BATCH + 1, 1, 1), (1, 1))
    with pytest.raises(CodegenError, match="batch of 65536 matrices"):
        MatmulKernel(groups(graph)[0], target=INTERPRETER).prepare({})


@pytest.mark.parametrize("dtype", [DType.F16, DType.F64])
def test_gpu_configs(dtype, gen):
    """The GPU variant: its launch carries the configs a tuner picks from (BLOCK_K, warps, stages; the
    same grid), each within the target's shared memory; each gives the right answer, run through the
    jitted function (interpreted without a GPU)."""
    graph = matmul_graph((2, 37, 53), (53, 29), dtype)
    spec = MatmulKernel(groups(graph)[0], target=SM90)
    launch = spec.prepare({})
    assert len(launch.configs) >= 2 and launch.meta == launch.configs[0]
    size = dtype.torch.itemsize
    for config in launch.configs:
        assert {"BLOCK_K", "num_warps", "num_stages"} <= set(config)
        assert config["num_stages"] * (config["BLOCK_M"] + config["BLOCK_N"]) * config["BLOCK_K"] * size \
            <= SM90.limits.smem_per_block
    fn = load_kernel(write_cached(spec.source(), SM90.key()), spec.name)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # compiled for real on a GPU
    x, w = values(gen, 2, 37, 53, dtype=dtype.torch), values(gen, 53, 29, dtype=dtype.torch)
    x, w = x.to(device), w.to(device)
    want = torch.matmul(x, w)
    for config in launch.configs:
        out = torch.full_like(want, float("nan"))
        fn[launch.grid](x, w, out, *launch.scalars, **config)
        assert_close(out, want, dtype=dtype.torch, what=str(config))


GOLDEN_HEADER = """\
# Matmul kernel: f32[53, 37] @ f32[37, 29] -> f32[53, 29], computing:
#   %3 = matmul(%2, %1): f32[53, 29]
import triton
import triton.language as tl
"""

GOLDEN_SIGNATURE = """
@triton.jit
def matmul_kernel(
    a_ptr,
    b_ptr,
    out_ptr,
    a_stride_m,
    a_stride_k,
    b_stride_k,
    b_stride_n,
    M,
    N,
    K,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
"""


def test_golden_source():
    """The header names the IR node; pointers, then strides, then sizes, then block sizes."""
    graph = matmul_graph((37, 53), (37, 29), a_view=lambda b, v: b.permute(v, (1, 0)))
    spec = MatmulKernel(groups(graph)[0], target=INTERPRETER)
    source = spec.source()
    assert source.startswith(GOLDEN_HEADER)
    assert GOLDEN_SIGNATURE in source
    assert 'acc = tl.dot(a, b, acc, input_precision="ieee")' in source
    assert "mask = m_mask[:, None] & n_mask[None, :]" in source
    launch = spec.prepare({})
    assert launch.scalars == (1, 53, 29, 1, 53, 29, 37)  # a = x^T: stride 1 along M, 53 along K
    assert launch.meta == {"BLOCK_M": 64, "BLOCK_N": 32, "GROUP_M": 8, "BLOCK_K": 64}
    assert launch.grid == (1, 1)  # one 64x32 tile, no batch


PERMUTE_BATCH = (lambda b, v: b.permute(v, (1, 0, 2, 3)), lambda t: t.permute(1, 0, 2, 3))
SLICE_ROWS = (lambda b, v: b.slice(v, 1, 0, 19), lambda t: t[:, :19])


@pytest.mark.parametrize("a_shape,b_shape,view,folds", [
    ((3, 5, 19, 23), (23, 7), None, True),          # x @ W over [batch, seq, d]: one tall matmul
    ((3, 5, 19, 23), (1, 23, 7), None, True),       # b broadcast over the batch
    ((3, 19, 23), (3, 23, 7), None, False),         # b differs per batch element
    ((5, 3, 19, 23), (23, 7), PERMUTE_BATCH, False),  # a's batch elements are not consecutive rows
    ((3, 40, 23), (23, 7), SLICE_ROWS, False),      # a gap between batch elements
])
def test_batch_folds_into_rows_only_when_it_may(a_shape, b_shape, view, folds, gen):
    a_view, torch_view = view or (None, lambda t: t)
    group = groups(matmul_graph(a_shape, b_shape, a_view=a_view))[0]
    launch = MatmulKernel(group, target=INTERPRETER).prepare({})
    assert (launch.grid[1] == 1) == folds
    a, b_ = values(gen, *a_shape), values(gen, *b_shape)
    check(a, b_, a_view=a_view, want=torch.matmul(torch_view(a), b_))


def test_batch_folding_with_an_epilogue(gen):
    """A folded linear layer's bias and residual epilogue still meet the right rows."""
    from axon.driver import executable

    b = GraphBuilder()
    x, w = b.input("x", DType.F32, (3, 5, 11)), b.param("w", DType.F32, (11, 6))
    bias, res = b.param("c", DType.F32, (6,)), b.input("r", DType.F32, (3, 5, 6))
    b.output("y", b.add(b.relu(b.add(b.matmul(x, w), bias)), res))
    graph = b.build()
    feeds = {"x": values(gen, 3, 5, 11), "r": values(gen, 3, 5, 6)}
    params = {"w": values(gen, 11, 6), "c": values(gen, 6)}
    got = executable(graph)(feeds, params, poison=True)["y"]
    want = torch.relu(feeds["x"] @ params["w"] + params["c"]) + feeds["r"]
    assert_close(got, want, what="folded linear + epilogue")


@pytest.mark.parametrize("axis", [0, 1, 2, 3])
def test_no_folding_under_an_epilogue_that_reads_coordinates(axis, gen):
    """An iota in the epilogue computes from the batch and row coordinates themselves, which folding
    would merge: such a product keeps its batch grid."""
    from axon.driver import executable

    b = GraphBuilder()
    x, w = b.input("x", DType.F32, (2, 3, 4, 5)), b.param("w", DType.F32, (5, 6))
    b.output("y", b.add(b.matmul(x, w), b.cast(b.iota((2, 3, 4, 6), axis), DType.F32)))
    graph = b.build()
    feeds, params = {"x": values(gen, 2, 3, 4, 5)}, {"w": values(gen, 5, 6)}
    got = executable(graph)(feeds, params, poison=True)["y"]
    assert_close(got, evaluate(graph, feeds, params)["y"], what=f"iota over axis {axis}")
