"""Per-op Triton: dtype names, the OpKind -> expression table, and casts with the evaluator's rules."""
from __future__ import annotations

import math

from axon.ir import DType, OpKind
from .groups import CodegenError

K = OpKind

TL_DTYPE = {
    DType.F64: "tl.float64", DType.F32: "tl.float32", DType.F16: "tl.float16", DType.BF16: "tl.bfloat16",
    DType.I64: "tl.int64", DType.I32: "tl.int32", DType.I8: "tl.int8", DType.U8: "tl.uint8",
    DType.BOOL: "tl.int1",
    # fp8 is stored and loaded as is, widened to f32 by its bits to compute, and made only by quantize
    DType.F8E4M3: "tl.float8e4nv", DType.F8E5M2: "tl.float8e5",
}
FP8_TO_F32 = {DType.F8E4M3: "_e4m3_to_f32", DType.F8E5M2: "_e5m2_to_f32"}
LOW_FLOATS = frozenset({DType.F16, DType.BF16})  # held in their dtype, computed in f32 (as torch on CPU)

# Expressions over operands {a}, {b}, {c}, already in the compute dtype. NaN rules follow torch:
# relu, maximum and minimum keep a NaN; sign(NaN) is 0.
EXPR = {
    K.NEG: "-{a}", K.EXP: "tl.exp({a})", K.LOG: "tl.log({a})", K.SQRT: "tl.sqrt({a})",
    K.RSQRT: "tl.rsqrt({a})", K.TANH: "_tanh({a})", K.SIGMOID: "tl.sigmoid({a})",
    K.RELU: "tl.where({a} < 0, 0, {a})", K.ERF: "tl.math.erf({a})", K.ABS: "tl.abs({a})",
    K.SIN: "tl.sin({a})", K.COS: "tl.cos({a})", K.RECIP: "1.0 / {a}",
    K.SIGN: "tl.where({a} > 0, 1, 0) - tl.where({a} < 0, 1, 0)", K.NOT: "{a} == 0",
    K.ADD: "{a} + {b}", K.SUB: "{a} - {b}", K.MUL: "{a} * {b}", K.DIV: "{a} / {b}", K.POW: "_pow({a}, {b})",
    K.MAXIMUM: "tl.where(({a} > {b}) | ({a} != {a}), {a}, {b})",
    K.MINIMUM: "tl.where(({a} < {b}) | ({a} != {a}), {a}, {b})",
    K.EQ: "{a} == {b}", K.NE: "{a} != {b}", K.LT: "{a} < {b}", K.LE: "{a} <= {b}", K.GT: "{a} > {b}",
    K.GE: "{a} >= {b}", K.AND: "{a} & {b}", K.OR: "{a} | {b}", K.WHERE: "tl.where({a}, {b}, {c})",
}
FLOAT_EXPR = {K.FLOOR: "tl.floor({a})", K.CEIL: "tl.ceil({a})"}  # identity on integers

