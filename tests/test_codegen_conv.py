"""Generated conv2d kernels (implicit GEMM) against the reference evaluator and torch.nn.functional.conv2d.

Irregular geometry (strides, paddings, dilations, groups up to depthwise, 1x1 / 3x3 / 5x3 kernels, odd
images, channel counts that are not multiples of 16), ragged tiles in M, N and K, every float dtype, a
symbolic batch, NaN propagation, views read through strides (channels-last inputs, permuted weights,
strided slices), int64 indexing, the gradient convs of a backward pass, the block-size table and a golden
source.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from axon.codegen import compile_group, groups
from axon.runtime import run_graph
from axon.codegen import conv as cv
from axon.codegen.conv import Conv2dKernel
from axon.codegen.target import Target, parse
from axon.ir import DType, GraphBuilder, Sym, evaluate
from axon.passes.autodiff import vjp
from numerics import assert_close


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AXON_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernels"))


INTERPRETER, SM90 = Target(), parse("sm_90", tf32=False)


def values(gen, *shape, dtype=torch.float32):
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 4 - 2).to(dtype)


def conv_graph(x_shape, w_shape, dtype=DType.F32, x_view=None, w_view=None, **attrs):
    """`out = conv2d(view(x), view(w), **attrs)`; a view is a function of the builder and the input."""
    b = GraphBuilder("conv")
    x, w = b.input("x", dtype, x_shape), b.input("w", dtype, w_shape)
    x = x_view(b, x) if x_view else x
    w = w_view(b, w) if w_view else w
    b.output("out", b.conv2d(x, w, **attrs))
    return b.build()


def check(x, w, shapes=None, x_view=None, w_view=None, want=None, **attrs):
    """Generated kernels (output poisoned with NaN first) vs `evaluate` and vs torch (`want`, or torch's
    conv2d of the inputs, computed in f64 from the same rounded values, when there are no views)."""
    shapes = shapes or (tuple(x.shape), tuple(w.shape))
    graph = conv_graph(*shapes, DType.from_torch(x.dtype), x_view, w_view, **attrs)
    feeds = {"x": x, "w": w}
    got = run_graph(graph, feeds, poison=True)["out"]
    ref = evaluate(graph, feeds)["out"]
    if want is None:
        want = F.conv2d(x.double(), w.double(), **attrs).to(x.dtype)
    assert got.dtype == ref.dtype == want.dtype == x.dtype
    assert_close(got, ref, dtype=x.dtype, what="vs evaluate")
    assert_close(got, want, dtype=x.dtype, what="vs torch")
    return got


CASES = {  # name: (x shape, w shape, conv2d attributes)
    "plain-3x3": ((1, 3, 9, 7), (5, 3, 3, 3), {}),
    "1x1": ((3, 5, 9, 7), (7, 5, 1, 1), {}),
    "1x1-stride2": ((3, 5, 9, 7), (7, 5, 1, 1), {"stride": 2}),
    "groups2-stride2-pad1": ((3, 4, 9, 7), (6, 2, 3, 3), {"stride": 2, "padding": 1, "groups": 2}),
    "depthwise-dilation2": ((3, 6, 9, 7), (6, 1, 3, 3), {"stride": (2, 1), "padding": 1, "dilation": 2,
                                                           "groups": 6}),
    "depthwise-multiplier2": ((1, 3, 9, 7), (6, 1, 3, 3), {"padding": 1, "groups": 3}),
    "5x3-stride21-pad20": ((1, 3, 9, 7), (5, 3, 5, 3), {"stride": (2, 1), "padding": (2, 0)}),
    "5x3-dilation21": ((3, 3, 9, 7), (5, 3, 5, 3), {"padding": (2, 0), "dilation": (2, 1)}),
    "channels-19-to-21": ((1, 19, 9, 7), (21, 19, 3, 3), {"padding": 1}),  # K = 171: several K blocks
    "one-output-pixel": ((1, 2, 3, 3), (3, 2, 3, 3), {}),
    "kernel-over-image": ((3, 2, 3, 2), (3, 2, 5, 3), {"padding": (2, 1)}),  # every window in the padding
}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_geometry(case, gen):
    x_shape, w_shape, attrs = CASES[case]
    check(values(gen, *x_shape), values(gen, *w_shape), **attrs)


@pytest.mark.parametrize("dot,n,h,o,m", [(True, 3, 9, 70, 189), (False, 1, 5, 18, 35)],
                         ids=["tl.dot", "f64-loop"])
def test_ragged_tiles(dot, n, h, o, m, gen, monkeypatch):
    """Tiles of 16 (4 for the f64 loop) in every dimension: several ragged tiles in M (m rows), in N
    (o / 2 output channels per group) and in K (2 * 5 * 3 = 30), for both groups."""
    monkeypatch.setattr(cv, "INTERPRETER_DOT", {"BLOCK_N": 16, "BLOCK_K": 16})
    monkeypatch.setattr(cv, "INTERPRETER_A_BLOCK", 16 * 16)
    monkeypatch.setattr(cv, "INTERPRETER_LOOP", {"BLOCK_N": 4, "BLOCK_K": 4})
    monkeypatch.setattr(cv, "INTERPRETER_PRODUCT", 4 * 4 * 4)
    dtype = torch.float32 if dot else torch.float64
    x, w = values(gen, n, 4, h, 7, dtype=dtype), values(gen, o, 2, 5, 3, dtype=dtype)
    graph = conv_graph(x.shape, w.shape, DType.from_torch(dtype), padding=(2, 1), groups=2)
    launch = Conv2dKernel(groups(graph)[0], target=INTERPRETER).prepare({})
    size = 16 if dot else 4
    assert launch.meta == {"BLOCK_M": size, "BLOCK_N": size, "BLOCK_K": size}
    assert launch.grid == (-(-m // size) * -(-o // 2 // size), 2)
    check(x, w, padding=(2, 1), groups=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", ["groups2-stride2-pad1", "depthwise-dilation2", "channels-19-to-21"])
def test_dtypes(dtype, case, gen):
    x_shape, w_shape, attrs = CASES[case]
    check(values(gen, *x_shape, dtype=dtype), values(gen, *w_shape, dtype=dtype), **attrs)


def test_symbolic_batch(gen):
    """One graph with a symbolic batch, run at three batch sizes (0 launches nothing)."""
    batch = Sym.of("batch")
    w = values(gen, 6, 2, 3, 3)
    for n in (3, 1, 0):
        check(values(gen, n, 4, 9, 7), w, shapes=((batch, 4, 9, 7), (6, 2, 3, 3)), stride=(2, 1),
              padding=1, groups=2)


def test_nan_pixel_poisons_exactly_the_windows_over_it(gen):
    """A NaN input pixel of group 1 reaches the outputs of group 1 whose (strided, dilated) window covers
    it, and nothing else; a NaN pixel that stride and dilation step over reaches nothing."""
    attrs = {"stride": 2, "padding": (1, 2), "dilation": (1, 2), "groups": 2}
    x, w = values(gen, 3, 4, 9, 7), values(gen, 6, 2, 3, 3)
    x[1, 3, 4, 4] = float("nan")   # iw = 2*ow - 2 + 2*kw = 4 for (ow, kw) = (1, 2), (2, 1), (3, 0)
    x[2, 1, 4, 3] = float("nan")   # iw odd: no window reads it
    out = check(x, w, **attrs)
    covers = F.conv2d(x.isnan().double(), torch.ones(6, 2, 3, 3, dtype=torch.float64), **attrs) > 0
    assert torch.equal(out.isnan(), covers)
    assert int(covers.sum()) == 3 * 3 and covers[1, 3:].any()  # 3 channels x 3 windows, all in image 1


def test_nan_weight_poisons_its_output_channel(gen):
    """Without padding (torch's f32 CPU conv skips padded taps, its f64 one multiplies their zeros, so a
    NaN weight's reach into the border depends on the backend; the kernel multiplies zeros)."""
    x, w = values(gen, 3, 4, 9, 7), values(gen, 6, 4, 3, 3)
    w[4, 2, 0, 0] = float("nan")
    out = check(x, w, stride=(1, 2))
    assert out[:, 4].isnan().all()
    out[:, 4] = 0.0
    assert not out.isnan().any()


def test_channels_last_input_is_read_through_strides(gen):
    """An NHWC-stored input permuted to NCHW, and a weight stored [KH, KW, C, O]: both permutes fold into
    the kernel's strides (no copy kernel)."""
    def to_nchw(b, v):
        return b.permute(v, (0, 3, 1, 2))

    def to_oihw(b, v):
        return b.permute(v, (3, 2, 0, 1))

    x, w = values(gen, 3, 9, 7, 5), values(gen, 3, 3, 5, 6)
    graph = conv_graph(x.shape, w.shape, x_view=to_nchw, w_view=to_oihw, padding=1, stride=(1, 2))
    (group,) = groups(graph)
    assert group.kind == "conv2d" and all(a.view for a in group.inputs)
    launch = compile_group(group).prepare({})
    assert launch.scalars[:8] == (9 * 7 * 5, 1, 7 * 5, 5, 1, 6, 3 * 5 * 6, 5 * 6)  # x NHWC, w HWIO
    check(x, w, x_view=to_nchw, w_view=to_oihw, padding=1, stride=(1, 2),
          want=F.conv2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1), padding=1, stride=(1, 2)))


