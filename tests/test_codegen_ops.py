"""Every elementwise op and every reduction, as generated Triton kernels, against the reference evaluator.

Irregular shapes (masks exercised), broadcasting, a symbolic batch, outputs poisoned with NaN first.
"""
from __future__ import annotations

import pytest
import torch

from axon.runtime import run_graph
from axon.ir import DType, GraphBuilder, OpKind, Sym, evaluate
from axon.ir.ops import BINARY, UNARY
from numerics import assert_close

K = OpKind
# The interpreter computes with NumPy, which warns on log(0), 1/0 and the like that the tests feed it.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AXON_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernels"))


def check(build, *args, shapes=None, tol=None):
    """Build a graph of inputs x0, x1, ... ; compare generated kernels with `evaluate`."""
    b = GraphBuilder("case")
    shapes = shapes or [tuple(a.shape) for a in args]
    xs = [b.input(f"x{i}", DType.from_torch(a.dtype), s) for i, (a, s) in enumerate(zip(args, shapes))]
    b.output("out", build(b, *xs))
    graph = b.build()
    feeds = {f"x{i}": a for i, a in enumerate(args)}
    got = run_graph(graph, feeds, poison=True)["out"]
    want = evaluate(graph, feeds)["out"]
    assert got.dtype == want.dtype
    assert_close(got, want, dtype=want.dtype if want.is_floating_point() else None, tol=tol)


def values(gen, *shape, dtype=torch.float32, low=-3.0, high=3.0):
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) < 0.5
    if not dtype.is_floating_point:
        return torch.randint(int(low), int(high), shape, generator=gen).to(dtype)
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low).to(dtype)


POSITIVE = {K.LOG, K.SQRT, K.RSQRT}
BOOL_OPS = {K.NOT, K.AND, K.OR}


@pytest.mark.parametrize("op", sorted(UNARY, key=str), ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unary(op, dtype, gen):
    if op in BOOL_OPS:
        dtype = torch.bool
    x = values(gen, 37, 53, dtype=dtype, low=0.1 if op in POSITIVE else -3.0)
    if dtype.is_floating_point and op not in POSITIVE:
        x[0, :3] = torch.tensor([float("nan"), 0.0, -0.0], dtype=dtype)
    check(lambda b, x: b.unary(op, x), x)


@pytest.mark.parametrize("op", sorted(BINARY, key=str), ids=str)
def test_binary_broadcast(op, gen):
    dtype = torch.bool if op in BOOL_OPS else torch.float32
    a = values(gen, 3, 37, 53, dtype=dtype, low=0.1 if op == K.POW else -3.0)
    b_ = values(gen, 37, 1, dtype=dtype)
    if op == K.POW:
        b_ = torch.round(b_)
    if dtype.is_floating_point:
        a[0, 0, :2] = float("nan")
        b_[1, 0] = a[0, 1, 0] if op != K.POW else 2.0  # exact equality for the comparisons
    check(lambda b, x, y: b.binary(op, x, y), a, b_)


def test_pow_negative_base(gen):
    a = values(gen, 37, 53)
    e = torch.randint(-3, 4, (53,), generator=gen).float()
    check(lambda b, x, y: b.pow(x, y), a, e)


@pytest.mark.parametrize("op", [K.ADD, K.MUL, K.MAXIMUM, K.SIGN, K.ABS, K.NEG])
def test_integer_ops(op, gen):
    a, c = values(gen, 37, 53, dtype=torch.int32, low=-100, high=100), values(gen, 53, dtype=torch.int32)
    if op in BINARY:
        check(lambda b, x, y: b.binary(op, x, y), a, c)
    else:
        check(lambda b, x: b.unary(op, x), a)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype, gen):
    a, c = values(gen, 37, 53, dtype=dtype), values(gen, 53, dtype=dtype)
    check(lambda b, x, y: b.sigmoid(b.add(b.mul(x, y), b.exp(y))), a, c)


