"""`axon bench`: Axon's kernels timed against PyTorch eager and `torch.compile` (Inductor), on the same
inputs and weights.

    forward   a model's forward pass (axon.compile) vs its PyTorch twin, eager and compiled
    train     one training step (the graph `axon train` compiles: forward, loss, backward, update) vs a
              PyTorch step: the twin's forward, autograd's backward, torch.optim's update
    kernels   single fused kernels (softmax, layernorm, matmul + bias + relu, attention) over a sweep of
              sizes vs F.softmax, F.layer_norm, relu(x @ w + b), F.scaled_dot_product_attention;
              attention_train is attention's forward and backward (dq, dk, dv) through torch.autograd

The PyTorch *twin* of a graph runs every IR node as the torch op of its reference rule (the rules of
`axon.ir.evaluate`), on the device, with no Axon in the loop; so any model Axon compiles has a PyTorch
counterpart that computes the same thing, and the two are checked against each other before timing.

Each figure is the median over `repeats` calls after `warmup` calls (CUDA events on a GPU, wall-clock on
the CPU, where the kernels run through Triton's interpreter and the bench is a smoke test). The device's
ceilings are measured first: copy bandwidth (a large tensor cloned) and f32 matmul FLOP rate (torch.mm).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from axon.ir import AxonError, Graph, Node, OpKind
from axon.ir.errors import did_you_mean
from axon.ir.evaluate import EvalContext, run_op
from axon.ir.ops import OPS
from axon.ir.shapes import concrete

K = OpKind
MODES = ("forward", "train", "kernels")
IMPLS = ("axon", "eager", "compiled")
KERNELS = ("softmax", "layernorm", "matmul_bias_relu", "attention", "attention_train")
# The clean-up passes the PyTorch twin's graph goes through (what a person writing the model in PyTorch
# would have written: no folded constants left, no duplicate work); never Axon's fusion.
TWIN_PIPELINE = ("fold", "simplify", "cse", "dce")


class BenchError(AxonError):
    """A benchmark that cannot run as asked: a bad mode, size or count, a model without a train block."""


@dataclass
class Settings:
    """What `axon bench` was asked to do (recorded in the JSON as given, plus the defaults it chose)."""

    file: str | None = None
    model: str | None = None
    hparams: dict = field(default_factory=dict)
    mode: str = "forward"
    batch: int | None = None
    dims: dict = field(default_factory=dict)
    repeats: int | None = None   # default: 50 on a GPU, 3 on the CPU
    warmup: int | None = None    # default: 10 on a GPU, 1 on the CPU
    device: str | None = None
    compile: bool = True
    seed: int = 0
    cuda_graphs: bool = False    # Axon's launch list as a CUDA graph; torch.compile's 'reduce-overhead'

    def check(self) -> None:
        if self.mode not in MODES:
            raise BenchError(f"unknown bench mode '{self.mode}'",
                             hint=did_you_mean(self.mode, MODES) or f"modes: {', '.join(MODES)}")
        if self.mode != "kernels" and not self.file:
            raise BenchError(f"--mode {self.mode} needs a model file (only --mode kernels runs without one)")
        if self.mode == "kernels" and (self.file or self.model or self.hparams or self.batch or self.dims):
            raise BenchError("--mode kernels times its own sweep of kernels and sizes: it takes no FILE, "
                             "--model, --set, --batch or --dim")
        if self.mode == "kernels" and self.cuda_graphs:
            raise BenchError("--cuda-graphs applies to --mode forward and train (the kernel sweep times "
                             "single large kernels, where launch overhead is not what is measured)")
        for name in ("repeats", "batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BenchError(f"--{name} must be at least 1, got {value}")
        if self.warmup is not None and self.warmup < 0:
            raise BenchError(f"--warmup must be at least 0, got {self.warmup}")


# --- timing ------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> dict:
    """Median, min and inter-quartile range (ms) of `repeats` calls of `fn` after `warmup` calls.
    On CUDA each call is timed by events with the device idle before it, so a call's time includes
    the gaps where the GPU waits for the host (launch overhead is part of what is measured)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return summarize(samples)


