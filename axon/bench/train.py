"""`--mode train`: one training step as `axon train` compiles it (forward, loss, backward, optimizer
update in one graph) against the twin's forward, autograd's backward and the torch.optim optimizer of the
train block (same rule and options; gradient clipping included), eager and compiled. The check runs one
step from the same weights (and the same dropout mask) on both sides."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

from .cases import Case, agreement, compile_mode, dims, graph_flops, graphed, shapes
from .settings import BenchError, Settings
from .twin import twin, twin_graph

TORCH_OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop",
                    "adagrad": "Adagrad"}


def train_block(s: Settings):
    """The parsed module of a model that has a train block (BenchError otherwise)."""
    from axon.driver import load_ast
    from axon.frontend import train_spec

    if not str(s.file).endswith(".axon"):
        raise BenchError(f"{s.file}: --mode train needs an .axon model with a train block")
    module = load_ast(s.file)
    if train_spec(module, s.model) is None:
        raise BenchError(f"{s.file}: the model has no train block, so there is no training step to time",
                         hint="add a `train` block, or use --mode forward")
    return module


def torch_optimizer(spec: Mapping[str, object], params: list[torch.Tensor], lr: float):
    """The torch.optim optimizer of a train block's `optim` (the same rule and options as Axon's)."""
    from axon.optim import CLIP_OPTION, HOST_OPTIONS, optimizer

    name = str(spec["name"])
    rule = optimizer(name)
    options = rule.options({k: v for k, v in spec.items() if k != "name"})
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()
               if k not in HOST_OPTIONS and k != CLIP_OPTION}
    if name not in TORCH_OPTIMIZERS:
        raise BenchError(f"optimizer '{name}' has no torch.optim counterpart in the bench")
    return getattr(torch.optim, TORCH_OPTIMIZERS[name])(params, lr=lr, **options)


def _training_steps(call, feeds: dict, params: dict) -> Callable[[], dict]:
    """Steps as `axon train --cuda-graphs` runs them: the new parameters and optimizer state, which the
    graph writes into its static buffers, passed back in (no copies), the data copied in each step."""
    from axon.trainer import NEW

    feeds, params = dict(feeds), dict(params)

    def step():
        out = call(feeds, params, check_indices=False)
        for table in (feeds, params):
            table.update({k: out[NEW + k] for k in table if NEW + k in out})
        return out
    return step


def train_cases(s: Settings, device: torch.device) -> Iterator[Case]:
    yield train_case(s, device)


@dataclass
class Step:
    """A train block's step made ready to time: Axon's executable with its feeds and parameters, and
    what the PyTorch side needs (the twin's graph, the data, the optimizer and learning rate)."""

    exe: object
    step: object                  # the step graph (forward, loss, backward, update)
    loss_graph: object
    graph: object                 # the twin's graph (the loss graph through the clean-up passes)
    spec: object
    opt: dict
    lr: float
    env: dict
    data: dict
    feeds: dict
    params: dict

    def torch_step(self, fn, compiled: bool, mode: str = "default"):
        """A PyTorch step from the same weights: `fn` (a twin's) forward, autograd, torch.optim."""
        graph, opt = self.graph, self.opt
        trained = {k: v.detach().clone().requires_grad_(v.is_floating_point())
                   for k, v in self.params.items()}
        leaves = [trained[k] for k in graph.params if trained[k].is_floating_point()]
        optim = torch_optimizer(opt, leaves, self.lr)
        args = [self.data[n] for n in graph.inputs] + [trained[n] for n in graph.params]
        loss_at = list(graph.outputs).index("loss")
        forward = torch.compile(fn, mode=mode) if compiled else fn
        update = torch.compile(optim.step, mode=mode) if compiled else optim.step
        clip = opt.get("clip")

        def call():
            optim.zero_grad(set_to_none=True)
            loss = forward(*args)[loss_at]
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(leaves, float(clip))
            update()
            return loss
        return call, trained


def prepare_step(s: Settings, device: torch.device) -> Step:
    """The train block's step compiled for `device`, with random data at the bench's sizes."""
    from axon.driver import executable
    from axon.frontend import training_graph
    from axon.ir import init_params
    from axon.optim import LR_INPUT, STEP_INPUT, Schedule
    from axon.run import random_inputs
    from axon.trainer import step_graph

    module = train_block(s)
    loss_graph, spec = training_graph(module, s.model, hparams=s.hparams or None)
    opt = {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)}
    step = step_graph(loss_graph, opt)
    exe = executable(step, device)
    params = {k: v.to(device) for k, v in init_params(step, s.seed).items()}
    env = dims(loss_graph, s, device, (spec.batch or 32) if device.type == "cuda" else None)
    data = {k: v.to(device) for k, v in random_inputs(loss_graph, env, s.seed).items()}
    lr = Schedule.of(opt, 10**9)(1)
    feeds = dict(data)
    feeds[STEP_INPUT] = torch.tensor(1.0, dtype=torch.float64, device=device)
    feeds[LR_INPUT] = torch.tensor(lr, dtype=torch.float64, device=device)
    feeds.update({name: torch.zeros(tuple(n.shape), dtype=n.dtype.torch, device=device)
                  for name, n in step.inputs.items() if name.startswith("state.")})
    return Step(exe, step, loss_graph, twin_graph(loss_graph), spec, opt, lr, env, data, feeds, params)


def train_case(s: Settings, device: torch.device) -> Case:
    from axon.trainer import NEW, feedback

    p = prepare_step(s, device)
    exe, feeds, params, graph, env = p.exe, p.feeds, p.params, p.graph, p.env
    call = graphed(exe, s, feedback=feedback(p.step))
    # checks the inputs (index ranges) once; copied: a graph's fed-back outputs change with the next step
    got = {k: v.clone() for k, v in call(feeds, params).items()}
    exact = twin(graph, env, device, exact_rand=True)
    check_step, trained = p.torch_step(exact.fn, False)
    loss = check_step()
    want = {"loss": loss.detach()}
    want.update({NEW + k: trained[k].detach() for k in graph.params if trained[k].is_floating_point()})
    fast = twin(graph, env, device)
    eager, _ = p.torch_step(fast.fn, False)
    return Case(f"{p.loss_graph.name} train step ({p.spec.optimizer.name})",
                {"inputs": shapes(p.data), "dims": env, "params": sum(v.numel() for v in params.values())},
                _training_steps(call, feeds, params) if s.cuda_graphs
                else lambda: exe(feeds, params, check_indices=False), eager,
                lambda: p.torch_step(fast.fn, True, compile_mode(s))[0], len(exe.plan(env).launches),
                len(exe.kernels), agreement(got, want), flops=graph_flops(p.step, env),
                extra={"optimizer": {k: list(v) if isinstance(v, tuple) else v for k, v in p.opt.items()},
                       "lr": p.lr})
