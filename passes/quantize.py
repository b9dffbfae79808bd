"""Quantization: float weights of matmuls (and conv2d) stored as integer or fp8 codes and a scale;
weight-only (dequantized where the weight is used), or with the activations quantized per row at run time
so the matmul itself multiplies codes (`qmatmul`, ir/op_qmatmul.py).

    param %fc.w: f32[64, 128]                          param %fc.w.q: i8[64, 128]
    %0 = matmul(%x, %fc.w)        quantize{mode=      param %fc.w.scale: f32[1, 128] = ones()
                                  int8-weight}         %1 = dequantize(%fc.w.q, %fc.w.scale, axes=[1])
                                  ------------->       %0 = matmul(%x, %1)

int8-weight   i8 codes in [-127, 127], one scale per output channel (axis 1 of the [K, N] operand; axis 0,
              the output channels, of a conv2d weight [O, C, kh, kw]).
int8-dynamic  the weight as int8-weight; a matmul's activations x[..., M, K] quantized per row at run
              time (scale amax(|x|) / 127 over K), codes times codes in i32 on the tensor cores, the
              scales applied to the accumulator: cast(qmatmul(quantize(x, sx), w.q), f32) * sx * w.scale
              (the cast and multiplies are the kernel's epilogue). conv2d weights: as int8-weight.
int8-static   the weight as int8-weight; a matmul's activations quantized by one calibrated scale
              (`<name>.in_scale`, measured over training batches by `axon quantize --calibrate`): the
              quantize is elementwise, so it joins the kernel that produces x (its epilogue) and int8
              flows between layers. conv2d weights: as int8-weight.
fp8           the same as int8-dynamic with e4m3 codes: weight scale amax / 448 per output channel,
              activations per row, qmatmul in f32 (fp8 tensor cores, sm_89+). conv2d stays float.
int4-weight   codes in [-7, 7], one scale per `group` (32, 64 or 128) consecutive elements along the
              contraction axis K; two codes a byte along the last axis (N: output channels), as
              `unpack_int4` reads them: `<name>.q` is u8[K, N / 2], `<name>.scale` f32[K / group, N], and
              dequantize(unpack_int4(q), scale, axis=0, group) is the [K, N] weight. When K is smaller
              than the group, one group spans K (the record says which group was used).

Quantized parameters are always stored in the layout the matmul reads ([K, N]): a weight reached through
a permute/transpose view (torch's [N, K] Linear weight) is stored transposed, the view gone. Symmetric:
scale = amax / qmax per channel or group (`passes.quant_weights` converts float weights).

`plan` says what happens to every float parameter of rank >= 2 and why: quantized, or left float with
the reason (skipped by name, below `min_size` elements, not a matmul weight, tied to another use, a view
other than a permute, an odd N or a group that does not divide K for int4, conv2d under int4). The pass
applies the plan; the ledger (`axon quantize`) prints it.
"""
from __future__ import annotations

import fnmatch
import functools
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from axon.ir import Graph, GraphBuilder, Node, OpKind, PassError

from .manager import register_pass
from .quant_forms import (CODES, GROUPS, IN_SCALE_SUFFIX, KIND, MIN_SIZE, MODES, Q_SUFFIX, QMAX,  # noqa: F401
                          SCALE_SUFFIX,
                          Layer, QuantizeError, codes_matmul, dequantized, stored)

K = OpKind


@dataclass
class _Uses:
    """How a float parameter is read: through permutes into matmul operand b or conv2d weights, or not."""

    sites: list[Node] = field(default_factory=list)       # the matmul/conv2d nodes
    operands: list[Node] = field(default_factory=list)    # the nodes they read (the param or a view)
    perms: set[tuple[int, ...]] = field(default_factory=set)
    other: list[str] = field(default_factory=list)        # why another use is not a weight use
    other_ops: list[str] = field(default_factory=list)    # the ops of those uses