def summarize(samples_ms: list[float]) -> dict:
    s = sorted(samples_ms)
    if len(s) >= 2:
        q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
    else:
        q1 = q3 = s[0]
    return {"median_ms": statistics.median(s), "min_ms": s[0], "iqr_ms": q3 - q1, "repeats": len(s)}


def ceilings(device: torch.device) -> dict:
    """The device's measured copy bandwidth (a large tensor cloned: read + write) and f32 matmul rate
    (torch.mm, with torch's current TF32 setting, recorded)."""
    gpu = device.type == "cuda"
    n = (1 << 28) if gpu else (1 << 22)          # 1 GiB of f32 on a GPU, 16 MiB on the CPU
    m = 8192 if gpu else 512
    copy = _timed_op(lambda: [torch.empty(n, dtype=torch.float32, device=device).uniform_()],
                     lambda x: x.clone(), device)
    mm = _timed_op(lambda: [torch.randn(m, m, device=device), torch.randn(m, m, device=device)],
                   torch.mm, device)
    return {"copy_gbps": 2 * n * 4 / (copy["median_ms"] * 1e-3) / 1e9,
            "matmul_tflops": 2 * m ** 3 / (mm["median_ms"] * 1e-3) / 1e12,
            "copy_bytes": 2 * n * 4, "matmul_size": m,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def _timed_op(make: Callable[[], list], op: Callable, device: torch.device) -> dict:
    """`op` on operands `make` gives, timed; the operands are freed when it returns."""
    args = make()
    gpu = device.type == "cuda"
    return measure(lambda: op(*args), device, 10 if gpu else 5, 3)


def kernel_launches(fn: Callable[[], object], device: torch.device) -> int | None:
    """CUDA kernels one call of a PyTorch function launches (torch.profiler); None off the GPU or when
    the profiler cannot say."""
    if device.type != "cuda":
        return None
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize(device)
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                   and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
        return len(kernels)
    except Exception:  # noqa: BLE001 - a count is a nicety; the timing stands without it
        return None


# --- the PyTorch twin --------------------------------------------------------------------------------
@dataclass
class Twin:
    """A graph as a plain PyTorch function: `fn(*inputs, *params) -> tuple of outputs`, in the orders
    of `inputs`, `params` and `outputs`. Traceable by torch.compile (no host syncs, no Axon types in the
    call) and differentiable by autograd."""

    fn: Callable
    inputs: list[str]
    params: list[str]
    outputs: list[str]

    def __call__(self, inputs: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]) -> dict:
        args = [inputs[n] for n in self.inputs] + [params[n] for n in self.params]
        return dict(zip(self.outputs, self.fn(*args)))


def twin(graph: Graph, env: Mapping[str, int], device: torch.device, *, exact_rand: bool = False) -> Twin:
    """The PyTorch twin of `graph` at the concrete sizes `env`.

    Literals (const, tensor, iota) are made once on the device. `rand` draws with torch.rand on the
    device (fast, other numbers than Axon's), or with `exact_rand` Axon's own Philox stream through the
    reference rule on the host (for checking, never timed). Index ops skip the reference's host-side
    range check (Axon checks the inputs once before timing)."""
    sources = list(graph.inputs.values()) + list(graph.params.values())
    slot = {node: i for i, node in enumerate(sources)}
    last_use: dict[Node, int] = {}
    for i, node in enumerate(graph.nodes):
        for src in node.inputs:
            last_use[src] = i
    keep = set(graph.outputs.values())
    steps = []   # (slot of the result, op function, slots of the operands, slots to free after)
    constants: dict[int, torch.Tensor] = {}
    for i, node in enumerate(graph.nodes):
        if node.op in (K.INPUT, K.PARAM):
            continue
        slot[node] = len(slot)
        ctx = EvalContext(dict(env), out=node.type)
        if node.op in (K.CONST, K.TENSOR, K.IOTA):
            constants[slot[node]] = run_op(node.op, node.attrs, node.type, [], ctx).to(device)
            continue
        free = tuple(slot[s] for s in set(node.inputs) if last_use.get(s) == i and s not in keep)
        steps.append((slot[node], _op_fn(node, ctx, device, exact_rand), tuple(slot[s] for s in node.inputs),
                      free))
    out_slots = tuple(slot[n] for n in graph.outputs.values())
    width = len(slot)

    def fn(*args):
        values = list(args) + [None] * (width - len(args))
        for s, t in constants.items():
            values[s] = t
        for s, op, operands, free in steps:
            values[s] = op([values[j] for j in operands])
            for j in free:
                values[j] = None
        return tuple(values[s] for s in out_slots)

    return Twin(fn, list(graph.inputs), list(graph.params), list(graph.outputs))


