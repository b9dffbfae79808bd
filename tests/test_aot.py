"""Every kernel Axon generates compiles and launches on an H100/H200 (sm_90), checked on a machine without
a GPU: each is compiled ahead of time by Triton for sm_90 and launched through Triton's own
`JITFunction.run` on a stand-in CUDA driver (`codegen/aot_worker.py`), which runs the checks a real launch
runs (argument specialization, the used-globals check, shared memory and threads per block, grid limits)
and reads each cubin's registers and spills.

In the default suite: the config Axon takes for each kernel of every example (forward and training
step) and of `axon bench --mode kernels`, at the train blocks' batch sizes and the bench's GPU sizes: no
failure, no spill. Behind `-m slow`: every config the tuner may try (those that spill are pruned, so a
kernel fails only when none is left).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from axon.codegen import aot, groups
from axon.codegen.target import Target, parse
from axon.driver import graph_of, kernel_groups, load_ast, optimize
from axon.frontend import train_spec, training_graph
from axon.ir import DType, GraphBuilder
from axon.run import bind_dims, symbols
from axon.trainer import step_graph

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SM90 = parse("sm_90", tf32=False)
QUIET = lambda *a, **k: None  # noqa: E731


def example_graph(name: str, step: bool, dtype: str | None = None):
    """The graph `axon compile examples/NAME --target sm_90 [--step]` compiles, and its sizes."""
    module = load_ast(EXAMPLES / name)
    spec = train_spec(module)
    if step:
        loss_graph, spec = training_graph(module)
        g = step_graph(loss_graph, {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)})
    else:
        g, _ = optimize(graph_of(EXAMPLES / name), out=QUIET)
    if dtype:
        g, _ = optimize(g, f"dtype{{to={dtype}}},fold,simplify,cse,dce", out=QUIET)
    dims = {s: 32 for s in symbols(g)}
    if "batch" in dims:
        dims["batch"] = spec.batch if spec and spec.batch else 64
    return g, bind_dims(g, dims)


def sweep(graph, env, target: Target = SM90, all_configs: bool = False) -> list[aot.Row]:
    launches = aot.launches_for(kernel_groups(graph), env, target)
    return aot.compile_jobs(aot.jobs_for(launches, target, all_configs), target)


def assert_clean(rows: list[aot.Row], target: Target = SM90, all_configs: bool = False) -> None:
    """No failure; every config taken compiles, launches and does not spill (all configs: at least one
    per kernel, the others pruned)."""
    summary = aot.summary(rows)
    table = aot.format_table(rows, target)
    assert summary["failed"] == 0, table
    if not all_configs:
        assert not [r for r in rows if r.pruned], table


@pytest.mark.parametrize("what", ["forward", "step"])
@pytest.mark.parametrize("name", ["mlp.axon", "cnn.axon", "lstm.axon", "gpt.axon"])
def test_every_example_kernel_compiles_and_launches_on_sm90_without_spills(name, what):
    rows = sweep(*example_graph(name, what == "step"))
    assert_clean(rows)
    assert all(r.tensor_cores == "none" for r in rows if r.kind in ("matmul", "conv2d"))  # f32: ieee FMAs


@pytest.mark.parametrize("sizes", ["largest", pytest.param("all", marks=pytest.mark.slow)])
def test_the_kernel_bench_suite_compiles_and_launches_on_sm90_without_spills(sizes):
    """`axon bench --mode kernels` at its GPU sizes (softmax and layernorm over 8192 columns, 4096^3
    matmuls, attention over 2048 positions with head size 64 and its backward through torch.autograd):
    the largest of each kind (the largest tiles), or every size."""
    from axon.bench import SWEEP, kernel_source
    from axon.passes.partition import partition

    rows = []
    for kind, all_sizes in SWEEP["cuda"].items():
        for size in all_sizes if sizes == "all" else all_sizes[-1:]:
            g, _ = optimize(graph_of(kernel_source(kind, size)), out=QUIET)
            graphs = [g]
            if kind == "attention_train":
                p = partition(g, ["q", "k", "v"])
                graphs = [p.forward, p.backward]
            for h in graphs:
                rows += sweep(h, {})
    assert_clean(rows)
    kinds = {r.kind for r in rows}
    assert {"attention", "attention_bwd", "matmul"} <= kinds


def test_a_bf16_model_runs_its_dots_on_tensor_cores():
    """GPT in bf16: the training step's matmuls and both attention kernels on wgmma (sm_90, mma where a
    tile has fewer than 64 rows), the forward's on mma (sm_80)."""
    g, env = example_graph("gpt.axon", step=True, dtype="bf16")
    hopper = sweep(g, env)
    assert_clean(hopper)
    dots = [r for r in hopper if r.kind in ("matmul", "attention", "attention_bwd")]
    assert {"attention", "attention_bwd"} <= {r.kind for r in dots}
    assert all(r.tensor_cores in ("wgmma", "mma") for r in dots)
    assert sum(r.tensor_cores == "wgmma" for r in dots) >= len(dots) // 2
    g, env = example_graph("gpt.axon", step=False, dtype="bf16")
    ampere = sweep(g, env, parse("sm_80"))
    assert_clean(ampere, parse("sm_80"))
    assert all(r.tensor_cores == "mma" for r in ampere if r.kind in ("matmul", "attention", "attention_bwd"))


def test_tf32_is_opt_in_as_in_pytorch():
    g, env = example_graph("mlp.axon", step=False)
    assert all(r.tensor_cores == "none" for r in sweep(g, env) if r.kind == "matmul")
    tf32 = parse("sm_90", tf32=True)
    rows = sweep(g, env, tf32)
    assert_clean(rows, tf32)
    assert all(r.tensor_cores == "wgmma" for r in rows if r.kind == "matmul")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [None, "bf16"])
