"""The graphs a training run compiles from a train block, and what binds data to them: the one-graph
training step (`step_graph`), the pruning, QAT and adversarial settings that shape it, which graph input
each data set tensor feeds (`bind`), and validation of an evaluation executable (`validate`). The run
itself (folders, checkpoints, the loop): `axon/trainer.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from axon import data as datasets
from axon.driver import optimize
from axon.ir import AxonError, Graph, GraphBuilder, verify
from axon.optim import make_update
from axon.frontend.builtins import UPDATE_PREFIX
from axon.passes.autocast import autocast
from axon.passes.autodiff import GRAD_PREFIX, grad
from axon.passes.masks import mask_inputs, masked_gradients, masked_update, prunable
from axon.passes.loss_scale import FOUND_INF, LOSS_SCALE, SCALED_LOSS, keep_if, scale_loss, unscale
from axon.runtime import report
from axon.runtime.pruning import Pruner, PruneError

NEW = "new."                 # output new.<name>: the updated parameter or state <name>
SEED_INPUT = "seed"          # the model's dropout seed
QUIET = lambda *a, **k: None  # noqa: E731


class TrainError(AxonError):
    """A training run that cannot start or go on: bad data binding, a non-finite loss, a bad checkpoint."""


# --- the compiled graphs -----------------------------------------------------------------------------
def qat_settings(qat: dict | None) -> dict | None:
    """`--qat`'s options checked: {"mode": ..., "group": ...} (passes/qat.py), or None."""
    if not qat:
        return None
    from axon.passes.qat import QAT_MODES
    from axon.passes.quantize import GROUPS

    mode, group = qat.get("mode"), qat.get("group", 64)
    if mode not in QAT_MODES or group not in GROUPS or set(qat) - {"mode", "group"}:
        raise TrainError(f"quantization-aware training takes a mode ({', '.join(QAT_MODES)}) and a group "
                         f"({', '.join(map(str, GROUPS))}), got {qat}")
    return {"mode": mode, "group": group}


def step_graph(loss_graph: Graph, optimizer: dict, precision: str = "f32", masked=(), wrt=None) -> Graph:
    """Forward, loss, backward and the optimizer update of every parameter (or of those named in `wrt`:
    the others are read, not updated, as a GAN's generator in its discriminator's step), as one graph
    (in mixed precision for "bf16" or "f16"; f16 with loss scaling and a skipped step on inf/NaN). The
    parameters named in `masked` are pruned: a `mask.<name>` input keeps their removed entries zero
    (`passes/masks.py`)."""
    scaled = precision == "f16"
    loss_graph = autocast(loss_graph, precision)
    wrt = None if wrt is None else list(wrt)
    g = grad(scale_loss(loss_graph), SCALED_LOSS, wrt) if scaled else grad(loss_graph, "loss", wrt)
    b, mapping = GraphBuilder.extending(g)
    # parameters the model updates itself (running statistics): their new value, and no optimizer
    buffers = {name[len(UPDATE_PREFIX):]: mapping[node] for name, node in g.outputs.items()
               if name.startswith(UPDATE_PREFIX)}
    params = {name: mapping[p] for name, p in g.params.items()
              if p.dtype.is_float and name not in buffers and (wrt is None or name in wrt)}
    grads = {name: mapping[g.outputs[GRAD_PREFIX + name]] for name in params}
    scale = mapping[g.inputs[LOSS_SCALE]] if scaled else None
    updates = update_part(b, params, grads, optimizer, masked, scale)
    full = b.build()
    outputs = {"loss": full.outputs["loss"]}
    outputs.update({NEW + name: node for name, node in buffers.items()})
    outputs.update(updates)
    # Passes rebuild the graph through a builder, which types every node as it makes it: one check of
    # the result, not one after each pass (PassManager(verify=True) in the tests names a broken pass).
    step, _ = optimize(Graph(full.nodes, outputs, full.name), verify=False, out=QUIET)
    return verify(step)


def update_part(b: GraphBuilder, params: dict, grads: dict, optimizer: dict, masked=(),
                loss_scale=None) -> dict:
    """The optimizer's update of `params` from `grads` (nodes of `b`), as outputs by name: `new.<p>`,
    `new.state.<slot>.<p>`, and `found_inf` when the gradients are scaled by `loss_scale` (f16: unscaled
    here, the step skipped on inf/NaN). The parameters in `masked` keep their pruned entries zero."""
    if loss_scale is not None:
        grads, found_inf = unscale(b, grads, loss_scale)
    masks = mask_inputs(b, params, masked)
    grads = masked_gradients(b, grads, masks)
    new_params, state_inputs, new_states = make_update(b, params, grads, optimizer)
    new_params, new_states = masked_update(b, masks, new_params, new_states)
    outputs = {}
    if loss_scale is not None:  # a skipped step leaves the parameters and the optimizer state as they were
        new_params = keep_if(b, found_inf, params, new_params)
        new_states = keep_if(b, found_inf, state_inputs, new_states)
        outputs[FOUND_INF] = found_inf
    outputs.update({NEW + name: node for name, node in {**new_params, **new_states}.items()})
    return outputs


