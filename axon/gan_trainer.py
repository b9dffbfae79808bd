"""A GAN's train block run: two compiled steps over two parameter groups, alternating.

    discriminator step   its loss (real -> 1, fake -> 0) differentiated w.r.t. the discriminator's group
                         only, and its optimizer's update of that group: one graph
    generator step       its loss (the non-saturating -log D(G(z))) w.r.t. the generator's group only
                         (the gradient still flows back through the discriminator's kernels), and its
                         optimizer's update: one graph

Each batch of real samples feeds one discriminator step; after every `steps` (k) of them comes one
generator step. The noise of every step is drawn from N(0, 1) by a generator seeded from (run seed, step,
role), so a run is the same every time and a resumed run continues exactly. An optional moving average of
the generator's weights (`ema`) is kept beside them and saved in the checkpoint.

Each epoch draws samples from the generator (the average and the last weights), writes
`samples/epoch-N.png` and, for the ring of Gaussians, counts the modes covered (`axon.data.mode_coverage`):
the epoch's "validation" figures. Checkpoints, interrupts, `--resume` and the run folder are the
trainer's (`axon/trainer.py`); the checkpoint holds both groups, both optimizers' states and the average.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch

from axon import data as datasets
from axon.data_parallel import DataParallelStep
from axon.driver import executable, optimize, read_source
from axon.ir import init_params
from axon.ir.text import print_graph
from axon.optim import LR_INPUT, STEP_INPUT, Schedule
from axon.runtime.checkpoint import Progress, section
from axon.runtime.safetensors import load
from axon.train_graphs import NEW, QUIET, SEED_INPUT, TrainError, step_graph
from axon.trainer import Trainer

EMA = "ema."          # states "ema.<name>": the generator's weight average
SAMPLES = 2000        # samples drawn each epoch
ROLES = ("discriminator", "generator")


class GanTrainer(Trainer):
    """`axon train` on a model whose train block has discriminator { ... } and generator { ... } blocks.
    Takes the arguments of `Trainer` that apply (no precision, QAT, pruning or CUDA graphs)."""

    def __init__(self, path: str | Path, model: str | None = None, *, hparams: dict | None = None,
                 device=None, out_dir: str | Path | None = None, epochs: int | None = None,
                 batch: int | None = None, seed: int | None = None, checkpoint_every: int = 0,
                 log=print, resume: bool = False, overwrite: bool = False,
                 checkpoint_on_interrupt: bool = True, claim_folder: bool = True,
                 settings_from: str | Path | None = None, world=None, **unsupported):
        from axon.frontend import training_graph

        given = sorted(k for k, v in unsupported.items() if v)
        if given:
            raise TrainError(f"a GAN's train block does not take {', '.join(given)}")
        self.world = world  # data-parallel ranks, or None (`axon/data_parallel.py`)
        module, saved = self._open(path, model, out_dir, resume, overwrite, claim_folder and self.lead,
                                   settings_from, log if self.lead else QUIET)
        if saved:
            epochs, batch = epochs or saved.get("epochs"), batch or saved.get("batch")
            seed = seed if seed is not None else saved.get("seed")
            hparams = {**(saved.get("hparams") or {}), **(hparams or {})}
        graphs = {role: training_graph(module, model, hparams=hparams or None, step=role) for role in ROLES}
        spec = graphs["discriminator"][1]
        if spec.gan is None:
            raise TrainError(f"the train block of '{spec.model}' is not a GAN's (it has no discriminator and "
                             f"generator blocks)", spec.span)
        sample_graph, _ = training_graph(module, model, hparams=hparams or None, training=False,
                                         step="generator")
        self.spec, self.gan, self.resume = spec, spec.gan, resume
        self.checkpoint_on_interrupt, self.checkpoint_every = checkpoint_on_interrupt, checkpoint_every
        self.seed = seed if seed is not None else (spec.seed if spec.seed is not None else 0)
        self.epochs, self.batch = epochs or spec.epochs, batch or spec.batch or 32
        self.precision, self.scaler, self.qat, self.pruner, self.augment = "f32", None, None, None, None
        options = dict(spec.data.kwargs)
        self.data = datasets.make(spec.data.name, options, self.seed, span=spec.data.span,
                                  option_spans={k.name: k.span for k in spec.data.call.kwargs})
        loss_graph = graphs["discriminator"][0]
        self.real = _real_input(loss_graph, self.gan.noise, spec)
        self.groups = _groups(loss_graph, self.gan)
        self.k = self.gan.discriminator.steps
        batches = self.epochs * datasets.num_batches(self.data.train, self.batch)
        t0 = time.perf_counter()
        self.optimizers, self.schedules, self.exes, steps = {}, {}, {}, {}
        for role in ROLES:
            phase = getattr(self.gan, role)
            self.optimizers[role] = {"name": phase.optimizer.name, **dict(phase.optimizer.kwargs)}
            self.schedules[role] = Schedule.of(self.optimizers[role], batches if role == ROLES[0] else
                                               batches // self.k)
            steps[role] = step_graph(graphs[role][0], self.optimizers[role], wrt=self.groups[role])
        self.optimizer, self.schedule = self.optimizers["discriminator"], self.schedules["discriminator"]
        self.run = {
            "model": spec.model, "source": hashlib.sha256(read_source(path).encode()).hexdigest(),
            "step_graph": hashlib.sha256("".join(print_graph(steps[r]) for r in ROLES).encode()).hexdigest(),
            "hparams": hparams or {}, "data": {"name": spec.data.name, **options}, "batch": self.batch,
            "seed": self.seed, "epochs": self.epochs, "optimizer": self.optimizer, "early_stop": None,
            "gan": {role: getattr(self.gan, role).record() for role in ROLES}, "checkpoint_every":
            checkpoint_every, "device": None, "precision": "f32"}
        for role in ROLES:
            self.exes[role] = self._executable(steps[role], graphs[role][0], role, device)
            device = self.exes[role].device
        self.step_exe = self.step_call = self.exes["discriminator"]
        self.run["device"] = str(self.step_exe.device)
        if resume:
            self._check_resume(saved)
        sample_graph, _ = optimize(sample_graph, out=QUIET)
        self.eval_exe = executable(sample_graph, self.step_exe.device)
        self.compile_s = time.perf_counter() - t0
        dev = self.step_exe.device
        self.params = {k: v.to(dev) for k, v in init_params(loss_graph, self.seed).items()}
        self.states = {name: torch.zeros(tuple(n.shape), dtype=n.dtype.torch, device=dev)
                       for exe in self.exes.values() for name, n in _inputs(exe).items()
                       if name.startswith("state.")}
        if self.gan.generator.ema:
            self.states.update({EMA + n: self.params[n].clone() for n in self.groups["generator"]})
        self.masks, self.progress = {}, Progress()

    def _executable(self, step, loss_graph, role: str, device):
        """`role`'s step compiled: one executable, or (data-parallel) the step cut at the all-reduce, each
        rank on its rows of the real samples and the noise."""
        if self.world is None:
            return executable(step, device)
        if self.batch < self.world.size:
            raise TrainError(f"{self.world.size} processes need a batch of at least {self.world.size} rows; "
                             f"the batch is {self.batch}")
        return DataParallelStep(loss_graph, self.optimizers[role], "f32", self.world, device,
                                (self.real, self.gan.noise), loss_graph.inputs[self.real].shape[0],
                                wrt=self.groups[role])

    # --- the steps -------------------------------------------------------------------------------------
    def _step(self, batch: dict[str, torch.Tensor]) -> float:
        """One discriminator step on this batch of real samples; after every k of them, a generator step.
        Returns the discriminator's loss (the generator's adds to the progress' `loss_sum_g`)."""
        p, dev = self.progress, self.step_exe.device
        t = p.step + 1
        real = batch["inputs"].to(dev)
        loss_d = self._run("discriminator", t, real)
        if t % self.k == 0:
            p.loss_sum_g += self._run("generator", t // self.k, real)
            decay = self.gan.generator.ema
            if decay:
                with torch.no_grad():
                    for name in self.groups["generator"]:
                        self.states[EMA + name].lerp_(self.params[name], 1.0 - decay)
        return loss_d

    def _run(self, role: str, t: int, real: torch.Tensor) -> float:
        """Step `t` (1 at the first) of `role`'s optimizer: its graph run, its group and states replaced."""
        exe, dev = self.exes[role], self.step_exe.device
        feeds = {self.real: real, self.gan.noise: self._noise(len(real), role, t),
                 STEP_INPUT: torch.tensor(float(t), dtype=torch.float64, device=dev),
                 LR_INPUT: torch.tensor(self.schedules[role](t), dtype=torch.float64, device=dev)}
        inputs = _inputs(exe)
        if SEED_INPUT in inputs:
            feeds[SEED_INPUT] = torch.tensor(self.seed * 1_000_003 + 2 * t + ROLES.index(role), device=dev)
        feeds.update({name: v for name, v in self.states.items() if name in inputs})
        out = exe({name: v for name, v in feeds.items() if name in inputs}, self.params)
        self.params = {name: out.get(NEW + name, v) for name, v in self.params.items()}
        self.states.update({name: out[NEW + name] for name in self.states if NEW + name in out})
        return float(out["loss"])

    def _noise(self, rows: int, role: str, t: int) -> torch.Tensor:
        """N(0, 1) noise for step `t` of `role`: the same in every run and resume of this seed."""
        node = _inputs(self.exes[role])[self.gan.noise]
        shape = (rows, *(int(d) for d in node.shape[1:]))
        key = hashlib.sha256(f"{self.seed}/{role}/{t}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
        return torch.randn(shape, generator=gen).to(self.step_exe.device)

    def _train_record(self) -> dict:
        p = self.progress
        first = p.step - p.batch  # the epoch's first discriminator step, less one
        g_steps = p.step // self.k - first // self.k
        return {"train_loss_g": p.loss_sum_g / max(g_steps, 1)}

    def load_params(self, path: str | Path) -> None:
        """The parameters of a checkpoint, and its states (the generator's weight average among them)."""
        super().load_params(path)
        self.states = section(load(path, device=self.step_exe.device), "state/", self.states, path)

    # --- each epoch's samples --------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Samples of the generator (its weight average, and its last weights), drawn with noise fixed for
        the run: `samples/epoch-N.png`, and the modes they cover when the data set has modes. Nothing
        without a `samples = <output>` setting."""
        from axon.gan_report import coverage, plot_samples

        if self.gan.samples is None:
            return {}
        drawn = {"last": self.sample(SAMPLES)}
        if self.gan.generator.ema:
            drawn = {"ema": self.sample(SAMPLES, average=True), **drawn}
        figures, cover = {}, {}
        if "modes" in self.data.info:
            for name, samples in drawn.items():
                cover[name] = coverage(samples, self.data.info)
                suffix = "" if name == next(iter(drawn)) else f"_{name}"
                figures[f"modes{suffix}"] = cover[name]["covered"]
                figures[f"near{suffix}"] = round(cover[name]["quality"], 4)
        epoch = self.progress.epoch + 1
        if self.folder is not None:
            plot_samples(self.out_dir / "samples" / f"epoch-{epoch:03d}.png", self.data.train["inputs"],
                         drawn, cover, self.data.info, f"{self.spec.model}, epoch {epoch}")
        return figures

    def sample(self, n: int, average: bool = False) -> torch.Tensor:
        """`n` samples of the model's `samples` output (the generator's weight average with `average`),
        from noise that is the same every epoch."""
        exe, dev = self.eval_exe, self.step_exe.device
        node = exe.graph.inputs[self.gan.noise]
        z = torch.randn((n, *(int(d) for d in node.shape[1:])), generator=torch.Generator().manual_seed(
            self.seed)).to(dev)
        feeds = {self.gan.noise: z}
        for name, inp in exe.graph.inputs.items():  # the real samples' input: unread by the samples
            if name != self.gan.noise:
                feeds[name] = torch.zeros((n, *(int(d) for d in inp.shape[1:])), dtype=inp.dtype.torch,
                                          device=dev)
        params = dict(self.params)
        if average:
            params.update({name: self.states[EMA + name] for name in self.groups["generator"]})
        with torch.no_grad():
            return exe(feeds, params)[self.gan.samples].cpu()


def _inputs(exe) -> dict:
    """The inputs a step takes by name: its graph's, or (data-parallel) its two graphs'."""
    return exe.inputs if isinstance(exe, DataParallelStep) else exe.graph.inputs


def _real_input(graph, noise: str, spec) -> str:
    rest = [name for name in graph.inputs if name not in (noise, SEED_INPUT)]
    if len(rest) != 1:
        raise TrainError(f"'{spec.model}' has {len(rest)} inputs besides the noise '{noise}' "
                         f"({', '.join(rest) or 'none'}); a GAN's train block feeds the data set to exactly "
                         f"one",
                         spec.span)
    return rest[0]


def _groups(graph, gan) -> dict[str, list[str]]:
    """Each step's parameters: the float parameters named `<params>.*`."""
    groups = {}
    for role in ROLES:
        prefix = getattr(gan, role).params + "."
        names = [n for n, p in graph.params.items() if n.startswith(prefix) and p.dtype.is_float]
        if not names:
            tops = sorted({n.split(".")[0] for n in graph.params})
            raise TrainError(f"the {role}'s group '{prefix[:-1]}' holds no parameter of the model",
                             getattr(gan, role).span, hint=f"the model's parameter groups: {', '.join(tops)}")
        groups[role] = names
    shared = set(groups["discriminator"]) & set(groups["generator"])
    if shared:
        raise TrainError(f"the parameter {sorted(shared)[0]} is in both the discriminator's and the "
                         f"generator's group", gan.generator.span)
    return groups
