"""The reference evaluator: runs any graph on the CPU with PyTorch. It is the oracle that every pass
and every generated kernel is checked against, so it is written for clarity, not speed.

>>> from axon.ir import GraphBuilder, DType, Sym
>>> b = GraphBuilder(); x = b.input("x", DType.F32, (Sym.of("n"),)); _ = b.output("y", b.mul(x, 2.0))
>>> evaluate(b.build(), {"x": torch.tensor([1.0, 2.5])})["y"]
tensor([2., 5.])

Two modes: by default each op computes in its own dtype (fp8 through f32, as no CPU kernel takes fp8);
with `precise=True` every floating-point value is held in float64 and only a `cast` rounds (to the
cast's type, then back), which gives the "infinitely precise" answer to measure kernels against.
Literals (`const`, `tensor`) hold the value their dtype stores, as inputs and parameters do.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from .dtypes import DType
from .errors import AxonError, EvalError
from .graph import Graph, Node
from .ops import OPS, OpKind
from .shapes import Sym, TensorType, concrete, format_shape

K = OpKind


@dataclass
class EvalContext:
    """What an op's reference rule may ask of the evaluation: symbol values and the number model."""

    env: dict[str, int] = field(default_factory=dict)
    precise: bool = False
    out: TensorType | None = None  # the result type of the node being evaluated

    def compute_dtype(self, dtype: DType) -> torch.dtype:
        """The torch dtype a value of `dtype` is held in during evaluation."""
        if dtype.is_float and (self.precise or dtype.is_fp8):
            return torch.float64 if self.precise else torch.float32
        return dtype.torch

    def cast(self, x: torch.Tensor, dtype: DType) -> torch.Tensor:
        """An explicit conversion: always rounds to `dtype`, then holds the value as usual.

        Float to integer truncates toward zero, NaN becomes 0, and values out of range saturate to the
        type's limits (C leaves all three undefined; generated kernels must do the same as this).
        """
        if x.is_floating_point() and dtype.is_int:
            info = torch.iinfo(dtype.torch)
            top = float(info.max) if info.bits < 64 else float(2**63 - 1024)  # the last f64 below 2**63
            x = x.double().trunc().nan_to_num(0.0, posinf=top, neginf=float(info.min))
            x = x.clamp(float(info.min), top)
        return x.to(dtype.torch).to(self.compute_dtype(dtype))

    def literal(self, values, dtype: DType) -> torch.Tensor:
        """A literal holds its value as `dtype` stores it (0.1 as an f16 is 0.0999755859375), even when
        `precise` holds everything in float64: rounding a literal is no error of the computation."""
        staged = torch.tensor(values, dtype=torch.float64 if dtype.is_float else dtype.torch)
        return self.cast(staged, dtype)

    def hold(self, x: torch.Tensor, dtype: DType) -> torch.Tensor:
        """The value an op of result type `dtype` leaves: rounded to `dtype` unless `precise`."""
        if self.precise and dtype.is_float:
            return x.to(torch.float64)
        return x.to(dtype.torch).to(self.compute_dtype(dtype))


