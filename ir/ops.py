"""The primitive ops: one enum of kinds, families as plain sets, a typed frozen attribute class per kind,
and the registry of per-op facts (`OpDef`: arity, shape/dtype rule, reference evaluation, gradient rule).

The facts for each family live together in one file (`op_elementwise.py`, `op_reduce.py`,
`op_movement.py`, `op_linalg.py`, `op_source.py`, `op_quant.py`), which registers them here; adding an
op touches that one file and this enum.
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from .dtypes import DType
from .errors import IRDTypeError
from .shapes import Shape, TensorType


class OpKind(enum.Enum):
    # sources: values that come from outside or from nothing
    INPUT = "input"
    PARAM = "param"
    CONST = "const"        # a scalar filled to a shape
    TENSOR = "tensor"      # a small literal tensor
    IOTA = "iota"          # index along one axis
    RAND = "rand"          # uniform [0, 1) from a seed (Philox, as Triton's tl.rand)
    # elementwise unary
    NEG = "neg"
    EXP = "exp"
    LOG = "log"
    SQRT = "sqrt"
    RSQRT = "rsqrt"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    RELU = "relu"
    ERF = "erf"
    ABS = "abs"
    SIN = "sin"
    COS = "cos"
    RECIP = "recip"
    FLOOR = "floor"
    CEIL = "ceil"
    SIGN = "sign"
    NOT = "not"
    # elementwise binary
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    POW = "pow"
    MAXIMUM = "maximum"
    MINIMUM = "minimum"
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    AND = "and"
    OR = "or"
    # elementwise other
    WHERE = "where"
    CAST = "cast"
    # reductions
    SUM = "sum"
    MAX = "max"
    MIN = "min"
    MEAN = "mean"
    ARGMAX = "argmax"
    ARGMIN = "argmin"
    # linear algebra
    MATMUL = "matmul"
    CONV2D = "conv2d"
    # movement
    RESHAPE = "reshape"
    PERMUTE = "permute"
    EXPAND = "expand"
    SLICE = "slice"
    PAD = "pad"
    CONCAT = "concat"
    # indexing
    GATHER = "gather"      # take_along_axis: out[i, j] = x[i, index[i, j]] (axis=1)
    TAKE = "take"          # index_select / embedding: out = x[..., index, ...]; a negative index from the end
    # quantization (op_quant.py): affine codes per tensor, channel or group; int4 nibbles in bytes
    QUANTIZE = "quantize"
    DEQUANTIZE = "dequantize"
    FAKE_QUANTIZE = "fake_quantize"
    PACK_INT4 = "pack_int4"
    UNPACK_INT4 = "unpack_int4"
    QMATMUL = "qmatmul"    # i8 @ i8 -> i32, fp8 @ fp8 -> f32 (op_qmatmul.py)
    BSMATMUL = "bsmatmul"  # a @ b over b's nonzero blocks only (op_bsmatmul.py)

    def __str__(self) -> str:
        return self.value


K = OpKind
SOURCES = frozenset({K.INPUT, K.PARAM, K.CONST, K.TENSOR, K.IOTA, K.RAND})
UNARY = frozenset({K.NEG, K.EXP, K.LOG, K.SQRT, K.RSQRT, K.TANH, K.SIGMOID, K.RELU, K.ERF, K.ABS,
                   K.SIN, K.COS, K.RECIP, K.FLOOR, K.CEIL, K.SIGN, K.NOT})
COMPARE = frozenset({K.EQ, K.NE, K.LT, K.LE, K.GT, K.GE})
LOGICAL = frozenset({K.AND, K.OR})
BINARY = frozenset({K.ADD, K.SUB, K.MUL, K.DIV, K.POW, K.MAXIMUM, K.MINIMUM}) | COMPARE | LOGICAL
# elementwise once their scale and zero point are broadcast (per group: indexed by coordinate // group)
QUANT = frozenset({K.QUANTIZE, K.DEQUANTIZE, K.FAKE_QUANTIZE})
INT4 = frozenset({K.PACK_INT4, K.UNPACK_INT4})
ELEMENTWISE = UNARY | BINARY | QUANT | {K.WHERE, K.CAST}
COMMUTATIVE = frozenset({K.ADD, K.MUL, K.MAXIMUM, K.MINIMUM, K.EQ, K.NE, K.AND, K.OR})
REDUCE = frozenset({K.SUM, K.MAX, K.MIN, K.MEAN, K.ARGMAX, K.ARGMIN})
LINALG = frozenset({K.MATMUL, K.CONV2D, K.QMATMUL, K.BSMATMUL})
MOVEMENT = frozenset({K.RESHAPE, K.PERMUTE, K.EXPAND, K.SLICE, K.PAD, K.CONCAT})
INDEXING = frozenset({K.GATHER, K.TAKE})
FLOAT_ONLY_UNARY = frozenset({K.EXP, K.LOG, K.SQRT, K.RSQRT, K.TANH, K.SIGMOID, K.ERF, K.SIN, K.COS,
                              K.RECIP})
# Ops whose operands must be floating point: their rules refuse integers, and the builder casts
# integer operands to the default float for them (as torch.exp or torch.mean of an int tensor do).
FLOAT_OPERANDS = FLOAT_ONLY_UNARY | {K.DIV, K.POW, K.MEAN}


def check_reduce_dtype(kind: OpKind, x: TensorType) -> None:
    """The operand dtypes a reduction takes (numbers; floats for mean)."""
    if x.dtype == DType.BOOL:
        raise IRDTypeError(f"'{kind}' of a bool tensor; cast it to a number first (got {x})")
    if kind in FLOAT_OPERANDS and not x.dtype.is_float:
        raise IRDTypeError(f"'{kind}' of {x}; cast it to a floating-point type first")


# ---------------------------------------------------------------------------------------------------
# Attributes: one frozen dataclass per kind (kinds without attributes share `NoAttrs`).
# Fields named `dtype` and `shape` restate the result type; the text form leaves them out.


@dataclass(frozen=True)
class Attrs:
    def items(self) -> list[tuple[str, Any]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


@dataclass(frozen=True)
class NoAttrs(Attrs):
    pass


@dataclass(frozen=True)
class Init:
    """How a parameter is initialized: a kind and keyword arguments, e.g. `kaiming(fan_in=64)`."""

    kind: str
    args: tuple[tuple[str, float], ...] = ()

    def arg(self, name: str, default=None):
        return dict(self.args).get(name, default)

    def __str__(self) -> str:
        return f"{self.kind}(" + ", ".join(f"{k}={v!r}" for k, v in self.args) + ")"


@dataclass(frozen=True)
class InputAttrs(Attrs):
    name: str
    dtype: DType
    shape: Shape


@dataclass(frozen=True)
class ParamAttrs(Attrs):
    name: str
    dtype: DType
    shape: Shape
    init: Init = Init("zeros")


@dataclass(frozen=True)
class ConstAttrs(Attrs):
    value: float | int | bool
    dtype: DType
    shape: Shape = ()


@dataclass(frozen=True)
class TensorAttrs(Attrs):
    data: tuple  # flat, row-major, Python numbers
    dtype: DType
    shape: Shape


@dataclass(frozen=True)
class IotaAttrs(Attrs):
    axis: int
    dtype: DType
    shape: Shape


@dataclass(frozen=True)
class RandAttrs(Attrs):
    stream: int  # separates the random streams of several RAND nodes sharing one seed
    dtype: DType
    shape: Shape


@dataclass(frozen=True)
class CastAttrs(Attrs):
    dtype: DType


@dataclass(frozen=True)
class ReduceAttrs(Attrs):
    axes: tuple[int, ...]  # sorted, non-negative
    keepdim: bool = False


@dataclass(frozen=True)
class Conv2dAttrs(Attrs):
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1


@dataclass(frozen=True)
class ReshapeAttrs(Attrs):
    shape: Shape


@dataclass(frozen=True)
class PermuteAttrs(Attrs):
    perm: tuple[int, ...]


@dataclass(frozen=True)
class ExpandAttrs(Attrs):
    shape: Shape


@dataclass(frozen=True)
class SliceAttrs(Attrs):
    """Slice of the listed axes, each `start:stop:step` with 0 <= start < stop <= size, step >= 1."""

    axes: tuple[int, ...]
    starts: tuple[int, ...]
    stops: tuple[int, ...]
    steps: tuple[int, ...]


@dataclass(frozen=True)
class PadAttrs(Attrs):
    pads: tuple[tuple[int, int], ...]  # (before, after) per axis, all >= 0
    value: float = 0.0


@dataclass(frozen=True)
class AxisAttrs(Attrs):
    axis: int


@dataclass(frozen=True)
class QuantizeAttrs(Attrs):
    """`quantize` (op_quant.py): codes of `dtype` in [qmin, qmax] (fp8: -max, max of the format);
    `axes` () per tensor or (axis,) per channel (group 1) or per group of `group` elements."""

    dtype: DType
    axes: tuple[int, ...]
    group: int
    qmin: int
    qmax: int


@dataclass(frozen=True)
class DequantizeAttrs(Attrs):
    """`dequantize` (op_quant.py): float result `dtype`; `axes` and `group` as for quantize."""

    dtype: DType
    axes: tuple[int, ...]
    group: int


@dataclass(frozen=True)
class FakeQuantizeAttrs(Attrs):
    """`fake_quantize` (op_quant.py): quantize to `qdtype` codes in [qmin, qmax], then dequantize."""

    qdtype: DType
    axes: tuple[int, ...]
    group: int
    qmin: int
    qmax: int


@dataclass(frozen=True)
class BlockAttrs(Attrs):
    """`bsmatmul`: the side of the square blocks its weight is pruned in."""

    block: int


@dataclass(frozen=True)
class UnpackAttrs(Attrs):
    """`unpack_int4`: `dtype` i8 (nibbles sign-extended, [-8, 7]) or u8 ([0, 15])."""

    dtype: DType


# ---------------------------------------------------------------------------------------------------
# The registry of per-op facts.

InferFn = Callable[[Any, list[TensorType]], TensorType]
RefFn = Callable[..., Any]  # (attrs, input tensors, ctx) -> torch.Tensor
# (builder, node, operands, result, incoming gradient) -> one gradient per operand, or None where an
# operand gets none. Operands, result and gradient are nodes of the builder (see passes/autodiff.py).
GradFn = Callable[..., list]


@dataclass(frozen=True)
class OpDef:
    kind: OpKind
    attrs: type[Attrs]
    arity: int | None  # None: variadic (one or more)
    infer: InferFn
    ref: RefFn
    grad: GradFn | None = None  # reverse-mode rule, registered next to the op's other facts


OPS: dict[OpKind, OpDef] = {}


def register(kind: OpKind, attrs: type[Attrs], arity: int | None, infer: InferFn, ref: RefFn) -> None:
    assert kind not in OPS, f"{kind} registered twice"
    OPS[kind] = OpDef(kind, attrs, arity, infer, ref)


def register_grad(kind: OpKind, fn: GradFn) -> None:
    """Attach the gradient rule of an op already registered (OpDef is frozen: the entry is replaced)."""
    assert kind in OPS, f"{kind}: register the op before its gradient rule"
    assert OPS[kind].grad is None, f"{kind} gradient registered twice"
    OPS[kind] = replace(OPS[kind], grad=fn)


def no_grad(b, node, ins, out, g) -> list:
    """The rule of an op whose result carries no gradient to any operand (indices, masks, sources,
    and functions that are piecewise constant: floor, sign, comparisons, argmax)."""
    return [None] * len(ins)


def opdef(kind: OpKind) -> OpDef:
    return OPS[kind]
