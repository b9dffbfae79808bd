"""Parameter initializers: distributions, orthogonality, determinism, independence, dtypes, errors."""
import math

import pytest
import torch

from axon.ir import DType, GraphBuilder, Init, IRTypeError, Sym
from axon.ir.init import default_fans, init_params

D = DType


def _graph(*params):
    """A graph declaring `params`, each (name, dtype, shape, Init)."""
    b = GraphBuilder()
    for name, dtype, shape, init in params:
        b.param(name, dtype, shape, init)
    return b.build()


def _init(shape, kind, dtype=D.F32, seed=0, **args):
    return init_params(_graph(("w", dtype, shape, Init(kind, tuple(args.items())))), seed)["w"]


# (shape, Init, expected mean, expected std): 40k-120k draws, so the sample mean is within ~0.01 std
STATS = [
    ((211, 307), Init("normal"), 0.0, 1.0),
    ((211, 307), Init("normal", (("mean", 2.0), ("std", 0.5))), 2.0, 0.5),
    ((211, 307), Init("uniform"), 0.0, 2 / math.sqrt(12)),
    ((211, 307), Init("uniform", (("low", 3.0), ("high", 5.0))), 4.0, 2 / math.sqrt(12)),
    ((211, 307), Init("xavier"), 0.0, math.sqrt(2 / (211 + 307))),
    ((211, 307), Init("xavier", (("fan_in", 10.0), ("fan_out", 30.0))), 0.0, math.sqrt(2 / 40)),
    ((211, 307), Init("kaiming"), 0.0, math.sqrt(2 / 211)),
    ((211, 307), Init("kaiming", (("fan_in", 8.0),)), 0.0, 0.5),
    ((64, 32, 5, 3), Init("kaiming"), 0.0, math.sqrt(2 / (32 * 15))),   # conv: fan_in = C/g * KH * KW
    ((64, 32, 5, 3), Init("xavier"), 0.0, math.sqrt(2 / (32 * 15 + 64 * 15))),
    ((40001,), Init("kaiming"), 0.0, math.sqrt(2 / 40001)),
]


@pytest.mark.parametrize("shape,init,mean,std", STATS, ids=[str(s[1]) + str(s[0]) for s in STATS])
def test_statistics(shape, init, mean, std):
    w = init_params(_graph(("w", D.F32, shape, init)))["w"]
    assert w.shape == shape and w.dtype == torch.float32
    n = w.numel()
    assert abs(w.double().mean().item() - mean) < 5 * std / math.sqrt(n)
    assert abs(w.double().std().item() / std - 1) < 0.02
    if init.kind == "uniform":
        lo, hi = init.arg("low", -1.0), init.arg("high", 1.0)
        assert w.min() >= lo and w.max() < hi
    if init.kind == "xavier":
        bound = math.sqrt(3) * std
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound


@pytest.mark.parametrize("kind,args,value", [("zeros", {}, 0.0), ("ones", {}, 1.0),
                                             ("const", {"value": -0.25}, -0.25)])
@pytest.mark.parametrize("dtype", [D.F32, D.BF16, D.I32, D.F8E4M3], ids=str)
def test_constants(kind, args, value, dtype):
    if not dtype.is_float and not float(value).is_integer():
        value, args = 7, {"value": 7.0}
    w = _init((37, 53), kind, dtype, **args)
    assert w.dtype == dtype.torch and torch.equal(w, torch.full((37, 53), value).to(dtype.torch))


@pytest.mark.parametrize("shape", [(53, 37), (37, 53), (64, 64), (16, 3, 3, 3)], ids=str)
@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_orthogonal(shape, gain):
    w = _init(shape, "orthogonal", D.F64, gain=gain)
    m = w.reshape(shape[0], -1)
    small = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T  # the smaller Gram matrix is gain^2 I
    torch.testing.assert_close(small, gain**2 * torch.eye(small.shape[0], dtype=torch.float64))


def test_orthogonal_f32_within_rounding():
    w = _init((211, 97), "orthogonal").double()
    torch.testing.assert_close(w.T @ w, torch.eye(97, dtype=torch.float64), atol=1e-5, rtol=0)


