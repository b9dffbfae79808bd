"""Algebraic simplification: a table of local rewrite rules, each one small function with its reason.

    input %x: f32[3, 4]
    %0 = const(value=1.0) : f32[]
    %1 = mul(%x, %0) : f32[3, 4]                        simplify    input %x: f32[3, 4]
    %2 = permute(%1, perm=[1, 0]) : f32[4, 3]           ------->    %0 = expand(%x) : f32[2, 3, 4]
    %3 = permute(%2, perm=[1, 0]) : f32[3, 4]
    %4 = const(value=0.0) : f32[2, 3, 4]
    %5 = add(%3, %4) : f32[2, 3, 4]

Every rule keeps the node's type exactly (a rule that would lose a broadcast re-expands, or does not
fire) and keeps IEEE semantics: no x*0 -> 0, x-x -> 0 or x/x -> 1, which NaN and infinity break. The one
liberty is the sign of a zero result of x+0 and x-0 (-0.0 + 0.0 is +0.0, which compares equal), as XLA
and tinygrad take it; `signed_zeros=true` keeps it exact. The values a rewrite replaced are dropped
with it.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from axon.ir import AxonError, DType, Graph, GraphBuilder, Node, OpKind, apply_rules
from axon.ir.ops import BINARY

from .manager import register_pass

K = OpKind
D = DType
Rule = Callable[[GraphBuilder, Node], "Node | None"]


# --- helpers ---------------------------------------------------------------------------------------


def literal(n: Node):
    """The one value every element of a literal has, or None (tensor data compared by exact text, so
    -0.0 and 0.0 differ and nan equals nan)."""
    if n.op == K.CONST:
        return n.attrs.value
    if n.op == K.TENSOR and n.attrs.data and len({repr(v) for v in n.attrs.data}) == 1:
        return n.attrs.data[0]
    return None


def is_value(n: Node, value: float) -> bool:
    v = literal(n)
    return v is not None and not isinstance(v, bool) and v == value


def is_exact_zero(n: Node, sign: int) -> bool:
    """A zero that is an exact identity: -0.0 for add (x + -0.0 is x), +0.0 for sub, any integer 0."""
    v = literal(n)
    if v is None or isinstance(v, bool) or v != 0:
        return False
    return not isinstance(v, float) or (repr(v) == "-0.0") == (sign < 0)


def as_node_type(b: GraphBuilder, node: Node, x: Node) -> Node | None:
    """`x` made to `node`'s type by broadcasting (what an identity operand would have done), or None."""
    if x.dtype != node.dtype or len(x.shape) > len(node.shape):
        return None
    if x.op == K.CONST:  # a const broadcast is the const in the bigger shape
        return b.const(x.attrs.value, x.dtype, node.shape)
    return b.expand(x, node.shape)


def binary_identity(b: GraphBuilder, node: Node, op: OpKind, keep: int, test) -> Node | None:
    """`op(x, c) -> x` (keep=0) or `op(c, x) -> x` (keep=1) when `test(c)`."""
    if node.op != op:
        return None
    x, c = node.inputs[keep], node.inputs[1 - keep]
    return as_node_type(b, node, x) if test(c) else None


# --- the rules: each returns the replacement, or None when it does not apply ------------------------


def add_zero(b, n, signed_zeros=False):
    """x + 0 -> x and 0 + x -> x: adding zero is the identity (exactly so for -0.0)."""
    zero = (lambda c: is_exact_zero(c, -1)) if signed_zeros else (lambda c: is_value(c, 0))
    return binary_identity(b, n, K.ADD, 0, zero) or binary_identity(b, n, K.ADD, 1, zero)


def sub_zero(b, n, signed_zeros=False):
    """x - 0 -> x: subtracting zero is the identity (exactly so for +0.0)."""
    zero = (lambda c: is_exact_zero(c, +1)) if signed_zeros else (lambda c: is_value(c, 0))
    return binary_identity(b, n, K.SUB, 0, zero)


def mul_one(b, n):
    """x * 1 -> x and 1 * x -> x: exact in IEEE arithmetic and for integers."""
    one = lambda c: is_value(c, 1)  # noqa: E731
    return binary_identity(b, n, K.MUL, 0, one) or binary_identity(b, n, K.MUL, 1, one)


def mul_minus_one(b, n):
    """x * -1 -> neg(x): the same value (IEEE multiplication by -1 only flips the sign), one op cheaper."""
    if n.op != K.MUL:
        return None
    for x, c in (n.inputs, n.inputs[::-1]):
        if is_value(c, -1):
            x = as_node_type(b, n, x)
            return None if x is None else b.neg(x)
    return None


def div_one(b, n):
    """x / 1 -> x: exact."""
    return binary_identity(b, n, K.DIV, 0, lambda c: is_value(c, 1))


