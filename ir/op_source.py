"""Source ops: input, param, const (a scalar filled to a shape), tensor (a literal), iota, rand.

`rand` is Philox4x32-10 exactly as Triton's `tl.philox` computes it, so a generated kernel that calls
`tl.philox(seed, index, stream, 0, 0)` and `tl.uint_to_uniform_float` reproduces the reference evaluator
bit for bit: element `i` (row-major) of a `rand` node with stream `s` uses counter (i, s, 0, 0) and key
(low and high 32 bits of the seed). An optional second operand, an i64 scalar `offset`, shifts the counter to
(i + offset, s, 0, 0): a data-parallel rank holding rows [r, r + n) of a batch draws with offset r * row size
exactly the numbers one process draws for those rows of the whole batch (`passes/data_parallel.py`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .dtypes import DType
from .errors import IRDTypeError, IRShapeError, IRTypeError
from .ops import (ConstAttrs, InputAttrs, IotaAttrs, OpKind, ParamAttrs, RandAttrs,
                  TensorAttrs, no_grad, register, register_grad)
from .shapes import TensorType, concrete, format_shape, is_static

K = OpKind


def _check_shape(shape) -> None:
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise IRShapeError(f"negative size in shape {format_shape(shape)}")


def check_scalar(value, dtype: DType) -> None:
    """A literal must fit the dtype it is given: bools for bool, integers for integer types."""
    if isinstance(value, bool):
        if dtype != DType.BOOL:
            raise IRDTypeError(f"constant {value!r} is a bool, so it cannot be {dtype}")
        return
    if not isinstance(value, (int, float)):
        raise IRTypeError(f"constant {value!r} is not a number")
    if dtype == DType.BOOL:
        raise IRDTypeError(f"constant {value!r} is not a bool")
    if dtype.is_int:
        if not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise IRDTypeError(f"constant {value!r} is not an integer, so it cannot be {dtype}")
        info = torch.iinfo(dtype.torch)
        if not info.min <= int(value) <= info.max:
            raise IRDTypeError(f"constant {value!r} does not fit in {dtype}")
    elif dtype == DType.F8E4M3 and math.isfinite(value) and abs(value) > torch.finfo(dtype.torch).max:
        # Other float types round a too-large literal to infinity (a -1e9 attention mask in f16 is
        # -inf, as in PyTorch); e4m3 has no infinity to round to.
        raise IRDTypeError(f"constant {value!r} overflows {dtype}, which has no infinity")


def _infer_signature(attrs, ts):  # input, param: the type is the declaration
    _check_shape(attrs.shape)
    return TensorType(attrs.dtype, tuple(attrs.shape))


def _infer_const(attrs: ConstAttrs, ts):
    _check_shape(attrs.shape)
    check_scalar(attrs.value, attrs.dtype)
    return TensorType(attrs.dtype, tuple(attrs.shape))


def _infer_tensor(attrs: TensorAttrs, ts):
    _check_shape(attrs.shape)
    if not is_static(attrs.shape):
        raise IRShapeError(f"a literal tensor needs a static shape, got {format_shape(attrs.shape)}")
    if len(attrs.data) != math.prod(attrs.shape):
        raise IRShapeError(f"a literal tensor of shape {format_shape(attrs.shape)} needs "
                           f"{math.prod(attrs.shape)} values, got {len(attrs.data)}")
    for v in attrs.data:
        check_scalar(v, attrs.dtype)
    return TensorType(attrs.dtype, tuple(attrs.shape))


def _infer_iota(attrs: IotaAttrs, ts):
    _check_shape(attrs.shape)
    if not 0 <= attrs.axis < len(attrs.shape):
        raise IRShapeError(f"'iota' axis {attrs.axis} out of range for shape {format_shape(attrs.shape)}")
    if attrs.dtype == DType.BOOL:
        raise IRDTypeError("'iota' counts, so it needs a numeric dtype, not bool")
    return TensorType(attrs.dtype, tuple(attrs.shape))


def _infer_rand(attrs: RandAttrs, ts):
    if len(ts) not in (1, 2):
        raise IRTypeError(f"'rand' takes a seed and an optional offset, got {len(ts)} operands")
    seed = ts[0]
    _check_shape(attrs.shape)
    if len(ts) == 2 and (ts[1].dtype != DType.I64 or ts[1].shape != ()):
        raise IRDTypeError(f"the offset of 'rand' must be an i64 scalar, got {ts[1]}")
    if seed.dtype != DType.I64:
        raise IRDTypeError(f"the seed of 'rand' must be an i64 scalar, got {seed}")
    if seed.shape != ():
        raise IRShapeError(f"the seed of 'rand' must be an i64 scalar, got {seed}")
    if not attrs.dtype.is_float:
        raise IRDTypeError(f"'rand' draws floats; got dtype {attrs.dtype}")
    if not 0 <= attrs.stream < 2**32:
        raise IRTypeError(f"'rand' stream {attrs.stream} must fit in 32 bits")
    return TensorType(attrs.dtype, tuple(attrs.shape))


def _no_ref(attrs, xs, ctx):
    raise AssertionError("inputs and parameters are bound by the evaluator, never computed")


def _ref_const(attrs: ConstAttrs, xs, ctx):
    return ctx.literal(attrs.value, attrs.dtype).expand(concrete(attrs.shape, ctx.env)).contiguous()


def _ref_tensor(attrs: TensorAttrs, xs, ctx):
    return ctx.literal(attrs.data, attrs.dtype).reshape(attrs.shape)


def _ref_iota(attrs: IotaAttrs, xs, ctx):
    shape = concrete(attrs.shape, ctx.env)
    view = [1] * len(shape)
    view[attrs.axis] = shape[attrs.axis]
    ramp = torch.arange(shape[attrs.axis], dtype=torch.int64).reshape(view).expand(shape)
    return ctx.cast(ramp, attrs.dtype)  # an f8 iota past 16 holds what f8 can: round even in precise mode


# --- Philox4x32-10, as triton.language.random computes it -------------------------------------------
_KEY_A, _KEY_B = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
_ROUND_A, _ROUND_B = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_LOW32 = np.uint64(0xFFFFFFFF)


def philox(seed: int, c0: np.ndarray, c1: int, c2: int = 0, c3: int = 0, rounds: int = 10):
    """The four uint32 outputs of Philox4x32 for counters (c0, c1, c2, c3) and a 64-bit seed."""
    seed &= (1 << 64) - 1
    k0, k1 = np.uint32(seed & 0xFFFFFFFF), np.uint32(seed >> 32)
    c0 = c0.astype(np.uint32)
    c1, c2, c3 = (np.full_like(c0, v & 0xFFFFFFFF) for v in (c1, c2, c3))
    with np.errstate(over="ignore"):
        for _ in range(rounds):
            p0 = _ROUND_A * c0.astype(np.uint64)  # products of two 32-bit values fit in 64 bits
            p2 = _ROUND_B * c2.astype(np.uint64)
            c0, c1, c2, c3 = (
                (p2 >> np.uint64(32)).astype(np.uint32) ^ c1 ^ k0,
                (p2 & _LOW32).astype(np.uint32),
                (p0 >> np.uint64(32)).astype(np.uint32) ^ c3 ^ k1,
                (p0 & _LOW32).astype(np.uint32),
            )
            k0, k1 = k0 + _KEY_A, k1 + _KEY_B
    return c0, c1, c2, c3


def uniform_from_bits(bits: np.ndarray) -> np.ndarray:
    """uint32 -> float32 in [0, 1), as `tl.uint_to_uniform_float`."""
    x = bits.view(np.int32)
    x = np.where(x < 0, ~x, x)
    return x.astype(np.float32) * np.float32(4.6566127342e-10)


def _ref_rand(attrs: RandAttrs, xs, ctx):
    shape = concrete(attrs.shape, ctx.env)
    index = np.arange(math.prod(shape), dtype=np.uint64)
    if len(xs) == 2:  # the counter wraps at 2**32, as the kernel's uint32 cast
        index = index + np.uint64(int(xs[1]) % 2**32)
    index = (index & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    bits, _, _, _ = philox(int(xs[0]), index, attrs.stream)
    out = torch.from_numpy(uniform_from_bits(bits)).reshape(shape)
    return ctx.cast(out, attrs.dtype)


register(K.INPUT, InputAttrs, 0, _infer_signature, _no_ref)
register(K.PARAM, ParamAttrs, 0, _infer_signature, _no_ref)
register(K.CONST, ConstAttrs, 0, _infer_const, _ref_const)
register(K.TENSOR, TensorAttrs, 0, _infer_tensor, _ref_tensor)
register(K.IOTA, IotaAttrs, 0, _infer_iota, _ref_iota)
register(K.RAND, RandAttrs, None, _infer_rand, _ref_rand)
# Sources end the backward sweep: inputs and parameters collect their gradient, the rest have no
# operands (or, for rand, only an integer seed).
for _k in (K.INPUT, K.PARAM, K.CONST, K.TENSOR, K.IOTA, K.RAND):
    register_grad(_k, no_grad)

