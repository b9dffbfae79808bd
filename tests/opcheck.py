"""The one helper every op test goes through: build a graph with `GraphBuilder`, check the inferred type,
evaluate it (default and `precise=True`) and compare against a torch expression written in the test.

>>> check(lambda b, x: b.exp(x), torch.exp, torch.randn(37, 53))
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from axon.ir import DType, GraphBuilder, Node, TensorType, evaluate, verify
from numerics import TOLERANCE, assert_close

Build = Callable[..., Node]  # (builder, *input nodes) -> the node under test
Ref = Callable[..., torch.Tensor]  # (*input tensors) -> the expected value


def check(build: Build, ref: Ref, *args: torch.Tensor, shapes: Sequence[tuple] | None = None,
          out_type: TensorType | None = None, tol: float | None = None, precise: bool = True,
          ref64: Ref | None = None) -> None:
    """Check one case of one op.

    `args` become inputs x0, x1, ... declared with their own dtype and shape, or with `shapes[i]`
    (which may hold `Sym` dims). The node's type must equal `out_type`, or by default the dtype and
    shape of `ref(*args)`. Values must match `ref(*args)` within the tolerance of the result dtype; with
    `precise=True` they must also match `ref64` (default `ref`) applied to float64 copies of the floating
    inputs, as the evaluator's precise mode computes in float64 and rounds only at casts.
    """
    b = GraphBuilder("case")
    shapes = shapes or [tuple(a.shape) for a in args]
    xs = [b.input(f"x{i}", DType.from_torch(a.dtype), s) for i, (a, s) in enumerate(zip(args, shapes))]
    node = build(b, *xs)
    b.output("out", node)
    graph = b.build()
    verify(graph)
    feeds = {f"x{i}": a for i, a in enumerate(args)}

    want = ref(*args)
    expected = out_type or TensorType(DType.from_torch(want.dtype), tuple(want.shape))
    assert node.type == expected, f"inferred {node.type}, expected {expected}"

    got = evaluate(graph, feeds)["out"]
    assert got.dtype == want.dtype, f"evaluated to {got.dtype}, reference is {want.dtype}"
    assert_close(got, want, tol=_tol(want.dtype, tol))

    if precise:
        got64 = evaluate(graph, feeds, precise=True)["out"]
        want64 = (ref64 or ref)(*(a.double() if a.is_floating_point() else a for a in args))
        if want64.is_floating_point():
            assert got64.dtype == torch.float64, f"precise mode returned {got64.dtype}"
            want64 = want64.double()
        assert_close(got64, want64, tol=_tol(torch.float64, tol), what="precise output")


def _tol(dtype: torch.dtype, tol: float | None) -> float:
    if tol is not None:
        return tol
    return TOLERANCE.get(dtype, 0.0)


def rand(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, low: float = -3.0,
         high: float = 3.0) -> torch.Tensor:
    """Uniform values in [low, high) of `dtype` (integers are drawn in [low, high) too)."""
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) < 0.5
    if not dtype.is_floating_point:
        return torch.randint(int(low), int(high), shape, generator=gen).to(dtype)
    x = torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low
    return x.to(dtype)
