"""Mixup (Zhang et al. 2018) compiled into the training step: the loss taken against two label sets.

    x' = lam * x + (1 - lam) * x[perm]                       (on the host, per batch: runtime/augment.py)
    loss' = lam * loss(model(x'), y) + (1 - lam) * loss(model(x'), y[perm])

The rewrite adds two inputs, `mixup.labels` (the labels of the rows mixed in, y[perm]) and `mixup.lambda`
(an f32 scalar), and rebuilds the loss a second time with the label input replaced by the mixed-in one.
The builder interns nodes, so everything that does not read the labels (the whole model) is one node in
both losses: the forward runs once, only the loss function twice. For cross-entropy this equals the loss
against the mixed one-hot targets lam * onehot(y) + (1 - lam) * onehot(y[perm]), for any loss it is the
paper's formulation.
"""
from __future__ import annotations

from axon.ir import DType, Graph, GraphBuilder, PassError

from .adversarial import inline

MIX_LABELS = "mixup.labels"
MIX_LAMBDA = "mixup.lambda"


def mixup_loss(loss_graph: Graph, labels: str, loss: str = "loss") -> Graph:
    """`loss_graph` with `loss` replaced by the mixup loss over `labels` and `mixup.labels`."""
    if labels not in loss_graph.inputs:
        raise PassError(f"mixup mixes the labels '{labels}', which the loss graph does not take")
    for name in (MIX_LABELS, MIX_LAMBDA):
        if name in loss_graph.inputs:
            raise PassError(f"the graph already has an input named '{name}'")
    y = loss_graph.inputs[labels]
    b = GraphBuilder(loss_graph.name)
    outs = inline(b, loss_graph, {})
    mixed_in = b.input(MIX_LABELS, y.dtype, y.shape)
    lam = b.input(MIX_LAMBDA, DType.F32, ())
    other = inline(b, loss_graph, {labels: mixed_in})[loss]
    base = outs[loss]
    if base.dtype != DType.F32:
        lam = b.cast(lam, base.dtype)
    total = b.add(b.mul(base, lam), b.mul(other, b.sub(b.const(1.0, lam.dtype), lam)))
    for name in loss_graph.outputs:
        b.output(name, total if name == loss else outs[name])
    return b.build()
