"""Training: a model's `train` block run as one compiled step (forward, loss, backward and the optimizer
update in a single graph), with validation, early stopping, checkpoints and exact resumption.

    step graph   inputs: the data input, the labels, `seed` (dropout), `step`, `lr`, `state.<slot>.<p>`
                 params: the model's parameters
                 outputs: `loss`, `new.<p>` for each parameter, `new.state.<slot>.<p>` for each state
    eval graph   the model with dropout off and the loss as output `loss` (validation, `axon eval`)

Everything a run is depends on (seed, epoch, batch): the data order (`axon.data.batches`), the dropout
seed of each step, the parameters' initial values. A checkpoint (safetensors, written atomically) holds
the parameters, the optimizer state and the run's progress; a resumed run continues from it exactly, so
a run killed mid-epoch and resumed ends with the same parameters as one never interrupted.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from axon import data as datasets
from axon.driver import executable, load_ast, optimize
from axon.ir import AxonError, Graph, GraphBuilder, init_params, verify
from axon.optim import LR_INPUT, STEP_INPUT, Schedule, make_update
from axon.frontend.builtins import UPDATE_PREFIX
from axon.passes.autodiff import GRAD_PREFIX, grad
from axon.codegen.files import atomic_write
from axon.runtime.safetensors import load, load_metadata, save

NEW = "new."                 # output new.<name>: the updated parameter or state <name>
SEED_INPUT = "seed"          # the model's dropout seed
CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"
QUIET = lambda *a, **k: None  # noqa: E731


class TrainError(AxonError):
    """A training run that cannot start or go on: bad data binding, a non-finite loss, a bad checkpoint."""


# --- the compiled graphs -----------------------------------------------------------------------------
def step_graph(loss_graph: Graph, optimizer: dict) -> Graph:
    """Forward, loss, backward and the optimizer update of every parameter, as one graph."""
    g = grad(loss_graph, "loss")
    b, mapping = GraphBuilder.extending(g)
    # parameters the model updates itself (running statistics): their new value, and no optimizer
    buffers = {name[len(UPDATE_PREFIX):]: mapping[node] for name, node in g.outputs.items()
               if name.startswith(UPDATE_PREFIX)}
    params = {name: mapping[p] for name, p in g.params.items() if p.dtype.is_float and name not in buffers}
    grads = {name: mapping[g.outputs[GRAD_PREFIX + name]] for name in params}
    new_params, _state_inputs, new_states = make_update(b, params, grads, optimizer)
    full = b.build()
    outputs = {"loss": full.outputs["loss"]}
    outputs.update({NEW + name: node for name, node in buffers.items()})
    outputs.update({NEW + name: node for name, node in new_params.items()})
    outputs.update({NEW + name: node for name, node in new_states.items()})
    # Passes rebuild the graph through a builder, which types every node as it makes it: one check of
    # the result, not one after each pass (PassManager(verify=True) in the tests names a broken pass).
    step, _ = optimize(Graph(full.nodes, outputs, full.name), verify=False, out=QUIET)
    return verify(step)


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


# --- a run -------------------------------------------------------------------------------------------
@dataclass
class Progress:
    """Where a run is: saved in every checkpoint's metadata."""

    epoch: int = 0            # the epoch under way (0-based)
    batch: int = 0            # the next batch of that epoch
    step: int = 0             # optimizer steps taken
    loss_sum: float = 0.0     # this epoch's training loss so far (sum over batches)
    best: float | None = None
    bad_epochs: int = 0       # epochs since the best (early stopping)
    stopped: str = ""         # why the run ended ("" while it goes on)
    history: list[dict] = field(default_factory=list)