def test_strided_slice_input_is_read_through_strides(gen):
    """Every other column and a channel window of a larger buffer, with an offset."""
    def crop(b, v):
        return b.slice(b.slice(v, 3, 1, 15, 2), 1, 2, 5)

    x, w = values(gen, 2, 7, 9, 15), values(gen, 5, 3, 3, 3)
    check(x, w, x_view=crop, padding=1, want=F.conv2d(x[:, 2:5, :, 1::2], w, padding=1))


def test_wide_indexing_same_answer(gen):
    x_shape, w_shape, attrs = CASES["depthwise-dilation2"]
    graph = conv_graph(x_shape, w_shape, **attrs)
    (group,) = groups(graph)
    narrow, wide = compile_group(group), compile_group(group, wide=True)
    assert "tl.int64" not in narrow.source
    assert "pid = tl.program_id(0).to(tl.int64)" in wide.source
    assert "pid_g = tl.program_id(1).to(tl.int64)" in wide.source
    assert "offs_k = (k + tl.arange(0, BLOCK_K)).to(tl.int64)" in wide.source
    feeds = {graph.inputs["x"]: values(gen, *x_shape), graph.inputs["w"]: values(gen, *w_shape)}
    (a,) = narrow.run(feeds, poison=True).values()
    (b,) = wide.run(feeds, poison=True).values()
    assert not a.isnan().any() and torch.equal(a, b)


