"""Weight-only quantization: float weights of matmuls (and conv2d) stored as integer codes and a scale,
dequantized in the graph where the weight is used.

    param %fc.w: f32[64, 128]                          param %fc.w.q: i8[64, 128]
    %0 = matmul(%x, %fc.w)        quantize{mode=      param %fc.w.scale: f32[1, 128] = ones()
                                  int8-weight}         %1 = dequantize(%fc.w.q, %fc.w.scale, axes=[1])
                                  ------------->       %0 = matmul(%x, %1)

int8-weight   i8 codes in [-127, 127], one scale per output channel (axis 1 of the [K, N] operand; axis 0,
              the output channels, of a conv2d weight [O, C, kh, kw]).
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

from axon.ir import AxonError, DType, Graph, GraphBuilder, Init, Node, OpKind, PassError

from .manager import register_pass

K = OpKind
QMAX = {"int8-weight": 127, "int4-weight": 7}  # symmetric codes [-qmax, qmax]
MODES = tuple(QMAX)
GROUPS = (32, 64, 128)
MIN_SIZE = 1024  # weights with fewer elements stay float (their scales would cost as much as they save)
Q_SUFFIX, SCALE_SUFFIX = ".q", ".scale"


class QuantizeError(AxonError):
    """Weights that cannot be quantized as asked (non-finite values, a wrong shape), or quantized
    weights that do not fit the model."""


@dataclass(frozen=True)
class Layer:
    """What the pass does to one float weight: `kind` 'int8', 'int4' or 'float' (then `reason`)."""

    name: str                     # the float parameter
    op: str                       # the op using it: matmul, conv2d, or what else reads it
    shape: tuple[int, ...]        # the float parameter's shape
    dtype: str = "f32"            # the float parameter's dtype (and the dequantized weight's)
    kind: str = "float"
    reason: str = ""              # why it stays float (or a note on how it was quantized)
    perm: tuple[int, ...] = ()    # the view the op reads the parameter through (quantized: applied)
    axis: int | None = None       # dequantize's axis on the stored layout
    group: int = 1                # elements per scale along `axis` (1: per channel)
    q_shape: tuple[int, ...] = ()
    q_dtype: str = ""
    scale_shape: tuple[int, ...] = ()
    bytes_before: int = 0
    bytes_after: int = 0
    sites: int = 0                # how many matmul/conv2d nodes read it

    @property
    def quantized(self) -> bool:
        return self.kind != "float"

    @property
    def q_name(self) -> str:
        return self.name + Q_SUFFIX

    @property
    def scale_name(self) -> str:
        return self.name + SCALE_SUFFIX

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The shape the op reads (the parameter through its view)."""
        return tuple(self.shape[p] for p in self.perm) if self.perm else self.shape

    def record(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


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
        elif any(P in graph.params for P in (name + Q_SUFFIX, name + SCALE_SUFFIX)):
            layers.append(fallback(f"'{name}{Q_SUFFIX}' or '{name}{SCALE_SUFFIX}' already names a parameter"))
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
        if mode != "int8-weight":
            return None
        scale = (shape[0],) + (1,) * (len(shape) - 1)
        return _sized(Layer(**common, kind="int8", axis=0, q_shape=shape, q_dtype="i8", scale_shape=scale))
    if len(shape) != 2:
        return None
    k, n = shape
    if mode == "int8-weight":
        return _sized(Layer(**common, kind="int8", axis=1, q_shape=shape, q_dtype="i8", scale_shape=(1, n)))
    note = ""
    if k < group:
        group, note = k, f"K={k} is smaller than the group: one group spans K"
    if n % 2 or k % group:
        return None
    return _sized(Layer(**common, kind="int4", reason=note, axis=0, group=group, q_shape=(k, n // 2),
                        q_dtype="u8", scale_shape=(k // group, n)))


def _sized(layer: Layer) -> Layer:
    after = math.prod(layer.q_shape) + 4 * math.prod(layer.scale_shape)  # i8/u8 codes, f32 scales
    return Layer(**{**asdict(layer), "bytes_after": after})


def dequantized(b: GraphBuilder, layer: Layer) -> Node:
    """The weight as the op reads it: `<name>.q` and `<name>.scale` declared, dequantized (unpacked)."""
    q = b.param(layer.q_name, DType.parse(layer.q_dtype), layer.q_shape)
    scale = b.param(layer.scale_name, DType.F32, layer.scale_shape, Init("ones"))
    codes = b.unpack_int4(q) if layer.kind == "int4" else q
    return b.dequantize(codes, scale, dtype=DType.parse(layer.dtype), axis=layer.axis,
                        group=layer.group if layer.group > 1 else None)


def apply(graph: Graph, layers: list[Layer], stats: Counter | None = None) -> Graph:
    """`graph` with the quantized layers' weights replaced by their dequantized codes."""
    chosen = {layer.name: layer for layer in layers if layer.quantized}
    uses = weight_uses(graph)
    absorbed: set[Node] = set()   # the float parameters and the permutes over them: not rebuilt
    operand_of: dict[Node, Layer] = {}
    for name, layer in chosen.items():
        absorbed.add(graph.params[name])
        for node in uses[name].operands:
            operand_of[node] = layer
    for node in graph.nodes:  # permute chains from a chosen parameter are absorbed too
        if node.op == K.PERMUTE and node.inputs[0] in absorbed and node not in operand_of:
            absorbed.add(node)
    b = GraphBuilder(graph.name)
    mapping: dict[Node, Node] = {}
    made: dict[str, Node] = {}
    for node in graph.nodes:
        if node in operand_of:
            layer = operand_of[node]
            if layer.name not in made:
                made[layer.name] = dequantized(b, layer)
                if stats is not None:
                    stats[f"{layer.kind} weights"] += 1
            mapping[node] = made[layer.name]
        elif node not in absorbed:
            mapping[node] = b.node(node.op, [mapping[i] for i in node.inputs], node.attrs)
    for name, node in graph.outputs.items():
        b.output(name, mapping[node])
    if stats is not None:
        fallbacks = sum(1 for layer in layers if not layer.quantized and layer.sites)
        if fallbacks:
            stats["float fallbacks"] += fallbacks
    return b.build()


def parse_skip(text: str) -> tuple[str, ...]:
    """`skip=a|b.*` as names and glob patterns."""
    return tuple(s.strip() for s in text.split("|") if s.strip())


@register_pass
@dataclass(frozen=True)
class Quantize:
    """Store matmul/conv2d weights as int8 (per channel) or int4 (per group) codes, dequantized in place."""

    name: ClassVar[str] = "quantize"
    mode: str = "int8-weight"
    group: int = 64
    skip: str = ""          # names or glob patterns separated by '|' (a layer's param or its prefix)
    min_size: int = MIN_SIZE

    def plan(self, graph: Graph) -> list[Layer]:
        return plan(graph, self.mode, self.group, parse_skip(self.skip), self.min_size)

    def run(self, graph: Graph, stats: Counter | None = None) -> Graph:
        return apply(graph, self.plan(graph), stats)
