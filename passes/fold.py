"""Constant folding: a value computed only from literals is computed once, here, by the reference
evaluator, and becomes a literal.

    %0 = const(value=2.0) : f32[]
    %1 = iota(axis=0) : f32[4]          fold      %0 = const(value=4.0) : f32[4]
    %2 = expand(%0) : f32[4]            ---->     %1 = tensor(data=[0.0, 2.0, 4.0, 6.0]) : f32[4]
    %3 = add(%2, %2) : f32[4]
    %4 = mul(%1, %0) : f32[4]

A result whose values are all equal becomes a `const` (of any size, symbolic shapes included); another
becomes a `tensor` literal if it has at most `max_elements` elements, and is left computed otherwise.
`rand` is never folded, nor anything that depends on an input or a parameter. A value the evaluator
refuses (an out-of-range index) is left for run time to report. Literals that only a fold used are
dropped with it.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from axon.ir import AxonError, Graph, GraphBuilder, Node, OpKind, TensorType, rebuild
from axon.ir.evaluate import EvalContext, run_op
from axon.ir.ops import ELEMENTWISE, TensorAttrs
from axon.ir.shapes import is_static

from .config import FOLD_MAX_ELEMENTS, FOLD_MAX_EVAL_ELEMENTS
from .manager import register_pass

K = OpKind
# rand is never folded, even from a constant seed: a kernel draws it for free (tl.rand), a literal
# would bake noise into the IR and the generated source.
NEVER_FOLDED = frozenset({K.RAND})
# Ops that only move elements: applied to a const, the result is the same const, in the new shape.
UNIFORM_MOVES = frozenset({K.RESHAPE, K.PERMUTE, K.EXPAND, K.SLICE})


@register_pass
@dataclass(frozen=True)
class Fold:
    """Compute at compile time what depends only on literals, so the rules after see constants."""

    name: ClassVar[str] = "fold"
    max_elements: int = FOLD_MAX_ELEMENTS  # the largest non-uniform result written as a literal

    def run(self, graph: Graph, stats: Counter | None = None) -> Graph:
        if not any(_foldable(n.op, n.inputs) for n in graph.nodes):
            return graph  # nothing computed from literals alone: no need to rebuild
        counts: Counter = Counter()

        def visit(b: GraphBuilder, old: Node, inputs: tuple[Node, ...]) -> Node | None:
            if not _foldable(old.op, inputs):
                return None
            folded, why = self._fold(b, old, inputs)
            counts[why] += 1
            return folded

        new = rebuild(graph, visit)[0]
        if stats is not None:
            stats.update(counts)
        return new

    def _fold(self, b: GraphBuilder, old: Node, inputs: tuple[Node, ...]) -> tuple[Node | None, str]:
        """The literal replacing `old`, or None; and why (counted for the pass report)."""
        if all(i.op == K.CONST for i in inputs):
            if old.op in UNIFORM_MOVES:
                return b.const(inputs[0].attrs.value, old.dtype, old.shape), "folded to const"
            if old.op in ELEMENTWISE:  # computed on the scalars: the result is uniform, at any size
                scalars = [replace(i.attrs, shape=()) for i in inputs]
                scalar_types = [TensorType(i.dtype, ()) for i in inputs]
                value = _evaluate(old, [(K.CONST, a, t) for a, t in zip(scalars, scalar_types)])
                if value is None:
                    return None, "kept: evaluation failed"
                return b.const(value.item(), old.dtype, old.shape), "folded to const"
        if not all(is_static(n.shape) for n in (old, *inputs)):
            return None, "kept: symbolic shape"
        if max(math.prod(n.shape) for n in (old, *inputs)) > FOLD_MAX_EVAL_ELEMENTS:
            return None, "kept: too large to evaluate"
        value = _evaluate(old, [(i.op, i.attrs, i.type) for i in inputs])
        if value is None:
            return None, "kept: evaluation failed"
        flat = value.reshape(-1)
        if _uniform(flat):
            first = flat[0].item() if flat.numel() else 0
            return b.const(first, old.dtype, old.shape), "folded to const"
        if flat.numel() > self.max_elements:
            return None, "kept: too many elements for a literal"
        attrs = TensorAttrs(tuple(flat.tolist()), old.dtype, old.shape)
        return b.node(K.TENSOR, (), attrs), "folded to tensor"


def _foldable(op: OpKind, inputs: tuple[Node, ...]) -> bool:
    """Computed from literals alone: not a source, not rand, reading no input or parameter."""
    return op not in NEVER_FOLDED and bool(inputs) and all(_is_literal(i) for i in inputs)


def _is_literal(n: Node) -> bool:
    return n.op in (K.CONST, K.TENSOR) or (n.op == K.IOTA and is_static(n.shape))


def _evaluate(node: Node, literals) -> torch.Tensor | None:
    """`node` applied to literal operands (op, attrs, type), as the reference evaluator computes it
    (each value held in its own dtype); None if the evaluator refuses."""
    ctx = EvalContext()
    try:
        args = [run_op(op, attrs, t, [], ctx) for op, attrs, t in literals]
        return run_op(node.op, node.attrs, node.type, args, ctx)
    except (AxonError, RuntimeError, IndexError):  # e.g. an index out of range: left for run time
        return None


def _uniform(flat: torch.Tensor) -> bool:
    """All elements equal, NaN equal to NaN and -0.0 not equal to 0.0 (so a const can stand for it)."""
    if flat.numel() <= 1:
        return True
    first = flat[0]
    if not flat.is_floating_point():
        return bool(torch.all(flat == first))
    same = (flat == first) | (flat.isnan() & first.isnan())
    return bool(torch.all(same & (flat.signbit() == first.signbit())))
