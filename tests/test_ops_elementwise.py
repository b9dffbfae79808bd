"""Elementwise ops against PyTorch: every unary and binary op, where, cast between dtypes, and the
builder's dtype promotion (including Python scalars). Shapes are irregular and broadcast."""
import pytest
import torch

from axon.ir import DType, GraphBuilder, IRTypeError, OpKind, Sym, TensorType
from axon.ir.ops import BINARY, COMPARE, LOGICAL, UNARY
from opcheck import check, rand

D = DType
F8 = (torch.float8_e4m3fn, torch.float8_e5m2)

# op -> (builder method, torch reference, input range). Ranges keep log/sqrt/rsqrt/recip away from
# their poles so the relative error stays meaningful.
UNARY_CASES = {
    OpKind.NEG: ("neg", torch.neg, (-3, 3)),
    OpKind.EXP: ("exp", torch.exp, (-3, 3)),
    OpKind.LOG: ("log", torch.log, (0.1, 5)),
    OpKind.SQRT: ("sqrt", torch.sqrt, (0.1, 5)),
    OpKind.RSQRT: ("rsqrt", torch.rsqrt, (0.1, 5)),
    OpKind.TANH: ("tanh", torch.tanh, (-3, 3)),
    OpKind.SIGMOID: ("sigmoid", torch.sigmoid, (-5, 5)),
    OpKind.RELU: ("relu", torch.relu, (-3, 3)),
    OpKind.ERF: ("erf", torch.erf, (-2, 2)),
    OpKind.ABS: ("abs", torch.abs, (-3, 3)),
    OpKind.SIN: ("sin", torch.sin, (-4, 4)),
    OpKind.COS: ("cos", torch.cos, (-4, 4)),
    OpKind.RECIP: ("recip", torch.reciprocal, (0.5, 4)),
    OpKind.FLOOR: ("floor", torch.floor, (-9, 9)),
    OpKind.CEIL: ("ceil", torch.ceil, (-9, 9)),
    OpKind.SIGN: ("sign", torch.sign, (-3, 3)),
    OpKind.NOT: ("logical_not", torch.logical_not, (0, 2)),
}
assert set(UNARY_CASES) == UNARY, "every unary op has a case"
FLOAT_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _in_fp8_then_round(fn, dtype):
    """fp8 has no CPU kernels: the reference computes in f32 and rounds, as the evaluator must."""
    return lambda *xs: fn(*(x.float() for x in xs)).to(dtype)


def _with_dtypes(cases, bool_ops, dtypes):
    """(op, dtype) pairs: bool ops run once on bool, the others on each of `dtypes`."""
    return [(op, dt) for op in sorted(cases, key=str) for dt in ([torch.bool] if op in bool_ops else dtypes)]


@pytest.mark.parametrize("op,dtype", _with_dtypes(UNARY_CASES, {OpKind.NOT}, FLOAT_DTYPES + list(F8)),
                         ids=str)
def test_unary(op, dtype, gen):
    method, fn, (lo, hi) = UNARY_CASES[op]
    shape = (3, 37, 53) if dtype in (torch.float32, torch.float64) else (37, 53)
    x = rand(gen, *shape, dtype=dtype, low=lo, high=hi)
    ref = _in_fp8_then_round(fn, dtype) if dtype in F8 else fn
    check(lambda b, x: getattr(b, method)(x), ref, x, ref64=fn)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int8, torch.int64])
@pytest.mark.parametrize("method", ["neg", "abs", "relu", "sign"])
def test_unary_integer_stays_integer(method, dtype, gen):
    x = rand(gen, 37, 53, dtype=dtype, low=-100, high=100)
    check(lambda b, x: getattr(b, method)(x), getattr(torch, method), x)


@pytest.mark.parametrize("method,fn", [("exp", torch.exp), ("sqrt", torch.sqrt), ("sin", torch.sin)])
def test_float_only_unary_casts_integers_to_f32(method, fn, gen):
    x = rand(gen, 37, 53, dtype=torch.int32, low=0, high=20)
    check(lambda b, x: getattr(b, method)(x), lambda x: fn(x.float()), x,
          ref64=lambda x: fn(x.double()))


