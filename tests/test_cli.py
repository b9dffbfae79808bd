"""The `axon` command: checks, stages, errors that name file, line and column, never a traceback."""
import subprocess
import sys
from pathlib import Path

import pytest

from axon.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE = EXAMPLES / "mlp.axir"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_example(capsys):
    code, out, err = run(capsys, "check", EXAMPLE)
    assert code == 0, err
    assert "ok (" in out and "nodes" in out


def test_show_runs_pipeline_and_shrinks_the_graph(capsys):
    _, before, _ = run(capsys, "show", EXAMPLE, "--stage", "ir")
    code, after, err = run(capsys, "show", EXAMPLE, "--time")
    assert code == 0, err
    assert before.startswith("graph ") and after.count("\n  %") < before.count("\n  %")
    assert "simplify" in after and "dce" in after  # the timing table names each pass


def test_show_stop_after_a_stage(capsys):
    code, out, err = run(capsys, "show", EXAMPLE, "--pipeline", "fold,simplify,cse,dce", "--stage", "fold")
    assert code == 0, err
    assert out.startswith("graph ")


def test_show_saved(capsys):
    """relu(x @ w + b) then a linear layer: the backward gets the relu's output (the next layer's weight
    gradient needs it, and its sign is the relu's mask) and nothing else but the inputs it reads."""
    code, out, err = run(capsys, "show", EXAMPLES / "perceptron.axon", "--saved")
    assert code == 0, err
    assert "saved " in out and "kept " in out and "recomputed " in out
    code, out, err = run(capsys, "show", EXAMPLES / "mlp.axon", "--saved")
    assert code == 0, err
    assert "saved 1 tensor(s): saved.0: f32[batch, 128]" in out


def test_show_dot(capsys):
    code, out, _ = run(capsys, "show", EXAMPLE, "--dot")
    assert code == 0
    assert out.startswith('digraph "') and "->" in out and out.rstrip().endswith("}")


def test_passes_lists_default_pipeline(capsys):
    code, out, _ = run(capsys, "passes")
    assert code == 0
    for name in ("fold", "simplify", "cse", "dce"):
        assert name in out


@pytest.mark.parametrize("text, where, fragment", [
    ("graph main {\n  input %x: f32[3]\n  %0 = exp(%x) : f32[3\n}\n", ":4:1:", "expected"),
    ("graph main {\n  input %x: f32[3]\n  %0 = frob(%x) : f32[3]\n  output %y = %0\n}\n", ":3:", "frob"),
    ("graph main {\n  input %x: f32[3]\n  %0 = add(%x, %q) : f32[3]\n  output %y = %0\n}\n", ":3:", "%q"),
])
def test_bad_ir_reports_location_without_traceback(capsys, tmp_path, text, where, fragment):
    f = tmp_path / "bad.axir"
    f.write_text(text)
    code, out, err = run(capsys, "check", f)
    assert code == 1
    assert f"bad.axir{where}" in err and fragment in err
    assert "Traceback" not in err and "^" in err


def test_missing_file_and_wrong_kind(capsys, tmp_path):
    code, _, err = run(capsys, "check", tmp_path / "nope.axir")
    assert code == 1 and "no such file" in err
    (tmp_path / "bin.axir").write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = run(capsys, "check", tmp_path / "bin.axir")
    assert code == 1 and "not UTF-8" in err


def test_unknown_pass_has_a_hint(capsys):
    code, _, err = run(capsys, "show", EXAMPLE, "--pipeline", "fold,simplfy")
    assert code == 1 and "simplfy" in err and "simplify" in err


def test_installed_entry_point():
    out = subprocess.run([sys.executable, "-m", "axon.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "check" in out.stdout and "show" in out.stdout


@pytest.mark.parametrize("name", ["perceptron", "mlp", "cnn", "lstm", "gpt", "gan"])
def test_every_example_model_checks_clean(capsys, name):
    code, out, err = run(capsys, "check", EXAMPLES / f"{name}.axon")
    assert code == 0, err
    assert "ok (" in out


def test_show_axon_stages_params_and_loss(capsys):
    code, out, err = run(capsys, "show", EXAMPLES / "mlp.axon", "--stage", "ast")
    assert code == 0, err
    assert out.startswith("Module file=") and "ModelDef name='MLP' @3:1" in out
    code, out, err = run(capsys, "show", EXAMPLES / "mlp.axon", "--set", "hidden=32", "--loss")
    assert code == 0, err
    assert "param %h.w: f32[64, 32]" in out and "output %loss" in out
    code, out, err = run(capsys, "show", EXAMPLES / "gan.axon", "--params")
    assert code == 0, err
    first = out.splitlines()[0].split()
    assert first[:3] == ["gen.h1.w", "f32[2,", "64]"] and first[3] == "128"
    assert out.splitlines()[-1].endswith("values") and "parameters" in out.splitlines()[-1]


def test_axon_errors_are_located_without_traceback(capsys, tmp_path):
    bad = tmp_path / "bad.axon"
    bad.write_text("model M {\n  input x: f32[b, 8]\n  output y = lineer(x, 3)\n}\n")
    for argv in (["check", bad], ["check", tmp_path / "missing.axon"],
                 ["check", EXAMPLES / "mlp.axon", "--set", "h"], ["check", tmp_path / "x.txt"],
                 ["show", EXAMPLE, "--stage", "ast"], ["check", EXAMPLE, "--model", "M"]):
        code, _, err = run(capsys, *argv)
        assert code == 1
        assert "error: " in err and "Traceback" not in err
    _, _, err = run(capsys, "check", bad)
    assert err.startswith(f"{bad}:3:14: error: unknown function 'lineer'")
    assert "^^^^^^" in err


def test_a_fifo_on_the_command_line_is_refused_not_waited_on(capsys, tmp_path):
    import os

    fifo = tmp_path / "pipe.axon"
    os.mkfifo(fifo)
    code, _, err = run(capsys, "check", fifo)
    assert code == 1 and "not a regular file" in err
