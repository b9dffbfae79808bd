"""Element types of Axon tensors and the rules for mixing them.

>>> promote(DType.I32, DType.F16)
<DType.F16: 'f16'>
>>> DType.BF16.itemsize
2
"""
from __future__ import annotations

import enum

import torch

from .errors import IRDTypeError, IRTypeError


class DType(enum.Enum):
    """One element type. The value is the name used in IR text and in `.axon` files."""

    F64 = "f64"
    F32 = "f32"
    F16 = "f16"
    BF16 = "bf16"
    F8E4M3 = "f8e4m3"
    F8E5M2 = "f8e5m2"
    I64 = "i64"
    I32 = "i32"
    I8 = "i8"
    U8 = "u8"
    BOOL = "bool"

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]

    @property
    def is_float(self) -> bool:
        return self in FLOATS

    @property
    def is_int(self) -> bool:
        return self in INTS

    @property
    def is_fp8(self) -> bool:
        return self in (DType.F8E4M3, DType.F8E5M2)

    @property
    def torch(self) -> torch.dtype:
        return _TORCH[self]

    @staticmethod
    def parse(name: str) -> DType:
        try:
            return DType(name)
        except ValueError:
            known = ", ".join(d.value for d in DType)
            raise IRTypeError(f"unknown dtype '{name}' (known: {known})") from None

    @staticmethod
    def from_torch(dt: torch.dtype) -> DType:
        for d, t in _TORCH.items():
            if t == dt:
                return d
        raise IRTypeError(f"torch dtype {dt} has no Axon equivalent")

    def __str__(self) -> str:
        return self.value


_ITEMSIZE = {
    DType.F64: 8, DType.F32: 4, DType.F16: 2, DType.BF16: 2, DType.F8E4M3: 1, DType.F8E5M2: 1,
    DType.I64: 8, DType.I32: 4, DType.I8: 1, DType.U8: 1, DType.BOOL: 1,
}
_TORCH = {
    DType.F64: torch.float64, DType.F32: torch.float32, DType.F16: torch.float16,
    DType.BF16: torch.bfloat16, DType.F8E4M3: torch.float8_e4m3fn, DType.F8E5M2: torch.float8_e5m2,
    DType.I64: torch.int64, DType.I32: torch.int32, DType.I8: torch.int8, DType.U8: torch.uint8,
    DType.BOOL: torch.bool,
}

FLOATS = frozenset({DType.F64, DType.F32, DType.F16, DType.BF16, DType.F8E4M3, DType.F8E5M2})
INTS = frozenset({DType.I64, DType.I32, DType.I8, DType.U8})

# Rank within a category: promotion picks the higher rank. Ties that are not the same type
# (f16 with bf16, i8 with u8) go to the smallest type that holds both.
_FLOAT_RANK = {DType.F8E5M2: 0, DType.F8E4M3: 0, DType.F16: 1, DType.BF16: 1, DType.F32: 2, DType.F64: 3}
_INT_RANK = {DType.U8: 0, DType.I8: 0, DType.I32: 1, DType.I64: 2}
_TIE = {
    frozenset({DType.F16, DType.BF16}): DType.F32,
    frozenset({DType.I8, DType.U8}): DType.I32,
}


def promote(a: DType, b: DType) -> DType:
    """The type both operands of a binary op are cast to: bool < ints < floats, wider wins.

    Two different fp8 formats do not mix implicitly: the user must say which precision they want.
    """
    if a == b:
        return a
    if a == DType.BOOL:
        return b
    if b == DType.BOOL:
        return a
    if a.is_float != b.is_float:
        return a if a.is_float else b
    if a.is_fp8 and b.is_fp8:
        raise IRDTypeError(f"cannot mix {a} and {b} implicitly; cast one of them explicitly")
    rank = _FLOAT_RANK if a.is_float else _INT_RANK
    if rank[a] == rank[b]:
        return _TIE[frozenset({a, b})]
    return a if rank[a] > rank[b] else b


def default_float() -> DType:
    return DType.F32


# The codes a quantized tensor of each dtype holds: the integer range, or for fp8 the format's finite
# range (e4m3fn has no infinity; e5m2's is not a code: quantization saturates to the finite range).
_QUANT_RANGE = {
    DType.I8: (-128, 127), DType.U8: (0, 255), DType.I32: (-2**31, 2**31 - 1),
    DType.F8E4M3: (-448, 448), DType.F8E5M2: (-57344, 57344),
}


def quant_range(dtype: DType) -> tuple[int, int]:
    """[lowest, highest] code of a quantized `dtype` (i8, u8, i32, f8e4m3, f8e5m2).

    >>> quant_range(DType.U8), quant_range(DType.F8E4M3)
    ((0, 255), (-448, 448))
    """
    if dtype not in _QUANT_RANGE:
        known = ", ".join(d.value for d in _QUANT_RANGE)
        raise IRDTypeError(f"{dtype} is not a quantized type (those are {known})")
    return _QUANT_RANGE[dtype]


def code_range(op: str, dtype: DType, bits=None, qmin=None, qmax=None) -> tuple[int, int]:
    """[qmin, qmax] of quantization op `op` to `dtype`: the dtype's range, that of `bits` (4: i8 [-8, 7],
    u8 [0, 15]), or as given. fp8 has its finite range only.

    >>> code_range("quantize", DType.I8, bits=4), code_range("quantize", DType.U8, qmax=100)
    ((-8, 7), (0, 100))
    """
    lo, hi = quant_range(dtype)
    if dtype.is_fp8:
        if bits is not None or (qmin, qmax) not in ((None, None), (lo, hi)):
            raise IRTypeError(f"'{op}' to {dtype} saturates to its finite range [{lo}, {hi}]; it takes no "
                              f"bits, qmin or qmax")
        return lo, hi
    if bits is not None:
        if qmin is not None or qmax is not None:
            raise IRTypeError(f"'{op}' takes bits or qmin/qmax, not both")
        width = 32 if dtype == DType.I32 else 8
        if not _is_int(bits) or not 2 <= bits <= width:
            raise IRTypeError(f"'{op}' bits must be an integer in [2, {width}] for {dtype}, got {bits!r}")
        lo, hi = (0, 2**bits - 1) if dtype == DType.U8 else (-2**(bits - 1), 2**(bits - 1) - 1)
    for name, v in (("qmin", qmin), ("qmax", qmax)):
        if v is not None and not _is_int(v):
            raise IRTypeError(f"'{op}' {name} must be an integer, got {v!r}")
    return (lo if qmin is None else int(qmin), hi if qmax is None else int(qmax))


def _is_int(v) -> bool:
    return not isinstance(v, bool) and hasattr(type(v), "__index__")
