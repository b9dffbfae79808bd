"""The quantized forms of a weight's use, as graph fragments (`passes/quantize.py` plans and applies
them; `quant_weights.py` converts the float weights; the ledger measures them), and the per-layer record.

weight-only (int8, int4)     w = dequantize([unpack_int4](w.q), w.scale); op(x, w) unchanged
codes x codes (dyn8, fp8)    x quantized per row at run time (scale amax(|x|) / qmax over K):
                             cast(qmatmul(quantize(x, sx), w.q), f32) * sx * w.scale
codes x codes (st8)          the same with one calibrated scale for x (`w.in_scale`, shape ()):
                             the quantize joins the kernel producing x, so int8 flows between layers
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from axon.ir import AxonError, DType, GraphBuilder, Init, Node, OpKind
from axon.ir.op_quant import SMALLEST_SCALE
from axon.ir.shapes import numel

K = OpKind
# codes in [-qmax, qmax] by mode (fp8: its finite range)
QMAX = {"int8-weight": 127, "int4-weight": 7, "int8-dynamic": 127, "int8-static": 127, "fp8": 448}
KIND = {"int8-weight": "int8", "int4-weight": "int4", "int8-dynamic": "dyn8", "int8-static": "st8",
        "fp8": "fp8"}
CODES = frozenset({"dyn8", "fp8", "st8"})  # kinds whose matmul multiplies codes (activations quantized)
MODES = tuple(QMAX)
GROUPS = (32, 64, 128)
MIN_SIZE = 1024  # weights with fewer elements stay float (their scales would cost as much as they save)
Q_SUFFIX, SCALE_SUFFIX, IN_SCALE_SUFFIX = ".q", ".scale", ".in_scale"


class QuantizeError(AxonError):
    """Weights that cannot be quantized as asked (non-finite values, a wrong shape), or quantized
    weights that do not fit the model."""


@dataclass(frozen=True)
class Layer:
    """What the pass does to one float weight: `kind` 'int8', 'int4' (weight-only), 'dyn8', 'fp8', 'st8'
    (codes times codes), or 'float' (then `reason`)."""

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
    def in_scale_name(self) -> str:
        """The calibrated scale of the activations (st8)."""
        return self.name + IN_SCALE_SUFFIX

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The shape the op reads (the parameter through its view)."""
        return tuple(self.shape[p] for p in self.perm) if self.perm else self.shape

    def record(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def dequantized_params(b: GraphBuilder, layer: Layer) -> tuple[Node, Node]:
    """`<name>.q` and `<name>.scale`, declared."""
    return (b.param(layer.q_name, DType.parse(layer.q_dtype), layer.q_shape),
            b.param(layer.scale_name, DType.F32, layer.scale_shape, Init("ones")))


def stored(b: GraphBuilder, layer: Layer) -> tuple[Node, ...]:
    """`<name>.q` and `<name>.scale` (and, for st8, `<name>.in_scale`), declared."""
    out = dequantized_params(b, layer)
    if layer.kind == "st8":
        out += (b.param(layer.in_scale_name, DType.F32, (), Init("ones")),)
    return out


def dequantized(b: GraphBuilder, layer: Layer, weights: tuple[Node, ...] | None = None) -> Node:
    """The weight as the op reads it: `<name>.q` and `<name>.scale` (declared unless given), dequantized
    (unpacked)."""
    q, scale = (weights or dequantized_params(b, layer))[:2]
    codes = b.unpack_int4(q) if layer.kind == "int4" else q
    return b.dequantize(codes, scale, dtype=DType.parse(layer.dtype), axis=layer.axis,
                        group=layer.group if layer.group > 1 else None)


def codes_matmul(b: GraphBuilder, layer: Layer, x: Node, weights: tuple[Node, ...]) -> Node:
    """x @ w for a layer whose matmul multiplies codes (`CODES`): x quantized (per row over its last axis,
    the contraction, at run time; st8: by its calibrated scale), codes times the stored codes
    (`qmatmul`), both scales applied to the accumulator, in x's dtype."""
    q, w_scale = weights[:2]
    dtype, shape = x.dtype, tuple(x.shape)
    fp8 = layer.kind == "fp8"
    qmax = QMAX["fp8" if fp8 else "int8-dynamic"]
    if layer.kind == "st8":  # one scale: an elementwise quantize, which joins the kernel producing x
        sx = weights[2]
        qx = b.quantize(x, sx, dtype=DType.I8, qmin=-qmax, qmax=qmax)
    else:
        rows = x if len(shape) == 2 else b.reshape(x, (numel(shape[:-1]), shape[-1]))  # [rows, K]
        # amax(|x|) per row as max(max(x), -min(x)): two reductions reading x, so no elementwise op
        # over the whole of x joins (and is stored by) the kernel that produces x
        amax = b.maximum(b.max(rows, (1,), keepdim=True), b.neg(b.min(rows, (1,), keepdim=True)))
        amax = amax if dtype == DType.F32 else b.cast(amax, DType.F32)
        sx = b.maximum(b.div(amax, float(qmax)), SMALLEST_SCALE)  # an all-zero row: the smallest scale
        if fp8:
            qx = b.quantize(rows, sx, dtype=DType.F8E4M3, axis=0)
        else:
            qx = b.quantize(rows, sx, dtype=DType.I8, axis=0, qmin=-qmax, qmax=qmax)
        if len(shape) != 2:  # views of the stored codes and scales, read by the matmul kernel in place
            qx, sx = b.reshape(qx, shape), b.reshape(sx, shape[:-1] + (1,))
    acc = b.qmatmul(qx, q)
    y = b.mul(b.mul(acc if fp8 else b.cast(acc, DType.F32), sx), w_scale)
    return y if dtype == DType.F32 else b.cast(y, dtype)