def test_bf16_results_round_to_nearest_even(gen):
    # bit for bit against the evaluator (torch rounds to nearest); the interpreter's own f32 -> bf16
    # truncates, and sign's integer result once was reinterpreted as bf16 bits (9.2e-41 for +1)
    x = values(gen, 37, 53, dtype=torch.bfloat16, high=8.0)
    x[0, :4] = torch.tensor([5.78, -5.78, 0.0, -0.0])
    y = values(gen, 37, 53, high=3e38, low=-3e38)
    y[0, :5] = torch.tensor([0.99998, 1.0048828125, 1.00390625, float("nan"), float("inf")])
    for build, arg in [(lambda b, x: b.sign(x), x), (lambda b, x: b.add(x, 0.1), x),
                       (lambda b, y: b.cast(y, DType.BF16), y)]:  # exact in f32: one rounding, bit for bit
        check(build, arg, tol=0.0)
    out = run_graph(_graph(lambda b, x: b.tanh(x), x), {"x0": x})["out"]
    assert out[0, :4].tolist() == [1.0, -1.0, 0.0, -0.0]  # tanh(5.78) = 0.99998 is 1.0 in bf16


def test_bf16_operands_convert_exactly(gen):
    # the interpreter's own bf16 -> f32 mangles subnormals (-1e-39 became -4.4e-39) and its bf16
    # comparisons see bits (-0.0 != 0 was true): every conversion goes by the bits, exactly
    x = values(gen, 37, 53, dtype=torch.bfloat16)
    x[0, :6] = torch.tensor([-0.0, 1e-40, -1e-39, 3e38, float("nan"), 0.0])
    x[1, :3] = torch.tensor([-1e-39, -2e-39, 1e-40])
    for build in [lambda b, x: b.cast(x, DType.BOOL), lambda b, x: b.cast(x, DType.F32),
                  lambda b, x: b.cast(x, DType.F64), lambda b, x: b.cast(x, DType.F16),
                  lambda b, x: b.cast(x, DType.I32), lambda b, x: b.lt(x, 0.5), lambda b, x: b.mul(x, 2.0),
                  lambda b, x: b.max(x, 1), lambda b, x: b.argmax(x, 1), lambda b, x: b.min(x, 0)]:
        check(build, x, tol=0.0)


def test_pow_follows_c_at_signed_zeros_and_infinities():
    inf, nan = float("inf"), float("nan")
    a = torch.tensor([-0.0, -0.0, -0.0, 0.0, -inf, -inf, -inf, -1.0, -1.0, -2.0, nan, 1.0, -3.0])
    e = torch.tensor([-1.0, -2.0, 3.0, -1.0, 0.5, 3.0, -1.0, inf, -inf, 0.5, 0.0, nan, 2.0])
    want = torch.pow(a, e)
    check(lambda b, x, y: b.pow(x, y), a, e, tol=0.0)
    got = run_graph(_graph(lambda b, x, y: b.pow(x, y), a, e), {"x0": a, "x1": e})["out"]
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(7), want.nan_to_num(7))
    number = ~want.isnan()  # (torch's NaN has its sign bit set)
    assert torch.equal(torch.signbit(got[number]), torch.signbit(want[number]))


def _graph(build, *args):
    b = GraphBuilder("case")
    xs = [b.input(f"x{i}", DType.from_torch(a.dtype), tuple(a.shape)) for i, a in enumerate(args)]
    b.output("out", build(b, *xs))
    return b.build()


def test_where_and_symbolic_batch(gen):
    a, c = values(gen, 37, 53), values(gen, 37, 53)
    batch = Sym.of("batch")
    check(lambda b, x, y: b.where(b.gt(x, y), b.erf(x), b.tanh(y)), a, c,
          shapes=[(batch, 53), (batch, 53)])


@pytest.mark.parametrize("src,dst", [
    (torch.float32, DType.I32), (torch.float32, DType.I8), (torch.float32, DType.U8),
    (torch.float64, DType.I64), (torch.float32, DType.BOOL), (torch.int64, DType.I8),
    (torch.bool, DType.F32), (torch.float32, DType.F16), (torch.int32, DType.F64),
])
def test_cast(src, dst, gen):
    x = values(gen, 37, 53, dtype=src, low=-300.0, high=300.0)
    if src.is_floating_point:
        x[0, :5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 3e10, -2.7], dtype=src)
    check(lambda b, x: b.cast(x, dst), x)


def test_sources_inline(gen):
    x = values(gen, 3, 37, 53)
    check(lambda b, x: b.add(b.mul(x, b.cast(b.iota((37, 1), 0, DType.I32), DType.F32)), float("inf")), x)


def test_rand_bit_exact():
    b = GraphBuilder()
    x = b.input("x", DType.F32, (3, 37, 53))
    seed = b.const(1234567, DType.I64)
    b.output("r", b.rand(seed, (37, 53), stream=7))
    b.output("y", b.mul(x, b.rand(seed, (37, 1), stream=3)))
    graph = b.build()
    feeds = {"x": torch.ones(3, 37, 53)}
    got, want = run_graph(graph, feeds, poison=True), evaluate(graph, feeds)
    assert torch.equal(got["r"], want["r"]) and torch.equal(got["y"], want["y"])


