"""Reverse-mode autodiff: every op's gradient rule, checked in float64 on the reference evaluator against
central finite differences and against torch.autograd on the same computation; then whole graphs (an
MLP with cross-entropy from the prelude, a 20k-node chain), vjp with several outputs, and the errors.

One helper, `check_grad`, does the work: it builds `out = build(b, x0, x1, ...)`, takes `vjp` with
respect to the float inputs, verifies the result and compares `grad.x<i>` for a random `dout`.
"""
import sys

import pytest
import torch
import torch.nn.functional as F

from axon.frontend import parse, training_graph
from axon.ir import DType, Graph, GraphBuilder, OpKind, PassError, Sym, evaluate, verify
from axon.ir.ops import OPS, SliceAttrs
from axon.ir.text import parse_graph, print_graph
from axon.passes import PassManager
from axon.passes.autodiff import grad, vjp
from numerics import TOLERANCE, assert_close
from opcheck import rand

K = OpKind
D = DType
BATCH = Sym.of("batch")
FD_EPS = 1e-6        # central differences in float64: truncation ~eps^2, rounding ~1e-16/eps
FD_TOL = 1e-6        # relative error allowed against finite differences
TORCH_TOL = 1e-10    # relative error allowed against torch.autograd (both float64)
FD_POINTS = 96       # elements perturbed per input (all of them when there are fewer)


def check_grad(build, torch_fn, *args, shapes=None, wrt=None, fd=True, eps=FD_EPS, fd_tol=FD_TOL,
               torch_tol=TORCH_TOL):
    """Check the gradient of `build(b, *inputs)` with respect to the float inputs (or the indices `wrt`).

    `args` become inputs x0, x1, ... with their own dtype and shape, or `shapes[i]` (which may hold `Sym`
    dims). `torch_fn(*tensors)` is the same computation in torch (None: finite differences only).
    """
    b = GraphBuilder("case")
    shapes = shapes or [tuple(a.shape) for a in args]
    xs = [b.input(f"x{i}", DType.from_torch(a.dtype), s) for i, (a, s) in enumerate(zip(args, shapes))]
    b.output("out", build(b, *xs))
    fwd = verify(b.build())
    wrt = [i for i, a in enumerate(args) if a.is_floating_point()] if wrt is None else wrt
    names = [f"x{i}" for i in wrt]
    bwd = verify(vjp(fwd, names))
    feeds = {f"x{i}": a for i, a in enumerate(args)}
    gen = torch.Generator().manual_seed(99)
    out = evaluate(fwd, feeds, precise=True)["out"]
    dout = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(fwd.outputs["out"].dtype.torch)
    got = evaluate(bwd, {**feeds, "dout.out": dout}, precise=True)
    assert_close(got["out"], out, tol=0.0, what="forward output after vjp")
    for name in names:
        assert bwd.outputs[f"grad.{name}"].type == fwd.inputs[name].type, f"grad.{name} is mistyped"
    if fd:
        for name in names:
            _finite_differences(fwd, feeds, name, dout, got[f"grad.{name}"], gen, eps, fd_tol)
    if torch_fn is not None:
        leaves = [a.detach().clone().requires_grad_(i in wrt) for i, a in enumerate(args)]
        want = torch_fn(*leaves)
        assert tuple(want.shape) == tuple(out.shape), f"torch twin gives {tuple(want.shape)}"
        want.backward(dout.to(want.dtype))
        for i, name in zip(wrt, names):
            assert_close(got[f"grad.{name}"], leaves[i].grad, tol=torch_tol, what=f"grad.{name} vs torch")
    return bwd


def _finite_differences(fwd, feeds, name, dout, ours, gen, eps, tol):
    """d<out, dout>/d name[e] by central differences at up to FD_POINTS elements e, against `ours`."""
    x = feeds[name]
    points = torch.randperm(x.numel(), generator=gen)[:FD_POINTS]
    numeric = []
    for e in points.tolist():
        values = []
        for sign in (1, -1):
            moved = x.detach().clone()
            moved.view(-1)[e] += sign * eps
            out = evaluate(fwd, {**feeds, name: moved}, precise=True)["out"]
            values.append(float((out * dout.double()).sum()))
        numeric.append((values[0] - values[1]) / (2 * eps))
    assert_close(ours.reshape(-1)[points], torch.tensor(numeric, dtype=torch.float64), tol=tol,
                 what=f"grad.{name} vs finite differences")


def f64(gen, *shape, low=-3.0, high=3.0):
    return rand(gen, *shape, dtype=torch.float64, low=low, high=high)


def grid(gen, *shape, dtype=torch.float32, low=-3.0, high=3.0):
    """Values on a 1/256 grid: exact in float32 with room for a finite-difference step of 2**-12."""
    return (torch.round(rand(gen, *shape, dtype=torch.float64, low=low, high=high) * 256) / 256).to(dtype)


# --- one case per op kind: a new op without a gradient rule and a case here fails ----------------------

_POS = dict(low=0.5, high=3.0)
_UNARY = {  # kind: (torch function, input range)
    K.NEG: (torch.neg, {}), K.EXP: (torch.exp, {}), K.LOG: (torch.log, _POS), K.SQRT: (torch.sqrt, _POS),
    K.RSQRT: (torch.rsqrt, _POS), K.TANH: (torch.tanh, {}), K.SIGMOID: (torch.sigmoid, {}),
    K.RELU: (torch.relu, {}), K.ERF: (torch.erf, {}), K.ABS: (torch.abs, {}), K.SIN: (torch.sin, {}),
    K.COS: (torch.cos, {}), K.RECIP: (torch.reciprocal, _POS),
}
_BINARY = {
    K.ADD: torch.add, K.SUB: torch.sub, K.MUL: torch.mul, K.DIV: torch.div, K.MAXIMUM: torch.maximum,
    K.MINIMUM: torch.minimum,
}
_PIECEWISE = {K.FLOOR: torch.floor, K.CEIL: torch.ceil, K.SIGN: torch.sign}
_COMPARE = {K.EQ: torch.eq, K.NE: torch.ne, K.LT: torch.lt, K.LE: torch.le, K.GT: torch.gt, K.GE: torch.ge}