def weight_uses(graph: Graph) -> dict[str, _Uses]:
    """For each float parameter of rank >= 2, the matmul/conv2d nodes that read it as their weight
    (operand 1, through permutes only) and any other use."""
    users = graph.users()
    out: dict[str, _Uses] = {}
    for name, p in graph.params.items():
        if not p.dtype.is_float or len(p.shape) < 2:
            continue
        u = out[name] = _Uses()
        stack = [(p, tuple(range(len(p.shape))))]
        while stack:
            node, perm = stack.pop()
            for user in dict.fromkeys(users[node]):
                if user.op == K.PERMUTE:
                    stack.append((user, tuple(perm[a] for a in user.attrs.perm)))
                elif user.op in (K.MATMUL, K.CONV2D) and user.inputs == (user.inputs[0], node) \
                        and user.inputs[0] is not node:
                    u.sites.append(user)
                    u.operands.append(node)
                    u.perms.add(perm)
                elif user.op in (K.MATMUL, K.CONV2D):
                    u.other.append(f"the left operand of {user.op}")
                    u.other_ops.append(user.op.value)
                else:
                    u.other.append(f"read by {user.op}" + (" through a permute" if node is not p else ""))
                    u.other_ops.append(user.op.value)
        if p in graph.outputs.values():
            u.other.append("a graph output")
            u.other_ops.append("output")
    return out


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    layer = name.rsplit(".", 1)[0]
    return any(fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(layer, pat) for pat in patterns)


def plan(graph: Graph, mode: str, group: int = 64, skip: tuple[str, ...] = (),
         min_size: int = MIN_SIZE) -> list[Layer]:
    """One `Layer` per float parameter of rank >= 2, in the graph's order."""
    check_options(mode, group, min_size)
    layers = []
    for name, u in weight_uses(graph).items():
        p = graph.params[name]
        shape = tuple(p.shape)
        before = math.prod(shape) * p.dtype.itemsize
        op = u.sites[0].op.value if u.sites else (u.other_ops[0] if u.other_ops else "nothing")
        base = Layer(name, op, shape, dtype=str(p.dtype), bytes_before=before, bytes_after=before,
                     sites=len(u.sites))
        fallback = functools.partial(_fallback, base)
        if not u.sites:
            layers.append(fallback("not a matmul or conv2d weight (" + ", ".join(dict.fromkeys(u.other))
                                   + ")" if u.other else "unused"))
        elif u.other:
            layers.append(fallback(f"also {u.other[0]} (tied weights): the float copy would stay"))
        elif len({s.op for s in u.sites}) > 1 or len(u.perms) > 1:
            layers.append(fallback("read through different views or ops"))
        elif _matches(name, skip):
            layers.append(fallback("skipped by name"))
        elif math.prod(shape) < min_size:
            layers.append(fallback(f"{math.prod(shape)} elements, fewer than min_size={min_size}"))
        elif any(P in graph.params for P in (name + Q_SUFFIX, name + SCALE_SUFFIX, name + IN_SCALE_SUFFIX)):
            layers.append(fallback(f"'{name}{Q_SUFFIX}', '{name}{SCALE_SUFFIX}' or '{name}{IN_SCALE_SUFFIX}' "
                                   f"already names a parameter"))
        else:
            (perm,) = u.perms
            layers.append(_quantized(base, u.sites[0].op, perm, mode, group) or fallback(_why_not(
                base, u.sites[0].op, perm, mode, group)))
    return layers


def _fallback(base: Layer, reason: str) -> Layer:
    return Layer(**{**asdict(base), "reason": reason})


def check_options(mode: str, group: int, min_size: int) -> None:
    if mode not in MODES:
        raise PassError(f"quantize{{mode={mode}}}: the modes are {', '.join(MODES)}")
    if group not in GROUPS:
        raise PassError(f"quantize{{group={group}}}: int4 groups are {', '.join(map(str, GROUPS))}")
    if min_size < 0:
        raise PassError(f"quantize{{min_size={min_size}}}: must be >= 0")


def _why_not(base: Layer, op: OpKind, perm, mode: str, group: int) -> str:
    shape = tuple(base.shape[p] for p in perm)
    if op == K.CONV2D and mode == "fp8":
        return "no fp8 conv2d kernel: conv2d stays float under fp8 (int8-weight quantizes it)"
    if op == K.CONV2D:
        return ("int4 packs pairs along the last axis, a conv2d weight's kernel width: conv2d stays float "
                "under int4-weight (int8-weight quantizes it)")
    if len(shape) != 2:
        return f"a batched matmul weight {list(shape)} (only [K, N] weights are quantized)"
    k, n = shape
    if n % 2:
        return f"int4 packs two output channels a byte: N={n} is odd"
    return f"groups of {group} do not divide K={k}"


