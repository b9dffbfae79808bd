"""Reductions, matmul and conv2d against PyTorch: axes sets, negative axes, keepdim, integer and
low-precision dtypes, batched and broadcast matmul, conv2d with stride/padding/dilation/groups."""
import pytest
import torch
import torch.nn.functional as F

from axon.ir import DType, EvalError, GraphBuilder, IRTypeError, Sym, TensorType, evaluate
from opcheck import check, rand

D = DType
BATCH = Sym.of("batch")

REDUCE_REF = {
    "sum": lambda x, axes, keep: torch.sum(x, axes, keepdim=keep, dtype=x.dtype),
    "mean": lambda x, axes, keep: torch.mean(x, axes, keepdim=keep),
    "max": lambda x, axes, keep: torch.amax(x, axes, keepdim=keep),
    "min": lambda x, axes, keep: torch.amin(x, axes, keepdim=keep),
}
AXES = [None, 0, -1, 1, (0, 2), (-1, -3), (2, 0, 1)]


def _dims(axes):
    """The reference's `dim` argument: all axes for None, a tuple otherwise."""
    return (0, 1, 2) if axes is None else (axes if isinstance(axes, tuple) else (axes,))


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("axes", AXES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", sorted(REDUCE_REF))
def test_reduce(method, dtype, axes, keepdim, gen):
    x = rand(gen, 3, 37, 53, dtype=dtype)
    check(lambda b, x: getattr(b, method)(x, axes, keepdim),
          lambda x: REDUCE_REF[method](x, _dims(axes), keepdim), x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32, torch.int8, torch.uint8])
@pytest.mark.parametrize("method", ["sum", "max", "min"])
def test_reduce_other_dtypes(method, dtype, gen):
    x = rand(gen, 37, 53, dtype=dtype, low=0, high=20)
    tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else None  # torch may accumulate in f32
    check(lambda b, x: getattr(b, method)(x, -1), lambda x: REDUCE_REF[method](x, (-1,), False), x,
          tol=tol)


def test_mean_of_integers_is_f32(gen):
    x = rand(gen, 37, 53, dtype=torch.int32, low=-50, high=50)
    check(lambda b, x: b.mean(x, 0), lambda x: x.float().mean(0), x,
          ref64=lambda x: x.double().mean(0))


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32])
@pytest.mark.parametrize("method", ["argmax", "argmin"])
def test_arg_reduce(method, dtype, axis, keepdim, gen):
    x = rand(gen, 3, 37, 53, dtype=dtype, low=-1000, high=1000)
    check(lambda b, x: getattr(b, method)(x, axis, keepdim),
          lambda x: getattr(torch, method)(x, axis, keepdim), x)


def test_reduce_keeps_symbolic_dims(gen):
    x = rand(gen, 4, 37, 53)
    check(lambda b, x: b.sum(x, (1, 2), keepdim=True), lambda x: x.sum((1, 2), keepdim=True), x,
          shapes=[(BATCH, 37, 53)], out_type=TensorType(D.F32, (BATCH, 1, 1)))
    check(lambda b, x: b.argmax(x, 2), lambda x: x.argmax(2), x,
          shapes=[(BATCH, 37, 53)], out_type=TensorType(D.I64, (BATCH, 37)))


@pytest.mark.parametrize("method", ["max", "min", "argmax", "argmin"])
def test_reduce_over_size_zero_is_an_error(method):
    # known at build time: an IRTypeError
    b = GraphBuilder()
    x = b.input("x", D.F32, (0, 5))
    with pytest.raises(IRTypeError, match="size 0"):
        getattr(b, method)(x, 0)
    # known only at run time (a symbolic dim bound to 0): an EvalError, not a crash
    b = GraphBuilder()
    x = b.input("x", D.F32, (Sym.of("n"), 5))
    b.output("y", getattr(b, method)(x, 0))
    with pytest.raises(EvalError, match="size 0"):
        evaluate(b.build(), {"x": torch.zeros(0, 5)})


@pytest.mark.parametrize("method, want", [("sum", 0.0), ("mean", float("nan"))])
def test_sum_and_mean_over_size_zero_are_zero_and_nan(method, want):
    """As torch: a sum of no elements is 0, their mean 0/0; known when built (a constant) or at run time
    (a symbolic dim bound to 0), through the evaluator and the kernels."""
    from axon.runtime import run_graph

    b = GraphBuilder()
    x = b.input("x", D.F32, (0, 5))
    assert getattr(b, method)(x, 0).op.value == "const"
    b = GraphBuilder()
    x = b.input("x", D.F32, (Sym.of("n"), 5))
    b.output("y", getattr(b, method)(x, 0))
    graph, feeds = b.build(), {"x": torch.zeros(0, 5)}
    for got in (evaluate(graph, feeds)["y"], run_graph(graph, feeds)["y"]):
        assert torch.equal(got, torch.full((5,), want)) or (got.isnan().all() and want != want)


@pytest.mark.parametrize("method", ["sum", "max", "mean"])
def test_reduce_over_no_axes_is_an_error(method):
    b = GraphBuilder()
    x = b.input("x", D.F32, (3, 5))
    with pytest.raises(IRTypeError, match="no axes"):
        getattr(b, method)(x, ())


