"""Float weights to the parameters `quantize{...}` declares: `<name>.q` (codes) and `<name>.scale`.

The scale is amax / qmax over each channel or group (amax of |w|, divided in f32; an all-zero channel
gets the smallest scale the IR accepts, 2**-126, and codes 0). The codes are computed by the reference
evaluator running the IR's own `quantize` (and `pack_int4`), so they are exactly what the graph's ops
define: q = clamp(rint(fl(w * fl(1 / scale))), -qmax, qmax).

>>> import torch
>>> from axon.passes.quantize import Layer, QMAX
>>> layer = Layer("w", "matmul", (2, 2), kind="int8", axis=1, q_shape=(2, 2), q_dtype="i8",
...               scale_shape=(1, 2))
>>> out = convert([layer], {"w": torch.tensor([[1.0, -0.5], [0.25, 2.0]])})
>>> out["w.q"].tolist(), [round(v * 127, 4) for v in out["w.scale"][0].tolist()]
([[127, -32], [32, 127]], [1.0, 2.0])
"""
from __future__ import annotations

import math

import torch

from axon.ir import DType, GraphBuilder, evaluate
from axon.ir.op_quant import SMALLEST_SCALE

from .quantize import QMAX, Layer, QuantizeError, dequantized

MODE_OF = {"int8": "int8-weight", "int4": "int4-weight", "dyn8": "int8-dynamic", "st8": "int8-static",
           "fp8": "fp8"}


def qmax(layer: Layer) -> int:
    return QMAX[MODE_OF[layer.kind]]


def view(layer: Layer, w: torch.Tensor) -> torch.Tensor:
    """The float parameter as the op reads it (through its permute), contiguous."""
    return (w.permute(layer.perm) if layer.perm else w).contiguous()


def scales(layer: Layer, w: torch.Tensor) -> torch.Tensor:
    """amax(|w|) / qmax per channel (group 1) or per group along `layer.axis`, f32, of the scale's shape."""
    a, g = layer.axis, layer.group
    x = w.to(torch.float32).abs()
    if g == 1:
        amax = x.amax(dim=[d for d in range(x.dim()) if d != a], keepdim=True)
    else:
        split = (*x.shape[:a], x.shape[a] // g, g, *x.shape[a + 1:])
        amax = x.reshape(split).amax(dim=a + 1)
    s = (amax / qmax(layer)).clamp_min(SMALLEST_SCALE)
    assert tuple(s.shape) == layer.scale_shape, (s.shape, layer)
    return s.contiguous()


def codes(layer: Layer, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The stored codes of `w` (as the op reads it) under `scale`, by the evaluator's quantize."""
    b = GraphBuilder("convert")
    wp = b.param("w", DType.F32, tuple(w.shape))
    sp = b.param("s", DType.F32, tuple(scale.shape))
    m = qmax(layer)
    group = layer.group if layer.group > 1 else None
    if layer.kind == "fp8":  # e4m3, saturating at +-448
        q = b.quantize(wp, sp, dtype=DType.F8E4M3, axis=layer.axis, group=group)
    else:
        q = b.quantize(wp, sp, dtype=DType.I8, axis=layer.axis, group=group, qmin=-m, qmax=m)
    b.output("q", b.pack_int4(q) if layer.kind == "int4" else q)
    return evaluate(b.build(), {}, {"w": w.to(torch.float32), "s": scale})["q"]


def convert(layers: list[Layer], params: dict[str, torch.Tensor],
            act_amax: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """`<name>.q` and `<name>.scale` for each quantized layer, from its float parameter in `params`; for
    int8-static layers also `<name>.in_scale`, amax / 127 of the activations the layer reads, from
    `act_amax` (calibration: `runtime/calibrate.py`)."""
    out: dict[str, torch.Tensor] = {}
    missing = [layer.name for layer in layers if layer.kind == "st8" and layer.name not in (act_amax or {})]
    if missing:
        raise QuantizeError(f"int8-static needs the range of each layer's activations, measured on "
                            f"calibration data; none for {', '.join(missing)}",
                            hint="calibrate with --calibrate N (batches of the train block's data)")
    for layer in layers:
        if not layer.quantized:
            continue
        w = params[layer.name].detach().cpu()
        if tuple(w.shape) != layer.shape:
            raise QuantizeError(f"'{layer.name}' is {list(w.shape)}, the model's is {list(layer.shape)}")
        if not bool(torch.isfinite(w).all()):
            bad = int((~torch.isfinite(w)).sum())
            raise QuantizeError(f"'{layer.name}' holds {bad} NaN or infinite value(s): it cannot be "
                                f"quantized",
                                hint="the weights are broken; retrain, or skip the layer with --skip")
        w = view(layer, w)
        s = scales(layer, w)
        out[layer.q_name] = codes(layer, w, s)
        out[layer.scale_name] = s
        if layer.kind == "st8":
            out[layer.in_scale_name] = activation_scale(layer.name, act_amax[layer.name])
    return out


def activation_scale(name: str, amax: float) -> torch.Tensor:
    """The int8 scale of activations ranging over [-amax, amax]: amax / 127 (0-d, f32), at least the
    smallest scale the IR accepts (an all-zero calibration range); a range that is not finite refused."""
    if not math.isfinite(amax) or amax < 0:
        raise QuantizeError(f"'{name}': the calibrated activation range is {amax}: the calibration data "
                            f"produced NaN or infinite activations",
                            hint="check the data, or skip the layer with --skip")
    return torch.tensor(max(amax / QMAX["int8-static"], SMALLEST_SCALE), dtype=torch.float32)


def dequantize(layer: Layer, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The weight the graph computes from `q` and `scale` (the evaluator's unpack_int4 and dequantize)."""
    b = GraphBuilder("dequantize")
    b.output("w", dequantized(b, layer))
    return evaluate(b.build(), {}, {layer.q_name: q, layer.scale_name: scale})["w"]
