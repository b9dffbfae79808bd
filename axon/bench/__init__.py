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

The package, one concern a module:

    settings   what was asked (Settings, BenchError) and the device's default counts
    modes      the table of modes: each mode's cases and how one is timed (add a mode here)
    forward    --mode forward: a model against its twin
    train      --mode train: a training step against a torch.optim step
    kernels    --mode kernels: the kernel sweep
    twin       the PyTorch twin of a graph
    cases      a case (one thing timed three ways) and the helpers the modes share
    timing     medians, the device's ceilings, launches counted, one case timed three ways
    record     a run: checks, ceilings, every case timed, the record with commit, versions and device
    report     the record as a table, a JSON file and a bar chart
"""
from .cases import Case, agreement, compile_mode, graph_flops, graphed
from .kernels import KERNELS, SWEEP, kernel_source, torch_kernel, traffic
from .modes import MODES, Mode, select
from .record import git_state, header, run
from .report import format_table, plot, write_json
from .settings import BenchError, Settings
from .timing import IMPLS, ceilings, ieee_f32, measure, summarize, time_case
from .train import torch_optimizer
from .twin import TWIN_PIPELINE, Twin, twin, twin_graph

__all__ = ["BenchError", "Case", "IMPLS", "KERNELS", "MODES", "Mode", "SWEEP", "Settings", "TWIN_PIPELINE",
           "Twin", "agreement", "ceilings", "compile_mode", "format_table", "git_state", "graph_flops",
           "graphed", "header",
           "ieee_f32", "kernel_source", "measure", "plot", "run", "select", "summarize", "time_case",
           "torch_kernel", "torch_optimizer", "traffic", "twin", "twin_graph", "write_json"]
