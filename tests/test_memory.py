"""Memory planning: liveness intervals and arena placement on hand-built launch lists (no two buffers live
together share a byte, every offset aligned), typed views into the arena, the examples giving the same
results with and without reuse (poisoned), poison never masked by a reused buffer's old values, the
peak of a training step far under the sum, and `axon show --memory`."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from axon.cli import main
from axon.driver import load_ast
from axon.frontend import training_graph
from axon.ir import DType, GraphBuilder, Sym, evaluate, init_params
from axon.ir.shapes import concrete
from axon.run import bind_dims, random_inputs
from axon.runtime import Executable
from axon.runtime.memory import ALIGN, check_plan, liveness, padded, plan_memory
from axon.trainer import step_graph
from numerics import assert_close

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _no_shared_bytes(plan) -> None:
    """Every pair of buffers live at a common launch: byte ranges disjoint (the test's own check)."""
    full = [b for b in plan.buffers if b.nbytes]
    for i, a in enumerate(full):
        assert a.offset % ALIGN == 0 and a.offset + a.nbytes <= plan.size
        for c in full[i + 1:]:
            if a.first <= c.last and c.first <= a.last:
                assert a.offset + a.nbytes <= c.offset or c.offset + c.nbytes <= a.offset, (a, c)


# --- planning on hand-built launch lists --------------------------------------------------------------
def test_a_chain_needs_two_buffers():
    steps = [(("x",), ("a",)), (("a",), ("b",)), (("b",), ("c",)), (("c",), ("d",)), (("d",), ("y",))]
    sizes = dict.fromkeys("abcdy", 1000)
    assert liveness(steps, {"y"}) == {"a": (0, 1), "b": (1, 2), "c": (2, 3), "d": (3, 4)}
    plan = plan_memory(steps, sizes, {"y"})
    _no_shared_bytes(plan)
    assert plan.without_reuse == 4 * 1024 and plan.size == 2 * 1024
    assert plan.peak() == (2048, 1)
    assert {b.node for b in plan.live_at(2)} == {"b", "c"}


def test_a_kernel_never_writes_over_what_it_reads():
    """`a` dies at launch 1, which writes `b` and `c`: neither may take a's bytes, nor each other's."""
    steps = [(("x",), ("a",)), (("a",), ("b", "c")), (("b", "c"), ("y",))]
    plan = plan_memory(steps, {"a": 512, "b": 512, "c": 512}, {"y"})
    where = {b.node: b.offset for b in plan.buffers}
    assert len(set(where.values())) == 3 and plan.size == 3 * 512


def test_outputs_inputs_and_empty_buffers_are_not_placed():
    steps = [(("x", "w"), ("a", "y")), (("a", "y"), ("e",)), (("e", "y"), ("z",)), ((), ("dead",))]
    plan = plan_memory(steps, {"a": 300, "y": 10**6, "e": 0, "z": 5, "dead": 100}, {"y", "z"})
    assert [b.node for b in plan.buffers] == ["a", "e", "dead"]
    assert liveness(steps, {"y", "z"})["dead"] == (3, 3)  # never read: live at its own launch only
    assert plan.size == padded(300) and plan.without_reuse == padded(300) + padded(100)  # dead in a's bytes


def test_a_dead_buffer_leaves_a_gap_that_is_filled():
    """`d` fits where `b` was, between two long-lived buffers, instead of growing the arena."""
    steps = [((), ("a", "b", "c")), (("b",), ()), ((), ()), ((), ("d",)), (("d",), ()), (("a", "c"), ("y",))]
    plan = plan_memory(steps, {"a": 1024, "b": 256, "c": 1024, "d": 200}, {"y"})
    _no_shared_bytes(plan)
    where = {b.node: b.offset for b in plan.buffers}
    assert where["d"] == where["b"] and plan.size == plan.peak()[0] == 2304


@pytest.mark.parametrize("seed", range(40))
def test_random_launch_lists(seed):
    rng = random.Random(seed)
    steps, made, sizes, outputs = [], [], {}, set()
    for i in range(rng.randint(1, 40)):
        reads = rng.sample(made, min(len(made), rng.randint(0, 3))) + ["input"]
        writes = [f"v{i}.{k}" for k in range(rng.choice([1, 1, 1, 2, 3]))]
        for v in writes:
            sizes[v] = rng.choice([0, 1, 7, 255, 256, 257, 1000, 4096, 10**5])
            if rng.random() < 0.15:
                outputs.add(v)
        steps.append((reads, writes))
        made += writes
    plan = plan_memory(steps, sizes, outputs)
    check_plan(plan)
    _no_shared_bytes(plan)
    for b in plan.buffers:  # the intervals, against their definition
        assert b.node in steps[b.first][1]
        readers = [i for i, (reads, _) in enumerate(steps) if b.node in reads]
        assert b.last == max(readers, default=b.first)
    for reads, writes in steps:  # a kernel's outputs never alias its inputs
        spans = {b.node: (b.offset, b.offset + b.nbytes) for b in plan.buffers if b.nbytes}
        for w in (w for w in writes if w in spans):
            for r in (r for r in list(reads) + list(writes) if r in spans and r != w):
                assert spans[w][1] <= spans[r][0] or spans[r][1] <= spans[w][0]
    assert max(plan.live_bytes(), default=0) <= plan.size <= plan.without_reuse
    off = plan_memory(steps, sizes, outputs, reuse=False)
    assert off.size == off.without_reuse == plan.without_reuse
    spans = sorted((b.offset, b.offset + b.nbytes) for b in off.buffers if b.nbytes)
    assert all(a[1] <= c[0] for a, c in zip(spans, spans[1:]))


def _reference_offsets(steps, sizes, outputs) -> dict:
    """Greedy by size with best fit, written as plainly as possible: largest first, each buffer at the
    smallest gap (lowest on ties) between the bytes of the placed buffers it meets, or after them."""
    ranges = liveness(steps, outputs)
    done: list[tuple[int, int, int, int]] = []  # first, last, offset, end
    offsets = {}
    for v in sorted(ranges, key=lambda v: -padded(sizes[v])):
        first, last = ranges[v]
        if not sizes[v]:
            offsets[v] = 0
            continue
        need = padded(sizes[v])
        taken = sorted((o, e) for f, la, o, e in done if f <= last and first <= la)
        best, best_gap, free_from = None, None, 0
        for lo, hi in taken:
            if lo - free_from >= need and (best_gap is None or lo - free_from < best_gap):
                best, best_gap = free_from, lo - free_from
            free_from = max(free_from, hi)
        offsets[v] = free_from if best is None else best
        done.append((first, last, offsets[v], offsets[v] + need))
    return offsets


@pytest.mark.parametrize("seed", range(20))
def test_placement_is_best_fit_by_size(seed):
    """The vectorized placement puts every buffer where the plain best-fit loop puts it."""
    rng = random.Random(1000 + seed)
    steps, made, sizes = [], [], {}
    for i in range(rng.randint(1, 120)):
        reads = rng.sample(made, min(len(made), rng.randint(0, 4)))
        writes = [f"v{i}.{k}" for k in range(rng.choice([1, 1, 2]))]
        for v in writes:
            sizes[v] = rng.choice([0, 100, 256, 300, 512, 1000, 2048, 4096])
        steps.append((reads, writes))
        made += writes
    outputs = set(rng.sample(made, len(made) // 10))
    plan = plan_memory(steps, sizes, outputs)
    assert {b.node: b.offset for b in plan.buffers} == _reference_offsets(steps, sizes, outputs)


# --- the executable's arena ---------------------------------------------------------------------------
def _mixed():
    """Intermediates of five dtypes (f16, f64, bool, i64, f32) and odd sizes."""
    b = GraphBuilder("mixed")
    x = b.input("x", DType.F32, (Sym.of("batch"), 37))
    half, double = b.cast(x, DType.F16), b.cast(x, DType.F64)
    pos = b.gt(x, b.const(0.0, DType.F32))
    arg = b.argmax(x, 1, keepdim=True)
    y = b.add(b.cast(half, DType.F32), b.cast(double, DType.F32))
    b.output("y", b.where(pos, y, b.cast(arg, DType.F32)))
    b.output("s", b.sum(b.mul(y, y), 1))
    return b.build()


def test_buffers_are_aligned_typed_views_of_one_arena(gen):
    exe = Executable(_mixed(), device="cpu")
    x = torch.randn(5, 37, generator=gen)
    got = exe({"x": x}, poison=True)
    want = evaluate(exe.graph, {"x": x})
    for name in want:
        assert_close(got[name], want[name], what=name)
    plan = exe.plan({"batch": 5})
    base = plan.arena.untyped_storage().data_ptr()
    assert {t.dtype for t in plan.buffers.values()} >= {torch.float16, torch.float64, torch.bool, torch.int64}
    for node, t in plan.buffers.items():
        assert t.untyped_storage().data_ptr() == base
        assert t.is_contiguous() and t.dtype == node.dtype.torch and t.shape == concrete(node.shape, plan.env)
        assert (t.data_ptr() - base) % ALIGN == 0
    check_plan(plan.memory)
    assert plan.memory.size == plan.arena.numel() < plan.memory.without_reuse


def test_no_reuse_switch(monkeypatch):
    monkeypatch.setenv("AXON_NO_REUSE", "1")
    exe = Executable(_mixed(), device="cpu")
    plan = exe.plan({"batch": 3})
    assert not exe.reuse and plan.memory.size == plan.memory.without_reuse
    monkeypatch.delenv("AXON_NO_REUSE")
    assert Executable(_mixed(), device="cpu").reuse and not Executable(_mixed(), reuse=False).reuse


def _chain():
    """Matmuls in a row (never fused together): the third result takes the first one's bytes."""
    b = GraphBuilder("chain")
    h = b.input("x", DType.F32, (Sym.of("batch"), 19))
    for i, n in enumerate((23, 19, 23, 19, 7)):
        h = b.matmul(h, b.param(f"w{i}", DType.F32, (h.shape[1], n)))
    b.output("y", h)
    return b.build()


def test_poison_is_not_masked_by_a_reused_buffer(gen):
    """A launch that writes nothing (sabotaged) leaves NaN in its output when poisoned, even though its
    bytes held an earlier, dead buffer's finite values; unpoisoned, those stale values would pass."""
    exe = Executable(_chain(), device="cpu")
    params = {p: torch.randn(*n.shape, generator=gen) for p, n in exe.graph.params.items()}
    x = torch.randn(6, 19, generator=gen)
    assert_close(exe({"x": x}, params, poison=True)["y"], evaluate(exe.graph, {"x": x}, params)["y"])
    plan = exe.plan({"batch": 6})
    spans = {b.node: b for b in plan.memory.buffers}
    target = next(i for i, (_, launch) in enumerate(plan.launches) for o in launch.outputs
                  if o in spans and any(b.last < i and b.offset == spans[o].offset for b in spans.values()))
    plan.steps[target].call = None  # as a launch over an empty grid
    assert torch.isfinite(exe({"x": x}, params)["y"]).all()  # stale values flow through unnoticed
    assert torch.isnan(exe({"x": x}, params, poison=True)["y"]).all()


# --- the examples -------------------------------------------------------------------------------------
def _step(name: str):
    loss_graph, spec = training_graph(load_ast(EXAMPLES / name))
    return step_graph(loss_graph, {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)})


@pytest.mark.parametrize("name", ["mlp.axon", "cnn.axon"])
def test_training_step_same_with_and_without_reuse(name):
    step = _step(name)
    env = bind_dims(step, {"batch": 5})
    inputs = random_inputs(step, env, seed=3)
    inputs.update({n: torch.zeros_like(t) for n, t in inputs.items() if n.startswith("state.")})
    inputs.update(step=torch.tensor(1.0, dtype=torch.float64), lr=torch.tensor(1e-2, dtype=torch.float64))
    params = init_params(step, 0)
    shared, alone = Executable(step, device="cpu"), Executable(step, device="cpu", reuse=False)
    got, want = shared(inputs, params, poison=True), alone(inputs, params, poison=True)
    assert got.keys() == want.keys()
    for k in got:
        assert torch.equal(got[k], want[k]), k
    assert torch.isfinite(got["loss"])
    memory = shared.plan(env).memory
    assert memory.size < memory.without_reuse / 2


@pytest.mark.parametrize("name", ["mlp.axon", "cnn.axon"])
def test_training_step_peak_is_far_under_the_sum(name):
    step = _step(name)
    plan = Executable(step, device="cpu").memory_plan({"batch": 64})
    check_plan(plan)
    top, at = plan.peak()
    assert 0 < top <= plan.size < plan.without_reuse / 3 and 0 <= at < plan.launches


def test_show_memory_of_a_training_step(capsys):
    assert main(["show", str(EXAMPLES / "mlp.axon"), "--memory", "--step"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("memory plan of MLP (batch=64):") and "intermediate buffers" in out
    assert "without reuse:" in out and "with reuse:" in out and "largest live set:" in out
    assert " = where " in out and "f32[64, 128]" in out and "10 launches" in out  # fused
    assert main(["show", str(EXAMPLES / "mlp.axon"), "--memory", "--step", "--no-fusion"]) == 0
    out = capsys.readouterr().out
    assert " = matmul  " in out and "117 launches" in out


def test_show_memory_of_the_forward_graph(capsys):
    argv = ["show", str(EXAMPLES / "mlp.axon"), "--memory", "--loss", "--training", "--batch", "7"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(batch=7)" in out and "f32[7, 128]" in out and "graph outputs" in out
    assert main(["show", str(EXAMPLES / "mlp.axon"), "--memory", "--dim", "nope=3"]) == 1
    assert "no symbolic dimension 'nope'" in capsys.readouterr().err