def _unary_case(kind):
    fn, domain = _UNARY[kind]
    return lambda gen: check_grad(lambda b, x: b.unary(kind, x), fn, f64(gen, 3, 5, 7, **domain))


def _binary_case(kind):
    fn = _BINARY[kind]
    return lambda gen: check_grad(lambda b, x, y: b.binary(kind, x, y), fn, f64(gen, 3, 5, 7), f64(gen, 5, 1))


def _piecewise_case(kind):  # zero gradient almost everywhere: only the outer factor's flows
    fn = _PIECEWISE[kind]
    return lambda gen: check_grad(lambda b, x: b.mul(b.unary(kind, x), x), lambda x: fn(x) * x,
                                  f64(gen, 3, 5, 7))


def _compare_case(kind):  # a comparison's bool result routes gradients; it carries none itself
    fn = _COMPARE[kind]
    ties = (torch.tensor([1.0, 2.0, 3.0, -1.5, 0.25], dtype=torch.float64),
            torch.tensor([1.0, -2.0, 3.5, -1.5, 0.5], dtype=torch.float64))

    def case(gen):
        def build(b, x, y):
            return b.where(b.binary(kind, x, y), b.mul(x, y), b.sub(x, y))

        def ref(x, y):
            return torch.where(fn(x, y), x * y, x - y)
        check_grad(build, ref, f64(gen, 37, 11), f64(gen, 37, 11))
        check_grad(build, ref, *ties, fd=False)  # at a tie the function jumps: torch only
    return case


def _logical_case(kind):
    fn = torch.logical_and if kind == K.AND else torch.logical_or
    return lambda gen: check_grad(
        lambda b, x, y: b.where(b.binary(kind, b.gt(x, 0.0), b.gt(y, 0.0)), b.exp(x), y),
        lambda x, y: torch.where(fn(x > 0, y > 0), x.exp(), y), f64(gen, 37, 11), f64(gen, 37, 11))


def _reduce_case(kind):
    fn = {K.SUM: torch.sum, K.MEAN: torch.mean, K.MAX: torch.amax, K.MIN: torch.amin}[kind]
    return lambda gen: check_grad(lambda b, x: b.reduce(kind, x, (0, 2)), lambda x: fn(x, (0, 2)),
                                  f64(gen, 3, 5, 7))


def _arg_case(kind):
    fn = torch.argmax if kind == K.ARGMAX else torch.argmin
    return lambda gen: check_grad(
        lambda b, x: b.mul(x, b.cast(b.reduce(kind, x, 1, keepdim=True), D.F64)),
        lambda x: x * fn(x, 1, keepdim=True), f64(gen, 3, 5, 7))


def _param_case(gen):
    b = GraphBuilder()
    x = b.input("x", D.F64, (37, 11))
    w = b.param("w", D.F64, (11,))
    b.output("loss", b.sum(b.mul(b.tanh(b.mul(x, w)), x)))
    xv, wv = f64(gen, 37, 11), f64(gen, 11)
    g = verify(grad(b.build(), "loss"))
    assert sorted(g.outputs) == ["grad.w", "loss"]
    got = evaluate(g, {"x": xv}, {"w": wv}, precise=True)["grad.w"]
    w_t = wv.clone().requires_grad_()
    (torch.tanh(xv * w_t) * xv).sum().backward()
    assert_close(got, w_t.grad, tol=TORCH_TOL)


def _rand_case(gen):  # rand's seed is an integer: no gradient; x * rand -> dout * rand (checked by FD)
    check_grad(lambda b, x, s: b.mul(x, b.rand(s, (3, 5, 7), D.F64)), None, f64(gen, 3, 5, 7),
               torch.tensor(7, dtype=torch.int64))


def _slice_case(gen):
    attrs = SliceAttrs(axes=(0, 2), starts=(1, 0), stops=(3, 7), steps=(1, 3))
    check_grad(lambda b, x: b.node(K.SLICE, (x,), attrs), lambda x: x[1:3, :, 0:7:3], f64(gen, 3, 5, 7))


def _conv_case(gen):
    check_grad(lambda b, x, w: b.conv2d(x, w, stride=2, padding=1, dilation=1, groups=2),
               lambda x, w: F.conv2d(x, w, stride=2, padding=1, groups=2), f64(gen, 2, 4, 9, 11),
               f64(gen, 6, 2, 3, 3))


def _quantize_case(gen):  # integer codes carry no gradient: only the outer factor's flows
    check_grad(lambda b, x: b.mul(b.cast(b.quantize(x, 0.25, 3), D.F32), x),
               lambda x: (torch.round(x.detach() * 4) + 3).clamp(-128, 127) * x,
               grid(gen, 37, 11), fd=False, torch_tol=1e-6)


def _dequantize_case(gen):  # none to the codes (nor to scale and zero point: see test_quant_ops.py)
    check_grad(lambda b, q, x: b.mul(b.dequantize(q, 0.25, 3), x), lambda q, x: (q.float() - 3) * 0.25 * x,
               torch.randint(-128, 128, (37, 11), generator=gen, dtype=torch.int8), grid(gen, 37, 11),
               fd=False, torch_tol=1e-6)