@pytest.mark.parametrize("case", ["groups2-stride2-pad1", "depthwise-dilation2"])
def test_gradient_convs(case, gen):
    """The backward pass of a conv is made of convs (stride and dilation exchanged, the batch as the
    channels, a flipped kernel): all of it through generated kernels, against torch autograd."""
    x_shape, w_shape, attrs = CASES[case]
    fwd = conv_graph(x_shape, w_shape, DType.F64, **attrs)
    bwd = vjp(fwd, ["x", "w"])
    x, w = values(gen, *x_shape, dtype=torch.float64), values(gen, *w_shape, dtype=torch.float64)
    x.requires_grad_(), w.requires_grad_()
    out = F.conv2d(x, w, **attrs)
    dout = values(gen, *out.shape, dtype=torch.float64)
    out.backward(dout)
    got = run_graph(bwd, {"x": x.detach(), "w": w.detach(), "dout.out": dout}, poison=True)
    assert_close(got["grad.x"], x.grad, dtype=torch.float64, what="grad.x")
    assert_close(got["grad.w"], w.grad, dtype=torch.float64, what="grad.w")


def test_digits_cnn_takes_few_programs_in_the_interpreter():
    """The interpreter pays per program: a digits-sized conv (32 images of 8x8) is one tile per group."""
    for c, o, g in ((1, 16, 1), (16, 16, 1), (16, 16, 16)):
        graph = conv_graph((32, c, 8, 8), (o, c // g, 3, 3), padding=1, groups=g)
        spec = Conv2dKernel(groups(graph)[0], target=INTERPRETER)
        assert spec.prepare({}).grid == (1, g)


def test_block_sizes():
    """tl.dot blocks are at least 16 (masks pad them); BLOCK_K pads K by little; GPU tiles are capped by
    the kind of dot: 64 x 64 for full-precision f32 (FMAs), 128 x 128 on tensor cores, 32 rows for f64."""
    graph = conv_graph((32, 16, 8, 8), (16, 16, 3, 3), padding=1)
    gpu = Conv2dKernel(groups(graph)[0], target=SM90)
    assert gpu.blocks(2048, 16, 144) == {"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 32}  # 5 x 32 = 160
    assert gpu.blocks(5, 1, 9) == {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}
    assert gpu.blocks(10**6, 1000, 4608) == {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": cv.GPU_BLOCK_K["fma"]}
    half = Conv2dKernel(groups(conv_graph((2, 8, 5, 5), (8, 8, 3, 3), DType.F16))[0], target=SM90)
    assert half.blocks(10**6, 1000, 4608) == {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}  # gathered 4096
    f64 = Conv2dKernel(groups(conv_graph((2, 8, 5, 5), (8, 8, 3, 3), DType.F64))[0], target=SM90)
    assert f64.blocks(10**6, 1, 9) == {"BLOCK_M": 32, "BLOCK_N": 4, "BLOCK_K": 4}  # 3 x 4, not 2 x 8
    configs = gpu.configs(gpu.blocks(2048, 16, 144))
    assert configs and all(c["BLOCK_K"] == 32 and {"num_warps", "num_stages"} <= set(c) for c in configs)


@pytest.mark.parametrize("interpreted,line", [
    (True, 'acc = tl.dot(_bf16_operand(a), _bf16_operand(b), acc, input_precision="ieee")'),
    (False, "acc = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)"),
])
def test_bf16_dot(interpreted, line):
    """bf16 runs on tensor cores on a GPU; the interpreter's bf16 tl.dot is wrong, so it goes via f32."""
    graph = conv_graph((2, 8, 5, 5), (8, 8, 3, 3), DType.BF16)
    assert line in Conv2dKernel(groups(graph)[0], target=INTERPRETER if interpreted else SM90).source()


GOLDEN_HEADER = """\
# Conv2d kernel (implicit GEMM): x f32[3, 5, 9, 7] * w f32[6, 5, 3, 3] -> f32[3, 6, 5, 7],
# stride (2, 1), padding (1, 2), dilation (1, 2), groups 1, computing:
#   %3 = conv2d(%2, %1): f32[3, 6, 5, 7]
"""

GOLDEN_GEOMETRY = """
    STRIDE_H: tl.constexpr = 2
    STRIDE_W: tl.constexpr = 1
    PAD_H: tl.constexpr = 1
    PAD_W: tl.constexpr = 2
    DILATION_H: tl.constexpr = 1
    DILATION_W: tl.constexpr = 2
"""

GOLDEN_SIGNATURE = """
@triton.jit
def conv2d_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    x_stride_n,
    x_stride_c,
    x_stride_h,
    x_stride_w,
    w_stride_o,
    w_stride_c,
    w_stride_h,
    w_stride_w,
    out_stride_n,
    out_stride_c,
    out_stride_h,
    out_stride_w,
    H,
    W,
    C_G,
    O_G,
    OH,
    OW,
    KH,
    KW,
    M,
    K,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
"""


def test_golden_source():
    """The header names the IR node and the geometry; pointers, then strides, then sizes, then blocks;
    named masks; the tile is cast and stored last (where a fused epilogue goes)."""
    graph = conv_graph((3, 9, 7, 5), (6, 5, 3, 3), x_view=lambda b, v: b.permute(v, (0, 3, 1, 2)),
                       stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    spec = Conv2dKernel(groups(graph)[0], target=INTERPRETER)
    source = spec.source()
    assert source.startswith(GOLDEN_HEADER)
    assert GOLDEN_GEOMETRY in source and GOLDEN_SIGNATURE in source
    for line in ["x_mask = m_mask[:, None] & k_mask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)",
                 "w_mask = k_mask[:, None] & oc_mask[None, :]",
                 'acc = tl.dot(a, b, acc, input_precision="ieee")',
                 "mask = m_mask[:, None] & oc_mask[None, :]"]:
        assert line in source
    assert source.rstrip().endswith("tl.store(out_ptr + out_m[:, None] + oc[None, :] * out_stride_c, out, "
                                    "mask=mask)")
    launch = spec.prepare({})
    # x is NHWC [3, 9, 7, 5] seen as NCHW; w and out contiguous; then H, W, C/G, O/G, OH, OW, KH, KW, M, K
    assert launch.scalars == (315, 1, 35, 5, 45, 9, 3, 1, 210, 35, 7, 1, 9, 7, 5, 6, 5, 7, 3, 3, 105, 45)
    assert launch.meta == {"BLOCK_M": 128, "BLOCK_N": 16, "BLOCK_K": 64}
    assert launch.grid == (1, 1)
