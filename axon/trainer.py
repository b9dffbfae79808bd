"""Training: a model's `train` block run as one compiled step (forward, loss, backward and the optimizer
update in a single graph), with validation, early stopping, checkpoints and exact resumption.

    step graph   inputs: the data input, the labels, `seed` (dropout), `step`, `lr`, `state.<slot>.<p>`
                 params: the model's parameters
                 outputs: `loss`, `new.<p>` for each parameter, `new.state.<slot>.<p>` for each state
    eval graph   the model with dropout off and the loss as output `loss` (validation, `axon eval`)

`precision` "bf16" or "f16" trains in mixed precision, as torch.autocast (+ GradScaler for f16): both
graphs through `passes/autocast.py` (f32 master weights, dots in 16 bits, the loss in f32); an f16 step
also takes the input `loss_scale` and outputs `found_inf` (`passes/loss_scale.py`, `runtime/scaler.py`).

Everything a run is depends on (seed, epoch, batch): the data order (`axon.data.batches`), the dropout
seed of each step, the parameters' initial values. A checkpoint (safetensors, written atomically) holds
the parameters, the optimizer state and the run's progress; a resumed run continues from it exactly, so
a run killed mid-epoch and resumed ends with the same parameters as one never interrupted.
"""
from __future__ import annotations

import hashlib
import json
import math
import signal
import time
from pathlib import Path

import torch

from axon import data as datasets
from axon.driver import executable, load_ast, optimize, read_source
from axon.ir import AxonError, Graph, init_params
from axon.optim import LR_INPUT, STEP_INPUT, Schedule
from axon.passes.autocast import PRECISIONS, autocast
from axon.passes.masks import mask_input_name
from axon.passes.loss_scale import FOUND_INF, LOSS_SCALE
from axon.passes.mixup import MIX_LABELS, MIX_LAMBDA, mixup_loss
from axon.passes.qat import QAT
from axon.passes.structured import apply as apply_structure
from axon.codegen.files import atomic_write
from axon.ir.text import print_graph
from axon.runtime import checkpoint, report, runs
from axon.runtime.checkpoint import Progress, section
from axon.runtime.interrupts import Interrupted, deferred
from axon.runtime.runs import BEST, CHECKPOINT, METRICS
from axon.passes.block_sparse import BlockSparse
from axon.runtime.augment import Augment
from axon.runtime.pruning import refresh_block_indices, sparsity
from axon.runtime.safetensors import load
from axon.runtime.scaler import LossScaler

from axon.train_graphs import (NEW, QUIET, SEED_INPUT, Binding, TrainError, adversarial_loss, bind,  # noqa: F401
                                feedback, pruner, qat_settings, step_graph, validate)