def bind_symbols(graph: Graph, inputs: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Values of the symbolic dimensions, read off the inputs' shapes (checked for consistency)."""
    env: dict[str, int] = {}
    where: dict[str, str] = {}
    pending: list[tuple[str, int, Sym, int]] = []
    for name, node in graph.inputs.items():
        shape = tuple(inputs[name].shape)
        if len(shape) != len(node.shape):
            raise EvalError(f"input '{name}' should have shape {format_shape(node.shape)} (rank "
                            f"{len(node.shape)}), got {list(shape)}")
        for axis, (d, actual) in enumerate(zip(node.shape, shape)):
            if isinstance(d, Sym) and len(d.factors) == 1:
                if actual % d.coeff:
                    raise EvalError(f"input '{name}' axis {axis} is {d}, which {actual} is not")
                value = actual // d.coeff
                sym = d.factors[0]
                if sym in env and env[sym] != value:
                    raise EvalError(f"dimension '{sym}' is {env[sym]} in {where[sym]} but {value} in "
                                    f"input '{name}' (axis {axis})")
                env.setdefault(sym, value)
                where.setdefault(sym, f"input '{name}' (axis {axis})")
            elif isinstance(d, Sym):
                pending.append((name, axis, d, actual))
            elif d != actual:
                raise EvalError(f"input '{name}' should have shape {format_shape(node.shape)}, got "
                                f"{list(shape)} (axis {axis})")
    for name, axis, d, actual in pending:
        if concrete((d,), env)[0] != actual:
            raise EvalError(f"input '{name}' axis {axis} should be {d} = {concrete((d,), env)[0]}, "
                            f"got {actual}")
    return env


def check_names(graph: Graph, inputs: Mapping[str, object], params: Mapping[str, object]) -> None:
    """Every input and parameter given a value, and no unknown input named (EvalError otherwise)."""
    missing = [n for n in graph.inputs if n not in inputs]
    missing += [n for n in graph.params if n not in params]
    if missing:
        raise EvalError(f"no value given for {', '.join(repr(m) for m in missing)}")
    unknown = [n for n in inputs if n not in graph.inputs]
    if unknown:
        raise EvalError(f"unknown input(s) {', '.join(repr(u) for u in unknown)}; the graph takes "
                        f"{', '.join(graph.inputs) or 'no inputs'}")


def _as_tensor(value, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (np.ndarray, list, tuple, int, float, bool, np.generic)):
        try:
            arr = np.asarray(value)
        except ValueError as e:
            raise EvalError(f"{what} is not a rectangular array: {e}") from None
        if arr.dtype.kind not in "biuf":
            raise EvalError(f"{what} must hold numbers or bools, got {arr.dtype} data")
        return torch.as_tensor(arr)
    raise EvalError(f"{what} must be a tensor or an array, got {type(value).__name__}")


def _check_bound(node: Node, value: torch.Tensor, what: str, env: Mapping[str, int]) -> None:
    if value.dtype != node.dtype.torch:  # compared as torch dtypes: torch has some Axon lacks (int16)
        got = next((d.value for d in DType if d.torch == value.dtype), str(value.dtype))
        raise EvalError(f"{what} '{node.name}' should be {node.dtype}, got {got}")
    want = concrete(node.shape, env)
    if tuple(value.shape) != want:
        raise EvalError(f"{what} '{node.name}' should have shape {list(want)}, got {list(value.shape)}")


def evaluate(graph: Graph, inputs: Mapping[str, object], params: Mapping[str, object] | None = None,
             *, precise: bool = False) -> dict[str, torch.Tensor]:
    """Run `graph` on named inputs and parameters; returns the named outputs (CPU tensors).

    Outputs have their nodes' dtypes, or float64 for floating outputs when `precise`.
    """
    params = params or {}
    check_names(graph, inputs, params)
    bound = {n: _as_tensor(v, f"input '{n}'") for n, v in inputs.items()}
    bound_params = {n: _as_tensor(params[n], f"parameter '{n}'") for n in graph.params}
    ctx = EvalContext(bind_symbols(graph, bound), precise)

    # Free each value after its last use, so large graphs evaluate in bounded memory.
    last_use: dict[Node, int] = {}
    for i, n in enumerate(graph.nodes):
        for src in n.inputs:
            last_use[src] = i
    keep = set(graph.outputs.values())
    values: dict[Node, torch.Tensor] = {}
    for i, node in enumerate(graph.nodes):
        if node.op in (K.INPUT, K.PARAM):
            what = "input" if node.op == K.INPUT else "parameter"
            value = (bound if node.op == K.INPUT else bound_params)[node.name]
            _check_bound(node, value, what, ctx.env)
            out = ctx.hold(value, node.dtype)
        else:
            args = [values[src] for src in node.inputs]
            try:
                out = run_op(node.op, node.attrs, node.type, args, ctx)
            except AxonError as e:
                raise EvalError(f"evaluating %{i} = {node.op}{_signature(node)}: {e.message}") from e
            except (RuntimeError, ValueError, IndexError) as e:  # torch refusing what the rules allowed
                raise EvalError(f"evaluating %{i} = {node.op}{_signature(node)} failed: {e}") from e
        values[node] = out
        for src in set(node.inputs):  # a set: x * x must free x once
            if last_use.get(src) == i and src not in keep:
                del values[src]
    result = {}
    for name, node in graph.outputs.items():
        out = values[node]
        result[name] = out if precise and node.dtype.is_float else out.to(node.dtype.torch)
    return result


def run_op(op: OpKind, attrs, out_type: TensorType, args: list[torch.Tensor],
           ctx: EvalContext) -> torch.Tensor:
    """One op's reference rule on evaluated operands, its result held as `out_type.dtype` holds it."""
    ctx.out = out_type
    return ctx.hold(OPS[op].ref(attrs, args, ctx), out_type.dtype)


def _signature(node: Node) -> str:
    return "(" + ", ".join(str(i.type) for i in node.inputs) + f") -> {node.type}"
