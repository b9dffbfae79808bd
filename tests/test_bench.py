"""`axon bench`: smoke runs of each mode on the interpreter (tiny shapes, one repeat), the JSON record's
fields, the PyTorch twin against Axon and the reference evaluator, torch.compile failures recorded, and
clear errors for bad arguments. Real figures come from a GPU (bench/README.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch._dynamo

import axon
from axon import bench
from axon.cli import main
from axon.driver import graph_of, load_ast
from axon.frontend import training_graph
from axon.ir import evaluate, init_params
from axon.run import bind_dims, random_inputs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUICK = ("--repeats", "1", "--warmup", "0")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")


def bench_cli(capsys, *argv):
    code = main(["bench", *[str(a) for a in argv]])
    out, err = capsys.readouterr()
    return code, out, err


def record_of(capsys, tmp_path, *argv) -> tuple[dict, str]:
    path = tmp_path / "record.json"
    code, out, err = bench_cli(capsys, *argv, *QUICK, "--json", path)
    assert code == 0, out + err
    return json.loads(path.read_text()), out


def test_forward_record_table_and_plot(capsys, tmp_path):
    png = tmp_path / "chart.png"
    rec, out = record_of(capsys, tmp_path, EXAMPLES / "mlp.axon", "--no-compile", "--plot", png)
    commit = rec["axon"]["commit"]
    assert commit == "unknown" or len(commit) == 40
    assert set(rec["versions"]) == {"python", "torch", "triton"}
    assert rec["device"]["type"] == "cpu" and rec["device"]["interpreter"] and rec["device"]["name"]
    assert rec["mode"] == "forward" and rec["settings"]["repeats"] == 1 and rec["settings"]["warmup"] == 0
    assert rec["ceilings"]["copy_gbps"] > 0 and rec["ceilings"]["matmul_tflops"] > 0
    (run,) = rec["runs"]
    assert run["case"] == "MLP" and run["shapes"]["inputs"] == {"x": [4, 64]}
    assert run["flops"] == 2 * 4 * (64 * 128 + 128 * 10)
    assert run["check"]["ok"] and run["check"]["outputs"] == ["logits"]
    assert run["check"]["max_abs_error"] < 1e-4
    a, e = run["impls"]["axon"], run["impls"]["eager"]
    assert all(a[k] >= 0 for k in ("median_ms", "min_ms", "iqr_ms")) and a["min_ms"] <= a["median_ms"]
    assert run["impls"]["compiled"] == {"skipped": "--no-compile"}
    assert run["speedup"]["eager/axon"] == pytest.approx(e["median_ms"] / a["median_ms"])
    assert run["speedup"]["compiled/axon"] is None
    # the launch count is the compiled executable's, whatever kernels the compiler makes
    model = axon.compile(EXAMPLES / "mlp.axon")
    assert a["launches"] == len(model.executable.plan({"batch": 4}).launches) == a["kernels"] >= 1
    assert "MLP" in out and "skipped (--no-compile)" in out and "check MLP: max |error|" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_step_matches_a_torch_step(capsys, tmp_path):
    # the MLP has dropout: the check runs the twin on Axon's own random stream
    rec, out = record_of(capsys, tmp_path, EXAMPLES / "mlp.axon", "--mode", "train", "--no-compile",
                         "--batch", "3")
    (run,) = rec["runs"]
    assert run["case"] == "MLP train step (adam)" and run["optimizer"]["name"] == "adam"
    assert run["shapes"]["dims"] == {"batch": 3}
    check = run["check"]
    assert check["ok"], check
    params = graph_of(EXAMPLES / "mlp.axon").params
    assert sorted(check["outputs"]) == sorted(["loss", *(f"new.{p}" for p in params)])
    assert run["impls"]["axon"]["launches"] >= 1 and run["flops"] > 0
    assert "MLP train step (adam)" in out and " ok" in out


def test_kernel_sweep(capsys, tmp_path):
    rec, out = record_of(capsys, tmp_path, "--mode", "kernels", "--no-compile")
    kinds = [r["kernel"] for r in rec["runs"]]
    assert set(kinds) == set(bench.KERNELS)
    for r in rec["runs"]:
        assert r["check"]["ok"], r
        a = r["impls"]["axon"]
        assert a["launches"] >= 1 and r["bytes"] > 0 and a["gbps"] > 0 and "pct_copy_bw" in a
        assert ("tflops" in a) == (r["kernel"] in ("matmul_bias_relu", "attention", "attention_train"))
    assert "attention 1x2x8x16" in out
    (train,) = [r for r in rec["runs"] if r["kernel"] == "attention_train"]
    assert train["check"]["outputs"] == ["grad.q", "grad.k", "grad.v"]
    assert train["impls"]["axon"]["launches"] == 3  # forward, rowsum(dout * out), backward


def test_torch_compile_is_recorded_not_raised(capsys, tmp_path):
    rec, out = record_of(capsys, tmp_path, EXAMPLES / "perceptron.axon")
    compiled = rec["runs"][0]["impls"]["compiled"]
    assert ("median_ms" in compiled) != ("error" in compiled)  # it ran, or the reason is kept
    assert ("failed:" in out) == ("error" in compiled)


def test_torch_compile_failure_is_reported(capsys, tmp_path, monkeypatch):
    def broken(fn, *a, **k):
        def call(*args, **kwargs):
            raise RuntimeError("no C++ compiler found\nmore detail")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    rec, out = record_of(capsys, tmp_path, EXAMPLES / "perceptron.axon")
    run = rec["runs"][0]
    assert run["impls"]["compiled"] == {"error": "RuntimeError: no C++ compiler found"}
    assert run["speedup"]["compiled/axon"] is None and "median_ms" in run["impls"]["eager"]
    assert "failed: RuntimeError: no C++ compiler found" in out


def test_twin_agrees_with_axon_and_the_reference():
    dev = torch.device("cpu")
    model = axon.compile(EXAMPLES / "gpt.axon")
    env = bind_dims(model.graph, {"batch": 2, "seq": 5})
    inputs = random_inputs(model.graph, env, 3)
    t = bench.twin(bench.twin_graph(graph_of(EXAMPLES / "gpt.axon")), env, dev)
    got = t(inputs, model.params)
    assert set(got) == {"logits"}
    assert bench.agreement(model.run(inputs), got)["ok"]
    assert torch.allclose(got["logits"], model.reference(inputs)["logits"], atol=1e-5)
    # with dropout: the exact twin draws Axon's own random stream, as the reference does
    g, _ = training_graph(load_ast(EXAMPLES / "mlp.axon"))
    env = bind_dims(g, {"batch": 3})
    data, params = random_inputs(g, env, 1), init_params(g, 0)
    exact = bench.twin(g, env, dev, exact_rand=True)(data, params)
    want = evaluate(g, data, params)
    assert set(exact) == set(want)
    for name in want:
        torch.testing.assert_close(exact[name], want[name])
    # the twin is one graph to torch.compile: no graph breaks, so Inductor sees the whole model
    torch._dynamo.reset()
    fast = bench.twin(g, env, dev)
    args = [data[n] for n in fast.inputs] + [params[n] for n in fast.params]
    assert torch._dynamo.explain(fast.fn)(*args).graph_break_count == 0


def test_summary_statistics():
    s = bench.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert s == {"median_ms": 3.0, "min_ms": 1.0, "iqr_ms": 2.0, "repeats": 5}
    assert bench.summarize([7.0])["iqr_ms"] == 0.0


def test_bad_arguments_are_clear_errors(capsys, tmp_path):
    plain = tmp_path / "plain.axon"
    plain.write_text("model Plain() {\n    input x: f32[batch, 3]\n    output y = relu(x)\n}\n")
    cases = [
        ((EXAMPLES / "mlp.axon", "--mode", "fast"), "unknown bench mode 'fast'"),
        ((plain, "--mode", "train"), "has no train block"),
        (("--mode", "forward"), "needs a model file"),
        ((EXAMPLES / "mlp.axon", "--repeats", "0"), "--repeats must be at least 1"),
        ((EXAMPLES / "mlp.axon", "--mode", "kernels"), "takes no FILE"),
        ((EXAMPLES / "mlp.axon", "--dim", "width=3", *QUICK, "--no-compile"),
         "no symbolic dimension 'width'"),
        ((tmp_path / "missing.axon",), "no such file"),
    ]
    for argv, message in cases:
        code, out, err = bench_cli(capsys, *argv)
        assert code == 1, (argv, out, err)
        assert message in err and "Traceback" not in err, (argv, err)
    code, _, err = bench_cli(capsys, EXAMPLES / "mlp.axon", "--mode", "fast")
    assert "forward" in err  # the hint names the modes there are


def test_host_mode_splits_axons_own_time_from_tritons_and_eagers(capsys, tmp_path):
    """--mode host: Axon's own time per launch (launches stubbed), Triton's launch path (a stand-in driver
    here), eager's dispatch, for a training step; the real launches are back in place afterwards."""
    rec, out = record_of(capsys, tmp_path, EXAMPLES / "mlp.axon", "--mode", "host")
    (run,) = rec["runs"]
    assert run["case"] == "MLP train step" and run["launches"] >= 5
    a, t, e = run["impls"]["axon"], run["impls"]["triton"], run["impls"]["eager"]
    assert 0 < a["us_per_launch"] and a["us_per_step"] == pytest.approx(a["us_per_launch"] * run["launches"])
    assert t["us_per_launch"] > 0 and t["kernels_timed"] >= 1
    assert e["ops"] > run["launches"] and e["us_per_op"] > 0 and e["floor_us_per_op"] > 0
    assert "axon/launch" in out and "triton/launch" in out
    code, _, err = bench_cli(capsys, EXAMPLES / "mlp.axon", "--mode", "host", "--plot", tmp_path / "x.png",
                             *QUICK)
    assert code == 1 and "prints its table" in err
