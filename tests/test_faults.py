"""Runs that never lose work: kill -9, Ctrl-C and SIGTERM at random steps, then --resume, ending bit-identical
to an uninterrupted run; every kind of damaged checkpoint refused with the file (and tensor) named; every
resume that would change the run refused with the difference shown; run folders that cannot be clobbered.

`python tests/test_faults.py [--kills N] [--seed S]` runs the chaos test alone and prints its figures."""
from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from axon.cli import main
from axon.runtime.safetensors import load, load_metadata, save

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PERCEPTRON = EXAMPLES / "perceptron.axon"
FAST = ["--epochs", "1", "--batch", "200"]  # 4 steps: the in-process tests' runs


# --- chaos: kills and interrupts at random steps, then resume ------------------------------------------
def _axon(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "axon.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _step_of(checkpoint: Path) -> int:
    try:
        return json.loads(load_metadata(checkpoint)["progress"])["step"]
    except Exception:  # not there yet (the file appears whole, by rename, or not at all)
        return -1


def _run_until(args, checkpoint: Path, target: int, how: signal.Signals, resume: bool):
    """Start `axon train`, wait until its checkpoint reaches step `target`, send `how`; returns the
    process's exit code and its stderr (or finishes the run when it ends first)."""
    target = max(target, _step_of(checkpoint) + 1)  # a step this process takes, not one before it
    proc = _axon("train", *args, *(["--resume"] if resume else []))
    deadline = time.monotonic() + 300
    while proc.poll() is None and _step_of(checkpoint) < target and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is None:
        proc.send_signal(how)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def chaos(tmp: Path, kills: int, seed: int, epochs: int = 4) -> dict:
    """An uninterrupted run, and the same run killed or interrupted `kills` times at random steps and
    resumed after each; returns the figures. Raises AssertionError on any difference."""
    rng = random.Random(seed)
    base = [PERCEPTRON, "--epochs", epochs, "--batch", "64", "--checkpoint-every", "1"]
    whole = _axon("train", *base, "--out", tmp / "whole")
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    args = [*base, "--out", tmp / "chaos"]
    checkpoint = tmp / "chaos" / "checkpoint.safetensors"
    total = epochs * 13  # 800 examples in batches of 64
    targets = sorted(rng.sample(range(1, total - 1), kills))
    figures = {"kills": 0, "sigkill": 0, "sigint": 0, "sigterm": 0, "resumes": 0, "seed": seed}
    for k, target in enumerate(targets):
        how = rng.choice([signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
        code, err = _run_until(args, checkpoint, target, how, resume=k > 0)
        if code == 0:
            break  # the run ended before the signal landed
        want = {signal.SIGKILL: -9, signal.SIGINT: 130, signal.SIGTERM: 143}[how]
        assert code == want, (how, code, err)
        if how != signal.SIGKILL:  # a clean stop: one line saying where to go on, no traceback
            assert "interrupted at epoch" in err and "--resume" in err and "Traceback" not in err, err
            assert _step_of(checkpoint) >= target
        figures["kills"] += 1
        figures[how.name.lower()] += 1
    code, err = _run_until(args, checkpoint, 10**9, signal.SIGKILL, resume=figures["kills"] > 0)
    assert code == 0, err
    figures["resumes"] = figures["kills"]
    a, b = load(tmp / "whole" / "checkpoint.safetensors"), load(checkpoint)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after {figures['kills']} kills (seed {seed})"
    best_a, best_b = load(tmp / "whole" / "best.safetensors"), load(tmp / "chaos" / "best.safetensors")
    assert all(torch.equal(best_a[n], best_b[n]) for n in best_a)
    figures["identical"] = _metrics(tmp / "whole") == _metrics(tmp / "chaos")
    assert figures["identical"], "the metrics differ"
    return figures


def _metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    for key in ("compile_seconds",):
        m.pop(key)
    for r in m["history"]:
        r.pop("seconds")
    return m


def test_kills_and_interrupts_at_random_steps_resume_bit_identical(tmp_path):
    figures = chaos(tmp_path, kills=3, seed=7, epochs=3)
    assert figures["kills"] >= 2  # most signals land mid-run


@pytest.mark.slow
def test_many_kills_across_epochs(tmp_path):
    for seed in (1, 2):
        figures = chaos(tmp_path / str(seed), kills=8, seed=seed, epochs=6)
        assert figures["kills"] >= 6


def test_a_second_ctrl_c_abandons_the_step_and_the_last_checkpoint_stays(tmp_path):
    run = tmp_path / "run"
    proc = _axon("train", PERCEPTRON, "--epochs", "50", "--batch", "64", "--out", run,
                 "--checkpoint-every", "1")
    checkpoint = run / "checkpoint.safetensors"
    while proc.poll() is None and _step_of(checkpoint) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert _step_of(checkpoint) >= 3 and load(checkpoint)  # whole, and its checksums hold


# --- damaged checkpoints --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", str(PERCEPTRON), *FAST, "--out", str(run)]) == 0
    return run


def _copy(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    for f in trained.iterdir():
        if f.is_file() and not f.name.startswith("."):
            (run / f.name).write_bytes(f.read_bytes())
    return run


def _resume(run: Path, *extra, source=PERCEPTRON) -> int:
    return main(["train", str(source), *FAST, "--out", str(run), "--resume", *extra])


def _data_start(path: Path) -> int:
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8 + n


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


def _rewrite_meta(path: Path, **changes) -> None:
    tensors, meta = load(path), load_metadata(path)
    save(tensors, path, {**meta, **changes})


DAMAGE = {
    "a flipped byte in a tensor's data": (lambda p: _flip(p, _data_start(p) + 2), "damaged"),
    "a flipped byte in the header": (lambda p: _flip(p, 12), "checkpoint.safetensors"),
    "a truncated file": (lambda p: p.write_bytes(p.read_bytes()[:-5]), "checkpoint.safetensors"),
    "an empty file": (lambda p: p.write_bytes(b""), "checkpoint.safetensors"),
    "malformed progress JSON": (lambda p: _rewrite_meta(p, progress="{not json"),
                                "progress record is damaged"),
    "a negative step": (lambda p: _rewrite_meta(p, progress=json.dumps(
        {**json.loads(load_metadata(p)["progress"]), "step": -3})), "'step' is -3"),
    "an unknown progress field": (lambda p: _rewrite_meta(p, progress=json.dumps(
        {**json.loads(load_metadata(p)["progress"]), "speed": 1})), "unknown fields speed"),
    "a damaged run record": (lambda p: _rewrite_meta(p, run="[1, 2"), "run record is damaged"),
    "no progress at all": (lambda p: save(load(p), p, {"model": "Perceptron"}), "not a checkpoint"),
    "another model's checkpoint": (lambda p: _rewrite_meta(p, model="MLP"), "model 'MLP'"),
    "a NaN parameter": (lambda p: save({**load(p), "param/logit.w": torch.full((2, 1), float("nan"))}, p,
                                       load_metadata(p)), "NaN or infinity"),
    "a tensor of another shape": (lambda p: save({**load(p), "param/logit.w": torch.zeros(3, 1)}, p,
                                                 load_metadata(p)), "does not fit this model"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_with_the_file_named(damage, trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    checkpoint = run / "checkpoint.safetensors"
    before = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}
    do, words = DAMAGE[damage]
    do(checkpoint)
    damaged = checkpoint.read_bytes()
    assert _resume(run) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err
    assert str(checkpoint) in err or "checkpoint.safetensors" in err
    assert checkpoint.read_bytes() == damaged  # nothing rewritten, nothing lost
    assert (run / "best.safetensors").read_bytes() == before["best.safetensors"]


def test_a_flipped_data_byte_names_the_tensor(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    checkpoint = run / "checkpoint.safetensors"
    _flip(checkpoint, _data_start(checkpoint) + 1)  # the first tensor in the file
    assert _resume(run) == 1
    assert "tensor '" in capsys.readouterr().err


# --- resumes that would change the run ------------------------------------------------------------------
def _edited(tmp_path: Path, old: str, new: str) -> Path:
    text = PERCEPTRON.read_text()
    assert old in text
    path = tmp_path / "perceptron.axon"
    path.write_text(text.replace(old, new))
    return path


MISMATCH = {
    "batch": (lambda t: (["--batch", "100"], PERCEPTRON), "batch: 200 in the checkpoint, 100 now"),
    "seed": (lambda t: (["--seed", "5"], PERCEPTRON), "seed: 0 in the checkpoint, 5 now"),
    "data options": (lambda t: ([], _edited(t, "val = 0.2", "val = 0.3")), "data:"),
    "optimizer": (lambda t: ([], _edited(t, "lr = 0.1", "lr = 0.2")), "optimizer:"),
    "model": (lambda t: ([], _edited(t, "linear(x, 1)", "linear(relu(x), 1)")), "step_graph:"),
    "hyper-parameter": (lambda t: (["--set", "features=3"], PERCEPTRON), "hparams:"),
}


@pytest.mark.parametrize("what", list(MISMATCH))
def test_a_resume_that_changes_the_run_is_refused_with_the_difference(what, trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    extra, source = MISMATCH[what][0](tmp_path)
    before = (run / "checkpoint.safetensors").read_bytes()
    code = main(["train", str(source), "--epochs", "1", "--out", str(run), "--resume", *extra])
    err = capsys.readouterr().err
    assert code == 1 and "cannot continue" in err and MISMATCH[what][1] in err, err
    assert (run / "checkpoint.safetensors").read_bytes() == before


def test_changes_a_run_survives_are_named_and_allowed(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    source = _edited(tmp_path, "# A perceptron", "# A comment edit: the same perceptron")
    assert main(["train", str(source), "--epochs", "2", "--checkpoint-every", "2", "--out", str(run),
                 "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming with a change: epochs: 1 in the checkpoint, 2 now" in out
    assert "checkpoint_every" in out and "source:" in out and "the training step is the same" in out
    assert json.loads((run / "metrics.json").read_text())["history"][-1]["epoch"] == 2


def test_resume_takes_the_saved_settings(trained, tmp_path, capsys):
    """`--resume` alone continues with the batch the run was started with (200, not the block's 32)."""
    run = _copy(trained, tmp_path)
    assert main(["train", str(PERCEPTRON), "--out", str(run), "--resume", "--epochs", "2"]) == 0
    assert json.loads((run / "metrics.json").read_text())["batch"] == 200
    capsys.readouterr()


def test_a_cosine_schedule_ties_the_epochs(tmp_path, capsys):
    source = _edited(tmp_path, "sgd(lr = 0.1, momentum = 0.9)", 'sgd(lr = 0.1, schedule = "cosine")')
    run = tmp_path / "run"
    assert main(["train", str(source), *FAST, "--out", str(run)]) == 0
    assert main(["train", str(source), "--epochs", "2", "--out", str(run), "--resume"]) == 1
    assert "schedule_steps: 4 in the checkpoint, 8 now" in capsys.readouterr().err


# --- run folders ----------------------------------------------------------------------------------------
def test_a_second_run_takes_the_next_free_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(PERCEPTRON), *FAST]) == 0
    first = (tmp_path / "runs" / "Perceptron" / "checkpoint.safetensors").read_bytes()
    assert main(["train", str(PERCEPTRON), *FAST, "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "runs/Perceptron holds an earlier run; this run writes to runs/Perceptron-2" in out
    assert (tmp_path / "runs" / "Perceptron" / "checkpoint.safetensors").read_bytes() == first
    assert json.loads((tmp_path / "runs" / "Perceptron-2" / "metrics.json").read_text())["seed"] == 3
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "runs" / "Perceptron").iterdir()
             if not f.name.startswith(".")}
    assert set(modes.values()) == {0o666 & ~_umask()}, modes  # metrics and plot as the checkpoints


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def test_out_naming_a_run_is_refused_and_overwrite_replaces_it(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    before = (run / "checkpoint.safetensors").read_bytes()
    assert main(["train", str(PERCEPTRON), *FAST, "--out", str(run)]) == 1
    err = capsys.readouterr().err
    assert "holds another run" in err and "--resume" in err and "--overwrite" in err
    assert (run / "checkpoint.safetensors").read_bytes() == before
    assert main(["train", str(PERCEPTRON), *FAST, "--seed", "4", "--out", str(run), "--overwrite"]) == 0
    assert json.loads((run / "metrics.json").read_text())["seed"] == 4
    assert main(["train", str(PERCEPTRON), *FAST, "--out", str(run), "--overwrite", "--resume"]) == 1
    assert "give one of them" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["a file", "below a file", "resume with nothing there"])
def test_unusable_run_folders_are_refused_before_any_compute(where, tmp_path, capsys, monkeypatch):
    import axon.trainer

    (tmp_path / "f").write_text("x")
    out = {"a file": tmp_path / "f", "below a file": tmp_path / "f" / "run",
           "resume with nothing there": tmp_path / "empty"}[where]
    monkeypatch.setattr(axon.trainer, "step_graph", lambda *a: pytest.fail("compiled before the check"))
    args = ["train", str(PERCEPTRON), *FAST, "--out", str(out)] + (["--resume"] if "resume" in where else [])
    assert main(args) == 1
    err = capsys.readouterr().err
    assert str(out) in err and "Traceback" not in err, err


def test_a_folder_in_use_by_another_run_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / ".axon-run.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another process's run holds it
    try:
        assert main(["train", str(PERCEPTRON), *FAST, "--out", str(run)]) == 1
        assert "in use by another run" in capsys.readouterr().err
    finally:
        os.close(fd)


def test_ctrl_c_while_compiling_exits_130_without_a_traceback(tmp_path, capsys, monkeypatch):
    import axon.trainer

    def interrupted(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(axon.trainer, "step_graph", interrupted)
    assert main(["train", str(PERCEPTRON), *FAST, "--out", str(tmp_path / "run")]) == 130
    assert "interrupted" in capsys.readouterr().err


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=6)
    a = ap.parse_args()
    t0 = time.perf_counter()
    print(chaos(Path(tempfile.mkdtemp()), a.kills, a.seed, a.epochs), f"{time.perf_counter() - t0:.0f} s")