def _op_fn(node: Node, ctx: EvalContext, device: torch.device, exact_rand: bool) -> Callable:
    """One node as a function of its operand tensors."""
    attrs, dtype = node.attrs, node.dtype.torch
    held = ctx.compute_dtype(node.dtype)

    def hold(x):
        x = x.to(dtype)
        return x if held == dtype else x.to(held)

    if node.op == K.RAND:
        shape = concrete(attrs.shape, ctx.env)
        if exact_rand:
            return lambda xs: run_op(node.op, attrs, node.type, [xs[0].cpu()], ctx).to(device)
        return lambda xs: hold(torch.rand(shape, device=device, dtype=torch.float32))
    if node.op == K.GATHER:
        return lambda xs: hold(torch.gather(xs[0], attrs.axis, xs[1].to(torch.int64)))
    if node.op == K.TAKE:
        axis = attrs.axis

        def take(xs):
            x, idx = xs
            out = torch.index_select(x, axis, idx.reshape(-1).to(torch.int64))
            return hold(out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:])))
        return take
    if node.op == K.PAD and node.dtype.torch != torch.bool:
        import torch.nn.functional as F

        flat = [p for lo_hi in reversed(attrs.pads) for p in lo_hi]
        value = ctx.literal(attrs.value, node.dtype).item()  # once, on the host
        return lambda xs: hold(F.pad(xs[0], flat, value=value))
    ref = OPS[node.op].ref
    return lambda xs: hold(ref(attrs, xs, ctx))


def twin_graph(graph: Graph) -> Graph:
    """The graph the twin runs: `graph` through the clean-up passes only."""
    from axon.driver import optimize
    from axon.passes.manager import registered_passes

    known = registered_passes()
    pipeline = ",".join(p for p in TWIN_PIPELINE if p in known)
    return optimize(graph, pipeline, verify=True, out=lambda *a, **k: None)[0] if pipeline else graph


# --- checks --------------------------------------------------------------------------------------------
def agreement(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]) -> dict:
    """Worst absolute and relative error over the outputs both have, and whether each is within the
    tolerance `axon run --check` allows."""
    from axon.run import compare

    worst, rel, ok, names = 0.0, 0.0, True, []
    for name in want:
        if name in got:
            w, r, good = compare(got[name], want[name])
            rel = math.nan if math.isnan(r) or math.isnan(rel) else max(rel, r)  # nan: a NaN misplaced
            worst, ok = max(worst, w), ok and good
            names.append(name)
    return {"max_abs_error": worst, "max_rel_error": rel, "ok": ok, "outputs": names}


def _try_compile(make: Callable[[], Callable[[], object]]):
    """(the compiled step, None) or (None, why it failed): torch.compile fails lazily, at the first
    call, so that call is made here."""
    try:
        import torch._dynamo

        torch._dynamo.reset()  # each case compiles afresh: no recompile limits, no shapes made dynamic
        step = make()
        step()
        return step, None
    except Exception as e:  # noqa: BLE001 - any failure of Inductor is recorded, not raised
        text = str(e).strip().splitlines()
        return None, f"{type(e).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


