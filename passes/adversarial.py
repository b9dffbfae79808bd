"""Adversarial training compiled into the step: the loss graph rewritten so the loss is taken at
adversarial inputs too (Goodfellow et al. 2015; PGD: Madry et al. 2018).

    loss' = (1 - alpha) * loss(x) + alpha * loss(x_adv)
    fgsm:  x_adv = clamp(x + eps * sign(d loss / dx), lo, hi)
    pgd:   `steps` times: x_adv = clamp(project_eps(x_adv + step_size * sign(d loss(x_adv) / d x_adv)))

The input gradient is the graph's own (`passes.autodiff.grad` with respect to the input), and the loss
at x_adv is the loss graph again with the input replaced, all in one graph, so the training step that
`axon.trainer.step_graph` builds from it computes the attack and the update in one compiled call. The
attack's path carries no gradient to the parameters (sign's derivative is zero), as in the papers.
"""
from __future__ import annotations

from axon.ir import Graph, GraphBuilder, Node, OpKind
from axon.passes.autodiff import GRAD_PREFIX, grad

K = OpKind


def inline(b: GraphBuilder, graph: Graph, replace: dict[str, Node]) -> dict[str, Node]:
    """`graph`'s nodes rebuilt in `b`: its inputs named in `replace` are those nodes, its other inputs
    and parameters the ones `b` already has of the same names. Returns its outputs by name."""
    mapping: dict[Node, Node] = {}
    for node in graph.nodes:
        if node.op in (K.INPUT, K.PARAM):
            name = node.attrs.name
            mapping[node] = replace[name] if name in replace else b.lookup(name)
            if mapping[node] is None:
                mapping[node] = b.node(node.op, (), node.attrs)
        else:
            mapping[node] = b.node(node.op, [mapping[i] for i in node.inputs], node.attrs)
    return {name: mapping[n] for name, n in graph.outputs.items()}


def adversarial(loss_graph: Graph, x_name: str, eps: float, method: str = "fgsm", steps: int = 1,
                step_size: float | None = None, alpha: float = 0.5, lo: float | None = None,
                hi: float | None = None, loss: str = "loss") -> Graph:
    """The loss graph with `loss` replaced by the clean/adversarial mix (its other outputs kept)."""
    with_grad = grad(loss_graph, loss, wrt=[x_name])
    b = GraphBuilder(loss_graph.name)
    outs = inline(b, with_grad, {})
    x = b.lookup(x_name)
    clean = outs[loss]

    def clamp(v: Node) -> Node:
        if lo is not None:
            v = b.maximum(v, lo)
        if hi is not None:
            v = b.minimum(v, hi)
        return v

    if method == "fgsm":
        adv = clamp(b.add(x, b.mul(b.sign(outs[GRAD_PREFIX + x_name]), eps)))
    else:  # pgd from x itself
        size = step_size if step_size is not None else 2.5 * eps / steps
        adv, g = x, outs[GRAD_PREFIX + x_name]
        for i in range(steps):
            adv = b.add(adv, b.mul(b.sign(g), size))
            adv = clamp(b.minimum(b.maximum(adv, b.sub(x, eps)), b.add(x, eps)))
            if i + 1 < steps:
                g = inline(b, with_grad, {x_name: adv})[GRAD_PREFIX + x_name]
    adv_loss = inline(b, loss_graph, {x_name: adv})[loss]
    total = b.add(b.mul(clean, 1.0 - alpha), b.mul(adv_loss, alpha))
    for name in loss_graph.outputs:
        b.output(name, total if name == loss else outs[name])
    return b.build()