# Helpers the interpreter and every GPU target share (libdevice is not in the interpreter).
HELPERS = {
    "_tanh": '''
@triton.jit
def _tanh(x):
    # tanh(x) = sign(x) * (1 - e) / (1 + e) with e = exp(-2|x|), which never overflows; tanh(-0) = -0
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, tl.where(x == 0, x, t))
''',
    "_to_f32": '''
@triton.jit
def _to_f32(x):
    # bf16 -> f32 by its bits, exact (the interpreter's own conversion mangles subnormals); a value
    # that is f32 already (a template's f32 tile given under a bf16 node) passes as it is
    if x.dtype == tl.bfloat16:
        x = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return x.to(tl.float32)
''',
    "_bf16_operand": '''
@triton.jit
def _bf16_operand(x):
    # a bf16 dot operand held in f32 (the interpreter's bf16 tl.dot is wrong): a bf16 tile widened by
    # its bits, an f32 tile (a probability tile) first rounded to bf16, to nearest even as a GPU does
    if x.dtype != tl.bfloat16:
        b = x.to(tl.float32).to(tl.uint32, bitcast=True)
        x = tl.where(x != x, 0x7FC0, (b + 0x7FFF + ((b >> 16) & 1)) >> 16).to(tl.uint16)
        x = x.to(tl.bfloat16, bitcast=True)
    return (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
''',
    # fp8 to f32 by its bits, exactly (the interpreter's conversion has no NaN, inf or rounding)
    "_e4m3_to_f32": '''
@triton.jit
def _e4m3_to_f32(x):
    # e4m3fn: exponent bias 7, 3 mantissa bits, multiples of 2**-9 below 2**-6, NaN at 0x7F, no inf
    b = x.to(tl.uint8, bitcast=True).to(tl.uint32)
    mag = b & 0x7F
    v = tl.where(mag < 8, mag.to(tl.float32) * 0.001953125, ((mag + 960) << 20).to(tl.float32, bitcast=True))
    v = tl.where(mag == 0x7F, float("nan"), v)
    return tl.where(b >= 0x80, -v, v)
''',
    "_e5m2_to_f32": '''
@triton.jit
def _e5m2_to_f32(x):
    # e5m2: exponent bias 15, 2 mantissa bits, multiples of 2**-16 below 2**-14, inf 0x7C, NaN above
    b = x.to(tl.uint8, bitcast=True).to(tl.uint32)
    mag = b & 0x7F
    v = tl.where(mag < 4, mag.to(tl.float32) * 0.0000152587890625,
                 ((mag + 448) << 21).to(tl.float32, bitcast=True))
    v = tl.where(mag == 0x7C, float("inf"), tl.where(mag > 0x7C, float("nan"), v))
    return tl.where(b >= 0x80, -v, v)
''',
    "_saturate": '''
@triton.jit
def _saturate(x, lo, hi):
    # a float made ready for a cast to integer: NaN -> 0, clamped to [lo, hi] (the cast truncates)
    x = x.to(tl.float64)
    return tl.where(x != x, 0.0, tl.minimum(tl.maximum(x, lo), hi))
''',
    "_pow": '''
@triton.jit
def _pow(a, b):
    # a ** b = exp(b * log|a|) with C's pow rules for what that misses: the sign of a base whose sign
    # bit is set (-0.0 and -inf too) under an odd integer exponent, NaN for a finite negative base
    # and a non-integer exponent, and 1 for b == 0, a == 1 and (-1) ** +-inf
    mag = tl.exp(b * tl.log(tl.abs(a)))
    b_int = tl.floor(b) == b
    b_odd = b_int & (b - 2.0 * tl.floor(b * 0.5) == 1.0)
    negative = (a < 0) | ((a == 0) & (1.0 / a < 0))
    out = tl.where(negative & b_odd, -mag, mag)
    out = tl.where((a < 0) & (a > -float("inf")) & ~b_int, float("nan"), out)
    return tl.where((b == 0) | (a == 1) | ((a == -1) & (tl.abs(b) == float("inf"))), 1.0, out)
''',
}


def dot(a: str, b: str, dtype: DType, target, acc: str | None = None) -> str:
    """`tl.dot` of tiles `a` and `b` taken as `dtype` values, accumulated in f32 (into `acc` if given).

    16-bit operands run on tensor cores (an operand computed in f32 inside the kernel, a probability
    tile, is rounded to `dtype` first); f32 ones at full precision (`ieee`, as torch's default) or on TF32
    tensor cores where the target allows it. The interpreter's bf16 `tl.dot` multiplies bit patterns
    (triton#11584), so there bf16 operands go through f32."""
    if dtype == DType.BF16 and target.interpreted:
        operands, precision = [f"_bf16_operand({x})" for x in (a, b)], ', input_precision="ieee"'
    elif dtype in LOW_FLOATS:
        operands, precision = [f"{x}.to({tl_dtype(dtype)})" for x in (a, b)], ""
    else:
        operands, precision = [a, b], f', input_precision="{target.dot_precision}"'
    acc_arg = f", {acc}" if acc else ""
    return f"tl.dot({operands[0]}, {operands[1]}{acc_arg}{precision})"


def full_tile(value: str, shape: str, dtype: DType) -> str:
    """`value` (a tile of `dtype`, or a smaller one) broadcast to the tile `shape` for a store: by adding
    zeros, and for fp8, which has no arithmetic on a GPU, by adding them to its bytes."""
    if dtype.is_fp8:
        return (f"({value}.to(tl.uint8, bitcast=True) + tl.zeros({shape}, tl.uint8))"
                f".to({tl_dtype(dtype)}, bitcast=True)")
    return f"{value} + tl.zeros({shape}, {value}.dtype)"


def qdot(a: str, b: str, codes: DType, target, acc: str) -> str:
    """`tl.dot` of code tiles (`qmatmul`, ir/op_qmatmul.py) into `acc`: i8 x i8 into i32 (IMMA / wgmma
    s8), fp8 x fp8 into f32. fp8 tiles arrive as their bytes (u8: the interpreter cannot make an fp8
    zero for masked lanes): on a GPU (sm_89+: `MatmulKernel` refuses older ones, whose Triton has no
    e4m3 type) they are fp8 again for the tensor cores; in the interpreter, widened exactly to f32."""
    if codes == DType.I8:
        return f"tl.dot({a}, {b}, {acc})"
    if target.interpreted:
        return f'tl.dot({FP8_TO_F32[codes]}({a}), {FP8_TO_F32[codes]}({b}), {acc}, input_precision="ieee")'
    fp8 = tl_dtype(codes)
    return f"tl.dot({a}.to({fp8}, bitcast=True), {b}.to({fp8}, bitcast=True), {acc})"