# --- the cases -----------------------------------------------------------------------------------------
@dataclass
class Case:
    """One thing timed three ways."""

    name: str
    shapes: dict
    axon: Callable[[], object]
    eager: Callable[[], object]
    make_compiled: Callable[[], Callable[[], object]]
    launches: int
    kernels: int
    check: dict
    bytes: int | None = None     # the least traffic the computation needs (inputs + outputs)
    flops: int | None = None
    extra: dict = field(default_factory=dict)


def _defaults(s: Settings, device: torch.device) -> Settings:
    gpu = device.type == "cuda"
    return Settings(**{**asdict(s), "repeats": s.repeats or (50 if gpu else 3),
                       "warmup": s.warmup if s.warmup is not None else (10 if gpu else 1)})


def _dims(graph: Graph, s: Settings, device: torch.device, batch: int | None) -> dict[str, int]:
    """Sizes of the symbolic dimensions: --dim, then --batch (or `batch`: on a GPU the train block's),
    the rest 32 on a GPU and 4 on the CPU (a smoke test there)."""
    from axon.run import bind_dims, symbols

    dims = dict(s.dims)
    names = symbols(graph)
    if "batch" in names and (s.batch or batch):
        dims["batch"] = s.batch or batch
    return bind_dims(graph, dims, default=32 if device.type == "cuda" else 4)


def graph_flops(graph: Graph, env: Mapping[str, int]) -> int:
    """Multiply-adds of the matmuls and convolutions, times two (the rest is noise next to them)."""
    total = 0
    for node in graph.nodes:
        if node.op == K.MATMUL:
            a = concrete(node.inputs[0].shape, env)
            total += 2 * math.prod(concrete(node.shape, env)) * a[-1]
        elif node.op == K.CONV2D:
            w = concrete(node.inputs[1].shape, env)
            total += 2 * math.prod(concrete(node.shape, env)) * math.prod(w[1:])
    return total


def _shapes(tensors: Mapping[str, torch.Tensor]) -> dict:
    return {k: list(v.shape) for k, v in tensors.items()}


def forward_case(s: Settings, device: torch.device) -> Case:
    import axon
    from axon.driver import graph_of
    from axon.run import random_inputs

    model = axon.compile(s.file, s.model, hparams=s.hparams or None, device=device, seed=s.seed)
    gpu = device.type == "cuda"
    env = _dims(model.graph, s, device, (_train_batch(s) or 64) if gpu else None)
    inputs = {k: v.to(device) for k, v in random_inputs(model.graph, env, s.seed).items()}
    params = model.params
    t = twin(twin_graph(graph_of(s.file, s.model, hparams=s.hparams or None)), env, device)
    missing = sorted(set(t.params) - set(params))
    if missing:
        raise BenchError(f"the compiled model has no parameter '{missing[0]}' of the model as written")
    exe = _graphed(model.executable, s, adopt=params)
    got = exe(inputs, params)                        # checks the inputs (index ranges) once
    with torch.no_grad():
        want = t(inputs, params)
    args = [inputs[n] for n in t.inputs] + [params[n] for n in t.params]

    def eager():
        with torch.no_grad():
            return t.fn(*args)

    def make_compiled():
        fn = torch.compile(t.fn, mode=compile_mode(s))

        def call():
            with torch.no_grad():
                return fn(*args)
        return call

    return Case(model.graph.name, {"inputs": _shapes(inputs), "dims": env},
                lambda: exe(inputs, params, check_indices=False), eager, make_compiled,
                len(model.executable.plan(env).launches), len(exe.kernels), agreement(got, want),
                flops=graph_flops(model.graph, env))


def compile_mode(s: Settings) -> str:
    """torch.compile's mode: with --cuda-graphs its own CUDA graphs ('reduce-overhead'), like for like."""
    return "reduce-overhead" if s.cuda_graphs else "default"