BINARY_CASES = {
    OpKind.ADD: ("add", torch.add),
    OpKind.SUB: ("sub", torch.sub),
    OpKind.MUL: ("mul", torch.mul),
    OpKind.DIV: ("div", torch.div),
    OpKind.POW: ("pow", torch.pow),
    OpKind.MAXIMUM: ("maximum", torch.maximum),
    OpKind.MINIMUM: ("minimum", torch.minimum),
    OpKind.EQ: ("eq", torch.eq),
    OpKind.NE: ("ne", torch.ne),
    OpKind.LT: ("lt", torch.lt),
    OpKind.LE: ("le", torch.le),
    OpKind.GT: ("gt", torch.gt),
    OpKind.GE: ("ge", torch.ge),
    OpKind.AND: ("logical_and", torch.logical_and),
    OpKind.OR: ("logical_or", torch.logical_or),
}
assert set(BINARY_CASES) == BINARY, "every binary op has a case"
# Broadcasting: equal shapes, size-1 dims on either side, rank-differing operands, a scalar.
BROADCASTS = [((3, 37, 53), (3, 37, 53)), ((3, 37, 53), (37, 1)), ((1, 37, 1), (3, 1, 53)),
              ((53,), (3, 37, 53)), ((3, 37, 53), ())]


@pytest.mark.parametrize("shapes", BROADCASTS, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op,dtype", _with_dtypes(BINARY_CASES, LOGICAL, [torch.float32, torch.float64]),
                         ids=str)
def test_binary(op, dtype, shapes, gen):
    method, fn = BINARY_CASES[op]
    lo = 0.5 if op == OpKind.POW else -3.0  # pow of a negative base is NaN: keep it finite
    a = rand(gen, *shapes[0], dtype=dtype, low=lo)
    b = rand(gen, *shapes[1], dtype=dtype, low=lo)
    if op in COMPARE:  # whole numbers in [-3, 3]: many equal pairs, to tell lt from le
        a, b = a.round(), b.round()
    check(lambda bld, x, y: getattr(bld, method)(x, y), fn, a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32, torch.int8, torch.uint8,
                                   torch.int64])
@pytest.mark.parametrize("method", ["add", "sub", "mul", "maximum", "minimum", "lt", "eq"])
def test_binary_other_dtypes(method, dtype, gen):
    a = rand(gen, 37, 53, dtype=dtype, low=0, high=11)
    b = rand(gen, 53, dtype=dtype, low=0, high=11)
    check(lambda bld, x, y: getattr(bld, method)(x, y), getattr(torch, method), a, b)


@pytest.mark.parametrize("method", ["add", "mul", "maximum", "gt"])
@pytest.mark.parametrize("dtype", F8)
def test_binary_fp8_rounds_like_torch(method, dtype, gen):
    a, b = rand(gen, 37, 53, dtype=dtype), rand(gen, 1, 53, dtype=dtype)
    fn = getattr(torch, method)
    ref = (lambda x, y: fn(x.float(), y.float())) if method == "gt" else _in_fp8_then_round(fn, dtype)
    check(lambda bld, x, y: getattr(bld, method)(x, y), ref, a, b, ref64=fn)


def test_integer_div_and_pow_compute_in_f32(gen):
    a = rand(gen, 37, 53, dtype=torch.int32, low=-50, high=50)
    b = rand(gen, 37, 53, dtype=torch.int32, low=1, high=4)
    check(lambda bld, x, y: bld.div(x, y), lambda x, y: x.float() / y.float(), a, b,
          ref64=lambda x, y: x.double() / y.double())
    check(lambda bld, x, y: bld.pow(x, y), lambda x, y: torch.pow(x.float(), y.float()), a, b,
          ref64=lambda x, y: torch.pow(x.double(), y.double()))


def test_binary_symbolic_broadcast(gen):
    batch = Sym.of("batch")
    a, b = rand(gen, 5, 37, 1), rand(gen, 1, 53)
    check(lambda bld, x, y: bld.add(x, y), torch.add, a, b, shapes=[(batch, 37, 1), (1, 53)],
          out_type=TensorType(D.F32, (batch, 37, 53)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32, torch.float16])
def test_where(dtype, gen):
    cond = rand(gen, 37, 1, dtype=torch.bool)
    a, b = rand(gen, 3, 37, 53, dtype=dtype), rand(gen, 53, dtype=dtype)
    check(lambda bld, c, x, y: bld.where(c, x, y), torch.where, cond, a, b)


def test_where_promotes_branches_and_scalars(gen):
    cond, a = rand(gen, 37, 53, dtype=torch.bool), rand(gen, 37, 53, dtype=torch.int32, low=-9, high=9)
    check(lambda bld, c, x: bld.where(c, x, 0.5), lambda c, x: torch.where(c, x.float(), 0.5), cond, a,
          ref64=lambda c, x: torch.where(c, x.double(), 0.5))


# --- casts -----------------------------------------------------------------------------------------
ALL = [D.F64, D.F32, D.F16, D.BF16, D.F8E4M3, D.F8E5M2, D.I64, D.I32, D.I8, D.U8, D.BOOL]