def _quantized(base: Layer, op: OpKind, perm, mode: str, group: int) -> Layer | None:
    """The layer quantized, or None when this mode cannot hold it (`_why_not` says why)."""
    shape = tuple(base.shape[p] for p in perm)
    ident = perm == tuple(range(len(perm)))
    common = dict(name=base.name, op=base.op, shape=base.shape, dtype=base.dtype, sites=base.sites,
                  bytes_before=base.bytes_before, perm=() if ident else perm)
    if op == K.CONV2D:
        if mode not in ("int8-weight", "int8-dynamic", "int8-static"):
            return None
        scale = (shape[0],) + (1,) * (len(shape) - 1)
        note = "" if mode == "int8-weight" else "weight-only: the conv2d kernel reads float activations"
        return _sized(Layer(**common, kind="int8", reason=note, axis=0, q_shape=shape, q_dtype="i8",
                            scale_shape=scale))
    if len(shape) != 2:
        return None
    k, n = shape
    if mode != "int4-weight":
        q_dtype = "f8e4m3" if mode == "fp8" else "i8"
        return _sized(Layer(**common, kind=KIND[mode], axis=1, q_shape=shape, q_dtype=q_dtype,
                            scale_shape=(1, n)))
    note = ""
    if k < group:
        group, note = k, f"K={k} is smaller than the group: one group spans K"
    if n % 2 or k % group:
        return None
    return _sized(Layer(**common, kind="int4", reason=note, axis=0, group=group, q_shape=(k, n // 2),
                        q_dtype="u8", scale_shape=(k // group, n)))


def _sized(layer: Layer) -> Layer:
    after = math.prod(layer.q_shape) + 4 * math.prod(layer.scale_shape)  # i8/u8/fp8 codes, f32 scales
    after += 4 if layer.kind == "st8" else 0  # the activations' scale
    return Layer(**{**asdict(layer), "bytes_after": after})


def apply(graph: Graph, layers: list[Layer], stats: Counter | None = None) -> Graph:
    """`graph` with the quantized layers' weights replaced by their dequantized codes (and, for dynamic
    layers, their matmuls by codes-times-codes ones)."""
    operand_of, absorbed = weight_operands(graph, layers)
    b = GraphBuilder(graph.name)
    mapping: dict[Node, Node] = {}
    made: dict[str, Node] = {}
    weights: dict[str, tuple[Node, ...]] = {}
    for node in graph.nodes:
        layer = operand_of.get(node)
        if layer is not None:
            if layer.name not in weights:
                weights[layer.name] = stored(b, layer)
                if stats is not None:
                    stats[f"{layer.kind} weights"] += 1
            if layer.kind not in CODES:
                if layer.name not in made:
                    made[layer.name] = dequantized(b, layer, weights[layer.name])
                mapping[node] = made[layer.name]
            continue
        layer = operand_of.get(node.inputs[1]) if node.op == K.MATMUL else None
        if layer is not None and layer.kind in CODES:
            mapping[node] = codes_matmul(b, layer, mapping[node.inputs[0]], weights[layer.name])
        elif node not in absorbed:
            mapping[node] = b.node(node.op, [mapping[i] for i in node.inputs], node.attrs)
    for name, node in graph.outputs.items():
        b.output(name, mapping[node])
    if stats is not None:
        fallbacks = sum(1 for layer in layers if not layer.quantized and layer.sites)
        if fallbacks:
            stats["float fallbacks"] += fallbacks
    return b.build()


def weight_operands(graph: Graph, layers: list[Layer]) -> tuple[dict[Node, Layer], set[Node]]:
    """The nodes the quantized layers' ops read as weights (the parameter or a permute of it), and the
    nodes not rebuilt (the float parameters and the permutes over them)."""
    uses = weight_uses(graph)
    absorbed: set[Node] = set()
    operand_of: dict[Node, Layer] = {}
    for layer in layers:
        if layer.quantized:
            absorbed.add(graph.params[layer.name])
            for node in uses[layer.name].operands:
                operand_of[node] = layer
    for node in graph.nodes:  # permute chains from a chosen parameter are absorbed too
        if node.op == K.PERMUTE and node.inputs[0] in absorbed and node not in operand_of:
            absorbed.add(node)
    return operand_of, absorbed


def parse_skip(text: str) -> tuple[str, ...]:
    """`skip=a|b.*` as names and glob patterns."""
    return tuple(s.strip() for s in text.split("|") if s.strip())


@register_pass
@dataclass(frozen=True)
class Quantize:
    """Store matmul/conv2d weights as int8, int4 or fp8 codes; dequantize them, or multiply codes."""

    name: ClassVar[str] = "quantize"
    mode: str = "int8-weight"
    group: int = 64
    skip: str = ""          # names or glob patterns separated by '|' (a layer's param or its prefix)
    min_size: int = MIN_SIZE

    def plan(self, graph: Graph) -> list[Layer]:
        return plan(graph, self.mode, self.group, parse_skip(self.skip), self.min_size)

    def run(self, graph: Graph, stats: Counter | None = None) -> Graph:
        return apply(graph, self.plan(graph), stats)