def _graphed(exe, s: Settings, **options):
    """The executable, or with --cuda-graphs its launch list replayed as CUDA graphs."""
    if not s.cuda_graphs:
        return exe
    from axon.runtime.cuda_graphs import GraphedExecutable

    return GraphedExecutable(exe, **options)


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


def _train_batch(s: Settings) -> int | None:
    """The batch size of the file's train block, if it has one (the default batch of the bench)."""
    if not s.file or not str(s.file).endswith(".axon"):
        return None
    from axon.driver import load_ast
    from axon.frontend import train_spec

    try:
        spec = train_spec(load_ast(s.file), s.model)
    except AxonError:
        return None
    return spec.batch if spec is not None else None


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


TORCH_OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop",
                    "adagrad": "Adagrad"}


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
    call = _graphed(exe, s, feedback=feedback(step))
    env = _dims(loss_graph, s, device, (spec.batch or 32) if device.type == "cuda" else None)
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
                {"inputs": _shapes(data), "dims": env, "params": sum(v.numel() for v in params.values())},
                _training_steps(call, feeds, params) if s.cuda_graphs
                else lambda: exe(feeds, params, check_indices=False), eager,
                lambda: torch_step(fast.fn, True)[0], len(exe.plan(env).launches), len(exe.kernels),
                agreement(got, want), flops=graph_flops(step, env),
                extra={"optimizer": {k: list(v) if isinstance(v, tuple) else v for k, v in opt.items()},
                       "lr": lr})


# --- the kernel sweep ------------------------------------------------------------------------------------
# Sizes: softmax/layernorm (rows, cols), matmul (m, k, n), attention (batch, heads, seq, head dim).
SWEEP = {
    "cuda": {"softmax": [(4096, 1024), (4096, 4096), (8192, 8192)],
             "layernorm": [(4096, 1024), (4096, 4096), (8192, 8192)],
             "matmul_bias_relu": [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096)],
             "attention": [(8, 16, 512, 64), (4, 16, 1024, 64), (2, 16, 2048, 64)],
             "attention_train": [(8, 16, 512, 64), (4, 16, 1024, 64), (2, 16, 2048, 64)]},
    "cpu": {"softmax": [(8, 33)], "layernorm": [(8, 33)], "matmul_bias_relu": [(8, 12, 16)],
            "attention": [(1, 2, 8, 16)], "attention_train": [(1, 2, 8, 16)]},
}


def kernel_source(kind: str, size: tuple[int, ...]) -> str:
    """A one-kernel `.axon` model of `kind` at concrete sizes."""
    if kind in ("softmax", "layernorm"):
        r, n = size
        return f"model Sweep() {{\n    input x: f32[{r}, {n}]\n    output y = {kind}(x)\n}}\n"
    if kind == "matmul_bias_relu":
        m, k, n = size
        return f"model Sweep() {{\n    input x: f32[{m}, {k}]\n    output y = relu(linear(x, {n}))\n}}\n"
    if kind in ("attention", "attention_train"):
        b, h, t, d = size
        qkv = "\n".join(f"    input {v}: f32[{b}, {h}, {t}, {d}]" for v in "qkv")
        return (f"model Sweep() {{\n{qkv}\n"
                f"    output o = softmax((q @ transpose(k)) * {1.0 / math.sqrt(d)!r}) @ v\n}}\n")
    raise BenchError(f"unknown kernel '{kind}'", hint=did_you_mean(kind, KERNELS))


def _param(params: Mapping[str, torch.Tensor], suffix: str) -> torch.Tensor:
    return next(v for k, v in params.items() if k.endswith(suffix))