def dot_helpers(dtype: DType, target) -> list[str]:
    """The helper functions `dot` calls for `dtype` on `target` (their source, for the kernel file)."""
    return [HELPERS["_bf16_operand"]] if dtype == DType.BF16 and target.interpreted else []


def program_id(axis: int, wide: bool) -> str:
    """The program index; `wide` makes it int64 so index arithmetic over 2**31+ elements cannot wrap."""
    return f"tl.program_id({axis}).to(tl.int64)" if wide else f"tl.program_id({axis})"


def compute_dtype(dtype: DType) -> DType:
    return DType.F32 if dtype in LOW_FLOATS else dtype


def tl_dtype(dtype: DType) -> str:
    if dtype not in TL_DTYPE:
        raise CodegenError(f"no Triton code generation for {dtype} yet")
    return TL_DTYPE[dtype]


# Non-finite floats are written inline, never as module globals: Triton re-checks a kernel's globals at
# every launch with `!=`, and a NaN global is never equal to itself ("Global variable NAN has changed").
NAN = 'float("nan")'
INF = 'float("inf")'


def literal(value, dtype: DType) -> str:
    """A Python literal for a constant (non-finite floats as `float("nan")`, `float("inf")`)."""
    if dtype == DType.BOOL:
        return "1" if value else "0"
    if not dtype.is_float:
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return NAN
    if math.isinf(value):
        return INF if value > 0 else f"-{INF}"
    if dtype in LOW_FLOATS:  # the value the dtype holds, rounded as the evaluator rounds a literal
        import torch  # (the interpreter's tl.full truncates to bf16)
        value = float(torch.tensor(value, dtype=torch.float64).to(dtype.torch))
        if math.isinf(value):
            return INF if value > 0 else f"-{INF}"
    return repr(value)


def cast(expr: str, src: DType, dst: DType) -> str:
    """Convert like `EvalContext.cast`: float -> int truncates, NaN -> 0, out of range saturates.

    bf16 goes through f32 by its bits both ways: Triton's interpreter converts bf16 by arithmetic that
    truncates instead of rounding, mangles subnormals (-1e-39 became -4.4e-39) and reinterprets the
    bits of integers and f64, and compares bf16 by its bits (-0.0 != 0); the bit forms are exact on
    the GPU as well."""
    if src == dst:
        return expr
    if dst.is_fp8:
        raise CodegenError(f"no Triton code generation for a cast to {dst}: fp8 values are made by "
                           f"'quantize' (which scales and saturates them)")
    if src.is_fp8:
        expr, src = f"{FP8_TO_F32[src]}({expr})", DType.F32
        if dst == DType.F32:
            return expr
    if src == DType.BF16:
        expr, src = widen_bf16(expr), DType.F32
        if dst == DType.F32:
            return expr
    if dst == DType.BOOL:
        return f"({expr} != 0)"
    if src.is_float and dst.is_int:
        import torch
        info = torch.iinfo(dst.torch)
        top = float(info.max) if info.bits < 64 else float(2**63 - 1024)  # the last f64 below 2**63
        wide = f"{expr}.to(tl.float32)" if src in LOW_FLOATS else expr
        return f"_saturate({wide}, {float(info.min)!r}, {top!r}).to({tl_dtype(dst)})"
    if dst == DType.BF16:
        return round_bf16(expr if src == DType.F32 else f"{expr}.to(tl.float32)")
    return f"{expr}.to({tl_dtype(dst)})"


def widen_bf16(bf16: str) -> str:
    """A bf16 value as f32, exactly: its 16 bits are the top half of the f32's."""
    v = bf16 if bf16.isidentifier() else f"({bf16})"
    return f"({v}.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)"


def round_bf16(f32: str) -> str:
    """An f32 value rounded to bf16, to nearest with ties to even (as torch and the GPU's cvt.rn): the
    16 dropped bits are rounded into the kept ones, which are the bf16's bits; NaN stays NaN. Pass a
    variable: the expression is repeated."""
    v = f32 if f32.isidentifier() else f"({f32})"
    bits = f"{v}.to(tl.float32).to(tl.uint32, bitcast=True)"  # (.to: a no-op on the f32 it should be)
    top = f"({bits} + 0x7FFF + (({bits} >> 16) & 1)) >> 16"
    return f"tl.where({v} != {v}, 0x7FC0, {top}).to(tl.uint16).to(tl.bfloat16, bitcast=True)"
