"""Quantization-aware training: `qat{mode=..., group=..., skip=..., min_size=...}` puts fake_quantize
nodes where `quantize{...}` of the same options will put real codes, so training sees (and learns to
live with) the rounding the deployed model does; gradients pass straight through inside the range
(`fake_quantize`'s rule, as torch.fake_quantize_per_channel_affine).

    %0 = matmul(%x, %fc.w)   -->   %s = maximum(amax(|%fc.w|, per channel or group) / qmax, 2**-126)
                                   %0 = matmul(%x, fake_quantize(%fc.w, %s, axes=[1]))

The weight's scale is computed in the graph from its current values, exactly as `quant_weights.scales`
computes it when converting (amax / qmax in f32, the smallest scale for an all-zero channel), and
fake_quantize is exactly dequantize(quantize(w)): the QAT model's forward is the forward of the model
`axon quantize` makes of its weights. With int8-dynamic (and fp8) the matmul's activations are fake
quantized per row as well, as the quantized model does at run time. The layers chosen are the plan of
`passes/quantize.py` (the same skips, minimum size and fallbacks); no gradient flows into the scales.
int8-static takes calibrated activation ranges, which a training graph does not have: its QAT is
int8-weight's (the weights), then `axon quantize --mode int8-static` calibrates.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from axon.ir import DType, Graph, GraphBuilder, Node, OpKind
from axon.ir.op_quant import SMALLEST_SCALE
from axon.ir.shapes import numel

from .manager import register_pass
from .quant_forms import MIN_SIZE, QMAX, Layer
from .quantize import parse_skip, plan, weight_operands

K = OpKind
QAT_MODES = ("int8-weight", "int4-weight", "int8-dynamic", "int8-static", "fp8")


def _amax(b: GraphBuilder, v: Node, axes) -> Node:
    return b.max(b.abs(v), tuple(axes), keepdim=True)


def weight_scale(b: GraphBuilder, layer: Layer, w: Node) -> Node:
    """amax(|w|) / qmax over each output channel (or group along `layer.axis`), as f32, at least the
    smallest scale: `quant_weights.scales` in the graph."""
    wf = w if w.dtype == DType.F32 else b.cast(w, DType.F32)
    a, g = layer.axis, layer.group
    shape = tuple(w.shape)
    if g == 1:
        amax = _amax(b, wf, [d for d in range(len(shape)) if d != a])
    else:  # [.., K, ..] -> [.., K / g, g, ..]: the max over each group, then the group axis dropped
        split = (*shape[:a], shape[a] // g, g, *shape[a + 1:])
        amax = b.reshape(_amax(b, b.reshape(wf, split), [a + 1]), (*shape[:a], shape[a] // g, *shape[a + 1:]))
    return b.maximum(b.div(amax, float(QMAX[_mode(layer)])), SMALLEST_SCALE)


def _mode(layer: Layer) -> str:
    return {"int8": "int8-weight", "int4": "int4-weight", "dyn8": "int8-dynamic", "st8": "int8-weight",
            "fp8": "fp8"}[layer.kind]


def fake_weight(b: GraphBuilder, layer: Layer, w: Node) -> Node:
    """`w` (as the op reads it) through the codes the quantized model will store."""
    s = weight_scale(b, layer, w)
    group = layer.group if layer.group > 1 else None
    if layer.kind == "fp8":
        return b.fake_quantize(w, s, None, DType.F8E4M3, axis=layer.axis, group=group)
    m = QMAX[_mode(layer)]
    return b.fake_quantize(w, s, None, DType.I8, axis=layer.axis, group=group, qmin=-m, qmax=m)


def fake_rows(b: GraphBuilder, layer: Layer, x: Node) -> Node:
    """The activations per row, as int8-dynamic (fp8) quantizes them at run time."""
    shape = tuple(x.shape)
    rows = x if len(shape) == 2 else b.reshape(x, (numel(shape[:-1]), shape[-1]))
    amax = b.maximum(b.max(rows, (1,), keepdim=True), b.neg(b.min(rows, (1,), keepdim=True)))
    amax = amax if x.dtype == DType.F32 else b.cast(amax, DType.F32)
    fp8 = layer.kind == "fp8"
    s = b.maximum(b.div(amax, float(QMAX["fp8" if fp8 else "int8-dynamic"])), SMALLEST_SCALE)
    q = b.fake_quantize(rows, s, None, DType.F8E4M3, axis=0) if fp8 else \
        b.fake_quantize(rows, s, None, DType.I8, axis=0, qmin=-127, qmax=127)
    return q if len(shape) == 2 else b.reshape(q, shape)


def apply_qat(graph: Graph, layers: list[Layer], stats: Counter | None = None) -> Graph:
    """`graph` with the chosen layers' weights fake-quantized where their ops read them, and the left
    operand of each int8-dynamic/fp8 matmul fake-quantized per row."""
    operand_of, _ = weight_operands(graph, layers)
    dynamic = {n for n in graph.nodes if n.op == K.MATMUL and n.inputs[1] in operand_of
               and operand_of[n.inputs[1]].kind in ("dyn8", "fp8")}
    b, mapping = GraphBuilder(graph.name), {}
    fake: dict[str, Node] = {}
    for node in graph.nodes:
        ins = [mapping[i] for i in node.inputs]
        if node in dynamic:
            ins[0] = fake_rows(b, operand_of[node.inputs[1]], ins[0])
        new = b.node(node.op, ins, node.attrs)
        layer = operand_of.get(node)
        if layer is not None:  # the weight as its op reads it (the parameter, or a permute of it)
            if layer.name not in fake:
                fake[layer.name] = fake_weight(b, layer, new)
                if stats is not None:
                    stats[f"{layer.kind} weights fake-quantized"] += 1
            new = fake[layer.name]
        mapping[node] = new
    for name, node in graph.outputs.items():
        b.output(name, mapping[node])
    return b.build()


@register_pass
@dataclass(frozen=True)
class QAT:
    """Fake-quantize the weights (and int8-dynamic activations) the quantize pass would quantize."""

    name: ClassVar[str] = "qat"
    mode: str = "int8-weight"
    group: int = 64
    skip: str = ""
    min_size: int = MIN_SIZE

    def run(self, graph: Graph, stats: Counter | None = None) -> Graph:
        mode = "int8-weight" if self.mode == "int8-static" else self.mode
        layers = plan(graph, mode, self.group, parse_skip(self.skip), self.min_size)
        return apply_qat(graph, layers, stats)
