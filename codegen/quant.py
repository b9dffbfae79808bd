"""Triton for the quantization ops (`ir/op_quant.py`): the reference's f32 arithmetic, step for step, so
codes are equal to the evaluator's (and torch's) bit for bit, on the interpreter and on a GPU.

What the GPU compiler would otherwise change, and how each line keeps it:
- `1 / scale` and `x / scale` use `tl.math.div_rn` (Triton's `/` on f32 is `div.full.f32`, within 2 ulp);
- the product `x * inv` is `tl.fma(x, inv, 0.0)`: rounded once, as the reference's multiply, and never
  contracted with the rounding after it into one fma;
- rounding to nearest even (`_rint`) and the conversion to fp8 (`_to_e4m3`, `_to_e5m2`) are exact
  arithmetic on floats and bits, with no libdevice (which the interpreter lacks) and no conversion
  instruction whose NaN and saturation rules differ from torch's;
- Triton's minimum/maximum drop a NaN on a GPU, so a NaN is set apart before every clamp.

Operands come in their compute dtype (x and scale f32, fp8 codes widened to f32) but the zero point, an
integer, is converted here (to f64 with i32 codes, where f32 would round); the last line assigns the
result, left in f32 for a bf16 result (the emitter rounds).
Per-group scales and zero points are loaded per group by the kernel templates (`Access.group`).
"""
from __future__ import annotations

from axon.ir import DType, Node, OpKind
from axon.ir.dtypes import quant_range
from .ops_triton import FP8_TO_F32, HELPERS, cast, tl_dtype

K = OpKind
TO_FP8 = {DType.F8E4M3: "_to_e4m3", DType.F8E5M2: "_to_e5m2"}

HELPERS.update({
    "_rint": '''
@triton.jit
def _rint(x):
    # to the nearest integer, ties to even (C's nearbyint, torch.round), exactly: x - floor(x) is exact
    f = tl.floor(x)
    d = x - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
    return tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f)
''',
})


def _to_fp8(name: str, mantissa: int, bias: int, tl_type: str) -> str:
    """f32 (|y| within the format's range, or NaN) to the nearest fp8 of `mantissa` bits and exponent
    `bias`, ties to even, by its bits: from the smallest normal up, the dropped mantissa bits are rounded
    into the kept ones (a carry moves the exponent); below it values are multiples of the subnormal step."""
    drop = 23 - mantissa
    smallest_normal = (127 - bias + 1) << 23          # f32 bits of 2**(1 - bias)
    steps = 2 ** (bias - 1 + mantissa)                 # subnormals per unit
    half, rebias = hex((1 << (drop - 1)) - 1), (127 - bias) << mantissa
    return f'''
@triton.jit
def {name}(y):
    bits = y.to(tl.uint32, bitcast=True)
    mag = bits & 0x7FFFFFFF
    normal = ((mag + {half} + ((mag >> {drop}) & 1)) >> {drop}) - {rebias}
    small = _rint(tl.abs(y) * {float(steps)}).to(tl.uint32)
    code = tl.where(y != y, 0x7F, tl.where(mag < {hex(smallest_normal)}, small, normal))
    return (code | ((bits >> 24) & 0x80)).to(tl.uint8).to({tl_type}, bitcast=True)
'''


HELPERS.update({"_to_e4m3": _to_fp8("_to_e4m3", 3, 7, "tl.float8e4nv"),   # e4m3fn: max 448
                "_to_e5m2": _to_fp8("_to_e5m2", 2, 15, "tl.float8e5")})   # e5m2: max 57344


def quant_lines(n: Node, var: str, x: str, scale: str, zp: str | None) -> list[str]:
    """The lines computing quantization op `n` as `var`: x and scale in f32, the zero point (if any) as
    loaded (an integer)."""
    codes = n.inputs[0].dtype if n.op == K.DEQUANTIZE else n.attrs.dtype if n.op == K.QUANTIZE \
        else n.attrs.qdtype
    wide = "tl.float64" if codes == DType.I32 else "tl.float32"  # i32 codes: exact in f64 only
    z = f"{zp}.to({wide})" if zp else None
    if n.op == K.DEQUANTIZE:  # (q - zp) exactly, rounded once to f32, times the scale
        q = f"({x}.to({wide}) - {z})" if z else f"{x}.to({wide})" if codes.is_int else x
        q = f"{q}.to(tl.float32)" if wide != "tl.float32" else q
        return [f"{var} = {_result(f'{q} * {scale}', n.dtype)}"]
    if codes.is_fp8:
        hi = float(quant_range(codes)[1])
        lines = [f"{var}_y = tl.math.div_rn({x}, {scale})",
                 f"{var}_y = {_clamp(f'{var}_y', -hi, hi, nan='keep')}",
                 f"{var}_q = {TO_FP8[codes]}({var}_y)"]
        if n.op == K.QUANTIZE:
            return lines + [f"{var} = {var}_q"]
        return lines + [f"{var} = {_result(f'{FP8_TO_F32[codes]}({var}_q) * {scale}', n.dtype)}"]
    lo, hi = n.attrs.qmin, n.attrs.qmax
    lines = [f"{var}_inv = tl.math.div_rn(1.0, {scale})",
             f"{var}_r = _rint(tl.fma({x}, {var}_inv, 0.0))  # x * inv rounded once, fused with nothing"]
    # the zero point is added after rounding, exactly (adding 0.0 makes a -0.0 +0.0, as torch's int)
    code = f"{var}_r.to({wide}) + {z or '0.0'}" if wide != "tl.float32" else f"{var}_r + {z or '0.0'}"
    if n.op == K.QUANTIZE:  # NaN: code 0, clamped into the range
        clamped = _clamp(f"{var}_c", float(lo), float(hi), nan="zero")
        return lines + [f"{var}_c = {code}", f"{var} = {clamped}.to({tl_dtype(codes)})"]
    return lines + [  # fake_quantize: NaN stays NaN
        f"{var}_c = {code}",
        f"{var}_c = {_clamp(f'{var}_c', float(lo), float(hi), nan='keep')}",
        f"{var} = {_result(f'({var}_c - {z}) * {scale}' if z else f'{var}_c * {scale}', n.dtype)}",
    ]


def _clamp(v: str, lo: float, hi: float, nan: str) -> str:
    """`v` clamped to [lo, hi]; a NaN kept (`nan='keep'`) or made 0 (`'zero'`, as a cast to integer)."""
    clamped = f"tl.minimum(tl.maximum({v}, {lo!r}), {hi!r})"
    return f"tl.where({v} != {v}, {v if nan == 'keep' else '0.0'}, {clamped})"


def _result(f32: str, dtype: DType) -> str:
    """An f32 result as the node's float dtype (bf16 stays f32 here: the emitter rounds it)."""
    return f32 if dtype in (DType.F32, DType.BF16) else cast(f"({f32})", DType.F32, dtype)