def test_movement_folded(gen):
    x = values(gen, 53, 37)
    check(lambda b, x: b.exp(b.slice(b.permute(b.reshape(x, (37, 53)), (1, 0)), 0, 3, 50, 2)), x)


@pytest.mark.parametrize("op", [K.SUM, K.MEAN, K.MAX, K.MIN])
@pytest.mark.parametrize("axes,keepdim", [((1,), False), ((0, 2), True), (None, False)])
def test_reduce(op, axes, keepdim, gen):
    x = values(gen, 3, 37, 53)
    x[1, 2, 5] = float("nan")
    check(lambda b, x: b.reduce(op, x, axes, keepdim), x)


@pytest.mark.parametrize("op", [K.ARGMAX, K.ARGMIN])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_argreduce_ties_and_nan(op, axis, gen):
    x = torch.round(values(gen, 3, 37, 53))  # many ties: the first index must win
    x[1, 2, 5] = float("nan")
    check(lambda b, x: b.reduce(op, x, axis, True), x)


@pytest.mark.parametrize("op", [K.SUM, K.MAX, K.ARGMIN])
def test_reduce_looped_f64_and_ints(op, gen):
    x = values(gen, 3, 5000, dtype=torch.float64)  # 5000 > MAX_SINGLE_PASS: the looped kernel
    check(lambda b, x: b.reduce(op, x, 1), x)
    i = values(gen, 37, 53, dtype=torch.int32, low=-50, high=50)
    check(lambda b, x: b.reduce(op, x, 0), i)


def test_reduce_of_permuted_symbolic(gen):
    x = values(gen, 37, 53, dtype=torch.float16)
    check(lambda b, x: b.sum(b.permute(x, (1, 0)), 1), x, shapes=[(Sym.of("batch"), 53)])


def test_movement_copies(gen):
    """A reshape of a permuted value needs a copy kernel; so does a view that is a graph output."""
    x = values(gen, 37, 53)
    check(lambda b, x: b.neg(b.reshape(b.permute(x, (1, 0)), (53 * 37,))), x)
    check(lambda b, x: b.reshape(b.slice(b.permute(x, (1, 0)), 1, 2, 30), (53, 4, 7)), x)
    check(lambda b, x: b.expand(b.slice(x, 0, 1, 2), (3, 1, 53)), x)
    check(lambda b, x: b.permute(x, (1, 0)), x, shapes=[(Sym.of("batch"), 53)])


def test_scalars_and_single_elements(gen):
    check(lambda b, x, y: b.maximum(b.mul(x, 3.0), y), values(gen), values(gen, 1, 1))
    check(lambda b, x: b.sum(b.exp(x), 0, keepdim=True), values(gen, 1))


@pytest.mark.parametrize("op", [K.SUM, K.MEAN, K.MAX, K.ARGMAX])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduce_low_precision(op, dtype, gen):
    check(lambda b, x: b.reduce(op, x, 1), values(gen, 37, 53, dtype=dtype))


def test_cast_low_precision_to_int(gen):
    x = values(gen, 37, 53, dtype=torch.bfloat16, low=-300.0, high=300.0)
    x[0, 0] = float("nan")
    check(lambda b, x: b.cast(x, DType.I8), x)


def test_whole_graph_softmax_mlp(gen):
    """A small model end to end: params, a literal, a softmax of broadcast sums, a symbolic batch."""
    b = GraphBuilder()
    batch = Sym.of("batch")
    x = b.input("x", DType.F32, (batch, 53))
    w = b.param("w", DType.F32, (53,))
    bias = b.tensor([[0.5], [-1.0], [2.0]], DType.F32)
    h = b.add(b.expand(b.reshape(b.mul(x, w), (batch, 1, 53)), (batch, 3, 53)), bias)
    z = b.sub(h, b.max(h, 2, keepdim=True))
    e = b.exp(z)
    b.output("p", b.div(e, b.sum(e, 2, keepdim=True)))
    b.output("x_again", x)
    graph = b.build()
    feeds, params = {"x": values(gen, 37, 53)}, {"w": values(gen, 53)}
    got, want = run_graph(graph, feeds, params, poison=True), evaluate(graph, feeds, params)
    for name in want:
        assert_close(got[name], want[name], what=name)