def torch_kernel(kind: str, size: tuple[int, ...], inputs, params) -> Callable[[], torch.Tensor]:
    """The PyTorch equivalent of a sweep kernel, as a function of no arguments."""
    import torch.nn.functional as F

    if kind == "softmax":
        x = inputs["x"]
        return lambda: F.softmax(x, dim=-1)
    if kind == "layernorm":
        x, w, b = inputs["x"], _param(params, ".w"), _param(params, ".b")
        return lambda: F.layer_norm(x, (size[-1],), w, b, eps=1e-5)
    if kind == "matmul_bias_relu":
        x, w, b = inputs["x"], _param(params, ".w"), _param(params, ".b")
        return lambda: torch.relu(x @ w + b)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    return lambda: F.scaled_dot_product_attention(q, k, v)


def traffic(kind: str, size: tuple[int, ...]) -> tuple[int, int | None]:
    """(bytes, FLOPs): the least memory traffic (every input read once, the output written once, f32)
    and the matmul FLOPs of a sweep kernel."""
    if kind == "softmax":
        return 2 * size[0] * size[1] * 4, None
    if kind == "layernorm":
        return (2 * size[0] * size[1] + 2 * size[1]) * 4, None
    if kind == "matmul_bias_relu":
        m, k, n = size
        return (m * k + k * n + n + m * n) * 4, 2 * m * n * k
    b, h, t, d = size
    if kind == "attention_train":  # + the backward: q, k, v, out, dout read, dq, dk, dv written; 4 matmuls
        return 12 * b * h * t * d * 4, 12 * b * h * t * t * d
    return 4 * b * h * t * d * 4, 4 * b * h * t * t * d


def kernel_cases(s: Settings, device: torch.device):
    """One case per kernel and size of the sweep (built one at a time: big ones are freed in turn)."""
    import axon
    from axon.run import random_inputs

    for kind, sizes in SWEEP["cuda" if device.type == "cuda" else "cpu"].items():
        for size in sizes:
            if kind == "attention_train":
                yield attention_train_case(s, device, size)
                continue
            model = axon.compile(kernel_source(kind, size), device=device, seed=s.seed)
            exe, params = model.executable, model.params
            env: dict[str, int] = {}
            inputs = {k: v.to(device) for k, v in random_inputs(model.graph, env, s.seed).items()}
            fn = torch_kernel(kind, size, inputs, params)
            got = exe(inputs, params)
            with torch.no_grad():
                want = {next(iter(model.graph.outputs)): fn()}
            nbytes, flops = traffic(kind, size)
            yield Case(f"{kind} {'x'.join(map(str, size))}", {"inputs": _shapes(inputs)},
                       lambda exe=exe, inputs=inputs, params=params: exe(inputs, params, check_indices=False),
                       fn, lambda fn=fn: torch.compile(fn), len(exe.plan(env).launches), len(exe.kernels),
                       agreement(got, want), bytes=nbytes, flops=flops, extra={"kernel": kind, "size": size})