def _fake_quantize_case(gen):  # the straight-through estimator, as torch's (none to scale, zero point)
    x = rand(gen, 37, 11, dtype=torch.float32, low=-3.0, high=3.0)
    scale = rand(gen, 37, dtype=torch.float32, low=0.005, high=0.03)
    zero_point = torch.randint(-10, 10, (37,), generator=gen, dtype=torch.int32)
    check_grad(lambda b, x, s, z: b.fake_quantize(x, s, z, D.I8, axis=0),
               lambda x, s, z: torch.fake_quantize_per_channel_affine(x, s, z, 0, -128, 127),
               x, scale, zero_point, wrt=[0], fd=False)


def _int4_case(gen):  # pack_int4 and unpack_int4: integers, no gradient
    check_grad(lambda b, x, c: b.mul(b.cast(b.unpack_int4(b.pack_int4(c)), D.F64), x),
               lambda x, c: c.double() * x, f64(gen, 5, 8),
               torch.randint(-8, 8, (5, 8), generator=gen, dtype=torch.int8))


def _qmatmul_case(gen):  # codes times codes: integers, no gradient (QAT trains through fake_quantize)
    check_grad(lambda b, x, a, w: b.mul(b.cast(b.qmatmul(a, w), D.F64), x),
               lambda x, a, w: (a.long() @ w.long()).double() * x, f64(gen, 5, 3),
               torch.randint(-127, 128, (5, 7), generator=gen, dtype=torch.int8),
               torch.randint(-127, 128, (7, 3), generator=gen, dtype=torch.int8))


def _bsmatmul_case(gen):  # a @ b for a b zero outside its listed blocks; a's gradient a bsmatmul too
    from axon.passes.block_sparse import block_index, block_mask

    w = f64(gen, 40, 35)
    w = w * block_mask(w, 16, 0.5)
    index, index_t = block_index(w, 16)
    check_grad(lambda b, x, w, i, it, t: b.bsmatmul(x, w, i, it, t, 16), lambda x, w, i, it, t: x @ w,
               f64(gen, 2, 3, 40), w, index, index_t, torch.zeros(1, dtype=torch.int64), wrt=[0, 1])


CASES = {
    **{k: _unary_case(k) for k in _UNARY},
    **{k: _binary_case(k) for k in _BINARY},
    **{k: _piecewise_case(k) for k in _PIECEWISE},
    **{k: _compare_case(k) for k in _COMPARE},
    K.AND: _logical_case(K.AND), K.OR: _logical_case(K.OR),
    K.NOT: lambda gen: check_grad(lambda b, x: b.where(b.logical_not(b.gt(x, 0.0)), x, b.mul(x, x)),
                                  lambda x: torch.where(~(x > 0), x, x * x), f64(gen, 3, 5, 7)),
    K.POW: lambda gen: check_grad(lambda b, x, y: b.pow(x, y), torch.pow, f64(gen, 3, 5, 7, **_POS),
                                  f64(gen, 5, 1)),
    K.WHERE: lambda gen: check_grad(lambda b, c, x, y: b.where(b.gt(c, 0.0), x, y),
                                    lambda c, x, y: torch.where(c > 0, x, y), f64(gen, 5, 7),
                                    f64(gen, 3, 5, 7), f64(gen, 7), wrt=[1, 2]),
    K.CAST: lambda gen: check_grad(lambda b, x: b.exp(b.cast(x, D.F64)), lambda x: x.double().exp(),
                                   grid(gen, 3, 5, 7), eps=2.0**-12, fd_tol=1e-5),
    **{k: _reduce_case(k) for k in (K.SUM, K.MEAN, K.MAX, K.MIN)},
    K.ARGMAX: _arg_case(K.ARGMAX), K.ARGMIN: _arg_case(K.ARGMIN),
    K.MATMUL: lambda gen: check_grad(lambda b, x, y: b.matmul(x, y), torch.matmul, f64(gen, 2, 1, 5, 7),
                                     f64(gen, 3, 7, 4)),
    K.CONV2D: _conv_case,
    K.RESHAPE: lambda gen: check_grad(lambda b, x: b.reshape(x, (15, 7)), lambda x: x.reshape(15, 7),
                                      f64(gen, 3, 5, 7)),
    K.PERMUTE: lambda gen: check_grad(lambda b, x: b.permute(x, (2, 0, 1)), lambda x: x.permute(2, 0, 1),
                                      f64(gen, 3, 5, 7)),
    K.EXPAND: lambda gen: check_grad(lambda b, x: b.expand(x, (3, 5, 7)), lambda x: x.expand(3, 5, 7),
                                     f64(gen, 5, 1)),
    K.SLICE: _slice_case,
    K.PAD: lambda gen: check_grad(lambda b, x: b.pad(x, [(1, 2), (0, 0), (3, 1)], value=1.5),
                                  lambda x: F.pad(x, (3, 1, 0, 0, 1, 2), value=1.5), f64(gen, 3, 5, 7)),
    K.CONCAT: lambda gen: check_grad(lambda b, x, y, z: b.concat([x, y, z], 1),
                                     lambda x, y, z: torch.cat([x, y, z], 1), f64(gen, 3, 2, 7),
                                     f64(gen, 3, 5, 7), f64(gen, 3, 1, 7)),
    K.GATHER: lambda gen: check_grad(lambda b, x, i: b.gather(x, 1, i),
                                     lambda x, i: torch.gather(x, 1, i), f64(gen, 5, 7),
                                     torch.randint(0, 7, (5, 9), generator=gen)),
    K.TAKE: lambda gen: check_grad(lambda b, x, i: b.take(x, i), lambda x, i: F.embedding(i, x),
                                   f64(gen, 11, 6), torch.randint(0, 11, (8,), generator=gen)),
    K.INPUT: lambda gen: check_grad(lambda b, x: b.mul(x, x), lambda x: x * x, f64(gen, 37, 11)),
    K.PARAM: _param_case,
    K.CONST: lambda gen: check_grad(lambda b, x: b.mul(x, b.const(2.5, D.F64, (5, 7))), lambda x: x * 2.5,
                                    f64(gen, 3, 5, 7)),
    K.TENSOR: lambda gen: check_grad(lambda b, x: b.mul(x, b.tensor([1.0, -2.0, 0.5], D.F64)),
                                     lambda x: x * torch.tensor([1.0, -2.0, 0.5], dtype=x.dtype),
                                     f64(gen, 5, 3)),
    K.IOTA: lambda gen: check_grad(lambda b, x: b.mul(x, b.iota((5, 7), 1, D.F64)),
                                   lambda x: x * torch.arange(7, dtype=x.dtype), f64(gen, 3, 5, 7)),
    K.RAND: _rand_case,
    K.QUANTIZE: _quantize_case, K.DEQUANTIZE: _dequantize_case, K.FAKE_QUANTIZE: _fake_quantize_case,
    K.PACK_INT4: _int4_case, K.UNPACK_INT4: _int4_case, K.QMATMUL: _qmatmul_case,
    K.BSMATMUL: _bsmatmul_case,
}


