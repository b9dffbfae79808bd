"""Dynamic loss scaling inside the training step, as torch.cuda.amp.GradScaler does it around one.

f16 holds no value above 65504 and none below 6e-8 but zero: small gradients of an f16 model vanish.
GradScaler multiplies the loss by a scale S before the backward (so every gradient is S times larger),
divides the gradients by S before the optimizer step, and skips the step when a gradient came out inf
or NaN (S was too large), halving S; after `growth_interval` good steps in a row it doubles S. The
step graph does the in-graph half (`runtime/scaler.py` keeps S on the host):

    scale_loss    the loss graph with an input `loss_scale` (f32[], S) and an output
                  `scaled_loss` = loss * S: what autodiff differentiates
    unscale       each gradient times 1/S (computed in f64 and rounded to f32, as GradScaler's
                  inv_scale), and `found_inf`: a bool, true when any gradient holds inf or NaN
    keep_if       where(found_inf, old, new) for each parameter and optimizer state: a skipped step
                  leaves them as they were, as GradScaler's skipped `optimizer.step()` does

The step graph also outputs `found_inf`, which the host reads to update S. bf16 has f32's range and
needs none of this.
"""
from __future__ import annotations

from collections.abc import Mapping

from axon.ir import DType, Graph, GraphBuilder, Node, PassError

LOSS_SCALE = "loss_scale"     # step-graph input: the scale S, f32[]
SCALED_LOSS = "scaled_loss"   # loss * S, the output autodiff differentiates
FOUND_INF = "found_inf"       # step-graph output: a gradient held inf or NaN, so the step was skipped


def scale_loss(graph: Graph, loss: str = "loss") -> Graph:
    """`graph` plus the input `loss_scale` and the output `scaled_loss` = loss * loss_scale."""
    for name in (LOSS_SCALE, SCALED_LOSS):
        if name in graph.inputs or name in graph.params or name in graph.outputs:
            raise PassError(f"the graph already has a value named '{name}', which loss scaling adds")
    b, mapping = GraphBuilder.extending(graph)
    value = mapping[graph.outputs[loss]]
    scale = b.input(LOSS_SCALE, DType.F32, ())
    b.output(SCALED_LOSS, b.mul(value, b.cast(scale, value.dtype)))
    return b.build()


def unscale(b: GraphBuilder, grads: Mapping[str, Node], scale: Node) -> tuple[dict[str, Node], Node]:
    """The gradients divided by the scale, and whether any of them holds inf or NaN (a bool scalar).

    The check is `sum(g * 0) != 0` summed over the tensors: 0 when every element is finite, NaN as soon
    as one is not (inf * 0 and NaN * 0 are NaN, and a sum of zeros never overflows)."""
    inv = b.cast(b.div(1.0, b.cast(scale, DType.F64)), DType.F32)
    unscaled: dict[str, Node] = {}
    total = None
    for name, g in grads.items():
        unscaled[name] = g = b.mul(g, b.cast(inv, g.dtype))
        zero = b.mul(g, 0.0)
        bad = b.cast(b.sum(zero) if g.shape else zero, DType.F32)
        total = bad if total is None else b.add(total, bad)
    found = b.ne(total, 0.0) if total is not None else b.const(False, DType.BOOL)
    return unscaled, found


def keep_if(b: GraphBuilder, found: Node, old: Mapping[str, Node],
            new: Mapping[str, Node]) -> dict[str, Node]:
    """Each new value, or the old one where `found` is true (the step skipped)."""
    return {name: b.where(found, old[name], node) for name, node in new.items()}
