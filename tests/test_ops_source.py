"""Source ops: const, tensor, iota, rand. RAND must reproduce Triton's `tl.philox` and
`tl.uint_to_uniform_float` bit for bit, checked under the Triton interpreter on CPU tensors."""
import os

import numpy as np
import pytest
import torch

from axon.ir import DType, EvalError, GraphBuilder, IRTypeError, Sym, TensorType, evaluate
from axon.ir.op_source import philox, uniform_from_bits
from opcheck import check

# The reference kernel runs under Triton's interpreter on CPU tensors, on any machine. Triton decides
# that when a kernel is decorated, so the setting is restored after `_philox_kernel` below, leaving other
# test modules' kernels to compile for the GPU where there is one.
_INTERPRET = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

D = DType
BATCH = Sym.of("batch")


@pytest.mark.parametrize("value,dtype", [(2.5, D.F32), (-1e-3, D.F64), (0.1, D.F16), (3.0, D.BF16),
                                         (0.3, D.F8E4M3), (-7, D.I32), (255, D.U8), (True, D.BOOL),
                                         (-128, D.I8), (2**40, D.I64)], ids=str)
def test_const(value, dtype):
    want = torch.full((3, 37, 53), value, dtype=dtype.torch)
    check(lambda b: b.const(value, dtype, (3, 37, 53)), lambda: want)


def test_const_with_symbolic_shape_takes_its_size_from_an_input(gen):
    x = torch.randn(5, 3, generator=gen)
    check(lambda b, x: b.add(x, b.const(1.5, D.F32, (BATCH, 3))), lambda x: x + 1.5, x,
          shapes=[(BATCH, 3)], out_type=TensorType(D.F32, (BATCH, 3)))


@pytest.mark.parametrize("dtype", [D.F32, D.F64, D.F16, D.I32, D.I8, D.BOOL, D.F8E5M2], ids=str)
def test_tensor(dtype, gen):
    data = torch.randn(7, 13, generator=gen) * 5
    data = data.round() if not dtype.is_float else data
    want = data.to(dtype.torch)
    check(lambda b: b.tensor(data.numpy(), dtype), lambda: want)
    check(lambda b: b.tensor(want.to(torch.float64).tolist(), dtype, (13, 7)), lambda: want.reshape(13, 7))


@pytest.mark.parametrize("dtype", [D.I64, D.I32, D.F32, D.F16], ids=str)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_iota(axis, dtype):
    shape = (3, 37, 53)
    view = [1, 1, 1]
    view[axis] = shape[axis]
    want = torch.arange(shape[axis]).reshape(view).expand(shape).to(dtype.torch)
    check(lambda b: b.iota(shape, axis, dtype), lambda: want)


def test_iota_symbolic(gen):
    x = torch.zeros(6, 5, dtype=torch.int64)
    check(lambda b, x: b.add(x, b.iota((BATCH, 5), 0)), lambda x: torch.arange(6)[:, None].expand(6, 5), x,
          shapes=[(BATCH, 5)], out_type=TensorType(D.I64, (BATCH, 5)))


# --- rand ------------------------------------------------------------------------------------------
@triton.jit
def _philox_kernel(out_ptr, bits_ptr, seed, stream, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    bits, _, _, _ = tl.philox(seed, offs, stream, 0, 0)
    tl.store(bits_ptr + offs, bits.to(tl.int32, bitcast=True), mask=mask)
    tl.store(out_ptr + offs, tl.uint_to_uniform_float(bits), mask=mask)


if _INTERPRET is None:
    del os.environ["TRITON_INTERPRET"]
else:
    os.environ["TRITON_INTERPRET"] = _INTERPRET


def _triton_uniform(seed: int, stream: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    out, bits = torch.empty(n, dtype=torch.float32), torch.empty(n, dtype=torch.int32)
    _philox_kernel[(triton.cdiv(n, 128),)](out, bits, seed, stream, n, BLOCK=128)
    return out.numpy(), bits.numpy().view(np.uint32)


SEEDS = [0, 1234, 2**32 + 7, 2**62 + 12345, -5, -(2**40)]


@pytest.mark.parametrize("stream", [0, 3])
@pytest.mark.parametrize("seed", SEEDS)
def test_philox_matches_triton(seed, stream):
    n = 1000
    want, want_bits = _triton_uniform(seed, stream, n)
    bits, _, _, _ = philox(seed, np.arange(n, dtype=np.uint32), stream)
    np.testing.assert_array_equal(bits, want_bits)
    np.testing.assert_array_equal(uniform_from_bits(bits), want)


def _rand_graph(shape, stream=0, dtype=D.F32):
    b = GraphBuilder()
    seed = b.input("seed", D.I64, ())
    b.output("r", b.rand(seed, shape, dtype, stream))
    return b.build()


@pytest.mark.parametrize("seed", SEEDS)
def test_rand_node_matches_triton(seed):
    g = _rand_graph((37, 53))
    got = evaluate(g, {"seed": torch.tensor(seed)})["r"]
    want, _ = _triton_uniform(seed, 0, 37 * 53)
    assert g.outputs["r"].type == TensorType(D.F32, (37, 53))
    np.testing.assert_array_equal(got.numpy().reshape(-1), want)
    assert got.min() >= 0 and got.max() < 1
    assert abs(got.mean().item() - 0.5) < 0.02  # 1961 draws: std of the mean is 0.0065
    assert torch.equal(evaluate(g, {"seed": torch.tensor(seed)})["r"], got)  # reproducible


def test_rand_streams_and_seeds_differ_and_dtypes_round():
    g0, g1 = _rand_graph((37, 53), 0), _rand_graph((37, 53), 1)
    r0, r1 = (evaluate(g, {"seed": torch.tensor(7)})["r"] for g in (g0, g1))
    r2 = evaluate(g0, {"seed": torch.tensor(8)})["r"]
    assert (r0 != r1).float().mean() > 0.99 and (r0 != r2).float().mean() > 0.99
    half = evaluate(_rand_graph((37, 53), 0, D.F16), {"seed": torch.tensor(7)})["r"]
    assert half.dtype == torch.float16 and torch.equal(half, r0.half())
    sym = _rand_graph((BATCH, 3))
    with pytest.raises(EvalError, match="batch"):
        evaluate(sym, {"seed": torch.tensor(7)})  # nothing binds `batch`


def test_rand_seed_must_be_an_i64_scalar():
    b = GraphBuilder()
    with pytest.raises(IRTypeError, match="seed of 'rand' must be an i64 scalar"):
        b.rand(b.input("s", D.I32, ()), (3,))
    with pytest.raises(IRTypeError, match="'rand' draws floats"):
        b.rand(b.input("t", D.I64, ()), (3,), D.I32)