@pytest.mark.parametrize("kind", list(OpKind), ids=str)
def test_every_op_has_a_checked_gradient_rule(kind, gen):
    assert OPS[kind].grad is not None, f"'{kind}' has no gradient rule: register_grad in its op_*.py"
    assert kind in CASES, f"no gradient check for '{kind}': add a case to CASES"
    CASES[kind](gen)


# --- elementwise: broadcasting (symbolic too), ties and kinks, pow, cast -------------------------------

@pytest.mark.parametrize("kind", sorted(_BINARY, key=str) + [K.POW], ids=str)
@pytest.mark.parametrize("shapes", [[(3, 5, 7), (3, 5, 7)], [(1, 7), (3, 5, 1)], [(), (37, 11)],
                                    [(BATCH, 5, 7), (7,)], [(BATCH, 1, 7), (5, 1)]], ids=str)
def test_broadcasting_binary(kind, shapes, gen):
    sizes = [tuple(2 if isinstance(d, Sym) else d for d in s) for s in shapes]
    fn = _BINARY.get(kind, torch.pow)
    x, y = (f64(gen, *s, **(_POS if kind == K.POW else {})) for s in sizes)
    check_grad(lambda b, x, y: b.binary(kind, x, y), fn, x, y, shapes=shapes)


@pytest.mark.parametrize("kind", [K.MAXIMUM, K.MINIMUM], ids=str)
def test_maximum_minimum_split_a_tie_half_and_half(kind, gen):
    x = torch.randint(0, 3, (37, 11), generator=gen).double()
    y = torch.randint(0, 3, (37, 11), generator=gen).double()
    # as torch; central differences see 1/2 at a tie too, when one operand moves
    check_grad(lambda b, x, y: b.binary(kind, x, y), _BINARY[kind], x, y)


def test_kinks_follow_torch(gen):
    # relu'(0) = abs'(0) = 0; d/dx x**0 = 0 and d/dy 0**y = 0 at x = 0
    x = torch.randint(0, 3, (37, 11), generator=gen).double()
    y = torch.randint(0, 3, (37, 11), generator=gen).double()
    check_grad(lambda b, x: b.relu(b.sub(x, 1.0)), lambda x: torch.relu(x - 1), x, fd=False)
    check_grad(lambda b, x: b.abs(b.sub(x, 1.0)), lambda x: torch.abs(x - 1), x, fd=False)
    check_grad(lambda b, x, y: b.pow(x, b.sub(y, 1.0)), lambda x, y: torch.pow(x, y - 1), x, y, fd=False)


def test_gradients_pass_through_nan_as_torch():
    # relu, maximum/minimum and the max/min reductions give a NaN element the gradient (torch too)
    nan = float("nan")
    x = torch.tensor([[1.0, nan, -2.0, 0.0], [3.0, 3.0, nan, nan]], dtype=torch.float64)
    y = torch.tensor([[nan, 2.0, -2.0, nan], [1.0, 5.0, 0.0, nan]], dtype=torch.float64)
    check_grad(lambda b, x: b.relu(x), torch.relu, x, fd=False)
    check_grad(lambda b, x, y: b.maximum(x, y), torch.maximum, x, y, fd=False)
    check_grad(lambda b, x, y: b.minimum(x, y), torch.minimum, x, y, fd=False)
    check_grad(lambda b, x: b.max(x), torch.max, x, fd=False)  # torch.max(x): shared among the NaNs
    check_grad(lambda b, x: b.min(x), torch.min, x, fd=False)


@pytest.mark.parametrize("shapes", [((5, 0), (0, 10)), ((5, 5, 0), (0, 5)), ((2, 0, 5), (5, 3))], ids=str)
def test_matmul_with_an_empty_axis(shapes, gen):
    # an empty contraction gives zeros; no -1 reshape in the rule (0 elements make it ambiguous)
    check_grad(lambda b, x, y: b.matmul(x, y), torch.matmul, *(f64(gen, *s) for s in shapes), fd=False)


def test_pad_and_slice_of_an_empty_tensor(gen):
    check_grad(lambda b, x: b.pad(x, [(1, 2), (0, 1)], value=2.0),
               lambda x: F.pad(x, (0, 1, 1, 2), value=2.0), f64(gen, 0, 3), fd=False)
    check_grad(lambda b, x: b.mul(b.slice(x, 1, 3, 3), 2.0), lambda x: x[:, 3:3] * 2.0, f64(gen, 4, 5),
               fd=False)


def test_where_broadcasts_condition_and_branches(gen):
    check_grad(lambda b, c, x, y: b.where(b.lt(c, 0.0), x, y), lambda c, x, y: torch.where(c < 0, x, y),
               f64(gen, 4, 1, 7), f64(gen, 5, 1), f64(gen, 1), shapes=[(BATCH, 1, 7), (5, 1), (1,)],
               wrt=[1, 2])