@pytest.mark.parametrize("method", ["sum", "max", "min", "mean", "argmax", "argmin"])
@pytest.mark.parametrize("axes", [None, 0, -1])
def test_reduce_of_a_scalar_is_the_scalar(method, axes, gen):
    """As torch: a 0-d tensor reduces over its one "axis" (0 or -1) to itself; its argmax is 0."""
    want = {"argmax": lambda x: torch.tensor(0), "argmin": lambda x: torch.tensor(0)}.get(method, lambda x: x)
    check(lambda b, x: getattr(b, method)(x, 0 if axes is None and method.startswith("arg") else axes),
          want, rand(gen, dtype=torch.float32))
    with pytest.raises(IRTypeError, match="out of range"):
        getattr(GraphBuilder(), method)(GraphBuilder().input("s", D.F32, ()), 1)


# --- matmul ----------------------------------------------------------------------------------------
MATMUL_SHAPES = [  # a, b: 2-D, batched, broadcast batch dims, rank-differing, vector-like
    ((37, 53), (53, 29)), ((3, 37, 53), (3, 53, 29)), ((4, 1, 37, 53), (3, 53, 29)),
    ((37, 53), (2, 53, 29)), ((1, 53), (53, 1)), ((5, 3, 37, 53), (1, 1, 53, 29)),
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matmul(dtype, shapes, gen):
    a, b = rand(gen, *shapes[0], dtype=dtype), rand(gen, *shapes[1], dtype=dtype)
    check(lambda bld, x, y: bld.matmul(x, y), torch.matmul, a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn])
def test_matmul_low_precision(dtype, gen):
    a, b = rand(gen, 3, 37, 53, dtype=dtype, low=-1, high=1), rand(gen, 53, 29, dtype=dtype, low=-1, high=1)
    # an independent f32 reference, rounded to the dtype: loose, as accumulation order may differ
    tol = {torch.float16: 1e-2, torch.bfloat16: 3e-2, torch.float8_e4m3fn: 1e-1}[dtype]
    check(lambda bld, x, y: bld.matmul(x, y), lambda x, y: (x.float() @ y.float()).to(dtype), a, b,
          tol=tol, ref64=torch.matmul)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int8])
def test_matmul_integer_is_exact(dtype, gen):
    a, b = rand(gen, 3, 37, 53, dtype=dtype, low=-5, high=5), rand(gen, 53, 29, dtype=dtype, low=-5, high=5)
    check(lambda bld, x, y: bld.matmul(x, y), lambda x, y: (x.long() @ y.long()).to(dtype), a, b)


def test_matmul_symbolic_batch(gen):
    a, w = rand(gen, 6, 37, 53), rand(gen, 53, 29)
    check(lambda bld, x, y: bld.matmul(x, y), torch.matmul, a, w, shapes=[(BATCH, 37, 53), (53, 29)],
          out_type=TensorType(D.F32, (BATCH, 37, 29)))


# --- conv2d ----------------------------------------------------------------------------------------
CONV_CASES = [  # x shape, w shape, stride, padding, dilation, groups
    ((2, 3, 37, 53), (5, 3, 3, 3), 1, 0, 1, 1),
    ((2, 3, 37, 53), (5, 3, 3, 5), (2, 3), (1, 2), 1, 1),   # non-square kernel, stride, padding
    ((1, 4, 29, 31), (6, 2, 3, 3), 1, 1, 2, 2),             # groups, dilation
    ((3, 6, 17, 19), (6, 1, 5, 2), 2, (2, 0), (1, 3), 6),   # depthwise
    ((1, 1, 7, 9), (1, 1, 7, 9), 1, 0, 1, 1),               # kernel as large as the input
    ((2, 5, 11, 13), (7, 5, 1, 1), 3, 0, 1, 1),             # 1x1, stride 3
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("xs,ws,stride,padding,dilation,groups", CONV_CASES, ids=str)
def test_conv2d(xs, ws, stride, padding, dilation, groups, dtype, gen):
    x, w = rand(gen, *xs, dtype=dtype), rand(gen, *ws, dtype=dtype)
    check(lambda b, x, w: b.conv2d(x, w, stride, padding, dilation, groups),
          lambda x, w: F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups),
          x, w)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("xs,ws,stride,dilation", [((2, 3, 37, 53), (4, 3, 3, 2), 1, 1),
                                                   ((1, 4, 5, 5), (1, 4, 2, 3), 2, (2, 3))], ids=str)
def test_conv2d_low_precision(xs, ws, stride, dilation, dtype, gen):
    # against torch in f32, rounded: torch's own f16 conv2d on the CPU returns garbage in some
    # outputs of the dilated case (torch 2.13), so the evaluator computes f16/bf16 convs in f32
    x, w = rand(gen, *xs, dtype=dtype, low=-1, high=1), rand(gen, *ws, dtype=dtype, low=-1, high=1)
    conv = lambda x, w: F.conv2d(x, w, stride=stride, padding=1, dilation=dilation)  # noqa: E731
    check(lambda b, x, w: b.conv2d(x, w, stride=stride, padding=1, dilation=dilation),
          lambda x, w: conv(x.float(), w.float()).to(dtype), x, w,
          tol={torch.float16: 1e-2, torch.bfloat16: 3e-2}[dtype], ref64=conv)


def test_conv2d_symbolic_batch(gen):
    x, w = rand(gen, 3, 2, 13, 11), rand(gen, 4, 2, 3, 3)
    check(lambda b, x, w: b.conv2d(x, w, stride=2), lambda x, w: F.conv2d(x, w, stride=2), x, w,
          shapes=[(BATCH, 2, 13, 11), (4, 2, 3, 3)], out_type=TensorType(D.F32, (BATCH, 4, 6, 5)))