def pruner(loss_graph: Graph, prune: dict, epochs: int) -> Pruner:
    """The pruning of a run (a train block's `prune { ... }` record, or `axon prune`'s): the weights of
    the model's matmuls and convolutions, less those skipped."""
    granularity = prune.get("granularity", "element")
    layers = [name for name, reason in prunable(loss_graph, tuple(prune.get("skip") or ())).items()
              if reason is None]
    if granularity != "element":  # blocks and N:M patterns: [K, N] weights of matmuls
        from axon.passes.block_sparse import weights_read_by_matmul

        direct = weights_read_by_matmul(loss_graph)
        layers = [n for n in layers if direct.get(n, "") is None]
    if not layers:
        raise TrainError("pruning was asked for, but no matmul or conv2d weight is left to prune"
                         + (f" (skip = {prune.get('skip')})" if prune.get("skip") else ""))
    try:
        return Pruner(layers, prune["amount"], prune.get("scope", "layer"), prune.get("schedule", "oneshot"),
                      prune.get("start", 0), prune.get("end"), epochs, granularity)
    except PruneError as e:
        raise TrainError(str(e.args[0]) if e.args else str(e)) from None


def adversarial_loss(loss_graph: Graph, x_name: str, options: dict, train) -> Graph:
    """The train block's `adversarial = fgsm(...)` / `pgd(...)` on the loss graph, the inputs kept in
    the training data's range."""
    from axon.passes.adversarial import adversarial

    x = loss_graph.inputs[x_name]
    if not x.dtype.is_float:
        raise TrainError(f"adversarial training perturbs the model's input '{x_name}', which is {x.type}: "
                         f"it needs a floating-point input (token ids cannot be nudged)")
    data = train["inputs"]
    return adversarial(loss_graph, x_name, float(options["eps"]), options["attack"],
                       int(options.get("steps", 1)), options.get("step_size"),
                       float(options.get("alpha", 0.5)), float(data.min()), float(data.max()))


def feedback(step: Graph) -> dict[str, str]:
    """Each `new.<name>` output of a step graph -> the parameter or state input `<name>` it replaces
    (how CUDA graphs update them in place)."""
    return {out: out[len(NEW):] for out in step.outputs if out.startswith(NEW)}


@dataclass
class Binding:
    """Which graph input each data set tensor feeds."""

    inputs: str          # the model's data input
    labels: str          # the loss's label input
    label_dtype: torch.dtype
    output: str          # the model output the loss reads (for accuracy)

    def feed(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {self.inputs: batch["inputs"], self.labels: batch["labels"].to(self.label_dtype)}


def bind(graph: Graph, spec) -> Binding:
    if spec.gan is not None:
        raise TrainError(f"the train block of '{spec.model}' is a GAN's: `axon train` runs it with "
                         f"axon.gan_trainer.GanTrainer", spec.span)
    labels = list(spec.loss.labels)
    if len(labels) != 1:
        raise TrainError(f"the loss of '{spec.model}' takes {len(labels)} label inputs "
                         f"({', '.join(labels)}); a data set gives exactly one", spec.loss.span)
    data_inputs = [n for n in graph.inputs if n not in labels and n != SEED_INPUT]
    if len(data_inputs) != 1:
        raise TrainError(f"'{spec.model}' has {len(data_inputs)} data inputs ({', '.join(data_inputs)}); "
                         f"a train block feeds exactly one", spec.span)
    return Binding(data_inputs[0], labels[0], graph.inputs[labels[0]].dtype.torch,
                   spec.loss.outputs[0] if spec.loss.outputs else "")


def eval_feeds(exe, binding: Binding, part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The evaluation graph's inputs for a slice of a split: data, labels, and seed 0 (dropout is off)."""
    feeds = {k: v.to(exe.device) for k, v in binding.feed(part).items()}
    if SEED_INPUT in exe.graph.inputs:
        feeds[SEED_INPUT] = torch.tensor(0, dtype=torch.int64, device=exe.device)
    return feeds


def validate(exe, params: dict[str, torch.Tensor], split: dict[str, torch.Tensor], binding: Binding,
             batch: int, world=None) -> dict[str, float]:
    """Mean loss (and accuracy) of the evaluation executable `exe` over `split`, `batch` rows a call;
    data-parallel (`world`), each rank over its share of the rows, the sums added over the ranks."""
    n = datasets.num_examples(split)
    total, correct, counted = 0.0, 0.0, 0
    first, end = world.rows(n) if world is not None else (0, n)
    for start in range(first, end, batch):
        part = {k: v[start:min(start + batch, end)] for k, v in split.items()}
        feeds = eval_feeds(exe, binding, part)
        out = exe(feeds, params)
        rows = len(part["inputs"])
        total += float(out["loss"]) * rows
        if binding.output in out:
            c, k = report.correct(out[binding.output], feeds[binding.labels])
            correct, counted = correct + c, counted + k
    if world is not None:
        total, correct, counted = world.sum([total, correct, counted])
    result = {"loss": total / n}
    if counted:
        result["acc"] = correct / counted
    return result