def test_cast_round_trip_and_integer_operands(gen):
    # f64 -> f32 -> f64 rounds: its gradient passes straight through (torch's too); FD would see steps
    check_grad(lambda b, x: b.mul(b.cast(b.cast(x, D.F32), D.F64), x),
               lambda x: x.float().double() * x, f64(gen, 37, 11), fd=False)
    # an integer operand gets no gradient, the float one does
    check_grad(lambda b, i, x: b.mul(b.cast(i, D.F64), x), lambda i, x: i.double() * x,
               torch.randint(-5, 5, (3, 5, 7), generator=gen), f64(gen, 3, 5, 7))
    # an f32 graph: grad.x is f32, computed through the f64 island
    check_grad(lambda b, x: b.cast(b.tanh(b.cast(x, D.F64)), D.F32), lambda x: torch.tanh(x.double()).float(),
               grid(gen, 37, 11), eps=2.0**-12, fd_tol=1e-5, fd=False)


# --- reductions ----------------------------------------------------------------------------------------

_REDUCE = {K.SUM: torch.sum, K.MEAN: torch.mean, K.MAX: torch.amax, K.MIN: torch.amin}


@pytest.mark.parametrize("kind", list(_REDUCE), ids=str)
@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)], ids=str)
@pytest.mark.parametrize("keepdim", [False, True])
def test_reduce(kind, axes, keepdim, gen):
    fn = _REDUCE[kind]
    check_grad(lambda b, x: b.reduce(kind, x, axes, keepdim), lambda x: fn(x, axes, keepdim=keepdim),
               f64(gen, 3, 5, 7))


@pytest.mark.parametrize("kind", list(_REDUCE), ids=str)
def test_reduce_over_a_symbolic_axis(kind, gen):
    fn = _REDUCE[kind]  # mean counts the symbolic axis at run time
    check_grad(lambda b, x: b.reduce(kind, x, (0, 2)), lambda x: fn(x, (0, 2)), f64(gen, 4, 5, 3),
               shapes=[(BATCH, 5, 3)])


def test_mean_of_more_elements_than_f16_can_count():
    # 90,000 is inf in f16: the gradient must not become g / inf = 0 (1/90,000 is an f16 subnormal)
    check_grad(lambda b, x: b.mean(x), lambda x: x.mean(), torch.ones(300, 300, dtype=torch.float16),
               fd=False, torch_tol=TOLERANCE[torch.float16])


@pytest.mark.parametrize("kind", [K.MAX, K.MIN], ids=str)
@pytest.mark.parametrize("axes", [(1,), (0, 2), (0, 1, 2)], ids=str)
def test_max_min_share_the_gradient_among_ties(kind, axes, gen):
    x = torch.randint(0, 3, (6, 5, 7), generator=gen).double()  # many 2- and 3-way ties
    fn = _REDUCE[kind]
    check_grad(lambda b, x: b.reduce(kind, x, axes, keepdim=True), lambda x: fn(x, axes, keepdim=True), x,
               fd=False)  # 3-way ties: torch.amax shares 1/3 each, where differences see 1/2


# --- linear algebra ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shapes", [
    [(5, 7), (7, 4)], [(3, 5, 7), (7, 4)], [(5, 7), (2, 3, 7, 4)], [(2, 1, 5, 7), (3, 7, 4)],
    [(BATCH, 5, 7), (7, 4)], [(1, 5, 7), (BATCH, 7, 4)], [(37, 11), (11, 1)],
], ids=str)
def test_matmul(shapes, gen):
    sizes = [tuple(3 if isinstance(d, Sym) else d for d in s) for s in shapes]
    check_grad(lambda b, x, y: b.matmul(x, y), torch.matmul, *(f64(gen, *s) for s in sizes), shapes=shapes)


CONVS = [  # x [N, C, H, W], w [O, C/groups, KH, KW], stride, padding, dilation, groups
    ((2, 3, 9, 11), (4, 3, 3, 3), 1, 0, 1, 1),
    ((2, 4, 10, 9), (6, 2, 3, 2), 2, 1, 1, 2),
    ((1, 3, 13, 12), (3, 1, 3, 3), (2, 3), (2, 1), (2, 1), 3),     # depthwise, mixed per axis
    ((2, 6, 11, 10), (4, 3, 2, 3), 3, 0, 2, 2),                    # stride leaves a remainder
    ((3, 2, 7, 8), (5, 2, 1, 1), 2, 2, 1, 1),                      # 1x1, padding wider than the kernel
    ((2, 2, 5, 5), (2, 2, 5, 5), 1, 2, 1, 1),                      # kernel as large as the input
    ((1, 1, 3, 3), (1, 1, 1, 1), 4, 3, 1, 1),                      # some padded input never read
]


@pytest.mark.parametrize("symbolic", [False, True], ids=["static-batch", "symbolic-batch"])
@pytest.mark.parametrize("x_shape,w_shape,stride,padding,dilation,groups", CONVS, ids=str)
def test_conv2d(x_shape, w_shape, stride, padding, dilation, groups, symbolic, gen):
    shapes = [(BATCH,) + x_shape[1:], w_shape] if symbolic else None
    check_grad(lambda b, x, w: b.conv2d(x, w, stride, padding, dilation, groups),
               lambda x, w: F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups),
               f64(gen, *x_shape), f64(gen, *w_shape), shapes=shapes)


# --- movement and indexing -----------------------------------------------------------------------------

@pytest.mark.parametrize("axis,start,stop,step", [(0, 1, None, 1), (1, 0, 5, 2), (2, 1, None, 3),
                                                  (2, 0, 6, 4), (1, -3, -1, 1), (2, 6, 7, 5)], ids=str)