@pytest.mark.parametrize("name", ["mlp.axon", "cnn.axon", "lstm.axon", "gpt.axon"])
def test_every_config_the_tuner_may_try(name, dtype):
    """The full sweep: every config of every kernel of each example's training step; each kernel keeps
    at least one that compiles, launches and does not spill."""
    rows = sweep(*example_graph(name, True, dtype), all_configs=True)
    assert_clean(rows, all_configs=True)


# --- Triton's launch-time checks run in the worker: kernels that break them fail here ----------------
def _kernel_file(tmp_path, source: str) -> Path:
    path = tmp_path / "k_handwritten.py"
    path.write_text(textwrap.dedent(source))
    return path


def _run_one(path: Path, args, grid, meta, target: Target = SM90) -> aot.Row:
    job = aot.Job(aot.Row(0, "pointwise", "handwritten", meta, True), path, "kernel", args, grid, meta)
    (row,) = aot.compile_jobs([job], target, use_cache=False)
    return row


HEADER = """
import triton
import triton.language as tl
"""


def test_a_nan_global_fails_at_launch_as_on_a_gpu(tmp_path):
    """Triton re-checks a kernel's globals with `!=` at every launch: a NaN constant is never equal to
    itself. The interpreter does not check; the worker does, as a GPU would."""
    path = _kernel_file(tmp_path, HEADER + '''
NAN = tl.constexpr(float("nan"))

@triton.jit
def kernel(out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.full([BLOCK], NAN, tl.float32), mask=offs < n)
''')
    row = _run_one(path, [{"ptr": "float32"}, {"int": 10}], (1,), {"BLOCK": 16})
    assert not row.ok and "Global variable NAN has changed" in row.error


def test_generated_modules_refuse_globals_when_loaded(tmp_path):
    from axon.codegen.cache import load_kernel
    from axon.codegen.groups import CodegenError

    path = _kernel_file(tmp_path, HEADER + 'SCALE = 2.0\n\n@triton.jit\ndef kernel(x_ptr):\n    pass\n')
    with pytest.raises(CodegenError, match="defines global 'SCALE'"):
        load_kernel(path, "kernel")


def test_a_config_over_the_shared_memory_or_the_grid_limit_fails(tmp_path):
    """Triton's launch-time check of shared memory (the device's limit; sm_90 allows 227 KiB per block)
    and CUDA's grid limit: a bf16 matmul at 8 pipeline stages of 128 x 128 x 64 needs 256 KiB."""
    from axon.codegen.launch import Launch

    b = GraphBuilder()
    b.output("y", b.matmul(b.input("x", DType.BF16, (300, 256)), b.input("w", DType.BF16, (256, 384))))
    (kernel, launch), = aot.launches_for(groups(b.build()), {}, SM90)
    fits = {**launch.meta, "BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_stages": 3}
    too_deep = {**fits, "num_stages": 8}
    too_wide = Launch((launch.grid[0], 70000), launch.inputs, launch.outputs, launch.scalars, fits)
    rows = aot.compile_jobs(aot.jobs_for([(kernel, replace(launch, meta=fits, configs=(fits, too_deep))),
                                          (kernel, too_wide)], SM90), SM90, use_cache=False)
    ok, deep, wide = rows
    assert ok.ok and ok.tensor_cores == "wgmma" and not ok.spills, ok.error
    assert not deep.ok and "OutOfResources" in deep.error and "shared memory" in deep.error
    assert deep.pruned and aot.summary(rows[:2])["failed"] == 0  # the tuner keeps the other config
    assert not wide.ok and "grid y of 70000" in wide.error


def test_the_worker_imports_no_axon():
    """The worker is Triton and torch only: it runs in a process where Triton is a compiler."""
    code = aot.WORKER.read_text()
    assert "import axon" not in code and "from axon" not in code
    out = subprocess.run([sys.executable, "-c", "import ast, sys; ast.parse(open(sys.argv[1]).read())",
                          str(aot.WORKER)], capture_output=True)
    assert out.returncode == 0


def test_data_parallel_and_gan_steps_compile_and_launch_on_sm90_without_spills():
    """The kernels of `axon train --nproc N` (the MLP's gradient graph, its dropout drawing from a row
    offset, and its update graph) and of a GAN's two steps."""
    from axon.data_parallel import gradient_graph, update_graph
    from axon.passes.data_parallel import ROWS_OFFSET, offset_rands

    module = load_ast(EXAMPLES / "mlp.axon")
    loss_graph, spec = training_graph(module)
    grads = gradient_graph(offset_rands(loss_graph, loss_graph.inputs["x"].shape[0]))
    assert ROWS_OFFSET in grads.inputs
    graphs = [grads, update_graph(grads, {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)})]
    gan = load_ast(EXAMPLES / "gan.axon")
    for role in ("discriminator", "generator"):
        g, s = training_graph(gan, step=role)
        group = getattr(s.gan, role).params + "."
        graphs.append(step_graph(g, {"name": s.optimizer.name, **dict(s.optimizer.kwargs)},
                                 wrt=[n for n in g.params if n.startswith(group)]))
    rows = []
    for g in graphs:
        rows += sweep(g, bind_dims(g, {s: 64 for s in symbols(g)}))
    assert len(rows) >= 30, aot.format_table(rows, SM90)  # every kernel of the four graphs
    assert_clean(rows)