def _cast_source(gen, src: DType, dst: DType) -> torch.Tensor:
    """Values of `src` that `dst` can hold, so the cast is defined (no overflow, no negative u8)."""
    if src == D.BOOL:
        return rand(gen, 37, 53, dtype=torch.bool)
    low = 0 if D.U8 in (src, dst) else -100
    high = 100 if src.is_float else 127
    x = rand(gen, 37, 53, dtype=torch.float64, low=low, high=high)
    x[0, :5] = 0  # zeros, for casts to bool
    if not src.is_float:
        x = x.round()
    return x.to(src.torch)


@pytest.mark.parametrize("dst", ALL, ids=str)
@pytest.mark.parametrize("src", ALL, ids=str)
def test_cast(src, dst, gen):
    x = _cast_source(gen, src, dst)
    check(lambda b, x: b.cast(x, dst), lambda x: x.to(dst.torch), x)


@pytest.mark.parametrize("dst", [torch.float8_e4m3fn, torch.float8_e5m2, torch.float16, torch.bfloat16])
def test_cast_rounds_to_nearest_like_torch(dst, gen):
    # values between representable points (and near the fp8 range limits) must round as torch does
    x = torch.cat([rand(gen, 997, dtype=torch.float64, low=-400, high=400),
                   rand(gen, 997, dtype=torch.float64, low=-1e-2, high=1e-2)]).float()
    check(lambda b, x: b.cast(x, DType.from_torch(dst)), lambda x: x.to(dst), x, tol=0.0)


# --- promotion -------------------------------------------------------------------------------------
PROMOTE = [  # (a, b, result): bool < ints < floats, wider wins, ties go to the smallest common type
    (D.BOOL, D.I8, D.I8), (D.I8, D.U8, D.I32), (D.U8, D.I32, D.I32), (D.I32, D.I64, D.I64),
    (D.I64, D.F16, D.F16), (D.BOOL, D.F32, D.F32), (D.F16, D.BF16, D.F32), (D.BF16, D.F32, D.F32),
    (D.F32, D.F64, D.F64), (D.F8E4M3, D.F16, D.F16), (D.F8E5M2, D.BF16, D.BF16),
    (D.I64, D.F8E4M3, D.F8E4M3), (D.BOOL, D.F8E5M2, D.F8E5M2), (D.U8, D.U8, D.U8),
]


def _add_in(dtype: DType, precise: bool = False):
    """The reference for `x + y` promoted to `dtype` (fp8 through f32, which has no CPU kernels);
    `precise`: the operands are rounded to `dtype`, the sum is exact (float64)."""
    def add(x, y):
        x, y = x.to(dtype.torch), y.to(dtype.torch)
        if dtype.is_float and precise:
            return x.double() + y.double()
        return (x.float() + y.float()).to(dtype.torch) if dtype.is_fp8 else x + y
    return add


@pytest.mark.parametrize("a_dt,b_dt,out_dt", PROMOTE, ids=lambda d: str(d))
def test_promotion_through_the_builder(a_dt, b_dt, out_dt, gen):
    # non-negative values (as for a cast to u8) that every dtype in the table holds exactly
    a, b = _cast_source(gen, a_dt, D.U8), _cast_source(gen, b_dt, D.U8)[:1]
    # precise: the implicit casts still round (i64 -> f8e4m3), the add does not
    ref64 = _add_in(out_dt, precise=True)
    check(lambda bld, x, y: bld.add(x, y), _add_in(out_dt), a, b, ref64=ref64)
    check(lambda bld, x, y: bld.add(y, x), lambda x, y: _add_in(out_dt)(y, x), a, b,
          ref64=lambda x, y: ref64(y, x))


def test_mixing_two_fp8_formats_is_an_error():
    b = GraphBuilder()
    x, y = b.input("x", D.F8E4M3, (3,)), b.input("y", D.F8E5M2, (3,))
    with pytest.raises(IRTypeError, match="cannot mix f8e4m3 and f8e5m2"):
        b.add(x, y)


SCALARS = [(torch.int32, 2.5), (torch.float16, 2.5), (torch.bool, 1), (torch.uint8, 3), (torch.float32, True),
           (torch.int64, 2), (torch.bfloat16, -1), (torch.int8, 1.0)]


@pytest.mark.parametrize("dtype,scalar", SCALARS, ids=str)
def test_python_scalars_follow_torch(dtype, scalar, gen):
    x = rand(gen, 37, 53, dtype=dtype, low=0, high=50)

    def exact(x):  # precise mode holds a floating result in float64
        return x.double() if (x + scalar).is_floating_point() else x

    check(lambda b, x: b.add(x, scalar), lambda x: x + scalar, x, ref64=lambda x: exact(x) + scalar)
    check(lambda b, x: b.mul(scalar, x), lambda x: scalar * x, x, ref64=lambda x: scalar * exact(x))
