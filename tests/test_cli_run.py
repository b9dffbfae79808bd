"""`axon run`, `axon show --stage triton` and `axon compile --emit`: every example's forward pass runs as
generated kernels and matches the reference evaluator (`--check`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from axon.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("example, extra", [
    ("perceptron.axon", ()), ("mlp.axon", ()), ("mlp.axon", ("--loss",)), ("mlp.axon", ("--training",)),
    ("cnn.axon", ("--batch", "3")), ("lstm.axon", ("--batch", "2")), ("gpt.axon", ("--batch", "2")),
    ("gan.axon", ("--batch", "5")), ("mlp.axir", ()),
])
def test_run_check_every_example(capsys, example, extra):
    code, out, err = run(capsys, "run", EXAMPLES / example, "--check", *extra)
    assert code == 0, out + err
    checks = [line for line in out.splitlines() if line.startswith("check ")]
    assert checks and all(line.endswith("ok") for line in checks), out
    assert "kernels; inputs" in out and "interpreter" in err or "running on" in err


def test_run_reads_inputs_and_reports_bad_files(capsys, tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    code, out, err = run(capsys, "run", EXAMPLES / "mlp.axon", "--inputs", tmp_path / "x.npz", "--check")
    assert code == 0, err
    assert "inputs x [3, 64]" in out and "logits: float32[3, 10]" in out
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = run(capsys, "run", EXAMPLES / "mlp.axon", "--inputs", tmp_path / "bad.npz")
    assert code == 1 and "bad.npz: not a readable .npz" in err and "Traceback" not in err
    np.savez(tmp_path / "wrong.npz", x=x[:, :7])
    code, _, err = run(capsys, "run", EXAMPLES / "mlp.axon", "--inputs", tmp_path / "wrong.npz")
    assert code == 1 and "input 'x' should have shape" in err
    code, _, err = run(capsys, "run", EXAMPLES / "mlp.axon", "--dim", "seq=3")
    assert code == 1 and "no symbolic dimension 'seq'" in err


def test_run_with_weights(capsys, tmp_path):
    import axon

    model = axon.compile(EXAMPLES / "perceptron.axon", seed=7)
    model.save_weights(tmp_path / "w.safetensors")
    code, out, err = run(capsys, "run", EXAMPLES / "perceptron.axon", "--weights", tmp_path / "w.safetensors",
                         "--check")
    assert code == 0, err
    code, _, err = run(capsys, "run", EXAMPLES / "mlp.axon", "--weights", tmp_path / "w.safetensors")
    assert code == 1 and "weights do not fit" in err


def test_run_takes_the_trainers_own_checkpoints(capsys, tmp_path):
    """best.safetensors and checkpoint.safetensors hold the parameters under param/ (and the optimizer's
    momentum under state/): `--weights` reads the parameters and computes with the trained values."""
    import axon
    from axon.run import summary
    from axon.runtime.safetensors import load

    perceptron = EXAMPLES / "perceptron.axon"
    assert main(["train", str(perceptron), "--epochs", "1", "--batch", "400", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    x = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    fresh = axon.compile(perceptron)(torch.from_numpy(x))
    for name in ("best", "checkpoint"):
        path = tmp_path / f"{name}.safetensors"
        saved = load(path)
        assert any(k.startswith("state/") for k in saved) or name == "best"
        w, b = saved["param/logit.w"], saved["param/logit.b"]
        model = axon.compile(perceptron)
        model.load_weights(path)
        got = model(torch.from_numpy(x))
        assert torch.allclose(got, torch.from_numpy(x) @ w + b, atol=1e-6) and not torch.allclose(got, fresh)
        code, out, err = run(capsys, "run", perceptron, "--inputs", tmp_path / "x.npz", "--weights", path)
        assert code == 0, err
        assert summary("logit", got) in out.splitlines()


def test_weights_that_do_not_fit_are_listed_with_the_file(capsys, tmp_path):
    from axon.runtime.safetensors import save

    perceptron = EXAMPLES / "perceptron.axon"
    path = tmp_path / "w.safetensors"
    save({"param/logit.w": torch.zeros(3, 1), "param/logit.x": torch.zeros(1),
          "state/m.logit.w": torch.zeros(1), "stray": torch.zeros(1)}, path, {"model": "Other"})
    code, _, err = run(capsys, "run", perceptron, "--weights", path)
    assert code == 1 and "Traceback" not in err
    assert f"{path}: weights do not fit Perceptron" in err and "missing 'logit.b'" in err
    assert "unexpected 'param/logit.x', 'stray'" in err
    assert "'logit.w' is f32[3, 1], the model wants f32[2, 1]" in err
    assert "it is a checkpoint of model 'Other'" in err
    save({"logit.w": torch.zeros(2, 1, dtype=torch.float64), "logit.b": torch.zeros(1)}, path)
    code, _, err = run(capsys, "run", perceptron, "--weights", path)
    assert code == 1 and "'logit.w' is f64[2, 1], the model wants f32[2, 1]" in err and "missing" not in err


def _inputs_of_the_wrong_kind(tmp: Path) -> list[tuple[Path, str]]:
    """(file, what `axon run --inputs file` must say) for .npz files that are not inputs of mlp.axon."""
    import zipfile

    x = np.zeros((3, 64), np.float32)
    np.save(tmp / "single.npy", x)
    (tmp / "renamed.npz").write_bytes((tmp / "single.npy").read_bytes())
    (tmp / "text.npz").write_text("x = 1\n")
    np.savez(tmp / "strings.npz", x=np.array(["a", "b"]))
    with zipfile.ZipFile(tmp / "junk.npz", "w") as z:
        z.writestr("x.npy", b"not an array")
    np.savez(tmp / "names.npz", y=x, z=x)
    return [(tmp / "single.npy", "a single .npy array, not an .npz archive"),
            (tmp / "renamed.npz", "a single .npy array, not an .npz archive"),
            (tmp / "text.npz", "not an .npz file (an .npz is a zip archive of .npy arrays)"),
            (tmp / "strings.npz", "array 'x' holds <U1 values, not numbers"),
            (tmp / "junk.npz", "'x' in the archive is not a .npy array"),
            (tmp / "names.npz", "the arrays do not fit the inputs of MLP: no array 'x'; unexpected 'y', 'z'")]


def test_ordinary_mistakes_on_the_command_line_are_errors_not_tracebacks(capsys, tmp_path):
    mlp = EXAMPLES / "mlp.axon"
    for path, words in _inputs_of_the_wrong_kind(tmp_path):
        code, _, err = run(capsys, "run", mlp, "--inputs", path)
        assert code == 1 and f"{path}: {words}" in err and "Traceback" not in err, err
    (tmp_path / "mlp.txt").write_text(mlp.read_text())  # a model file of another name: not source text
    code, _, err = run(capsys, "run", tmp_path / "mlp.txt")
    assert code == 1 and "mlp.txt: expected an Axon model (.axon), IR text (.axir) or an ONNX" in err, err
    for dim, words in [("batch", "--dim takes NAME=VALUE, got 'batch'"),
                       ("batch=x", "--dim batch: 'x' is not an int")]:
        code, _, err = run(capsys, "run", mlp, "--dim", dim)
        assert code == 1 and words in err, err
    code, _, err = run(capsys, "run", mlp, "--batch", 10**12)  # refused before allocating 256 TB
    assert code == 1 and "MLP at batch=1,000,000,000,000 needs at least" in err and "too large?" in err
    for target in (mlp, tmp_path / "mlp.txt" / "kernels"):  # a file, or a folder under a file
        code, _, err = run(capsys, "compile", mlp, "--emit", target)
        assert code == 1 and "Traceback" not in err and str(target) in err, err


def test_show_triton(capsys):
    code, out, err = run(capsys, "show", EXAMPLES / "mlp.axon", "--stage", "triton")
    assert code == 0, err
    # fused: relu(x @ w + b) and the logits' x @ w + b are one matmul kernel each
    assert out.count("def matmul_kernel(") == 2 and "# ---- kernel 0 (matmul)" in out
    assert "tl.dot(" in out and "# the epilogue, over the matmul tile" in out
    code, out, err = run(capsys, "show", EXAMPLES / "mlp.axon", "--stage", "triton", "--no-fusion")
    assert code == 0, err
    assert out.count("@triton.jit") >= 4 and "the epilogue" not in out


def test_compile_emit_writes_standalone_kernels(capsys, tmp_path):
    code, out, err = run(capsys, "compile", EXAMPLES / "mlp.axon", "--emit", tmp_path / "k", "--batch", "3")
    assert code == 0, err
    manifest = json.loads((tmp_path / "k" / "launches.json").read_text())
    assert manifest["sizes"] == {"batch": 3}
    files = sorted((tmp_path / "k").glob("k*.py"))
    assert len(files) == len(manifest["launches"]) == 2  # fused: one matmul kernel per layer
    env = {**os.environ, "TRITON_INTERPRET": "1"} if not _cuda() else dict(os.environ)
    done = subprocess.run([sys.executable, files[0]], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "sum" in done.stdout


def test_compile_for_a_gpu_target_prints_the_resource_table(capsys, tmp_path):
    """`axon compile --target sm_90 --step`: every kernel of the training step compiled for sm_90 here,
    one row per kernel and config with its registers, spills, shared memory and tensor cores."""
    out_json = tmp_path / "mlp.json"
    code, out, err = run(capsys, "compile", EXAMPLES / "mlp.axon", "--target", "sm_90", "--step", "--json",
                         out_json)
    assert code == 0, err
    assert "MLP training step" in out and "for sm_90" in out and "no failures" in out
    for column in ("regs", "spill", "smem", "tensor cores", "occupancy", "compile"):
        assert column in out.splitlines()[1]
    record = json.loads(out_json.read_text())
    assert record["target"] == "sm_90" and record["sizes"] == {"batch": 64}
    assert record["summary"]["failed"] == 0 and record["summary"]["kernels"] >= 8
    assert all(r["ok"] and not r["stack"] for r in record["rows"] if r["default"])
    again_code, again, _ = run(capsys, "compile", EXAMPLES / "mlp.axon", "--target", "sm_90", "--step")
    assert again_code == 0 and "0 compiled" in again  # the second sweep comes from the result cache


@pytest.mark.parametrize("argv,message", [
    ((), "name a target"),
    (("--target", "sm_7"), "unknown target 'sm_7'"),
])
def test_compile_without_a_usable_target_says_what_to_do(capsys, argv, message):
    if _cuda():
        pytest.skip("native is a GPU here")
    code, _, err = run(capsys, "compile", EXAMPLES / "mlp.axon", *argv)
    assert code == 1 and message in err and "Traceback" not in err


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
