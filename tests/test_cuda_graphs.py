"""CUDA-graph capture and replay (`runtime/cuda_graphs.py`).

Graphed calls give exactly what the same executable gives ungraphed: the forward of examples/mlp.axon
over new inputs, a shape change (one graph per set of sizes), the dropout seed read at each replay, and
training steps whose new parameters the graph writes back in place. Each such test runs twice: with
`torch.cuda.CUDAGraph` (marked gpu: skipped without a CUDA GPU) and with `FakeGraphs`, which stands in
for the backend on any device by running the captured work again at each replay into the same tensors;
the bookkeeping (static buffers, copies in, fresh outputs, feedback, re-capture) is the same code in
both. Asking for CUDA graphs without a GPU is a clear error, never ignored.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

import axon
from axon.cli import main
from axon.ir import DType, GraphBuilder, Sym
from axon.runtime import DeviceError, Executable, RunError, cuda_graphs
from axon.runtime.cuda_graphs import GraphedExecutable
from axon.runtime.safetensors import load

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MLP = EXAMPLES / "mlp.axon"
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error given without a CUDA GPU")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


class FakeGraphs:
    """The backend's three operations without a GPU: capturing runs the body once (the call that
    captures gets its results), a replay runs it again and copies what it computed into the tensors the
    capture returned, as a replayed CUDA graph writes into the same memory."""

    def __init__(self, device=None):
        self.device = device

    def warm_up(self, run):
        run()

    def capture(self, body):
        result = body()
        return (body, result), result

    def replay(self, graph):
        body, result = graph
        for name, t in body().items():
            result[name].copy_(t)


def counting(base):
    """`base` counting its warm-ups, captures and replays; every instance made is kept in `made`."""

    class Counting(base):
        made: list = []

        def __init__(self, device=None):
            super().__init__(device)
            self.counts = Counter()
            Counting.made.append(self)

        def warm_up(self, run):
            self.counts["warm_up"] += 1
            super().warm_up(run)

        def capture(self, body):
            self.counts["capture"] += 1
            return super().capture(body)

        def replay(self, graph):
            self.counts["replay"] += 1
            super().replay(graph)

    return Counting


@pytest.fixture(params=["fake", pytest.param("cuda", marks=pytest.mark.gpu)])
def graphs(request, monkeypatch):
    """The backend CUDA graphs are made with ('fake': FakeGraphs on the default device; 'cuda': the
    real one), counting; `graphs.made` lists the backends made."""
    backend = counting(FakeGraphs if request.param == "fake" else cuda_graphs.CudaGraphs)
    monkeypatch.setattr(cuda_graphs, "CudaGraphs", backend)
    return backend


def _x(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 64, generator=torch.Generator().manual_seed(seed))


# --- forward -------------------------------------------------------------------------------------------
def test_forward_replays_what_the_ungraphed_call_computes(graphs):
    model = axon.compile(MLP, cuda_graphs=True)
    exe = model.executable  # the same kernels, launched one by one
    outs, refs = [], []
    for i in range(3):
        x = _x(8, i)
        outs.append(model(x))
        refs.append(exe({"x": x}, model.params)["logits"])
        assert torch.equal(outs[-1], refs[-1]), i
        assert model.graphs.copies == 1  # x; the parameters are the graph's own buffers
    (backend,) = graphs.made
    assert backend.counts == {"warm_up": 1, "capture": 1, "replay": 2}
    assert len(model.graphs.graphs) == 1
    # outputs are fresh tensors: an earlier result is not changed by later replays
    assert len({o.data_ptr() for o in outs}) == 3
    for out, ref in zip(outs, refs):
        assert torch.equal(out, ref)


def test_a_shape_change_captures_again_and_earlier_sizes_replay(graphs):
    model = axon.compile(MLP, cuda_graphs=True)
    for i, batch in enumerate([8, 16, 8, 16, 5]):
        x = _x(batch, i)
        assert torch.equal(model(x), model.executable({"x": x}, model.params)["logits"]), batch
    (backend,) = graphs.made
    assert backend.counts == {"warm_up": 3, "capture": 3, "replay": 2}
    assert sorted(model.graphs.graphs) == [(("batch", 5),), (("batch", 8),), (("batch", 16),)]
    # one set of parameter buffers for every size; the input's buffer is per size
    a, b = (model.graphs.graphs[(("batch", n),)].sources for n in (8, 16))
    w, x = model.graph.params["h.w"], model.graph.inputs["x"]
    assert a[w] is b[w] is model.params["h.w"]
    assert a[x].shape == (8, 64) and b[x].shape == (16, 64)


def test_the_dropout_seed_is_read_at_each_replay(graphs):
    model = axon.compile(MLP, training=True, cuda_graphs=True)
    x = _x(8, 0)
    outs = [model(x, torch.tensor(s)) for s in (1, 2, 1)]
    refs = [model.executable({"x": x, "seed": torch.tensor(s)}, model.params)["logits"] for s in (1, 2, 1)]
    for out, ref in zip(outs, refs):
        assert torch.equal(out, ref)
    assert not torch.equal(outs[0], outs[1])  # another seed: another dropout mask
    assert torch.equal(outs[0], outs[2])
    (backend,) = graphs.made
    assert backend.counts["capture"] == 1  # the seed is a value, not a size


def test_weights_loaded_or_changed_in_place_are_what_replays_read(graphs, tmp_path):
    model = axon.compile(MLP, cuda_graphs=True)
    other = axon.compile(MLP, seed=7)
    x = _x(8, 0)
    model(x)
    other.save_weights(tmp_path / "w.safetensors")
    model.load_weights(tmp_path / "w.safetensors")
    assert torch.equal(model(x), other(x))
    with torch.no_grad():
        model.params["logits.b"].add_(1.0)
    assert torch.equal(model(x), model.executable({"x": x}, model.params)["logits"])
    assert not torch.equal(model(x), other(x))
    model.params["logits.b"] = torch.zeros_like(model.params["logits.b"])  # a new tensor: copied in
    assert torch.equal(model(x), model.executable({"x": x}, model.params)["logits"])
    assert model.graphs.copies == 2


def test_calls_recorded_for_autograd_are_refused(graphs):
    model = axon.compile(MLP, cuda_graphs=True)
    model.parameters()  # requires grad from now on
    with pytest.raises(RunError, match="cuda_graphs=True.*torch.no_grad"):
        model(_x(4, 0))
    with torch.no_grad():
        assert model(_x(4, 0)).shape == (4, 10)
        with pytest.raises(RunError, match="poison"):
            model.run({"x": _x(4, 0)}, poison=True)


# --- training ------------------------------------------------------------------------------------------
def _train(cuda: bool, steps: int, tmp_path, restore_from=None):
    from axon import data as datasets
    from axon.trainer import Trainer

    trainer = Trainer(MLP, hparams={"hidden": 24}, batch=16, out_dir=tmp_path / f"run{int(cuda)}",
                      cuda_graphs=cuda, log=lambda *a, **k: None)
    if restore_from is not None:
        trainer.restore(restore_from)
    losses = []
    batches = datasets.batches(trainer.data.train, trainer.batch, trainer.seed, 0, trainer.progress.step)
    for _, batch in list(batches)[:steps]:
        losses.append(trainer._step(batch))
        trainer.progress.step += 1
    return trainer, losses


def test_training_steps_match_ungraphed_steps(graphs, tmp_path):
    """Steps of examples/mlp.axon (Adam, dropout with a seed per step): the graph updates parameters and
    optimizer state in place; losses and values are those of the ungraphed steps, and so after a
    checkpoint is restored into the graphed trainer."""
    plain, want = _train(False, 3, tmp_path)
    graphed, got = _train(True, 3, tmp_path)
    assert got == want
    for table in ("params", "states"):
        for name, t in getattr(plain, table).items():
            assert torch.equal(getattr(graphed, table)[name], t), name
    call = graphed.step_call
    assert call.copies == 5  # x, label, seed, step, lr; never the parameters or the state
    sources = call.graphs[(("batch", 16),)].sources
    assert graphed.params["h.w"] is sources[graphed.step_exe.graph.params["h.w"]]  # updated in place
    (backend,) = graphs.made
    assert backend.counts == {"warm_up": 1, "capture": 1, "replay": 2}

    plain.save(tmp_path / "ck.safetensors")
    resumed, got = _train(True, 2, tmp_path, restore_from=tmp_path / "ck.safetensors")
    _, want = _train(False, 2, tmp_path, restore_from=tmp_path / "ck.safetensors")
    assert got == want and resumed.progress.step == 5  # the restored values were copied in


def test_train_command_with_cuda_graphs(graphs, tmp_path, capsys):
    args = ["train", str(EXAMPLES / "perceptron.axon"), "--epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert main([*args, "--out", str(tmp_path / "graphed"), "--cuda-graphs"]) == 0
    assert "(replayed as a CUDA graph)" in capsys.readouterr().out
    a, b = (load(tmp_path / run / "checkpoint.safetensors") for run in ("plain", "graphed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "graphed" / "metrics.json").read_text())["cuda_graphs"] is True


def test_bench_train_step_with_cuda_graphs(graphs, monkeypatch, tmp_path, capsys):
    from axon import bench

    monkeypatch.setattr(cuda_graphs, "require_cuda", lambda device: None)  # the fake runs anywhere
    settings = bench.Settings(file=str(MLP), mode="train", batch=3, repeats=2, warmup=1, compile=False,
                              cuda_graphs=True)
    record = bench.run(settings)
    (run,) = record["runs"]
    assert run["check"]["ok"], run["check"]  # the first graphed step against a torch step
    assert record["settings"]["cuda_graphs"] and record["settings"]["torch_compile_mode"] == "reduce-overhead"
    assert "CUDA graphs" in bench.format_table(record)
    (backend,) = graphs.made
    assert backend.counts["capture"] == 1 and backend.counts["replay"] == 3  # 1 warm-up + 2 timed


# --- the machinery's own checks (any device) -----------------------------------------------------------
def _difference():
    b = GraphBuilder()
    n = Sym.of("n")
    x, y = b.input("a", DType.F32, (n,)), b.input("b", DType.F32, (n,))
    b.output("d", b.sub(x, y))
    return b.build()


def test_copying_in_reads_every_given_tensor_before_writing_any():
    """Static buffers passed back swapped (a as b, b as a) still give b - a."""
    exe = Executable(_difference())
    graphed = GraphedExecutable(exe, backend=FakeGraphs())
    a, b = torch.arange(4.0).to(exe.device), torch.ones(4).to(exe.device)
    assert torch.equal(graphed({"a": a, "b": b})["d"], a - b)
    sources = graphed.graphs[(("n", 4),)].sources
    static_a, static_b = (sources[exe.graph.inputs[n]] for n in "ab")
    assert torch.equal(graphed({"a": static_b, "b": static_a})["d"], b - a)
    assert graphed.copies == 2


def test_feedback_and_adopted_tensors_are_checked():
    exe = Executable(_difference())
    ints, strided = torch.zeros(3, dtype=torch.int32), torch.zeros(3, 2).t()
    cases = [({"feedback": {"e": "a"}}, "has no output 'e'"),
             ({"feedback": {"d": "c"}}, "has no input or parameter 'c'"),
             ({"adopt": {"a": ints.to(exe.device)}}, "must be a contiguous f32"),
             ({"adopt": {"a": strided.to(exe.device)}}, "not contiguous")]
    for options, message in cases:
        with pytest.raises(RunError, match=message):
            GraphedExecutable(exe, backend=FakeGraphs(), **options)
    b = GraphBuilder()
    b.output("y", b.cast(b.input("x", DType.F32, (3,)), DType.F64))
    with pytest.raises(RunError, match="the output is f64\\[3\\], the input f32\\[3\\]"):
        GraphedExecutable(Executable(b.build()), feedback={"y": "x"}, backend=FakeGraphs())


@NO_GPU
def test_without_a_gpu_cuda_graphs_are_a_clear_error(capsys):
    message = "CUDA graphs need a CUDA GPU"
    with pytest.raises(DeviceError, match=message):
        axon.compile(MLP, cuda_graphs=True)
    with pytest.raises(DeviceError, match=message):
        GraphedExecutable(Executable(_difference()))
    for argv in (["run", MLP, "--cuda-graphs"], ["train", MLP, "--cuda-graphs", "--epochs", "1"],
                 ["bench", MLP, "--cuda-graphs", "--repeats", "1"]):
        assert main([str(a) for a in argv]) == 1, argv
        err = capsys.readouterr().err
        assert message in err and "--cuda-graphs" in err and "Traceback" not in err, (argv, err)


def test_kernel_sweep_refuses_cuda_graphs(capsys):
    assert main(["bench", "--mode", "kernels", "--cuda-graphs"]) == 1
    assert "--cuda-graphs applies to --mode forward and train" in capsys.readouterr().err


# --- on a GPU only -------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_replays_run_no_python_launches(monkeypatch):
    """After the capture, a call replays the graph: the executable (and so every Python-side kernel
    launch) is not called again."""
    calls = Counter()
    call = Executable.__call__

    def counted(self, *args, **kwargs):
        calls["executable"] += 1
        return call(self, *args, **kwargs)

    model = axon.compile(MLP, cuda_graphs=True)
    monkeypatch.setattr(Executable, "__call__", counted)
    model(_x(8, 0))
    assert calls["executable"] == 2  # the warm-up and the capture
    for i in range(3):
        model(_x(8, i))
    assert calls["executable"] == 2


@pytest.mark.gpu
def test_run_command_with_cuda_graphs_checks_against_the_evaluator(capsys):
    assert main(["run", str(MLP), "--cuda-graphs", "--check", "--batch", "9"]) == 0
    out = capsys.readouterr().out
    assert "(replayed as one CUDA graph)" in out and "check logits" in out and "ok" in out


@pytest.mark.gpu
def test_bench_forward_with_cuda_graphs_agrees_with_torch(capsys, tmp_path):
    from axon import bench

    record = bench.run(bench.Settings(file=str(MLP), repeats=3, warmup=1, compile=False, cuda_graphs=True))
    (run,) = record["runs"]
    assert run["check"]["ok"], run["check"]
    assert "median_ms" in run["impls"]["axon"]
