"""Parameter initialization: one tensor per `graph.params` entry, drawn as its `Init` says.

Each parameter gets its own random stream, seeded by a stable hash of (seed, parameter name), so a
parameter's initial value depends only on the seed, its name, shape, dtype and initializer: adding,
removing or reordering other parameters never changes it.

>>> from axon.ir import DType, GraphBuilder, Init
>>> b = GraphBuilder(); _ = b.param("w", DType.F32, (64, 10), Init("kaiming"))
>>> w = init_params(b.build(), seed=0)["w"]; w.shape, w.dtype
(torch.Size([64, 10]), torch.float32)

Weights used as `x @ w` are stored [in, out], so a rank-2 shape gives fan_in = shape[0] and
fan_out = shape[1]. Rank 1 gives fan_in = fan_out = shape[0]; rank 0 gives 1. Higher ranks follow the
convolution layout [O, C/groups, *kernel]: fan_in = C/groups * prod(kernel), fan_out = O * prod(kernel).
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import torch

from .dtypes import DType
from .errors import IRTypeError, did_you_mean
from .graph import Graph, Node
from .op_source import check_scalar
from .shapes import format_shape, is_static

Sampler = Callable[[tuple[int, ...], dict, torch.Generator], torch.Tensor]  # float64 values


def init_params(graph: Graph, seed: int = 0) -> dict[str, torch.Tensor]:
    """A CPU tensor of the declared dtype and shape for every parameter of `graph`, by name."""
    return {name: init_param(node, seed) for name, node in graph.params.items()}


def init_param(node: Node, seed: int = 0) -> torch.Tensor:
    """The initial value of one PARAM node."""
    name, dtype, shape, init = node.attrs.name, node.attrs.dtype, node.attrs.shape, node.attrs.init
    if not is_static(shape):
        raise IRTypeError(f"parameter '{name}' has the symbolic shape {format_shape(shape)}; parameters "
                          f"need static sizes to be initialized")
    args = _check_args(name, init.kind, dict(init.args))
    if init.kind == "all_blocks":
        if len(shape) != 2 or shape[1] < 1 or dtype.is_float:
            raise IRTypeError(f"parameter '{name}': all_blocks() makes an integer block index of shape "
                              f"[columns, blocks + 1], not {dtype}{format_shape(shape)}")
        row = torch.cat([torch.tensor([shape[1] - 1]), torch.arange(shape[1] - 1)])
        return row.expand(shape[0], shape[1]).to(dtype.torch).contiguous()
    if init.kind in _CONSTANT:
        value = {"zeros": 0, "ones": 1}.get(init.kind, args.get("value"))
        value = _as_dtype_value(name, value, dtype)
        staged = torch.float64 if dtype.is_float else dtype.torch  # no torch.full for fp8
        return torch.full(shape, value, dtype=staged).to(dtype.torch)
    if not dtype.is_float:
        raise IRTypeError(f"parameter '{name}' is {dtype}: '{init.kind}' draws random floats, so it "
                          f"needs a floating-point dtype (use zeros, ones or const for {dtype})")
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=dtype.torch)
    fan_in, fan_out = default_fans(shape)
    args.setdefault("fan_in", fan_in)
    args.setdefault("fan_out", fan_out)
    for fan in ("fan_in", "fan_out"):
        if args[fan] <= 0:
            raise IRTypeError(f"parameter '{name}': {init.kind}({fan}={args[fan]}) needs a positive {fan}")
    return _SAMPLERS[init.kind](shape, args, _generator(seed, name)).to(dtype.torch)


def default_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of this shape; see the module docstring for the layouts."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    kernel = math.prod(shape[2:])
    return shape[1] * kernel, shape[0] * kernel


def _generator(seed: int, name: str) -> torch.Generator:
    """A generator seeded from a stable hash (not Python's salted `hash`) of the seed and the name."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _normal(shape, args, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float64) * args["std"] + args["mean"]


def _uniform(shape, low, high, gen):
    return torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low


def _xavier(shape, args, gen):  # Glorot uniform: variance 2 / (fan_in + fan_out)
    bound = math.sqrt(6.0 / (args["fan_in"] + args["fan_out"]))
    return _uniform(shape, -bound, bound, gen)


def _kaiming(shape, args, gen):  # He normal, for ReLU networks: variance 2 / fan_in
    return torch.randn(shape, generator=gen, dtype=torch.float64) * math.sqrt(2.0 / args["fan_in"])


def _orthogonal(shape, args, gen):
    """Orthonormal columns (or rows, if there are fewer rows than columns), times `gain`; a tensor of
    rank > 2 is treated as the matrix [shape[0], everything else]."""
    rows = shape[0] if shape else 1
    cols = math.prod(shape) // rows
    a = torch.randn((rows, cols), generator=gen, dtype=torch.float64)
    tall = a if rows >= cols else a.T
    q, r = torch.linalg.qr(tall)
    q = q * torch.sign(torch.diagonal(r))  # makes the result uniformly distributed (Mezzadri 2007)
    q = q if rows >= cols else q.T
    return (q * args["gain"]).reshape(shape)


# kind -> its arguments, in positional order (so a frontend can name `kaiming(64)`'s argument), with
# defaults (None: required, except `fan_in`/`fan_out`, which default from the shape).
INIT_KINDS: dict[str, dict[str, float | None]] = {
    "zeros": {}, "ones": {}, "const": {"value": None},
    "normal": {"mean": 0.0, "std": 1.0}, "uniform": {"low": -1.0, "high": 1.0},
    "xavier": {"fan_in": None, "fan_out": None}, "kaiming": {"fan_in": None},
    "orthogonal": {"gain": 1.0},
    "all_blocks": {},  # a block index listing every block (bsmatmul's, op_bsmatmul.py): the dense product
}
_CONSTANT = frozenset({"zeros", "ones", "const"})
_SAMPLERS: dict[str, Sampler] = {
    "normal": _normal, "uniform": lambda shape, args, gen: _uniform(shape, args["low"], args["high"], gen),
    "xavier": _xavier, "kaiming": _kaiming, "orthogonal": _orthogonal,
}
_FAN_ARGS = frozenset({"fan_in", "fan_out"})


def _check_args(name: str, kind: str, given: dict) -> dict:
    """The initializer's arguments with defaults filled in; an IRTypeError naming `name` if bad."""
    if kind not in INIT_KINDS:
        known = ", ".join(INIT_KINDS)
        raise IRTypeError(f"parameter '{name}': unknown initializer '{kind}' (known: {known})",
                          hint=did_you_mean(kind, INIT_KINDS))
    accepted = INIT_KINDS[kind]
    signature = f"{kind}({', '.join(accepted)})"
    for arg, value in given.items():
        if arg not in accepted:
            raise IRTypeError(f"parameter '{name}': {signature} has no argument '{arg}'",
                              hint=did_you_mean(arg, accepted))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise IRTypeError(f"parameter '{name}': {kind}({arg}={value!r}) needs a finite number")
    args = {**accepted, **given}
    missing = [a for a, v in args.items() if v is None and a not in _FAN_ARGS]
    if missing:
        raise IRTypeError(f"parameter '{name}': {signature} needs '{missing[0]}'")
    if args.get("std", 0) < 0 or args.get("low", 0) > args.get("high", 0):
        raise IRTypeError(f"parameter '{name}': {kind}"
                          f"({', '.join(f'{k}={v!r}' for k, v in given.items())}) is not a distribution")
    return {a: v for a, v in args.items() if v is not None}


def _as_dtype_value(name: str, value, dtype):
    """A constant initial value, checked to be a value of the parameter's dtype."""
    if dtype.is_int and float(value).is_integer():
        value = int(value)
    elif dtype == DType.BOOL and value in (0, 1):
        value = bool(value)
    try:
        check_scalar(value, dtype)
    except IRTypeError as e:
        raise IRTypeError(f"parameter '{name}': {e.message}") from e
    if dtype.is_float and math.isfinite(value) and abs(value) > torch.finfo(dtype.torch).max:
        # a literal may round to infinity; a parameter that starts at infinity is a mistake
        raise IRTypeError(f"parameter '{name}': initial value {value!r} overflows {dtype}")
    return value