def test_slice(axis, start, stop, step, gen):
    index = [slice(None)] * 3
    index[axis] = slice(start, stop, step)
    check_grad(lambda b, x: b.slice(x, axis, start, stop, step), lambda x: x[tuple(index)],
               f64(gen, 3, 5, 7))


def test_slice_beside_a_symbolic_axis(gen):
    check_grad(lambda b, x: b.slice(b.slice(x, 2, 1, 7, 2), 1, 0, 3), lambda x: x[:, 0:3, 1:7:2],
               f64(gen, 2, 5, 7), shapes=[(BATCH, 5, 7)])


def test_pad_beside_a_symbolic_axis(gen):
    check_grad(lambda b, x: b.pad(x, [(0, 0), (1, 1), (2, 0)]), lambda x: F.pad(x, (2, 0, 1, 1)),
               f64(gen, 2, 5, 7), shapes=[(BATCH, 5, 7)])


def test_concat_along_a_symbolic_axis(gen):
    two = Sym(("batch",), 2)
    check_grad(lambda b, x, y, z: b.concat([x, y, z], 0), lambda x, y, z: torch.cat([x, y, z], 0),
               f64(gen, 3, 4), f64(gen, 6, 4), f64(gen, 3, 4), shapes=[(BATCH, 4), (two, 4), (BATCH, 4)])


@pytest.mark.parametrize("src,dst", [((5, 1), (3, 5, 7)), ((), (4, 3)), ((1, 1), (37, 11)),
                                     ((BATCH, 1, 7), (BATCH, 5, 7))], ids=str)
def test_expand(src, dst, gen):
    sizes = tuple(2 if isinstance(d, Sym) else d for d in src)
    want = tuple(2 if isinstance(d, Sym) else d for d in dst)
    check_grad(lambda b, x: b.expand(x, dst), lambda x: x.expand(want), f64(gen, *sizes), shapes=[src])


def test_reshape_and_permute_with_symbolic_dims(gen):
    check_grad(lambda b, x: b.permute(b.reshape(x, (-1, 7)), (1, 0)), lambda x: x.reshape(-1, 7).T,
               f64(gen, 2, 5, 7), shapes=[(BATCH, 5, 7)])
    check_grad(lambda b, x: b.permute(x, (1, 2, 0)), lambda x: x.permute(1, 2, 0), f64(gen, 3, 5, 7))


@pytest.mark.parametrize("axis,index_shape", [(0, (2, 7)), (1, (5, 9)), (1, (5, 1))], ids=str)
def test_gather(axis, index_shape, gen):
    x = f64(gen, 5, 7)
    idx = torch.randint(0, x.shape[axis], index_shape, generator=gen)  # repeats accumulate
    check_grad(lambda b, x, i: b.gather(x, axis, i), lambda x, i: torch.gather(x, axis, i), x, idx)


@pytest.mark.parametrize("axis,index", [(0, (8,)), (1, (2, 4)), (2, ()), (0, (3, 3))], ids=str)
def test_take(axis, index, gen):
    x = f64(gen, 6, 7, 5)
    idx = torch.randint(0, x.shape[axis], index, generator=gen, dtype=torch.int64).to(torch.int32)

    def ref(x, i):
        out = torch.index_select(x, axis, i.reshape(-1).long())
        return out.reshape(x.shape[:axis] + i.shape + x.shape[axis + 1:])
    check_grad(lambda b, x, i: b.take(x, i, axis), ref, x, idx)


def test_embedding_lookup_with_symbolic_ids(gen):
    table, ids = f64(gen, 11, 6), torch.randint(0, 11, (9,), generator=gen)
    check_grad(lambda b, t, i: b.take(t, i), lambda t, i: F.embedding(i, t), table, ids,
               shapes=[(11, 6), (BATCH,)])


# --- whole graphs --------------------------------------------------------------------------------------

MLP = """
model Net(hidden = 13, classes = 5) {
    input x: f32[batch, 7]
    h = relu(linear(x, hidden))
    output logits = linear(h, classes)
}

train Net {
    data = digits(val = 0.2)
    loss = cross_entropy(logits, label)
    optim = adam(lr = 1e-3)
    epochs = 1   batch = 8
}
"""


def test_mlp_cross_entropy_against_a_torch_twin(gen):
    graph, _ = training_graph(parse(MLP, "net.axon"))
    g = verify(grad(graph, "loss"))
    assert list(g.outputs) == ["logits", "loss", "grad.h.w", "grad.h.b", "grad.logits.w", "grad.logits.b"]
    params = {name: grid(gen, *p.shape, low=-1.0, high=1.0) for name, p in graph.params.items()}
    x, label = grid(gen, 37, 7), torch.randint(0, 5, (37,), generator=gen)
    got = evaluate(g, {"x": x, "label": label}, params, precise=True)

    leaves = {name: v.double().requires_grad_() for name, v in params.items()}
    h = torch.relu(x.double() @ leaves["h.w"] + leaves["h.b"])
    loss = F.cross_entropy(h @ leaves["logits.w"] + leaves["logits.b"], label)
    loss.backward()
    assert_close(got["loss"], loss.detach(), tol=TORCH_TOL)
    for name, leaf in leaves.items():
        assert_close(got[f"grad.{name}"], leaf.grad, tol=TORCH_TOL, what=f"grad.{name}")

    # the training step's graph goes through the clean-up pipeline like any other
    opt = PassManager("fold,simplify,cse,dce", verify=True).run(g)
    again = evaluate(opt, {"x": x, "label": label}, params, precise=True)
    for name in got:
        assert_close(again[name], got[name], tol=TORCH_TOL, what=name)


