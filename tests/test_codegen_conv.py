"""conv2d as a generated implicit-GEMM kernel, against the reference evaluator and torch: strides,
padding, dilation, groups (depthwise too), odd sizes, every float dtype, a symbolic batch, NaN
propagation, channels-last inputs read through strides, and int64 indexing."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from axon.codegen import compile_group, groups, run_graph
from axon.ir import DType, GraphBuilder, Sym, evaluate
from numerics import assert_close

TOL = {DType.F32: 1e-5, DType.F64: 1e-12, DType.F16: 5e-3, DType.BF16: 2e-2}
CASES = [  # x shape, w shape, stride, padding, dilation, groups
    ((2, 3, 9, 7), (5, 3, 3, 3), 1, 0, 1, 1),
    ((3, 4, 9, 7), (6, 2, 3, 3), 2, 1, 1, 2),
    ((1, 4, 8, 8), (4, 1, 3, 3), 1, 1, 1, 4),        # depthwise
    ((2, 3, 9, 7), (5, 3, 5, 3), (2, 1), (2, 0), 2, 1),
    ((2, 17, 6, 5), (19, 17, 1, 1), 1, 0, 1, 1),     # 1x1, channels past one block
    ((2, 1, 8, 8), (16, 1, 3, 3), 1, 1, 1, 1),       # the CNN example's first layer
    ((1, 2, 3, 3), (3, 2, 3, 3), 1, 0, 1, 1),        # a single output pixel
]


def _conv(dtype, xs, ws, s, p, d, g, batch=None):
    b = GraphBuilder()
    x = b.input("x", dtype, (batch or xs[0],) + xs[1:])
    w = b.input("w", dtype, ws)
    b.output("y", b.conv2d(x, w, stride=s, padding=p, dilation=d, groups=g))
    return b.build()


@pytest.mark.parametrize("dtype", [DType.F32, DType.F64, DType.F16, DType.BF16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "_".join("x".join(map(str, s)) for s in c[:2]))
def test_conv2d_matches_reference_and_torch(dtype, case, gen):
    xs, ws, s, p, d, g = case
    graph = _conv(dtype, *case)
    feeds = {"x": torch.randn(xs, generator=gen).to(dtype.torch),
             "w": torch.randn(ws, generator=gen).to(dtype.torch)}
    got = run_graph(graph, feeds, poison=True)["y"]
    assert_close(got, evaluate(graph, feeds)["y"], dtype=dtype.torch, tol=TOL[dtype])
    if dtype in (DType.F32, DType.F64):
        want = F.conv2d(feeds["x"], feeds["w"], stride=s, padding=p, dilation=d, groups=g)
        assert_close(got, want, dtype=dtype.torch, tol=TOL[dtype])


def test_symbolic_batch(gen):
    graph = _conv(DType.F32, (3, 4, 9, 7), (6, 2, 3, 3), 2, 1, 1, 2, batch=Sym.of("batch"))
    for n in (1, 5):
        feeds = {"x": torch.randn(n, 4, 9, 7, generator=gen), "w": torch.randn(6, 2, 3, 3, generator=gen)}
        assert_close(run_graph(graph, feeds, poison=True)["y"], evaluate(graph, feeds)["y"])


def test_nan_poisons_exactly_the_windows_over_it(gen):
    graph = _conv(DType.F32, (1, 2, 9, 7), (3, 2, 3, 3), 1, 1, 1, 1)
    x = torch.randn(1, 2, 9, 7, generator=gen)
    x[0, 1, 4, 2] = float("nan")
    feeds = {"x": x, "w": torch.randn(3, 2, 3, 3, generator=gen)}
    got = run_graph(graph, feeds, poison=True)["y"]
    want = evaluate(graph, feeds)["y"]
    assert int(got.isnan().sum()) == 3 * 9  # 3 channels x the 3x3 windows that cover the pixel
    assert_close(got, want)


def test_channels_last_input_is_read_through_strides(gen):
    b = GraphBuilder()
    nhwc = b.input("x", DType.F32, (2, 9, 7, 3))
    w = b.input("w", DType.F32, (5, 3, 3, 3))
    b.output("y", b.conv2d(b.permute(nhwc, (0, 3, 1, 2)), w, padding=1))
    graph = b.build()
    (conv,) = [k for k in groups(graph) if k.kind == "conv2d"]
    assert [m.op.value for m in conv.inputs[0].view] == ["permute"]  # no copy kernel
    feeds = {"x": torch.randn(2, 9, 7, 3, generator=gen), "w": torch.randn(5, 3, 3, 3, generator=gen)}
    got = run_graph(graph, feeds, poison=True)["y"]
    assert_close(got, F.conv2d(feeds["x"].permute(0, 3, 1, 2), feeds["w"], padding=1))


def test_wide_indexing_gives_the_same_answer(gen):
    graph = _conv(DType.F32, *CASES[1])
    (group,) = groups(graph)
    narrow, wide = compile_group(group), compile_group(group, wide=True)
    assert "tl.int64" in wide.source and "tl.int64" not in narrow.source
    x, w = torch.randn(3, 4, 9, 7, generator=gen), torch.randn(6, 2, 3, 3, generator=gen)
    values = {graph.inputs["x"]: x, graph.inputs["w"]: w}
    (a,) = narrow.run(values, poison=True).values()
    (b,) = wide.run(values, poison=True).values()
    assert torch.equal(a, b)


def test_source_reads_like_a_tutorial_kernel():
    source = compile_group(groups(_conv(DType.F32, *CASES[0]))[0]).source
    assert source.startswith("# Conv2d kernel (implicit GEMM): f32[2, 3, 9, 7] * f32[5, 3, 3, 3]")
    assert "def conv2d_kernel(\n    x_ptr,\n    w_ptr,\n    out_ptr,\n    x_stride_n," in source
    assert "mask = m_mask[:, None] & n_mask[None, :]" in source and "tl.dot(" in source
