"""Data-parallel training: two real processes (gloo) end with the weights of one process with the same
global batch, dropout included; a run stopped by SIGTERM continues on any number of processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from axon.driver import executable
from axon.ir import DType, GraphBuilder
from axon.ir.evaluate import evaluate
from axon.ir.shapes import Sym
from axon.passes.data_parallel import ROWS_OFFSET, offset_rands
from axon.runtime.distributed import Buckets, World
from axon.runtime.safetensors import load
from loopback import needs_loopback

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The MLP example (dropout 0.1, Adam with weight decay; a constant rate, so that a run of one epoch can be
# resumed for a second) on a fifth of the digits, with a batch that does not split evenly over two ranks
# (33 rows: 16 and 17).
SOURCE = (EXAMPLES / "mlp.axon").read_text().replace("digits(val = 0.2)", "digits(val = 0.8)").replace(
    "batch = 64", "batch = 33").replace("hidden = 128", "hidden = 24").replace(', schedule = "cosine"', "")


def _rand_graph():
    b = GraphBuilder("r")
    x = b.input("x", DType.F32, (Sym("n"), 7))
    seed = b.input("seed", DType.I64, ())
    b.output("y", b.mul(x, b.rand(seed, (Sym("n"), 7))))
    return b.build()


def test_a_rank_draws_the_random_numbers_of_its_rows():
    """rand over [n, 7] with the rows' offset: rows 3..6 drawn alone equal rows 3..6 of the whole, on the
    reference evaluator and in the generated kernel."""
    g = offset_rands(_rand_graph(), Sym("n"))
    assert ROWS_OFFSET in g.inputs
    seed, whole = torch.tensor(5), torch.ones(10, 7)
    full = evaluate(g, {"x": whole, "seed": seed, ROWS_OFFSET: torch.tensor(0)}, {})["y"]
    part = {"x": whole[3:7], "seed": seed, ROWS_OFFSET: torch.tensor(3)}
    assert torch.equal(evaluate(g, part, {})["y"], full[3:7])
    assert torch.equal(executable(g, "cpu")(part, {})["y"], full[3:7])
    assert not torch.equal(full[3:7], full[0:4])


def test_shares_and_buckets():
    world = World(rank=1, size=3, backend="gloo")
    assert [World(r, 3, "gloo").rows(10) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert world.rows(2) == (0, 1) and World(0, 3, "gloo").rows(2) == (0, 0)  # a rank may get no row


@needs_loopback
def test_a_bucket_leaves_as_soon_as_it_is_full():
    """In a one-rank gloo group: 'a' and 'b' fill an 800-byte bucket, which is sent when 'c' comes (before
    the step ends); the sums are weight * each tensor."""
    import torch.distributed as dist

    from axon.data_parallel import _free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        buckets = Buckets(World(0, 1, "gloo"), limit=800)
        r = buckets.open(0.5)
        tensors = {"a": torch.ones(100), "b": torch.arange(100.0), "c": torch.full((300,), 4.0)}
        r.add("a", tensors["a"])
        r.add("b", tensors["b"])
        assert buckets.sent == 0
        r.add("c", tensors["c"])
        assert buckets.sent == 1
        out = r.finish()
        assert buckets.sent == 2
        for k, t in tensors.items():
            assert torch.equal(out[k], 0.5 * t), k
    finally:
        dist.destroy_process_group()


def _train(tmp_path, out: str, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "mlp.axon"
    path.write_text(SOURCE)
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "axon.cli", "train", str(path), "--out", str(tmp_path / out),
                           *extra], capture_output=True, text=True, env=env, timeout=600)


def _close(a: Path, b: Path) -> None:
    x, y = load(a / "checkpoint.safetensors"), load(b / "checkpoint.safetensors")
    assert set(x) == set(y)
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=1e-5, atol=1e-6, msg=k)


@needs_loopback
def test_two_processes_end_with_the_weights_of_one(tmp_path):
    one = _train(tmp_path, "one", "--epochs", "2")
    assert one.returncode == 0, one.stderr
    two = _train(tmp_path, "two", "--epochs", "2", "--nproc", "2")
    assert two.returncode == 0, two.stderr
    assert "data-parallel training on 2 processes" in two.stdout
    assert "on each of 2 ranks" in two.stdout and two.stdout.count("epoch   2/2") == 1  # rank 0 speaks
    _close(tmp_path / "one", tmp_path / "two")
    # validation split over the ranks, sums added: the one process's figures

    h1, h2 = (json.loads((tmp_path / d / "metrics.json").read_text())["history"] for d in ("one", "two"))
    for a, b in zip(h1, h2, strict=True):
        assert a["val_acc"] == b["val_acc"] and abs(a["val_loss"] - b["val_loss"]) < 1e-6


def test_torchrun_without_out_is_refused(tmp_path, capsys):
    from axon.cli import main

    path = tmp_path / "mlp.axon"
    path.write_text(SOURCE)
    os.environ["WORLD_SIZE"] = "2"
    try:
        assert main(["train", str(path)]) == 1
    finally:
        del os.environ["WORLD_SIZE"]
    assert "needs --out DIR" in capsys.readouterr().err


@needs_loopback
def test_sigterm_stops_every_rank_at_one_step_and_the_run_resumes(tmp_path):
    """SIGTERM to `axon train --nproc 2` mid-run: both ranks stop after the same step, rank 0 writes the
    checkpoint, exit 143; `--resume` in one process (any number of processes continues the run) ends with
    the weights of the uninterrupted run."""
    import signal
    import time

    path = tmp_path / "mlp.axon"
    path.write_text(SOURCE)
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    out = tmp_path / "killed"
    run = subprocess.Popen([sys.executable, "-m", "axon.cli", "train", str(path), "--epochs", "4", "--nproc",
                            "2", "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 143, err
    assert err.count("checkpoint written to") == 1, err  # rank 0 speaks for both
    more = _train(tmp_path, "killed", "--epochs", "4", "--resume")
    assert more.returncode == 0, more.stderr
    assert _train(tmp_path, "whole", "--epochs", "4").returncode == 0
    _close(tmp_path / "whole", tmp_path / "killed")


@needs_loopback
@pytest.mark.parametrize("precision, masked", [("f32", ("h.w",)), ("f16", ()), ("bf16", ())])
def test_the_step_cut_at_the_all_reduce_equals_the_whole_step(precision, masked, gen):
    """One rank: the gradient graph, the all-reduce and the update graph give the one-graph step's
    outputs — with a pruning mask (removed entries stay zero in weights and states), and in f16 with
    loss scaling (the summed scaled gradients unscaled in the update, `found_inf` from them)."""
    import torch.distributed as dist

    from axon.data_parallel import DataParallelStep, _free_port
    from axon.frontend import parse, training_graph
    from axon.ir import init_params
    from axon.passes.loss_scale import FOUND_INF, LOSS_SCALE
    from axon.passes.masks import mask_input_name
    from axon.trainer import step_graph

    loss_graph, spec = training_graph(parse(SOURCE, "mlp.axon"))
    optimizer = {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs), "clip": 1.0}
    step = step_graph(loss_graph, optimizer, precision, masked)
    params = init_params(step, seed=2)
    feeds = {"x": torch.rand(9, 64, generator=gen), "label": torch.randint(10, (9,), generator=gen),
             "seed": torch.tensor(11), "step": torch.tensor(1.0, dtype=torch.float64),
             "lr": torch.tensor(3e-3, dtype=torch.float64)}
    feeds.update({n: torch.zeros_like(params[n[n.index(".", 6) + 1:]]) for n in step.inputs
                  if n.startswith("state.")})
    if precision == "f16":
        feeds[LOSS_SCALE] = torch.tensor(1024.0)
    for name in masked:
        feeds[mask_input_name(name)] = (torch.rand(params[name].shape, generator=gen) > 0.5).float()
    whole = executable(step, "cpu")(feeds, params)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        dp = DataParallelStep(loss_graph, optimizer, precision, World(0, 1, "gloo"), "cpu", ("x", "label"),
                              loss_graph.inputs["x"].shape[0], masked)
        cut = dp(feeds, params)
    finally:
        dist.destroy_process_group()
    assert set(whole) == set(cut)
    for k in whole:
        torch.testing.assert_close(cut[k], whole[k], rtol=1e-5, atol=1e-6, msg=k)
    for name in masked:
        removed = feeds[mask_input_name(name)] == 0
        assert bool((cut["new." + name][removed] == 0).all())
    if precision == "f16":
        assert not bool(cut[FOUND_INF])
