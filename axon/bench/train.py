"""`--mode train`: one training step as `axon train` compiles it (forward, loss, backward, optimizer
update in one graph) against the twin's forward, autograd's backward and the torch.optim optimizer of the
train block (same rule and options; gradient clipping included), eager and compiled. The check runs one
step from the same weights (and the same dropout mask) on both sides."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

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


def train_case(s: Settings, device: torch.device) -> Case:
    from axon.frontend import training_graph
    from axon.ir import init_params
    from axon.optim import LR_INPUT, STEP_INPUT, Schedule
    from axon.run import random_inputs
    from axon.driver import executable
    from axon.trainer import NEW, feedback, step_graph

    module = train_block(s)
    loss_graph, spec = training_graph(module, s.model, hparams=s.hparams or None)
    opt = {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)}
    step = step_graph(loss_graph, opt)
    exe = executable(step, device)
    params = {k: v.to(device) for k, v in init_params(step, s.seed).items()}
    call = graphed(exe, s, feedback=feedback(step))
    env = dims(loss_graph, s, device, (spec.batch or 32) if device.type == "cuda" else None)
    data = {k: v.to(device) for k, v in random_inputs(loss_graph, env, s.seed).items()}
    lr = Schedule.of(opt, 10**9)(1)
    feeds = dict(data)
    feeds[STEP_INPUT] = torch.tensor(1.0, dtype=torch.float64, device=device)
    feeds[LR_INPUT] = torch.tensor(lr, dtype=torch.float64, device=device)
    feeds.update({name: torch.zeros(tuple(n.shape), dtype=n.dtype.torch, device=device)
                  for name, n in step.inputs.items() if name.startswith("state.")})
    # checks the inputs (index ranges) once; copied: a graph's fed-back outputs change with the next step
    got = {k: v.clone() for k, v in call(feeds, params).items()}

    graph = twin_graph(loss_graph)
    clip = opt.get("clip")

    def torch_step(fn, compiled: bool):
        trained = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in params.items()}
        leaves = [trained[k] for k in graph.params if trained[k].is_floating_point()]
        optim = torch_optimizer(opt, leaves, lr)
        args = [data[n] for n in graph.inputs] + [trained[n] for n in graph.params]
        loss_at = list(graph.outputs).index("loss")
        forward = torch.compile(fn, mode=compile_mode(s)) if compiled else fn
        update = torch.compile(optim.step, mode=compile_mode(s)) if compiled else optim.step

        def call():
            optim.zero_grad(set_to_none=True)
            loss = forward(*args)[loss_at]
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(leaves, float(clip))
            update()
            return loss
        return call, trained

    exact = twin(graph, env, device, exact_rand=True)
    check_step, trained = torch_step(exact.fn, False)
    loss = check_step()
    want = {"loss": loss.detach()}
    want.update({NEW + k: trained[k].detach() for k in graph.params if trained[k].is_floating_point()})
    fast = twin(graph, env, device)
    eager, _ = torch_step(fast.fn, False)
    return Case(f"{loss_graph.name} train step ({spec.optimizer.name})",
                {"inputs": shapes(data), "dims": env, "params": sum(v.numel() for v in params.values())},
                _training_steps(call, feeds, params) if s.cuda_graphs
                else lambda: exe(feeds, params, check_indices=False), eager,
                lambda: torch_step(fast.fn, True)[0], len(exe.plan(env).launches), len(exe.kernels),
                agreement(got, want), flops=graph_flops(step, env),
                extra={"optimizer": {k: list(v) if isinstance(v, tuple) else v for k, v in opt.items()},
                       "lr": lr})