def test_example_mlp_with_dropout_against_a_torch_twin(gen):
    from axon.driver import load_graph

    graph = load_graph("examples/mlp.axon", loss=True)
    g = verify(grad(graph, "loss"))
    assert {f"grad.{n}" for n in graph.params} <= set(g.outputs)
    params = {n: grid(gen, *p.shape, low=-0.5, high=0.5) for n, p in graph.params.items()}
    feeds = {"x": grid(gen, 9, 64), "label": torch.randint(0, 10, (9,), generator=gen),
             "seed": torch.tensor(3)}
    got = evaluate(g, feeds, params, precise=True)
    (keep,) = [n for n in graph.nodes if n.op == K.GE]  # dropout's mask, read out for the twin
    mask = evaluate(Graph(graph.nodes, {"keep": keep}), feeds, params)["keep"]

    leaves = {name: v.double().requires_grad_() for name, v in params.items()}
    h = torch.relu(feeds["x"].double() @ leaves["h.w"] + leaves["h.b"])
    h = torch.where(mask, h / torch.tensor(0.9, dtype=torch.float32).double(), 0.0)
    loss = F.cross_entropy(h @ leaves["logits.w"] + leaves["logits.b"], feeds["label"])
    loss.backward()
    assert_close(got["loss"], loss.detach(), tol=TORCH_TOL)
    for name, leaf in leaves.items():
        assert_close(got[f"grad.{name}"], leaf.grad, tol=TORCH_TOL, what=f"grad.{name}")


@pytest.mark.parametrize("example", ["perceptron", "mlp", "cnn", "lstm", "gpt", "gan"])
def test_every_example_differentiates_verifies_and_prints_back(example):
    from axon.driver import load_graph

    if example == "gan":  # no train block: the vjp of every float output w.r.t. every parameter
        graph = load_graph(f"examples/{example}.axon")
        g = verify(vjp(graph, list(graph.params)))
    else:
        graph = load_graph(f"examples/{example}.axon", loss=True)
        g = verify(grad(graph, "loss"))
    assert {f"grad.{n}" for n in graph.params} <= set(g.outputs)
    text = print_graph(g)
    assert print_graph(parse_graph(text)) == text


def test_vjp_with_several_outputs(gen):
    b = GraphBuilder()
    x = b.input("x", D.F64, (BATCH, 7))
    w = b.param("w", D.F64, (7, 4))
    h = b.tanh(b.matmul(x, w))
    b.output("h", h)
    b.output("h_again", h)                            # one value, two names: both gradients add up
    b.output("total", b.sum(b.mul(h, h)))
    b.output("best", b.argmax(h, 1))                  # integer: not differentiated
    b.output("free", b.exp(x))                        # does not depend on w
    graph = b.build()
    g = verify(vjp(graph, ["w", "x"]))
    assert {f"dout.{n}" for n in ("h", "h_again", "total", "free")} <= set(g.inputs)
    assert "dout.best" not in g.inputs

    xv, wv = f64(gen, 3, 7), f64(gen, 7, 4)
    douts = {"h": f64(gen, 3, 4), "h_again": f64(gen, 3, 4), "total": f64(gen), "free": f64(gen, 3, 7)}
    got = evaluate(g, {"x": xv, **{f"dout.{k}": v for k, v in douts.items()}}, {"w": wv}, precise=True)
    x_t, w_t = xv.clone().requires_grad_(), wv.clone().requires_grad_()
    h_t = torch.tanh(x_t @ w_t)
    outs = [h_t, h_t, (h_t * h_t).sum(), x_t.exp()]
    gx, gw = torch.autograd.grad(outs, [x_t, w_t], [douts[k] for k in ("h", "h_again", "total", "free")])
    assert_close(got["grad.x"], gx, tol=TORCH_TOL)
    assert_close(got["grad.w"], gw, tol=TORCH_TOL)

    only = verify(vjp(graph, ["w"], outputs=["total"]))
    assert [n for n in only.inputs if n.startswith("dout.")] == ["dout.total"]


def test_unreached_values_get_no_gradient_and_unused_targets_get_zeros(gen):
    b = GraphBuilder()
    x = b.input("x", D.F64, (BATCH, 3))
    w = b.param("w", D.F64, (3,))
    b.param("unused", D.F64, (5,))
    side = b.exp(b.sin(x))
    b.output("side", side)
    b.output("loss", b.sum(b.mul(x, w)))
    graph = b.build()
    g = verify(grad(graph, "loss", ["w", "unused", "x"]))
    users = g.users()
    assert users[g.outputs["side"]] == []                # exp(sin(x)) never reaches the loss
    assert sum(n.op == K.COS for n in g.nodes) == 0        # so sin's rule never ran
    got = evaluate(g, {"x": f64(gen, 4, 3)}, {"w": f64(gen, 3), "unused": f64(gen, 5)}, precise=True)
    assert torch.equal(got["grad.unused"], torch.zeros(5, dtype=torch.float64))
    assert got["grad.x"].shape == (4, 3)


