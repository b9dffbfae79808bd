"""Mixed precision as torch.autocast: parameters stay f32, dots run on 16-bit operands, the numerically
sensitive ops and the loss stay in f32.

    param %w: f32[64, 10]                          param %w: f32[64, 10]
    %0 = matmul(%x, %w) : f32[batch, 10]           %0 = cast(%x) : bf16[batch, 64]
    %1 = exp(%0) : f32[batch, 10]     autocast     %1 = cast(%w) : bf16[64, 10]
                                      ------->     %2 = matmul(%0, %1) : bf16[batch, 10]
                                                   %3 = cast(%2) : f32[batch, 10]
                                                   %4 = exp(%3) : f32[batch, 10]

Each op of the graph computes in one of three ways, after CUDA autocast's op lists mapped onto the
primitive ops (the IR has no softmax, layer_norm or cross_entropy: the prelude writes them with these):

- 16 bits (autocast's lower_precision_fp list: mm, bmm, matmul, linear, conv2d, and
  scaled_dot_product_attention): `matmul` and `conv2d`, whose f32 operands are cast to bf16/f16 (f32
  accumulation on tensor cores), and every op of an attention pattern (`passes/attention.py`), so the
  attention kernels see it as they see a 16-bit model's. The bias added to a dot's result is cast with
  it, as F.linear and F.conv2d take their bias.
- f32 (autocast's fp32 list: exp, log, pow, rsqrt, reciprocal, sum, and the composites softmax,
  log_softmax, layer_norm, cross_entropy, mse_loss built from them and from `mean`): `exp`, `log`,
  `pow`, `rsqrt`, `recip`, `sum` and `mean` cast 16-bit operands to f32. So does any other op whose
  every reader computes in f32 (the `x - max(x)` before softmax's exp, the log-probabilities a loss
  gathers): the cast moves up to where the 16-bit value is made, and the composite runs in f32 from its
  input on, as torch's single softmax kernel does.
- the rest (relu, gelu's ops, dropout, movement, max, where, ...) run in their operands' dtype, promoted
  as torch promotes: a 0-d value or a literal does not widen a tensor (x_bf16 * 0.5 is bf16), and a 16-bit
  value meeting an f32 one is f32 (the residual stream of a transformer stays f32).

Parameters, inputs and literals keep their dtype (master weights in f32); each 16-bit use reads a cast,
one per value (the builder interns it). Outputs are cast back to their dtype, so the loss is f32 and
autodiff of the rewritten graph gives f32 gradients for the f32 parameters (a cast's gradient is a cast
back). f64 values are never narrowed (autocast leaves double alone).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import reduce
from typing import ClassVar

from axon.ir import DType, Graph, GraphBuilder, Node, OpKind, PassError, promote
from axon.ir.ops import MOVEMENT, SOURCES

from . import attention
from .manager import register_pass

K = OpKind
PRECISIONS = ("f32", "bf16", "f16")           # what a run may train in: f32, or mixed with 16-bit dots
LOWER = frozenset({K.MATMUL, K.CONV2D})      # autocast's lower_precision_fp ops
FP32 = frozenset({K.EXP, K.LOG, K.POW, K.RSQRT, K.RECIP, K.SUM, K.MEAN})  # autocast's fp32 ops
NARROW = frozenset({DType.F32, DType.F16, DType.BF16})  # what autocast casts (not f64)
LOW, WIDE = "low", "f32"


@register_pass
@dataclass(frozen=True)
class Autocast:
    """Mixed precision: dots in bf16 or f16 on tensor cores, f32 master weights, softmax and losses in f32."""

    name: ClassVar[str] = "autocast"
    to: str = "bf16"

    def run(self, graph: Graph, stats: Counter | None = None) -> Graph:
        if self.to not in PRECISIONS[1:]:
            raise PassError(f"autocast{{to={self.to}}}: dots can run in {' or '.join(PRECISIONS[1:])}")
        return autocast(graph, self.to, stats)


def autocast(graph: Graph, precision: str, stats: Counter | None = None) -> Graph:
    """`graph` in mixed precision (`precision` "bf16" or "f16"); "f32" returns it as it is."""
    if precision not in PRECISIONS:
        raise PassError(f"unknown precision '{precision}': expected one of {', '.join(PRECISIONS)}")
    if precision == "f32":
        return graph
    low = DType.parse(precision)
    modes = _modes(graph)
    b = GraphBuilder(graph.name)
    new: dict[Node, Node] = {}
    for node in graph.nodes:
        ins = [new[i] for i in node.inputs]
        mode = modes.get(node)
        if mode == LOW:
            ins = [_to(b, x, low) if x.dtype in NARROW else x for x in ins]
        elif mode == WIDE:
            ins = [_to(b, x, DType.F32) if x.dtype in NARROW else x for x in ins]
        elif node.op not in SOURCES:
            ins = _promoted(b, node, ins, low, modes)
        out = b.node(node.op, ins, node.attrs)
        if stats is not None and out.dtype != node.dtype:
            stats[f"{node.op} in {out.dtype}"] += 1
        new[node] = out
    for name, node in graph.outputs.items():
        b.output(name, b.cast(new[node], node.dtype))
    built = b.build()
    # literals remade in another dtype leave their old selves unread: dropped here, not left for dce
    read = {i for n in built.nodes for i in n.inputs} | set(built.outputs.values())
    users = graph.users()
    orphans = {new[n] for n in graph.nodes if n.op == K.CONST and users[n] and new[n] not in read}
    result = Graph([n for n in built.nodes if n not in orphans], built.outputs, built.name)
    if stats is not None:
        stats.update(f"casts to {n.dtype}" for n in result.nodes if n.op == K.CAST
                     and n.inputs[0].dtype.is_float and n.dtype.is_float)
    return result


def _modes(graph: Graph) -> dict[Node, str]:
    """How each computed op runs: LOW (16 bits), WIDE (f32), or absent (its operands' dtype)."""
    modes: dict[Node, str] = {}
    for node in graph.nodes:
        if node.op in LOWER:
            modes[node] = LOW
            a = attention.match(node)
            if a is not None:
                modes.update(dict.fromkeys(a.inner, LOW))
        elif node.op in FP32:
            modes.setdefault(node, WIDE)
    # a float value every reader of which computes in f32 is made in f32 (readers come later: one sweep
    # back from the end sees them all decided)
    users = graph.users()
    for node in reversed(graph.nodes):
        if node in modes or node.op in SOURCES or not node.dtype.is_float:
            continue
        if users[node] and all(modes.get(u) == WIDE for u in users[node]):
            modes[node] = WIDE
    return modes


def _promoted(b: GraphBuilder, node: Node, ins: list[Node], low: DType, modes) -> list[Node]:
    """The operands of an op that runs in its operands' dtype, cast to the one they promote to."""
    floats = [x for x in ins if x.dtype.is_float]
    if len({x.dtype for x in floats}) < 2:
        return ins
    if node.op == K.ADD and _is_bias_add(node):
        return [_to(b, x, low) if x.dtype in NARROW else x for x in ins]
    strong = [x for x, old in zip(ins, node.inputs) if x.dtype.is_float and not _weak(old)]
    dtype = reduce(promote, (x.dtype for x in strong or floats))
    return [_to(b, x, dtype) if x.dtype.is_float else x for x in ins]


def _is_bias_add(node: Node) -> bool:
    """`dot + b` with b a parameter (maybe reshaped or expanded): F.linear's and F.conv2d's bias, which
    autocast casts with the dot's operands."""
    a, c = node.inputs
    for dot, bias in ((a, c), (c, a)):
        if dot.op in LOWER:
            while bias.op in MOVEMENT and len(bias.inputs) == 1:
                bias = bias.inputs[0]
            if bias.op == K.PARAM:
                return True
    return False


def _weak(node: Node) -> bool:
    """A literal or a 0-d value: torch lets it take a tensor's dtype rather than widen it."""
    return node.op == K.CONST or node.shape == ()


def _to(b: GraphBuilder, x: Node, dtype: DType) -> Node:
    """x in `dtype`: a literal is made in it, anything else is cast."""
    if x.dtype == dtype:
        return x
    if x.op == K.CONST:
        return b.const(x.attrs.value, dtype, x.shape)
    return b.cast(x, dtype)