# --- a run -------------------------------------------------------------------------------------------
class Trainer:
    """A `train` block made ready to run: run folder claimed, graphs compiled, data loaded, parameters
    initialized (or, with `resume`, the settings and state of the run in the folder's checkpoint).

    Settings not given (epochs, batch, seed, hyper-parameters, precision) come from the run record of the
    checkpoint resumed, or of `settings_from`, else from the train block (precision: f32).
    `claim_folder=False` (evaluation) claims no run folder; such a trainer cannot `fit`."""

    def __init__(self, path: str | Path, model: str | None = None, *, hparams: dict | None = None,
                 device=None, out_dir: str | Path | None = None, epochs: int | None = None,
                 batch: int | None = None, seed: int | None = None, checkpoint_every: int = 0,
                 log=print, cuda_graphs: bool = False, resume: bool = False, overwrite: bool = False,
                 checkpoint_on_interrupt: bool = True, claim_folder: bool = True,
                 settings_from: str | Path | None = None, precision: str | None = None,
                 qat: dict | None = None, init: str | Path | None = None, prune: dict | None = None,
                 structure: dict | None = None, world=None):
        from axon.frontend import training_graph

        if precision is not None and precision not in PRECISIONS:
            raise TrainError(f"unknown precision '{precision}': expected one of {', '.join(PRECISIONS)}")
        backend = None
        if cuda_graphs:  # checked first: no compiling for a device that cannot run it
            from axon.runtime import choose
            from axon.runtime.cuda_graphs import CudaGraphs

            backend = CudaGraphs(choose(device))

        self.world = world  # data-parallel ranks (`runtime/distributed.py`), or None: one process
        if world is not None and cuda_graphs:
            raise TrainError("data-parallel training (--nproc) runs without CUDA graphs for now (the step is "
                             "two graphs with an all-reduce between); drop --cuda-graphs or train in one "
                             "process")
        module, saved = self._open(path, model, out_dir, resume, overwrite, claim_folder and self.lead,
                                   settings_from, log if self.lead else QUIET)
        if saved:  # a resumed run keeps the settings it was started with unless told otherwise
            epochs = epochs or saved.get("epochs")
            batch = batch or saved.get("batch")
            seed = seed if seed is not None else saved.get("seed")
            precision = precision or saved.get("precision")
            qat = qat or saved.get("qat")
            structure = structure or saved.get("structure")
            hparams = {**(saved.get("hparams") or {}), **(hparams or {})}
        loss_graph, spec = training_graph(module, model, hparams=hparams or None)
        eval_graph, _ = training_graph(module, model, hparams=hparams or None, training=False)
        if structure:  # structurally pruned: the smaller model (`axon prune --method structured`)
            loss_graph, eval_graph = (apply_structure(g, structure) for g in (loss_graph, eval_graph))
        self.qat = qat_settings(qat)
        if self.qat:  # quantization-aware: the weights (activations) through the codes deployed
            loss_graph, eval_graph = (QAT(**self.qat).run(g) for g in (loss_graph, eval_graph))
        self.spec = spec
        self.resume = resume
        self.checkpoint_on_interrupt = checkpoint_on_interrupt
        self.seed = seed if seed is not None else (spec.seed if spec.seed is not None else 0)
        self.epochs = epochs or spec.epochs
        self.batch = batch or spec.batch or 32
        self.checkpoint_every = checkpoint_every
        self.precision = precision or "f32"
        self.scaler = LossScaler() if self.precision == "f16" else None  # bf16 needs no loss scaling
        options = dict(spec.data.kwargs)
        self.data = datasets.make(spec.data.name, options, self.seed, span=spec.data.span,
                                  option_spans={k.name: k.span for k in spec.data.call.kwargs})
        self.binding = bind(loss_graph, spec)
        self.optimizer = {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)}
        steps = self.epochs * datasets.num_batches(self.data.train, self.batch)
        self.schedule = Schedule.of(self.optimizer, steps)
        t0 = time.perf_counter()
        a = spec.augment
        self.augment = Augment(a.crop, a.flip, a.rotate, a.noise, a.mixup) if a else None
        if self.augment is not None:
            try:
                self.augment.check(self.data.train["inputs"].shape, self.data.train["inputs"].dtype)
            except AxonError as e:
                raise TrainError(e.message, spec.augment.span, hint=e.hint) from None
        self.adversarial = {"attack": spec.adversarial.name, **dict(spec.adversarial.kwargs)} \
            if spec.adversarial else None
        if self.adversarial:  # the attack and the loss at the attacked inputs, in the step
            loss_graph = adversarial_loss(loss_graph, self.binding.inputs, self.adversarial, self.data.train)
        if self.augment is not None and self.augment.mixup:  # the loss against both label sets
            loss_graph = mixup_loss(loss_graph, self.binding.labels)
        prune = prune if prune is not None else (spec.prune.record() if spec.prune else None)
        self.pruner = pruner(loss_graph, prune, self.epochs) if prune else None
        masked = self.pruner.layers if self.pruner else ()
        weights_graph = eval_graph  # what --init weights must fit
        if self.pruner and self.pruner.kind == "block":  # block-sparse kernels, forward and for dx
            sparse = BlockSparse(self.pruner.size, "|".join(masked))
            loss_graph, eval_graph = sparse.run(loss_graph), sparse.run(eval_graph)
        step = step_graph(loss_graph, self.optimizer, self.precision, masked)
        self.run = {
            "model": spec.model, "step_graph": hashlib.sha256(print_graph(step).encode()).hexdigest(),
            "source": hashlib.sha256(read_source(path).encode()).hexdigest(), "hparams": hparams or {},
            "data": {"name": spec.data.name, **options}, "batch": self.batch, "seed": self.seed,
            "epochs": self.epochs, "optimizer": self.optimizer, "early_stop": spec.early_stop,
            "schedule_steps": steps if self.schedule.kind == "cosine" else None,  # spans the whole run
            "checkpoint_every": checkpoint_every, "device": None, "precision": self.precision,
            "qat": self.qat, "init": str(init) if init else None,
            "prune": self.pruner.record() if self.pruner else None, "structure": structure,
            "adversarial": self.adversarial, "augment": self.augment.record() if self.augment else None}
        self.step_exe = self._compile_step(step, loss_graph, device)
        self.run["device"] = str(self.step_exe.device)
        if resume:
            self._check_resume(saved)
        evaluate_graph, _ = optimize(autocast(eval_graph, self.precision), out=QUIET)
        self.eval_exe = executable(evaluate_graph, self.step_exe.device)
        self.compile_s = time.perf_counter() - t0
        self.params = {k: v.to(self.step_exe.device) for k, v in init_params(step, self.seed).items()}
        if init and not resume:  # fine-tuning (QAT from a float model): these parameters, fresh state
            from axon.api import fitting_weights

            start = fitting_weights(weights_graph, init)
            self.params.update({k: v.to(self.step_exe.device) for k, v in start.items()})
        self.states = {name: torch.zeros(tuple(n.shape), dtype=n.dtype.torch, device=self.step_exe.device)
                       for name, n in step.inputs.items() if name.startswith("state.")}
        self.masks = {n: torch.ones_like(self.params[n]) for n in masked}
        self.progress = Progress()
        # the step as it runs: the executable, or its CUDA graphs, whose static buffers are the parameters
        # and optimizer state, updated in place by each replay
        self.step_call = self.dp if world is not None else self.step_exe
        self.graphed = backend is not None
        if backend is not None:
            from axon.runtime.cuda_graphs import GraphedExecutable

            self.step_call = GraphedExecutable(self.step_exe, feedback=feedback(step),
                                               adopt={**self.params, **self.states}, backend=backend)

    def _compile_step(self, step: Graph, loss_graph: Graph, device):
        """The step's executable; data-parallel, the step cut at the all-reduce (gradients, then the
        update: `self.dp`, whose gradient executable is returned)."""
        if self.world is None:
            return executable(step, device)
        if self.pruner is not None and self.pruner.kind == "block":
            raise TrainError("data-parallel training (--nproc) runs block-sparse pruning in one process for "
                             "now (its kernels count block products into a shared counter)")
        if self.batch < self.world.size:
            raise TrainError(f"{self.world.size} processes need a batch of at least {self.world.size} rows "
                             f"(each takes a share of every batch); the batch is {self.batch}")
        from axon.data_parallel import DataParallelStep

        b = self.binding
        rows = (b.inputs, b.labels, *([MIX_LABELS] if MIX_LABELS in loss_graph.inputs else []))
        self.dp = DataParallelStep(loss_graph, self.optimizer, self.precision, self.world, device, rows,
                                   loss_graph.inputs[b.inputs].shape[0],
                                   self.pruner.layers if self.pruner else ())
        return self.dp.grad_exe

    def _open(self, path, model, out_dir, resume: bool, overwrite: bool, claim_folder: bool, settings_from,
              log) -> tuple:
        """The parsed module, and the run record whose settings this run takes (the checkpoint resumed, or
        `settings_from`; None). The run folder is claimed first: refused, unwritable or locked before any
        compute."""
        from axon.frontend import train_spec

        module = load_ast(path)
        named = train_spec(module, model)
        default = Path("runs") / (named.model if named else "run")
        self.folder = runs.claim(out_dir, default, resume=resume, overwrite=overwrite) if claim_folder \
            else None
        self.out_dir = self.folder.path if self.folder else Path(out_dir or default)
        self.log = log
        if self.folder and self.folder.note:
            log(self.folder.note)
        settings_from = self.out_dir / CHECKPOINT if resume else settings_from
        return module, _saved_run(Path(settings_from)) if settings_from else None

    def _check_resume(self, saved: dict | None) -> None:
        path = self.out_dir / CHECKPOINT
        if saved is None:
            self.log(f"{path} was written before checkpoints recorded their run: only its model, "
                     f"parameter shapes and seed are checked")
            meta = checkpoint.read_meta(path)
            if meta.get("seed", str(self.seed)) != str(self.seed):
                raise TrainError(f"--resume: {path} was trained with seed {meta['seed']}, this run has "
                                 f"{self.seed}", hint=f"resume with --seed {meta['seed']}")
            return
        breaks, allowed = runs.compare(saved, self.run)
        if breaks:
            lines = "\n".join("  " + line for line in breaks)
            raise TrainError(f"--resume: these settings differ from the run saved in {path}, and the run "
                             f"cannot continue with them:\n{lines}",
                             hint="drop the options that change them to continue the saved run, or start a "
                                  "new run without --resume")
        for line in allowed:
            self.log(f"resuming with a change: {line}")

    # --- running ---------------------------------------------------------------------------------------
    def fit(self) -> Progress:
        """Train until the epochs are done or early stopping says stop; returns the final progress.

        SIGINT/SIGTERM stop the run at the next step boundary with a checkpoint (`Interrupted`)."""
        if self.folder is None and self.lead:
            raise TrainError("this trainer was made without a run folder (claim_folder=False): it cannot fit")
        try:
            if self.resume:
                self.restore(self.out_dir / CHECKPOINT)
                self.log(f"resumed from {self.out_dir / CHECKPOINT} at epoch {self.progress.epoch + 1}, "
                         f"batch {self.progress.batch}")
            elif self.folder is not None:
                self.folder.clear()  # --overwrite: the old run's files go once this one is ready
            p = self.progress
            with deferred() as stop:
                self.stop = stop
                while not p.stopped and p.epoch < self.epochs:
                    self._epoch()
            if not p.stopped:
                p.stopped = "done"
            self._write_metrics()
            return p
        finally:
            if self.folder is not None:
                self.folder.release()

    def _epoch(self) -> None:
        p = self.progress
        n_batches = datasets.num_batches(self.data.train, self.batch)
        t0 = time.perf_counter()
        if self.pruner and p.batch == 0:
            pruned = self.pruner.update(p.epoch, self.params, self.states, self.masks)
            if pruned is not None and self.pruner.kind == "block":  # the kernels' block lists, once
                refresh_block_indices(self.params, self.pruner.layers, self.pruner.size)
            if pruned:
                removed = sum(int((m == 0).sum()) for m in self.masks.values())
                total = sum(m.numel() for m in self.masks.values())
                self.log(f"pruned: {removed:,} of the {total:,} weights of {len(self.masks)} layers removed "
                         f"({sparsity(self.masks):.1%}; this epoch's target {pruned:.1%})")
        bar = report.progress(f"epoch {p.epoch + 1}/{self.epochs}", n_batches, p.batch)
        try:
            self._steps(bar, n_batches)
        finally:
            bar.close()
        val = self.validate()
        record = {"epoch": p.epoch + 1, "step": p.step, "train_loss": p.loss_sum / max(p.batch, 1),
                  **self._train_record(), **{f"val_{k}": v for k, v in val.items()},
                  "seconds": round(time.perf_counter() - t0, 3), "lr": self.schedule(max(p.step, 1))}
        p.history.append(record)
        self.log(report.format_epoch(record, self.epochs))
        self._early_stop(val)
        p.epoch, p.batch, p.loss_sum, p.loss_sum_g = p.epoch + 1, 0, 0.0, 0.0
        self.save(self.out_dir / CHECKPOINT)
        self._write_metrics()
        if self._stopping() and not p.stopped and p.epoch < self.epochs:
            self._interrupted(saved=True)

    def _train_record(self) -> dict:
        """More of the epoch's training figures for its record (a GAN's generator loss)."""
        return {}

    def _steps(self, bar, n_batches: int) -> None:
        """The epoch's remaining steps, each shown on `bar`."""
        p = self.progress
        t0, seen = time.perf_counter(), 0
        for i, batch in datasets.batches(self.data.train, self.batch, self.seed, p.epoch, start=p.batch):
            if self.augment is not None:
                batch = self._augmented(batch, p.epoch, i)
            loss = self._step(batch)
            if not math.isfinite(loss):
                p.stopped = f"non-finite loss ({loss}) at step {p.step + 1}"
                self._write_metrics()
                raise TrainError(f"training stopped: the loss is {loss} at epoch {p.epoch + 1}, batch {i}; "
                                 f"{self._last_checkpoint()}",
                                 hint="lower the learning rate, or add clip = 1.0 to the optimizer")
            p.step, p.batch, p.loss_sum = p.step + 1, i + 1, p.loss_sum + loss
            seen += self.batch
            bar.update(1)
            bar.set_postfix(loss=f"{p.loss_sum / p.batch:.4f}",
                            ex_s=f"{seen / max(time.perf_counter() - t0, 1e-9):,.0f}", refresh=False)
            if self._stopping() and p.batch < n_batches:
                self._interrupted()
            if self.checkpoint_every and p.step % self.checkpoint_every == 0 and p.batch < n_batches:
                self.save(self.out_dir / CHECKPOINT)

    @property
    def lead(self) -> bool:
        """Whether this process writes the run's files: the only one, or rank 0 of a data-parallel run."""
        world = getattr(self, "world", None)
        return world is None or world.rank == 0

    def _stopping(self) -> bool:
        """An interrupt asked for: here, or (data-parallel) on any rank, so all stop at the same step."""
        world = getattr(self, "world", None)
        return world.any(self.stop.requested) if world is not None else self.stop.requested

    def _augmented(self, batch: dict, epoch: int, i: int) -> dict:
        """Batch `i` of `epoch` augmented: the same for this (seed, epoch, batch) in every run and resume."""
        a = self.augment
        batch = {**batch, "inputs": a(batch["inputs"].to(self.step_exe.device), self.seed, epoch, i)}
        if a.mixup:
            x, mixed_in, lam = a.mix(batch["inputs"], batch["labels"], self.seed, epoch, i)
            batch = {**batch, "inputs": x, MIX_LABELS: mixed_in, MIX_LAMBDA: lam}
        return batch

    def _interrupted(self, saved: bool = False) -> None:
        """Stop between two steps: a checkpoint (unless told not to), the metrics, and `Interrupted`."""
        p, path = self.progress, self.out_dir / CHECKPOINT
        if self.checkpoint_on_interrupt and not saved:
            self.save(path)
            saved = True
        self._write_metrics()
        where = f"epoch {p.epoch + 1}, batch {p.batch} (step {p.step})"
        if saved:
            raise Interrupted(f"interrupted at {where}; checkpoint written to {path}",
                              self.stop.signum or signal.SIGINT,
                              hint=f"continue with --resume --out {self.out_dir}")
        raise Interrupted(f"interrupted at {where}; no checkpoint written for it; {self._last_checkpoint()}",
                          self.stop.signum or signal.SIGINT,
                          hint=f"continue from there with --resume --out {self.out_dir}")

    def _last_checkpoint(self) -> str:
        path = self.out_dir / CHECKPOINT
        try:
            meta = checkpoint.read_meta(path)
            step = json.loads(meta["progress"]).get("step")
        except (AxonError, ValueError, AttributeError):
            return "no checkpoint of this run was written before it"
        return f"the last checkpoint, {path}, is from step {step}"

    def _step(self, batch: dict[str, torch.Tensor]) -> float:
        p, dev = self.progress, self.step_exe.device
        t = p.step + 1
        feeds = {k: v.to(dev) for k, v in self.binding.feed(batch).items()}
        if MIX_LAMBDA in batch:  # mixup: the labels mixed in and the batch's weight
            feeds[MIX_LABELS] = batch[MIX_LABELS].to(device=dev, dtype=self.binding.label_dtype)
            feeds[MIX_LAMBDA] = torch.tensor(batch[MIX_LAMBDA], dtype=torch.float32, device=dev)
        taken = t - (self.scaler.skipped if self.scaler else 0)  # the optimizer's count skips skipped steps
        scalars = {STEP_INPUT: float(taken), LR_INPUT: self.schedule(t)}
        for name, value in scalars.items():
            feeds[name] = torch.tensor(value, dtype=torch.float64, device=dev)
        if self.scaler:
            feeds[LOSS_SCALE] = torch.tensor(self.scaler.scale, dtype=torch.float32, device=dev)
        if SEED_INPUT in self.step_exe.graph.inputs:
            feeds[SEED_INPUT] = torch.tensor(self.seed * 1_000_003 + t, dtype=torch.int64, device=dev)
        feeds.update(self.states)
        feeds.update({mask_input_name(n): m for n, m in self.masks.items()})
        out = self.step_call(feeds, self.params)
        # integer parameters (block indices, counters) have no update: they stay as they are
        self.params = {name: out.get(NEW + name, t) for name, t in self.params.items()}
        self.states = {name: out[NEW + name] for name in self.states}
        if self.scaler:
            self.scaler.update(bool(out[FOUND_INF]))
        return float(out["loss"])

    def validate(self) -> dict[str, float]:
        """Mean loss (and accuracy) over the validation split, dropout off."""
        return validate(self.eval_exe, self.params, self.data.val, self.binding, self.batch,
                        getattr(self, "world", None))

    def _early_stop(self, val: dict[str, float]) -> None:
        p, es = self.progress, self.spec.early_stop
        if self.pruner and p.epoch < self.pruner.end:
            return  # while the masks still grow the loss is meant to rise: the best comes after
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
        if not self.lead:  # data-parallel: rank 0 writes, the others hold the same values
            return
        checkpoint.write(path, self.params, self.states, self.progress, self.run, self.spec.model, self.seed,
                         self.scaler.state() if self.scaler else None, self.masks)

    def restore(self, path: Path) -> None:
        """Parameters, optimizer state and progress from a checkpoint of this model."""
        ck = checkpoint.read(path, self.spec.model, self.params, self.states, self.step_exe.device,
                             self.masks)
        self.params, self.states, self.progress = ck.params, ck.states, ck.progress
        self.masks = ck.masks
        if self.scaler:
            if ck.scaler is None:
                raise TrainError(f"--resume: {path} holds no loss scale, which an f16 run keeps")
            self.scaler = LossScaler(**ck.scaler)

    def load_params(self, path: str | Path) -> None:
        """Only the parameters of a checkpoint (for `axon eval`)."""
        self.params = section(load(path, device=self.step_exe.device), "param/", self.params, path)

    # --- reporting -------------------------------------------------------------------------------------
    def _write_metrics(self) -> None:
        if not self.lead:
            return
        p = self.progress
        record = {"model": self.spec.model, "data": self.data.name, "seed": self.seed, "epochs": self.epochs,
                  "batch": self.batch, "optimizer": self.optimizer, "steps": p.step, "stopped": p.stopped,
                  "best": p.best, "compile_seconds": round(self.compile_s, 3),
                  "device": str(self.step_exe.device), "cuda_graphs": getattr(self, "graphed", False),
                  "processes": self.world.size if getattr(self, "world", None) else 1,
                  "precision": self.precision, "history": p.history}
        if self.scaler:
            record["loss_scaler"] = self.scaler.state()
        if "unigram_entropy" in self.data.info:
            record["unigram_baseline_loss"] = self.data.info["unigram_entropy"]
        atomic_write(self.out_dir / METRICS, json.dumps(record, indent=1, default=str) + "\n")
        if p.history:
            report.plot(p.history, self.out_dir / "curve.png", f"{self.spec.model} on {self.data.name}")


def _saved_run(path: Path) -> dict | None:
    return checkpoint.run_record(path, checkpoint.read_meta(path))