def test_twenty_thousand_node_chain_without_recursion(gen):
    assert sys.getrecursionlimit() < 20_000
    b = GraphBuilder("deep")
    x = b.input("x", D.F64, (3,))
    w = b.param("w", D.F64, (3,))
    h = x
    while len(b) < 20_000:
        h = b.tanh(b.add(b.mul(h, w), 0.1))
    b.output("loss", b.sum(h))
    graph = b.build()
    g = verify(grad(graph, "loss", ["w", "x"]))
    assert len(g) > 2 * len(graph)
    xv, wv = f64(gen, 3), f64(gen, 3, low=0.5, high=1.5)
    got = evaluate(g, {"x": xv}, {"w": wv}, precise=True)
    x_t, w_t = xv.clone().requires_grad_(), wv.clone().requires_grad_()
    h_t = x_t
    for _ in range((len(graph) - 2) // 4):  # tanh, add, mul and one shared const per step
        h_t = torch.tanh(h_t * w_t + 0.1)
    h_t.sum().backward()
    assert_close(got["grad.w"], w_t.grad, tol=1e-9)
    assert_close(got["grad.x"], x_t.grad, tol=1e-9)


# --- errors --------------------------------------------------------------------------------------------

def _small_graph():
    b = GraphBuilder()
    x = b.input("x", D.F32, (BATCH, 3))
    i = b.input("ids", D.I64, (BATCH,))
    w = b.param("w", D.F32, (3,))
    y = b.mul(x, w)
    b.output("y", y)
    b.output("loss", b.mean(y))
    b.output("count", b.sum(i))
    return b.build()


@pytest.mark.parametrize("call,message", [
    (lambda g: grad(g, "y"), "the loss 'y' is f32[batch, 3], not a scalar"),
    (lambda g: grad(g, "count"), "the loss 'count' is i64[]: it must be a floating-point scalar"),
    (lambda g: grad(g, "los"), "no output named 'los'"),
    (lambda g: grad(g, "loss", ["v"]), "cannot differentiate with respect to 'v'"),
    (lambda g: grad(g, "loss", ["ids"]), "'ids': it is i64[batch], not floating-point"),
    (lambda g: vjp(g, ["w"], outputs=["count"]), "output 'count' is i64[]"),
    (lambda g: vjp(g, ["w"], outputs=["nope"]), "no output named 'nope'"),
], ids=["non-scalar", "integer", "unknown-loss", "unknown-wrt", "integer-wrt", "vjp-integer", "vjp-unknown"])
def test_errors_name_what_is_wrong(call, message):
    with pytest.raises(PassError) as e:
        call(_small_graph())
    assert message in str(e.value)


def test_error_hints():
    with pytest.raises(PassError) as e:
        grad(_small_graph(), "los")
    assert e.value.hint == "did you mean 'loss'?"
    with pytest.raises(PassError) as e:
        grad(_small_graph(), "loss", ["ww"])
    assert e.value.hint == "did you mean 'w'?"
    b = GraphBuilder()
    b.output("loss", b.sum(b.input("x", D.F32, (3,))))
    with pytest.raises(PassError, match="no floating-point parameters"):
        grad(b.build(), "loss")
    assert "grad.x" in grad(b.build(), "loss", "x").outputs  # one name, not its characters


@pytest.mark.parametrize("causal", [False, True])
def test_attention_gets_the_flash_backward_and_matches_torch(gen, causal):
    """softmax(f(q @ k)) @ v is differentiated as a whole (`passes/attention.py`): the probabilities
    are read by the weighted sum only (the backward recomputes them from the scores and the row's
    log-sum-exp), and the gradients of q, k and v are torch's. q and k are one value here (their
    gradients add up), v is shared across the batch (its gradient sums over it)."""
    b = GraphBuilder()
    x = b.input("x", D.F64, (2, 3, 7, 5))
    v = b.input("v", D.F64, (3, 7, 4))
    s = b.mul(b.matmul(x, b.transpose(x)), 0.4)
    if causal:
        s = b.where(b.le(b.iota((7, 7), 1), b.iota((7, 7), 0)), s, float("-inf"))
    e = b.exp(b.sub(s, b.max(s, 3, keepdim=True)))
    p = b.div(e, b.sum(e, 3, keepdim=True))
    b.output("y", b.matmul(p, v))
    g = verify(vjp(b.build(), ["x", "v"]))
    (div,) = [n for n in g.nodes if n.op == K.DIV and n.shape == (2, 3, 7, 7)]
    assert [u.op for u in g.users()[div]] == [K.MATMUL]

    xv, vv, dy = f64(gen, 2, 3, 7, 5), f64(gen, 3, 7, 4), f64(gen, 2, 3, 7, 4)
    got = evaluate(g, {"x": xv, "v": vv, "dout.y": dy}, {}, precise=True)
    xt, vt = xv.clone().requires_grad_(), vv.clone().requires_grad_()
    st = xt @ xt.transpose(-1, -2) * 0.4
    if causal:
        st = st.masked_fill(~torch.ones(7, 7, dtype=torch.bool).tril(), float("-inf"))
    yt = torch.softmax(st, -1) @ vt
    gx, gv = torch.autograd.grad(yt, [xt, vt], dy)
    assert_close(got["y"], yt.detach(), tol=TORCH_TOL)
    assert_close(got["grad.x"], gx, tol=TORCH_TOL)
    assert_close(got["grad.v"], gv, tol=TORCH_TOL)


def test_attention_whose_probabilities_are_read_elsewhere_keeps_the_primitive_rules(gen):
    b = GraphBuilder()
    q, k, v = (b.input(n, D.F64, (4, 6)) for n in "qkv")
    s = b.matmul(q, b.transpose(k))
    e = b.exp(b.sub(s, b.max(s, 1, keepdim=True)))
    p = b.div(e, b.sum(e, 1, keepdim=True))
    b.output("y", b.matmul(p, v))
    b.output("p", p)
    g = verify(vjp(b.build(), ["q", "k", "v"]))
    assert not any(n.op == K.LOG for n in g.nodes)  # no log-sum-exp: the general rules
    feeds = {n: f64(gen, 4, 6) for n in "qkv"} | {"dout.y": f64(gen, 4, 6), "dout.p": f64(gen, 4, 4)}
    got = evaluate(g, feeds, {}, precise=True)
    leaves = {n: feeds[n].clone().requires_grad_() for n in "qkv"}
    pt = torch.softmax(leaves["q"] @ leaves["k"].T, -1)
    douts = [feeds["dout.y"], feeds["dout.p"]]
    grads = torch.autograd.grad([pt @ leaves["v"], pt], list(leaves.values()), douts)
    for name, gt in zip("qkv", grads):
        assert_close(got[f"grad.{name}"], gt, tol=TORCH_TOL)