def test_deterministic_per_seed_and_name():
    a = _init((37, 53), "normal", seed=3)
    assert torch.equal(a, _init((37, 53), "normal", seed=3))
    assert not torch.equal(a, _init((37, 53), "normal", seed=4))
    g = _graph(("w1", D.F32, (37, 53), Init("normal")), ("w2", D.F32, (37, 53), Init("normal")))
    p = init_params(g, seed=3)
    assert not torch.equal(p["w1"], p["w2"])  # same shape and init, different names: different values


def test_adding_or_reordering_params_changes_no_other():
    w = ("w", D.F32, (37, 53), Init("xavier"))
    b = ("b", D.F32, (53,), Init("normal"))
    extra = ("embed", D.F32, (97, 29), Init("normal"))
    alone = init_params(_graph(w, b), seed=5)
    more = init_params(_graph(extra, b, w), seed=5)
    assert torch.equal(alone["w"], more["w"]) and torch.equal(alone["b"], more["b"])
    assert list(more) == ["embed", "b", "w"]


@pytest.mark.parametrize("dtype", [D.F16, D.BF16, D.F64, D.F8E5M2], ids=str)
@pytest.mark.parametrize("kind", ["normal", "kaiming", "xavier", "orthogonal", "uniform"])
def test_low_precision_params_are_the_rounded_f64_draws(kind, dtype):
    w = _init((61, 47), kind, dtype)
    assert w.dtype == dtype.torch and w.shape == (61, 47)
    assert torch.equal(w, _init((61, 47), kind, D.F64).to(dtype.torch))


def test_default_fans():
    assert default_fans((64, 10)) == (64, 10)                 # [in, out], used as x @ w
    assert default_fans((7,)) == (7, 7)
    assert default_fans(()) == (1, 1)
    assert default_fans((16, 3, 5, 3)) == (45, 240)           # [O, C/g, KH, KW]


def test_empty_and_scalar_params():
    assert _init((0, 5), "kaiming").shape == (0, 5)
    assert _init((), "normal").shape == ()


BAD = [  # (dtype, shape, init, message fragment); each names the parameter 'w'
    (D.F32, (3, 4), Init("glorot"), "unknown initializer 'glorot' (known: zeros, ones, const, normal"),
    (D.F32, (3, 4), Init("normal", (("stdev", 1.0),)), "normal(mean, std) has no argument 'stdev'"),
    (D.F32, (3, 4), Init("normal", (("std", -1.0),)), "is not a distribution"),
    (D.F32, (3, 4), Init("uniform", (("low", 1.0), ("high", 0.0))), "is not a distribution"),
    (D.F32, (3, 4), Init("kaiming", (("fan_in", 0.0),)), "needs a positive fan_in"),
    (D.F32, (3, 4), Init("normal", (("std", float("nan")),)), "needs a finite number"),
    (D.F32, (3, 4), Init("const"), "const(value) needs 'value'"),
    (D.I32, (3, 4), Init("const", (("value", 0.5),)), "0.5 is not an integer"),
    (D.U8, (3, 4), Init("const", (("value", 300.0),)), "300 does not fit in u8"),
    (D.F16, (3, 4), Init("const", (("value", 1e6),)), "overflows f16"),
    (D.I32, (3, 4), Init("normal"), "needs a floating-point dtype"),
    (D.F32, (Sym.of("batch"), 4), Init("zeros"), "symbolic shape [batch, 4]"),
]


@pytest.mark.parametrize("dtype,shape,init,fragment", BAD, ids=[b[3] for b in BAD])
def test_bad_initializers_name_the_parameter(dtype, shape, init, fragment):
    with pytest.raises(IRTypeError) as err:
        init_params(_graph(("w", dtype, shape, init)))
    assert "parameter 'w'" in str(err.value) and fragment in str(err.value), str(err.value)


def test_unknown_kind_suggests_the_closest():
    with pytest.raises(IRTypeError) as err:
        init_params(_graph(("w", D.F32, (3,), Init("kaimin"))))
    assert err.value.hint == "did you mean 'kaiming'?"
