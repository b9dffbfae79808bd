"""Bad builds: each raises IRTypeError at build time with a message naming what is wrong, and by its
class says whether a shape (IRShapeError) or a dtype (IRDTypeError) is wrong."""
import pytest

from axon.ir import DType, GraphBuilder, Init, IRDTypeError, IRShapeError, IRTypeError, OpKind, Sym
from axon.ir.ops import AxisAttrs, ReduceAttrs, SliceAttrs

D = DType
BATCH = Sym.of("batch")


def _inputs(b: GraphBuilder):
    """x: f32[3, 37, 53], i: i32[37, 53], m: bool[37, 53], s: f32[batch, 5], h: f16[37, 53]."""
    return (b.input("x", D.F32, (3, 37, 53)), b.input("i", D.I32, (37, 53)), b.input("m", D.BOOL, (37, 53)),
            b.input("s", D.F32, (BATCH, 5)), b.input("h", D.F16, (37, 53)))


BAD = [  # (id, build(b, x, i, m, s, h), message fragment)
    ("add-shapes", lambda b, x, i, m, s, h: b.add(x, s), "do not broadcast"),
    ("add-symbolic", lambda b, x, i, m, s, h: b.add(s, b.input("t", D.F32, (Sym.of("n"), 5))),
     "batch against n"),
    ("not-float-raw", lambda b, x, i, m, s, h: b.node(OpKind.NOT, (x,)),
     "'not' takes bool operands, got f32[3, 37, 53]"),
    ("and-int-raw", lambda b, x, i, m, s, h: b.node(OpKind.AND, (i, i)),
     "'and' takes bool operands, got i32[37, 53]"),
    ("neg-bool", lambda b, x, i, m, s, h: b.neg(m), "'neg' takes numeric operands, got bool"),
    ("add-bool", lambda b, x, i, m, s, h: b.add(m, m), "'add' takes numeric operands, got bool[37, 53]"),
    ("mixed-raw", lambda b, x, i, m, s, h: b.node(OpKind.ADD, (x, h)),
     "different dtypes f32 and f16"),
    ("exp-int-raw", lambda b, x, i, m, s, h: b.node(OpKind.EXP, (b.cast(i, D.I64),)),
     "'exp' takes floating-point operands, got i64"),
    ("where-cond", lambda b, x, i, m, s, h: b.where(i, x, x), "condition of 'where' must be bool, got i32"),
    ("fp8-mix", lambda b, x, i, m, s, h: b.mul(b.cast(h, D.F8E4M3), b.cast(h, D.F8E5M2)), "cannot mix"),
    ("const-overflow", lambda b, x, i, m, s, h: b.add(b.cast(i, D.U8), 300), "300 does not fit in u8"),
    ("const-not-int", lambda b, x, i, m, s, h: b.const(1.5, D.I32), "1.5 is not an integer"),
    ("const-f8e4m3-overflow", lambda b, x, i, m, s, h: b.const(1e6, D.F8E4M3), "overflows f8e4m3"),
    ("sum-axis", lambda b, x, i, m, s, h: b.sum(x, 3), "axis 3 is out of range for a tensor of rank 3"),
    ("sum-neg-axis", lambda b, x, i, m, s, h: b.sum(x, -4), "axis -4 is out of range"),
    ("sum-repeated", lambda b, x, i, m, s, h: b.sum(x, (1, -2)), "repeated axis"),
    ("sum-bool", lambda b, x, i, m, s, h: b.sum(m), "bool tensor"),
    ("sum-raw-unsorted", lambda b, x, i, m, s, h: b.node(OpKind.SUM, (x,),
                                                       ReduceAttrs((2, 0))), "must be sorted and distinct"),
    ("argmax-two-axes", lambda b, x, i, m, s, h: b.argmax(x, (0, 1)), "takes exactly one axis"),
    ("matmul-inner", lambda b, x, i, m, s, h: b.matmul(x, x), "inner dimensions differ"),
    ("matmul-rank", lambda b, x, i, m, s, h: b.matmul(b.sum(x, (0, 1)), x), "rank >= 2"),
    ("matmul-batch", lambda b, x, i, m, s, h: b.matmul(x, b.input("w", D.F32, (2, 53, 4))),
     "do not broadcast"),
    ("matmul-bool", lambda b, x, i, m, s, h: b.matmul(m, b.permute(m, (1, 0))), "bool"),
    ("conv-rank", lambda b, x, i, m, s, h: b.conv2d(x, x), "x[N, C, H, W]"),
    ("conv-groups", lambda b, x, i, m, s, h: b.conv2d(b.input("c", D.F32, (1, 4, 9, 9)),
                                                      b.input("k", D.F32, (6, 3, 3, 3)), groups=2),
     "groups=2"),
    ("conv-too-big", lambda b, x, i, m, s, h: b.conv2d(b.input("c", D.F32, (1, 3, 5, 5)),
                                                       b.input("k", D.F32, (2, 3, 7, 3))), "does not fit"),
    ("conv-stride0", lambda b, x, i, m, s, h: b.conv2d(b.input("c", D.F32, (1, 3, 5, 5)),
                                                       b.input("k", D.F32, (2, 3, 3, 3)), stride=0),
     "stride and dilation >= 1"),
    ("conv-symbolic", lambda b, x, i, m, s, h: b.conv2d(b.input("c", D.F32, (1, 3, BATCH, 9)),
                                                        b.input("k", D.F32, (2, 3, 3, 3))),
     "needs static output channel, spatial and kernel sizes"),
    ("matmul-symbolic-inner", lambda b, x, i, m, s, h: b.matmul(s, b.input("w", D.F32, (BATCH, 5))),
     "(5 vs batch)"),
    ("reshape-count", lambda b, x, i, m, s, h: b.reshape(x, (3, 37, 52)), "5883 elements vs 5772"),
    ("reshape-two-holes", lambda b, x, i, m, s, h: b.reshape(x, (-1, -1)), "only one dimension can be -1"),
    ("reshape-inexact", lambda b, x, i, m, s, h: b.reshape(x, (-1, 10)), "not a whole number"),
    ("reshape-symbolic", lambda b, x, i, m, s, h: b.reshape(s, (BATCH, 4)), "5*batch elements vs 4*batch"),
    ("permute-not-perm", lambda b, x, i, m, s, h: b.permute(x, (0, 0, 1)), "is not a permutation"),
    ("permute-short", lambda b, x, i, m, s, h: b.permute(x, (1, 0)), "is not a permutation"),
    ("permute-axis", lambda b, x, i, m, s, h: b.permute(x, (0, 1, 5)), "axis 5 is out of range"),
    ("expand-bad", lambda b, x, i, m, s, h: b.expand(x, (3, 37, 54)), "dimension 53 is neither 1 nor 54"),
    ("expand-rank", lambda b, x, i, m, s, h: b.expand(x, (37, 53)), "lower rank"),
    ("slice-step", lambda b, x, i, m, s, h: b.slice(x, 1, 0, 5, 0), "step must be >= 1, got 0"),
    ("slice-empty-raw", lambda b, x, i, m, s, h: b.node(OpKind.SLICE, (x,),
                                                         SliceAttrs((1,), (10,), (5,), (1,))),
     "empty or out of range"),
    ("slice-symbolic", lambda b, x, i, m, s, h: b.slice(s, 0, 1),
     "cannot slice the symbolic dimension batch"),
    ("slice-scalar", lambda b, x, i, m, s, h: b.slice(b.sum(x), 0, 1), "out of range for a tensor of rank 0"),
    ("slice-raw-range", lambda b, x, i, m, s, h: b.node(OpKind.SLICE, (x,),
                                                       SliceAttrs((1,), (0,), (40,), (1,))),
     "0:40:1 of axis 1 (size 37)"),
    ("pad-negative", lambda b, x, i, m, s, h: b.pad(x, ((0, 0), (-1, 0), (0, 0))), "amounts must be >= 0"),
    ("pad-rank", lambda b, x, i, m, s, h: b.pad(x, ((1, 1),)), "one (before, after) pair per axis"),
    ("pad-symbolic", lambda b, x, i, m, s, h: b.pad(s, ((1, 0), (0, 0))),
     "cannot add dimensions batch and 1"),
    ("pad-int-fraction", lambda b, x, i, m, s, h: b.pad(i, ((1, 0), (0, 0)), 0.5), "0.5 is not an integer"),
    ("concat-dtype-raw", lambda b, x, i, m, s, h: b.node(OpKind.CONCAT, (b.cast(i, D.F32), h), AxisAttrs(0)),
     "different dtypes"),
    ("concat-shape", lambda b, x, i, m, s, h: b.concat([x, b.sum(x, 0, keepdim=True)], 1),
     "does not match"),
    ("concat-axis", lambda b, x, i, m, s, h: b.concat([x, x], 3), "axis 3 is out of range"),
    ("gather-float-index", lambda b, x, i, m, s, h: b.gather(b.sum(x, 0), 0, h),
     "index of 'gather' must be an integer tensor"),
    ("gather-shape", lambda b, x, i, m, s, h: b.gather(x, 1, i), "needs an index of the rank"),
    ("take-bool-index", lambda b, x, i, m, s, h: b.take(x, m), "index of 'take' must be an integer tensor"),
    ("iota-axis", lambda b, x, i, m, s, h: b.iota((3, 4), 2), "axis 2 is out of range"),
    ("tensor-count", lambda b, x, i, m, s, h: b.tensor([1.0, 2.0, 3.0], D.F32, (2, 2)),
     "needs 4 values, got 3"),
    ("input-twice", lambda b, x, i, m, s, h: b.input("x", D.F32, (3,)), "'x' is declared twice"),
    ("param-negative", lambda b, x, i, m, s, h: b.param("w", D.F32, (3, -2), Init("zeros")),
     "negative size"),
    ("output-twice", lambda b, x, i, m, s, h: [b.output("y", x), b.output("y", x)], "'y' is declared twice"),
    ("unknown-dtype", lambda b, x, i, m, s, h: D.parse("f12"), "unknown dtype 'f12'"),
]