class Trainer:
    """A `train` block made ready to run: graphs compiled, data loaded, parameters initialized."""

    def __init__(self, path: str | Path, model: str | None = None, *, hparams: dict | None = None,
                 device=None, out_dir: str | Path | None = None, epochs: int | None = None,
                 batch: int | None = None, seed: int | None = None, checkpoint_every: int = 0,
                 log=print, cuda_graphs: bool = False):
        from axon.frontend import training_graph

        backend = None
        if cuda_graphs:  # checked first: no compiling for a device that cannot run it
            from axon.runtime import choose
            from axon.runtime.cuda_graphs import CudaGraphs

            backend = CudaGraphs(choose(device))

        module = load_ast(path)
        loss_graph, spec = training_graph(module, model, hparams=hparams)
        eval_graph, _ = training_graph(module, model, hparams=hparams, training=False)
        self.spec = spec
        self.log = log
        self.seed = seed if seed is not None else (spec.seed if spec.seed is not None else 0)
        self.epochs = epochs or spec.epochs
        self.batch = batch or spec.batch or 32
        self.checkpoint_every = checkpoint_every
        self.out_dir = Path(out_dir or Path("runs") / spec.model)
        options = dict(spec.data.kwargs)
        self.data = datasets.make(spec.data.name, options, self.seed)
        self.binding = bind(loss_graph, spec)
        self.optimizer = {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)}
        self.schedule = Schedule.of(self.optimizer, self.epochs * datasets.num_batches(self.data.train,
                                                                                      self.batch))
        t0 = time.perf_counter()
        step = step_graph(loss_graph, self.optimizer)
        self.step_exe = executable(step, device)
        evaluate_graph, _ = optimize(eval_graph, out=QUIET)
        self.eval_exe = executable(evaluate_graph, self.step_exe.device)
        self.compile_s = time.perf_counter() - t0
        self.params = {k: v.to(self.step_exe.device) for k, v in init_params(step, self.seed).items()}
        self.states = {name: torch.zeros(tuple(n.shape), dtype=n.dtype.torch, device=self.step_exe.device)
                       for name, n in step.inputs.items() if name.startswith("state.")}
        self.progress = Progress()
        # the step as it runs: the executable, or its CUDA graphs, whose static buffers are the parameters
        # and optimizer state, updated in place by each replay
        self.step_call = self.step_exe
        if backend is not None:
            from axon.runtime.cuda_graphs import GraphedExecutable

            self.step_call = GraphedExecutable(self.step_exe, feedback=feedback(step),
                                               adopt={**self.params, **self.states}, backend=backend)

    # --- running ---------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> Progress:
        """Train until the epochs are done or early stopping says stop; returns the final progress."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.restore(self.out_dir / CHECKPOINT)
            self.log(f"resumed from {self.out_dir / CHECKPOINT} at epoch {self.progress.epoch + 1}, "
                     f"batch {self.progress.batch}")
        p = self.progress
        while not p.stopped and p.epoch < self.epochs:
            self._epoch()
        if not p.stopped:
            p.stopped = "done"
        self._write_metrics()
        return p

    def _epoch(self) -> None:
        p = self.progress
        n_batches = datasets.num_batches(self.data.train, self.batch)
        t0, seen = time.perf_counter(), 0
        for i, batch in datasets.batches(self.data.train, self.batch, self.seed, p.epoch, start=p.batch):
            loss = self._step(batch)
            if not math.isfinite(loss):
                p.stopped = f"non-finite loss ({loss}) at step {p.step + 1}"
                self._write_metrics()
                raise TrainError(f"training stopped: the loss is {loss} at epoch {p.epoch + 1}, batch {i}; "
                                 f"the last good checkpoint is kept in {self.out_dir / CHECKPOINT}",
                                 hint="lower the learning rate, or add clip = 1.0 to the optimizer")
            p.step, p.batch, p.loss_sum = p.step + 1, i + 1, p.loss_sum + loss
            seen += self.batch
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            self._bar(i + 1, n_batches, p.loss_sum / p.batch, rate)
            if self.checkpoint_every and p.step % self.checkpoint_every == 0 and p.batch < n_batches:
                self.save(self.out_dir / CHECKPOINT)
        val = self.validate()
        record = {"epoch": p.epoch + 1, "step": p.step, "train_loss": p.loss_sum / max(p.batch, 1),
                  **{f"val_{k}": v for k, v in val.items()}, "seconds": round(time.perf_counter() - t0, 3),
                  "lr": self.schedule(max(p.step, 1))}
        p.history.append(record)
        self.log(_format(record, self.epochs))
        self._early_stop(val)
        p.epoch, p.batch, p.loss_sum = p.epoch + 1, 0, 0.0
        self.save(self.out_dir / CHECKPOINT)
        self._write_metrics()

    def _step(self, batch: dict[str, torch.Tensor]) -> float:
        p, dev = self.progress, self.step_exe.device
        t = p.step + 1
        feeds = {k: v.to(dev) for k, v in self.binding.feed(batch).items()}
        scalars = {STEP_INPUT: float(t), LR_INPUT: self.schedule(t)}
        for name, value in scalars.items():
            feeds[name] = torch.tensor(value, dtype=torch.float64, device=dev)
        if SEED_INPUT in self.step_exe.graph.inputs:
            feeds[SEED_INPUT] = torch.tensor(self.seed * 1_000_003 + t, dtype=torch.int64, device=dev)
        feeds.update(self.states)
        out = self.step_call(feeds, self.params)
        self.params = {name: out[NEW + name] for name in self.params}
        self.states = {name: out[NEW + name] for name in self.states}
        return float(out["loss"])

    def validate(self) -> dict[str, float]:
        """Mean loss (and accuracy) over the validation split, dropout off."""
        split = self.data.val
        n = datasets.num_examples(split)
        total, correct, counted = 0.0, 0.0, 0
        for start in range(0, n, self.batch):
            part = {k: v[start:start + self.batch] for k, v in split.items()}
            feeds = {k: v.to(self.eval_exe.device) for k, v in self.binding.feed(part).items()}
            if SEED_INPUT in self.eval_exe.graph.inputs:
                feeds[SEED_INPUT] = torch.tensor(0, dtype=torch.int64, device=self.eval_exe.device)
            out = self.eval_exe(feeds, self.params)
            rows = len(part["inputs"])
            total += float(out["loss"]) * rows
            if self.binding.output in out:
                c, k = _correct(out[self.binding.output], feeds[self.binding.labels])
                correct, counted = correct + c, counted + k
        result = {"loss": total / n}
        if counted:
            result["acc"] = correct / counted
        return result

    def _early_stop(self, val: dict[str, float]) -> None:
        p, es = self.progress, self.spec.early_stop
        metric = (es.get("metric") if es else None) or "val_loss"
        higher = metric in ("val_acc", "acc", "accuracy")
        value = val.get("acc" if higher else "loss")
        if value is None:
            return
        delta = float(es.get("min_delta", 0.0)) if es else 0.0
        better = p.best is None or (value > p.best + delta if higher else value < p.best - delta)
        if better:
            p.best, p.bad_epochs = value, 0
            self.save(self.out_dir / BEST)
        else:
            p.bad_epochs += 1
            if es and p.bad_epochs >= int(es.get("patience", 5)):
                p.stopped = f"early stop: {metric} has not improved for {p.bad_epochs} epochs"
                self.log(p.stopped)

    # --- checkpoints -----------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        tensors = {f"param/{k}": v for k, v in self.params.items()}
        tensors.update({f"state/{k}": v for k, v in self.states.items()})
        meta = {"progress": json.dumps(self.progress.__dict__), "model": self.spec.model,
                "seed": str(self.seed)}
        save(tensors, path, meta)

    def restore(self, path: Path) -> None:
        """Parameters, optimizer state and progress from a checkpoint of this model."""
        if not Path(path).exists():
            raise TrainError(f"{path}: no checkpoint to resume from (start without --resume)")
        meta = load_metadata(path)
        if meta.get("model") != self.spec.model:
            raise TrainError(f"{path}: a checkpoint of model '{meta.get('model')}', not '{self.spec.model}'")
        tensors = load(path, device=self.step_exe.device)
        self.params = _section(tensors, "param/", self.params, path)
        self.states = _section(tensors, "state/", self.states, path)
        self.seed = int(meta.get("seed", self.seed))
        self.progress = Progress(**json.loads(meta["progress"]))

    def load_params(self, path: str | Path) -> None:
        """Only the parameters of a checkpoint (for `axon eval`)."""
        self.params = _section(load(path, device=self.step_exe.device), "param/", self.params, path)

    # --- reporting -------------------------------------------------------------------------------------
    def _bar(self, done: int, total: int, loss: float, rate: float) -> None:
        if not sys.stderr.isatty():
            return
        width = 24
        filled = int(width * done / total)
        sys.stderr.write(f"\repoch {self.progress.epoch + 1}/{self.epochs} [{'=' * filled}"
                         f"{' ' * (width - filled)}] {done}/{total} loss {loss:.4f} {rate:,.0f} ex/s ")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def _write_metrics(self) -> None:
        p = self.progress
        record = {"model": self.spec.model, "data": self.data.name, "seed": self.seed, "epochs": self.epochs,
                  "batch": self.batch, "optimizer": self.optimizer, "steps": p.step, "stopped": p.stopped,
                  "best": p.best, "compile_seconds": round(self.compile_s, 3),
                  "device": str(self.step_exe.device), "cuda_graphs": self.step_call is not self.step_exe,
                  "history": p.history}
        if "unigram_entropy" in self.data.info:
            record["unigram_baseline_loss"] = self.data.info["unigram_entropy"]
        atomic_write(self.out_dir / "metrics.json", json.dumps(record, indent=1, default=str) + "\n")
        if p.history:
            plot(p.history, self.out_dir / "curve.png", f"{self.spec.model} on {self.data.name}")


def _section(tensors, prefix: str, like: dict[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    got = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing = sorted(set(like) - set(got))
    extra = sorted(set(got) - set(like))
    bad = [k for k in like if k in got and (got[k].shape != like[k].shape or got[k].dtype != like[k].dtype)]
    if missing or extra or bad:
        what = "; ".join(filter(None, [
            missing and f"missing {', '.join(missing[:5])}", extra and f"unexpected {', '.join(extra[:5])}",
            bad and f"different shape or dtype: {', '.join(bad[:5])}"]))
        raise TrainError(f"{path}: does not fit this model ({what})")
    return {k: got[k] for k in like}


def _correct(out: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Correct predictions and their count: argmax over classes for integer labels, the sign of a logit
    for 0/1 float targets."""
    if not labels.dtype.is_floating_point:
        if out.dim() != labels.dim() + 1:
            return 0.0, 0
        return float((out.argmax(-1) == labels).sum()), labels.numel()
    if out.shape != labels.shape:
        return 0.0, 0
    return float(((out > 0) == (labels > 0.5)).sum()), labels.numel()


def _format(r: dict, epochs: int) -> str:
    acc = f"  val acc {r['val_acc']:.2%}" if "val_acc" in r else ""
    return (f"epoch {r['epoch']:>3}/{epochs}  train loss {r['train_loss']:.4f}  val loss {r['val_loss']:.4f}"
            f"{acc}  {r['seconds']:.1f}s")


def plot(history: list[dict], path: Path, title: str) -> None:
    """Loss curves (and validation accuracy) by epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [r["train_loss"] for r in history], label="train loss")
    ax.plot(epochs, [r["val_loss"] for r in history], label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if "val_acc" in history[0]:
        acc = ax.twinx()
        acc.plot(epochs, [r["val_acc"] for r in history], color="tab:green", label="val acc")
        acc.set_ylabel("val accuracy")
        acc.legend(loc="center right")
    ax.legend(loc="upper right")
    fig.tight_layout()
    try:
        atomic_write(path, writer=lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
