"""`--mode forward`: a model's forward pass compiled by Axon (`axon.compile`) against its PyTorch twin,
eager and compiled."""
from __future__ import annotations

from collections.abc import Iterator

import torch

from axon.ir import AxonError
from .cases import Case, agreement, compile_mode, dims, graph_flops, graphed, shapes
from .settings import BenchError, Settings
from .twin import twin, twin_graph


def forward_cases(s: Settings, device: torch.device) -> Iterator[Case]:
    case = forward_case(s, device)
    yield case
    if s.quantized:
        yield quantized_case(s, device, case)


def quantized_case(s: Settings, device: torch.device, base: Case) -> Case:
    """The model as `axon quantize` wrote it to `s.quantized`, timed against the same float PyTorch twin
    as the float model (what quantizing buys over it), its kernels checked against the reference evaluator
    of the quantized graph (its error against the float model is the ledger's); weight bytes and kernel
    counts of both."""
    import axon
    from axon.ir import evaluate
    from axon.quantize_cmd import fit, read

    q = read(s.quantized)
    hparams = {**(q.run.get("hparams") or {}), **s.hparams} or None
    source = s.file
    if q.pruning:  # pruned before it was quantized: that smaller (or block-sparse) model
        from axon.driver import graph_of
        from axon.quantize_cmd import pruned

        source = pruned(q, graph_of(s.file, s.model, hparams=hparams))
    model = axon.compile(source, s.model, hparams=hparams, device=device, seed=s.seed,
                         pipeline=q.settings.pipeline)
    params = fit(q, model.graph, device)
    env = base.shapes["dims"]
    from axon.run import random_inputs

    inputs = {k: v.to(device) for k, v in random_inputs(model.graph, env, s.seed).items()}
    exe = graphed(model.executable, s, adopt=params)
    got = exe(inputs, params)
    want = evaluate(model.graph, {k: v.cpu() for k, v in inputs.items()},
                    {k: v.cpu() for k, v in params.items()})
    float_bytes = sum(p.dtype.itemsize * _numel(p.shape) for p in base_graph(s).params.values())
    return Case(f"{model.graph.name} {q.settings.mode}", {"inputs": shapes(inputs), "dims": env},
                lambda: exe(inputs, params, check_indices=False), base.eager, base.make_compiled,
                len(model.executable.plan(env).launches), len(exe.kernels),
                {**agreement(got, want), "against": "the quantized graph's reference evaluator"},
                flops=graph_flops(model.graph, env),
                extra={"quantized": {"mode": q.settings.mode, "folder": str(s.quantized),
                                     "weight_bytes": {"float": float_bytes,
                                                      "quantized": sum(t.numel() * t.element_size()
                                                                       for t in params.values())},
                                     "kernels": {"float": base.kernels, "quantized": len(exe.kernels)}}})


def base_graph(s: Settings):
    from axon.driver import graph_of

    return graph_of(s.file, s.model, hparams=s.hparams or None)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def forward_case(s: Settings, device: torch.device) -> Case:
    import axon
    from axon.driver import graph_of
    from axon.run import random_inputs

    model = axon.compile(s.file, s.model, hparams=s.hparams or None, device=device, seed=s.seed)
    gpu = device.type == "cuda"
    env = dims(model.graph, s, device, (_train_batch(s) or 64) if gpu else None)
    inputs = {k: v.to(device) for k, v in random_inputs(model.graph, env, s.seed).items()}
    params = model.params
    t = twin(twin_graph(graph_of(s.file, s.model, hparams=s.hparams or None)), env, device)
    missing = sorted(set(t.params) - set(params))
    if missing:
        raise BenchError(f"the compiled model has no parameter '{missing[0]}' of the model as written")
    exe = graphed(model.executable, s, adopt=params)
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

    return Case(model.graph.name, {"inputs": shapes(inputs), "dims": env},
                lambda: exe(inputs, params, check_indices=False), eager, make_compiled,
                len(model.executable.plan(env).launches), len(exe.kernels), agreement(got, want),
                flops=graph_flops(model.graph, env))


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