@pytest.mark.parametrize("build,fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_build_is_a_type_error(build, fragment):
    b = GraphBuilder()
    with pytest.raises(IRTypeError) as err:
        build(b, *_inputs(b))
    assert fragment in str(err.value), f"{err.value} does not mention {fragment!r}"


SHAPE, DTYPE, OTHER = IRShapeError, IRDTypeError, IRTypeError
KIND = {  # the exact class of each bad build above: a shape, a dtype, or neither
    "add-shapes": SHAPE, "add-symbolic": SHAPE, "not-float-raw": DTYPE, "and-int-raw": DTYPE,
    "neg-bool": DTYPE,
    "add-bool": DTYPE, "mixed-raw": DTYPE, "exp-int-raw": DTYPE, "where-cond": DTYPE, "fp8-mix": DTYPE,
    "const-overflow": DTYPE, "const-not-int": DTYPE, "const-f8e4m3-overflow": DTYPE,
    "sum-axis": SHAPE, "sum-neg-axis": SHAPE, "sum-repeated": SHAPE, "sum-bool": DTYPE,
    "sum-raw-unsorted": SHAPE, "argmax-two-axes": SHAPE, "matmul-inner": SHAPE, "matmul-rank": SHAPE,
    "matmul-batch": SHAPE, "matmul-bool": DTYPE, "conv-rank": SHAPE, "conv-groups": SHAPE,
    "conv-too-big": SHAPE, "conv-stride0": SHAPE, "conv-symbolic": SHAPE, "matmul-symbolic-inner": SHAPE,
    "reshape-count": SHAPE, "reshape-two-holes": SHAPE, "reshape-inexact": SHAPE, "reshape-symbolic": SHAPE,
    "permute-not-perm": SHAPE, "permute-short": SHAPE, "permute-axis": SHAPE, "expand-bad": SHAPE,
    "expand-rank": SHAPE, "slice-step": SHAPE, "slice-empty-raw": SHAPE, "slice-symbolic": SHAPE,
    "slice-scalar": SHAPE, "slice-raw-range": SHAPE, "pad-negative": SHAPE, "pad-rank": SHAPE,
    "pad-symbolic": SHAPE, "pad-int-fraction": DTYPE, "concat-dtype-raw": DTYPE, "concat-shape": SHAPE,
    "concat-axis": SHAPE, "gather-float-index": DTYPE, "gather-shape": SHAPE, "take-bool-index": DTYPE,
    "iota-axis": SHAPE, "tensor-count": SHAPE, "input-twice": OTHER, "param-negative": SHAPE,
    "output-twice": OTHER, "unknown-dtype": OTHER,
}


def test_every_bad_build_has_a_kind():
    assert set(KIND) == {c[0] for c in BAD}


@pytest.mark.parametrize("build,kind", [(c[1], KIND[c[0]]) for c in BAD], ids=[c[0] for c in BAD])
def test_bad_build_says_whether_a_shape_or_a_dtype_is_wrong(build, kind):
    b = GraphBuilder()
    with pytest.raises(IRTypeError) as err:
        build(b, *_inputs(b))
    assert type(err.value) is kind, f"{err.value.message!r}: {type(err.value).__name__}, not {kind.__name__}"
