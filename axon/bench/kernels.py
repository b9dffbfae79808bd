"""`--mode kernels`: single fused kernels over a sweep of sizes, each a tiny `.axon` model compiled with
`axon.compile`, against F.softmax, F.layer_norm, relu(x @ w + b) and F.scaled_dot_product_attention;
`attention_train` is attention's forward and backward (dq, dk, dv) through torch.autograd."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import torch

from axon.ir.errors import did_you_mean
from .cases import Case, agreement, shapes
from .settings import BenchError, Settings

KERNELS = ("softmax", "layernorm", "matmul_bias_relu", "attention", "attention_train")
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


def kernel_cases(s: Settings, device: torch.device) -> Iterator[Case]:
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
            yield Case(f"{kind} {'x'.join(map(str, size))}", {"inputs": shapes(inputs)},
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