def pow_one(b, n):
    """x ** 1 -> x: exact (pow(x, 1) is x for every x, NaN included)."""
    return binary_identity(b, n, K.POW, 0, lambda c: is_value(c, 1))


def sub_neg(b, n):
    """x - neg(y) -> x + y: IEEE defines x - z as x + (-z), so this is exact."""
    if n.op == K.SUB and n.inputs[1].op == K.NEG:
        return b.add(n.inputs[0], n.inputs[1].inputs[0])
    return None


def add_neg(b, n):
    """x + neg(y) -> x - y and neg(x) + y -> y - x: exact, and one op fewer."""
    if n.op != K.ADD:
        return None
    x, y = n.inputs
    if y.op == K.NEG:
        return b.sub(x, y.inputs[0])
    if x.op == K.NEG:
        return b.sub(y, x.inputs[0])
    return None


def idempotent(b, n):
    """max(x, x), min(x, x), x and x, x or x -> x."""
    if n.op in (K.MAXIMUM, K.MINIMUM, K.AND, K.OR) and n.inputs[0] is n.inputs[1]:
        return n.inputs[0]
    return None


def involution(b, n):
    """neg(neg(x)), not(not(x)) -> x: each undoes itself exactly (integer negation wraps both ways)."""
    if n.op in (K.NEG, K.NOT) and n.inputs[0].op == n.op:
        return n.inputs[0].inputs[0]
    return None


def repeated_unary(b, n):
    """relu(relu(x)) -> relu(x), abs(abs(x)) -> abs(x), abs(neg(x)) -> abs(x): the outer op is a no-op."""
    x = n.inputs[0] if n.inputs else None
    if n.op in (K.RELU, K.ABS) and x.op == n.op:
        return x
    if n.op == K.ABS and x.op == K.NEG:
        return b.abs(x.inputs[0])
    return None


def where_same(b, n):
    """where(c, x, x) -> x: both branches agree (re-expanded if c broadcast them)."""
    if n.op == K.WHERE and n.inputs[1] is n.inputs[2]:
        return as_node_type(b, n, n.inputs[1])
    return None


def cast_same(b, n):
    """cast(x, dtype of x) -> x: no conversion."""
    return n.inputs[0] if n.op == K.CAST and n.inputs[0].dtype == n.dtype else None


def cast_cast(b, n):
    """cast(cast(x, m), t) -> cast(x, t) when x -> m is lossless: the middle type holds every value of
    x exactly, so the outer cast rounds the same number (f16 -> f32 -> f64 is f16 -> f64; f32 -> f16 -> f32
    is not touched, it rounds)."""
    if n.op == K.CAST and n.inputs[0].op == K.CAST:
        x = n.inputs[0].inputs[0]
        if n.inputs[0].dtype in LOSSLESS.get(x.dtype, ()):
            return b.cast(x, n.dtype)
    return None


def permute_permute(b, n):
    """permute(permute(x, p), q) -> permute(x, p[q]): one movement; none at all if they cancel."""
    if n.op == K.PERMUTE and n.inputs[0].op == K.PERMUTE:
        inner = n.inputs[0]
        return b.permute(inner.inputs[0], [inner.attrs.perm[q] for q in n.attrs.perm])
    return None


def reshape_reshape(b, n):
    """reshape(reshape(x)) -> reshape(x): row-major reshapes compose; none at all if back to x's shape."""
    if n.op == K.RESHAPE and n.inputs[0].op == K.RESHAPE:
        return b.reshape(n.inputs[0].inputs[0], n.shape)
    return None


def expand_expand(b, n):
    """expand(expand(x)) -> expand(x): a dimension x does not broadcast is never broadcast after."""
    if n.op == K.EXPAND and n.inputs[0].op == K.EXPAND:
        return b.expand(n.inputs[0].inputs[0], n.shape)
    return None


def no_op_movement(b, n):
    """reshape/expand to the same shape, the identity permutation, a slice of whole axes, zero padding:
    the value is the operand (the builder never makes these, but parsed text and other rules may)."""
    if n.op not in (K.RESHAPE, K.EXPAND, K.PERMUTE, K.PAD, K.SLICE) or n.type != n.inputs[0].type:
        return None
    if n.op == K.PERMUTE and n.attrs.perm != tuple(range(len(n.shape))):
        return None  # a transpose of a square matrix keeps the type, not the value
    return n.inputs[0]