def attention_train_case(s: Settings, device: torch.device, size: tuple[int, ...]) -> Case:
    """Attention's forward and backward through torch.autograd: dq, dk, dv for a random dout, with the
    compiled model (its partition: the forward and the flash backward kernels) and with
    F.scaled_dot_product_attention."""
    import torch.nn.functional as F

    import axon
    from axon import autograd

    model = axon.compile(kernel_source("attention_train", size), device=device, seed=s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    q, k, v, dout = (torch.randn(size, generator=gen).to(device) for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def ours():
        return torch.autograd.grad(model.run(dict(zip("qkv", leaves)))["o"], leaves, dout)

    def eager():
        return torch.autograd.grad(F.scaled_dot_product_attention(*leaves), leaves, dout)

    d = autograd.differentiated(model, ["q", "k", "v"])
    launches = len(d.forward.plan({}).launches) + len(d.backward.plan({}).launches)
    names = ("grad.q", "grad.k", "grad.v")
    nbytes, flops = traffic("attention_train", size)
    return Case(f"attention_train {'x'.join(map(str, size))}", {"inputs": {n: list(size) for n in "qkv"}},
                ours, eager, lambda: torch.compile(eager), launches,
                len(d.forward.kernels) + len(d.backward.kernels),
                agreement(dict(zip(names, ours())), dict(zip(names, eager()))), bytes=nbytes, flops=flops,
                extra={"kernel": "attention_train", "size": size})


# --- a run -------------------------------------------------------------------------------------------
def run(settings: Settings, log: Callable[[str], None] = lambda line: None) -> dict:
    """Benchmark as `settings` says; returns the record (what `--json` writes)."""
    from axon.runtime import choose

    settings.check()
    if settings.mode == "train":
        train_block(settings)  # before any measuring: a model without one fails at once
    device = choose(settings.device)
    if settings.cuda_graphs:
        from axon.runtime.cuda_graphs import require_cuda

        require_cuda(device)
    s = _defaults(settings, device)
    torch.manual_seed(s.seed)
    with ieee_f32():
        return _run(s, device, log)


@contextlib.contextmanager
def ieee_f32():
    """Full-precision f32 matmuls and convolutions in PyTorch (no TF32) while the bench runs: Axon's
    kernels compute f32 in full precision, so both sides do the same arithmetic."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _run(s: Settings, device: torch.device, log) -> dict:
    record = header(s, device)
    log(f"measuring the device's ceilings on {record['device']['name']} ...")
    record["ceilings"] = ceil = ceilings(device)
    if s.mode == "kernels":
        cases = kernel_cases(s, device)
    else:
        cases = iter([(forward_case if s.mode == "forward" else train_case)(s, device)])
    for case in cases:
        log(f"timing {case.name} ...")
        record["runs"].append(time_case(case, s, device, ceil))
        del case
    return record


def time_case(case: Case, s: Settings, device: torch.device, ceil: Mapping[str, float]) -> dict:
    """The three timings of one case, with launches, rates against the ceilings and speed-ups."""
    impls = {"axon": {**measure(case.axon, device, s.repeats, s.warmup), "launches": case.launches,
                      "kernels": case.kernels},
             "eager": {**measure(case.eager, device, s.repeats, s.warmup),
                       "launches": kernel_launches(case.eager, device)}}
    if not s.compile:
        impls["compiled"] = {"skipped": "--no-compile"}
    else:
        compiled, why = _try_compile(case.make_compiled)
        if compiled is None:
            impls["compiled"] = {"error": why}
        else:
            impls["compiled"] = {**measure(compiled, device, s.repeats, s.warmup),
                                 "launches": kernel_launches(compiled, device)}
    for r in impls.values():
        if "median_ms" not in r:
            continue
        seconds = r["median_ms"] * 1e-3
        if case.bytes:
            r["gbps"] = case.bytes / seconds / 1e9
            r["pct_copy_bw"] = 100 * r["gbps"] / ceil["copy_gbps"]
        if case.flops:
            r["tflops"] = case.flops / seconds / 1e12
            r["pct_matmul_peak"] = 100 * r["tflops"] / ceil["matmul_tflops"]
    base = impls["axon"]["median_ms"]
    speedup = {f"{k}/axon": impls[k]["median_ms"] / base if "median_ms" in impls[k] and base > 0 else None
               for k in ("eager", "compiled")}
    return {"case": case.name, "shapes": case.shapes, "bytes": case.bytes, "flops": case.flops,
            **case.extra, "check": case.check, "impls": impls, "speedup": speedup}


def header(s: Settings, device: torch.device) -> dict:
    import triton

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU (Triton interpreter)"
    settings = asdict(s)
    settings.update({"torch_compile_mode": compile_mode(s), "axon_call": "check_indices=False (checked once)",
                     "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                     "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32})
    return {"tool": "axon bench", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "axon": git_state(), "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                              "triton": triton.__version__},
            "device": {"name": name, "type": device.type, "interpreter": device.type != "cuda"},
            "mode": s.mode, "settings": settings, "runs": []}


def git_state() -> dict:
    """The commit of the Axon checkout (and whether tracked files differ from it); 'unknown' outside
    a git checkout. Read only: no index refresh (GIT_OPTIONAL_LOCKS=0)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*argv):
        return subprocess.run(["git", "-C", str(root), *argv], capture_output=True, text=True, timeout=10,
                              env=env, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    try:
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return {"commit": commit, "dirty": dirty}


# --- reporting -----------------------------------------------------------------------------------------
def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_table(record: dict) -> str:
    """The record as a text table: one row per case and implementation, then each case's check."""
    c, s = record["ceilings"], record["settings"]
    graphs = " (CUDA graphs: Axon's, torch.compile's 'reduce-overhead')" if s.get("cuda_graphs") else ""
    lines = [f"axon bench --mode {record['mode']} on {record['device']['name']}{graphs}: median of "
             f"{s['repeats']} after {s['warmup']} warm-up; commit {record['axon']['commit'][:12]}",
             f"ceilings: copy {c['copy_gbps']:.1f} GB/s, f32 matmul {c['matmul_tflops']:.3g} TFLOP/s",
             ""]
    w = max([len(r["case"]) for r in record["runs"]] + [10])
    head = (f"{'case':<{w}} {'impl':<9} {'median ms':>10} {'min ms':>9} {'IQR ms':>8} {'launch':>6} "
            f"{'GB/s':>8} {'%copy':>6} {'TFLOP/s':>8} {'%mm':>6} {'vs axon':>8}")
    lines += [head, "-" * len(head)]
    for run_ in record["runs"]:
        for i, (impl, r) in enumerate(run_["impls"].items()):
            name = run_["case"] if i == 0 else ""
            if "median_ms" not in r:
                why = r.get("error") or f"skipped ({r.get('skipped')})"
                lines.append(f"{name:<{w}} {impl:<9} {'failed: ' + why if 'error' in r else why}")
                continue
            ratio = run_["speedup"].get(f"{impl}/axon")
            lines.append(f"{name:<{w}} {impl:<9} {r['median_ms']:>10.4g} {r['min_ms']:>9.4g} "
                         f"{r['iqr_ms']:>8.3g} "
                         f"{_num(r.get('launches'), 'd'):>6} {_num(r.get('gbps'), '.1f'):>8} "
                         f"{_num(r.get('pct_copy_bw'), '.0f'):>6} {_num(r.get('tflops'), '.3g'):>8} "
                         f"{_num(r.get('pct_matmul_peak'), '.0f'):>6} "
                         f"{'' if ratio is None else f'{ratio:.2f}x':>8}")
    lines.append("")
    for run_ in record["runs"]:
        ch = run_["check"]
        lines.append(f"check {run_['case']}: max |error| {ch['max_abs_error']:.3g}, relative "
                     f"{ch['max_rel_error']:.3g} against PyTorch ({len(ch['outputs'])} outputs) "
                     f"{'ok' if ch['ok'] else 'DISAGREE'}")
    lines.append("vs axon: the implementation's time over Axon's (above 1: Axon is faster); launch: kernels "
                 "per call (Axon's launch list; torch's by the profiler, GPU only)")
    return "\n".join(lines)


def write_json(record: dict, path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(record, indent=1, default=str) + "\n")


def plot(record: dict, path: str | Path) -> None:
    """A bar chart of each case's median time per implementation (log scale), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = record["runs"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(runs) + 2), 4.5), dpi=100)
    width = 0.8 / len(IMPLS)
    for j, impl in enumerate(IMPLS):
        xs, ys = [], []
        for i, r in enumerate(runs):
            t = r["impls"].get(impl, {}).get("median_ms")
            if t is not None:
                xs.append(i + (j - 1) * width)
                ys.append(t)
        ax.bar(xs, ys, width, label={"axon": "Axon", "eager": "PyTorch eager",
                                     "compiled": "torch.compile"}[impl])
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([r["case"] for r in runs], rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("median time per call (ms)")
    ax.set_title(f"axon bench --mode {record['mode']} on {record['device']['name']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    plt.close(fig)