def unit_reduce(b, n):
    """sum/mean/max/min over axes that all have size 1 -> a reshape: nothing is reduced (autodiff makes
    these when it sums a gradient back over a broadcast unit axis)."""
    if n.op not in (K.SUM, K.MEAN, K.MAX, K.MIN) or n.dtype != n.inputs[0].dtype:
        return None
    x = n.inputs[0]
    if not n.attrs.axes or any(x.shape[a] != 1 for a in n.attrs.axes):
        return None
    return b.reshape(x, n.shape)


def implicit_broadcast(b, n):
    """A binary op or where on an `expand`ed operand -> the op on the operand itself, which broadcasts
    the same way: the expand is only a copy (autodiff writes them explicitly)."""
    if n.op not in BINARY and n.op != K.WHERE:
        return None
    if not any(i.op == K.EXPAND for i in n.inputs):
        return None
    inputs = tuple(i.inputs[0] if i.op == K.EXPAND else i for i in n.inputs)
    try:
        new = b.node(n.op, inputs, n.attrs)
    except AxonError:
        return None
    return new if new.type == n.type else None


def add_adjacent_pads(b, n):
    """pad(x) + pad(y), zero pads along one axis where x's range ends where y's begins -> one pad of
    concat(x, y): the gradient of slices that tile a value (an LSTM's four gates) is one buffer built
    once, not a full-size padded copy per slice summed."""
    if n.op != K.ADD or any(i.op != K.PAD or i.attrs.value != 0.0 or i.type != n.type for i in n.inputs):
        return None
    spans = []
    for i in n.inputs:
        axes = [d for d, p in enumerate(i.attrs.pads) if p != (0, 0)]
        if len(axes) != 1:
            return None
        before, after = i.attrs.pads[axes[0]]
        spans.append((axes[0], before, after, i.inputs[0]))
    (ax, lo_b, lo_a, lo), (ax2, hi_b, hi_a, hi) = sorted(spans, key=lambda t: t[1])
    if ax != ax2 or not isinstance(lo.shape[ax], int) or lo_b + lo.shape[ax] != hi_b:
        return None
    pieces = [v for x in (lo, hi) for v in (x.inputs if x.op == K.CONCAT and x.attrs.axis == ax else [x])]
    pads = [(0, 0)] * len(n.shape)
    pads[ax] = (lo_b, hi_a)
    return b.pad(b.concat(pieces, ax), pads)


RULES: tuple[Rule, ...] = (
    add_zero, sub_zero, mul_one, mul_minus_one, div_one, pow_one, sub_neg, add_neg, idempotent,
    involution, repeated_unary, where_same, cast_same, cast_cast, permute_permute, reshape_reshape,
    expand_expand, no_op_movement, unit_reduce, implicit_broadcast, add_adjacent_pads,
)
SIGNED_ZERO_RULES = (add_zero, sub_zero)  # take the `signed_zeros` option

# Conversions that keep every value exactly (a cast from the key to any type in the set is lossless).
LOSSLESS: dict[DType, frozenset[DType]] = {
    D.BOOL: frozenset(DType) - {D.BOOL},
    D.U8: frozenset({D.I32, D.I64, D.F16, D.BF16, D.F32, D.F64}),  # 8 bits fit bf16's significand
    D.I8: frozenset({D.I32, D.I64, D.F16, D.BF16, D.F32, D.F64}),
    D.I32: frozenset({D.I64, D.F64}),
    D.F8E4M3: frozenset({D.F16, D.BF16, D.F32, D.F64}),
    D.F8E5M2: frozenset({D.F16, D.BF16, D.F32, D.F64}),
    D.F16: frozenset({D.F32, D.F64}),
    D.BF16: frozenset({D.F32, D.F64}),
    D.F32: frozenset({D.F64}),
}


@register_pass
@dataclass(frozen=True)
class Simplify:
    """Apply algebraic identities (x*1, x+0, double transposes, cast chains) that make work vanish."""

    name: ClassVar[str] = "simplify"
    signed_zeros: bool = False  # keep x+0 and x-0 unless the zero is the exact identity (-0.0, +0.0)

    def rules(self, counts: Counter) -> list[Rule]:
        """The rule table for this run, each rule counting its rewrites into `counts` by name."""
        return [_counted(r, counts, self.signed_zeros if r in SIGNED_ZERO_RULES else None)
                for r in RULES]

    def run(self, graph: Graph, stats: Counter | None = None) -> Graph:
        counts: Counter = Counter()
        new = apply_rules(graph, self.rules(counts))[0]
        if stats is not None:
            stats.update(counts)
        return new


def _counted(rule, counts: Counter, signed_zeros: bool | None) -> Rule:
    def counted(b: GraphBuilder, n: Node) -> Node | None:
        new = rule(b, n) if signed_zeros is None else rule(b, n, signed_zeros)
        if new is not None and new is not n:
            counts[rule.__name__] += 1
        return new
    counted.__name__ = rule.__name__
    return counted
