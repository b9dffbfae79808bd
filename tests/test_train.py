"""Training: one compiled step (generated kernels) against a PyTorch twin for every optimizer, on the MLP
and the GPT; a run killed mid-epoch and resumed ends where an uninterrupted run does; a non-finite loss
stops the run and keeps the last good checkpoint; `axon eval` reads a checkpoint."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from axon.frontend import parse, training_graph
from axon.ir import init_params
from axon.optim import LR_INPUT, STEP_INPUT
from axon.runtime import Executable
from axon.runtime.safetensors import load
from axon.trainer import NEW, step_graph
from numerics import assert_close
from twins import gpt_twin

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

MLP = """
model MLP(hidden = 13) {
    input x: f32[batch, 9]
    h = relu(linear(x, hidden))
    output logits = linear(h, 5)
}
train MLP {
    data = digits()   loss = cross_entropy(logits, label)
    optim = OPTIM
    epochs = 1   batch = 7
}
"""
OPTIMIZERS = [
    ("sgd(lr = 0.1)", lambda p: torch.optim.SGD(p, lr=0.1)),
    ("sgd(lr = 0.1, momentum = 0.9, nesterov = true, weight_decay = 0.01)",
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam(lr = 0.01, weight_decay = 0.001)", lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.001)),
    ("adamw(lr = 0.01, weight_decay = 0.1)", lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
    ("rmsprop(lr = 0.01, momentum = 0.5)", lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5)),
    ("adagrad(lr = 0.1)", lambda p: torch.optim.Adagrad(p, lr=0.1)),
    ("adam(lr = 0.01, clip = 0.5)", lambda p: torch.optim.Adam(p, lr=0.01)),
]


def _steps(source: str, optim: str, feeds: list[dict], seed: int = 0):
    """Axon's compiled training step run len(feeds) times; returns the losses and final parameters,
    with the initial parameters."""
    loss_graph, spec = training_graph(parse(source.replace("OPTIM", optim)))
    step = step_graph(loss_graph, {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)})
    exe = Executable(step)
    params = init_params(step, seed)
    start = {k: v.clone() for k, v in params.items()}
    states = {n: torch.zeros(tuple(i.shape), dtype=i.dtype.torch) for n, i in step.inputs.items()
              if n.startswith("state.")}
    losses = []
    for t, feed in enumerate(feeds, 1):
        scalars = {STEP_INPUT: torch.tensor(float(t), dtype=torch.float64),
                   LR_INPUT: torch.tensor(spec.optimizer.get("lr"), dtype=torch.float64)}
        out = exe({**feed, **scalars, **states}, params, poison=True)
        losses.append(out["loss"])
        params = {k: out[NEW + k] for k in params}
        states = {k: out[NEW + k] for k in states}
    return losses, params, start


def _torch_steps(start, make_opt, loss_fn, feeds, clip=None):
    p = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    opt = make_opt(list(p.values()))
    losses = []
    for feed in feeds:
        opt.zero_grad()
        loss = loss_fn(p, feed)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(p.values()), clip)
        opt.step()
        losses.append(loss.detach())
    return losses, {k: v.detach() for k, v in p.items()}


@pytest.mark.parametrize("optim, make_opt", OPTIMIZERS, ids=[o[0].split("(")[0] for o in OPTIMIZERS])
def test_mlp_steps_match_torch(optim, make_opt, gen):
    feeds = [{"x": torch.randn(7, 9, generator=gen), "label": torch.randint(0, 5, (7,), generator=gen)}
             for _ in range(3)]
    losses, params, start = _steps(MLP, optim, feeds)

    def loss_fn(p, feed):
        h = torch.relu(feed["x"] @ p["h.w"] + p["h.b"])
        return F.cross_entropy(h @ p["logits.w"] + p["logits.b"], feed["label"])

    clip = 0.5 if "clip" in optim else None
    want_losses, want = _torch_steps(start, make_opt, loss_fn, feeds, clip)
    for got, ref in zip(losses, want_losses):
        assert_close(got, ref, tol=1e-5, what="loss")
    for name in want:
        assert_close(params[name], want[name], tol=1e-5, what=name)


@pytest.mark.parametrize("optim, make_opt", [OPTIMIZERS[2], OPTIMIZERS[3]], ids=["adam", "adamw"])
def test_gpt_step_matches_torch(optim, make_opt, gen):
    source = (EXAMPLES / "gpt.axon").read_text()
    source = source[:source.index("train GPT")] + """
train GPT {
    data = text(ctx = 7)   loss = cross_entropy(logits, next_tokens)
    optim = OPTIM   epochs = 1   batch = 3
}"""
    feeds = [{"tokens": torch.randint(0, 65, (3, 7), generator=gen),
              "next_tokens": torch.randint(0, 65, (3, 7), generator=gen)} for _ in range(2)]
    losses, params, start = _steps(source, optim, feeds)

    def loss_fn(p, feed):
        logits = gpt_twin(feed["tokens"], p)
        return F.cross_entropy(logits.reshape(-1, 65), feed["next_tokens"].reshape(-1))

    want_losses, want = _torch_steps(start, make_opt, loss_fn, feeds)
    for got, ref in zip(losses, want_losses):
        assert_close(got, ref, tol=1e-5, what="loss")
    for name in want:
        assert_close(params[name], want[name], tol=1e-4, what=name)


BATCHNORM = """
model BN() {
    input image: f32[batch, 2, 5, 3]
    c = conv2d(image, 4, 3, padding = 1)
    bn = batchnorm(c, momentum = 0.2)
    h = bn
    output logits = linear(flatten(relu(h)), 3)
}
train BN {
    data = digits()   loss = cross_entropy(logits, label)
    optim = OPTIM
    epochs = 1   batch = 6
}
"""


def test_batchnorm_running_statistics_follow_torch_and_serve_evaluation(gen):
    """Three SGD steps: the running mean and (unbiased) variance move as torch's batch norm's, the
    optimizer leaves them alone, the other parameters match; evaluation then uses them."""
    feeds = [{"image": torch.randn(6, 2, 5, 3, generator=gen) * 2 + 1,
              "label": torch.randint(0, 3, (6,), generator=gen)} for _ in range(3)]
    losses, params, start = _steps(BATCHNORM, "sgd(lr = 0.1, weight_decay = 0.1)", feeds)
    running_mean, running_var = torch.zeros(4), torch.ones(4)  # F.batch_norm updates them in place

    def loss_fn(p, feed):
        c = F.conv2d(feed["image"], p["c.w"], p["c.b"], padding=1)
        h = F.batch_norm(c, running_mean, running_var, p["bn.w"], p["bn.b"], training=True, momentum=0.2)
        return F.cross_entropy(torch.relu(h).flatten(1) @ p["logits.w"] + p["logits.b"], feed["label"])

    learned = {k: v for k, v in start.items() if "running" not in k}
    want_losses, want = _torch_steps(learned, lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.1),
                                     loss_fn, feeds)
    for got, ref in zip(losses, want_losses):
        assert_close(got, ref, tol=1e-5, what="loss")
    for name in want:
        if name == "c.b":  # its gradient is exactly 0 (batch norm removes a per-channel constant):
            assert (params[name] - want[name]).abs().max() < 1e-6  # both are rounding noise
            continue
        assert_close(params[name], want[name], tol=1e-5, what=name)
    assert_close(params["bn.running_mean"], running_mean, tol=1e-5, what="running mean")
    assert_close(params["bn.running_var"], running_var, tol=1e-5, what="running variance")
    # evaluation: the running statistics, not the batch's
    eval_graph, _ = training_graph(parse(BATCHNORM.replace("OPTIM", "sgd(lr = 0.1)")), training=False)
    x = torch.randn(2, 2, 5, 3, generator=gen)
    got = Executable(eval_graph)({"image": x, "label": torch.zeros(2, dtype=torch.int64)}, params)["logits"]
    c = F.conv2d(x, params["c.w"], params["c.b"], padding=1)
    ref = torch.relu(F.batch_norm(c, running_mean, running_var, params["bn.w"], params["bn.b"])).flatten(1)
    assert_close(got, ref @ params["logits.w"] + params["logits.b"], tol=1e-5, what="eval logits")


# --- whole runs --------------------------------------------------------------------------------------
def _axon(*args, **kw):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "axon.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
    """A run killed (SIGKILL) mid-epoch and resumed ends with the parameters of an uninterrupted run."""
    args = [EXAMPLES / "perceptron.axon", "--epochs", "3", "--batch", "16", "--checkpoint-every", "7"]
    whole = _axon("train", *args, "--out", tmp_path / "whole")
    assert whole.wait(timeout=300) == 0, whole.stderr.read()

    killed = _axon("train", *args, "--out", tmp_path / "killed")
    checkpoint = tmp_path / "killed" / "checkpoint.safetensors"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    progress = json.loads(_metadata(checkpoint)["progress"])
    assert progress["epoch"] < 3 and progress["step"] >= 7  # killed part-way, after a checkpoint

    resumed = _axon("train", *args, "--out", tmp_path / "killed", "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resumed from" in out
    a = load(tmp_path / "whole" / "checkpoint.safetensors")
    b = load(checkpoint)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert len(metrics["history"]) == 3 and (tmp_path / "killed" / "curve.png").stat().st_size > 1000


def _metadata(path):
    from axon.runtime.safetensors import load_metadata

    return load_metadata(path)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    from axon.cli import main

    source = (EXAMPLES / "perceptron.axon").read_text().replace("sgd(lr = 0.1, momentum = 0.9)",
                                                                "sgd(lr = 1e37, momentum = 0.9)")
    (tmp_path / "p.axon").write_text(source)
    code = main(["train", str(tmp_path / "p.axon"), "--epochs", "3", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "training stopped: the loss is" in err and "Traceback" not in err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stopped"].startswith("non-finite loss")
    for name, t in load(tmp_path / "run" / "checkpoint.safetensors").items() if (
            tmp_path / "run" / "checkpoint.safetensors").exists() else []:
        assert torch.isfinite(t).all(), name  # a checkpoint, if any was written, holds finite values


def test_train_then_eval_reports_the_same_metrics(tmp_path, capsys):
    from axon.cli import main

    run = tmp_path / "run"
    assert main(["train", str(EXAMPLES / "perceptron.axon"), "--epochs", "2", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    last = metrics["history"][-1]
    assert metrics["stopped"] == "done" and last["val_acc"] > 0.8, out
    checkpoint = str(run / "checkpoint.safetensors")
    assert main(["eval", str(EXAMPLES / "perceptron.axon"), "--checkpoint", checkpoint]) == 0
    shown = capsys.readouterr().out
    assert f"val loss {last['val_loss']:.4f}" in shown and f"val acc {last['val_acc']:.4f}" in shown
    assert main(["eval", str(EXAMPLES / "mlp.axon"), "--checkpoint", checkpoint]) == 1
    assert "does not fit this model" in capsys.readouterr().err
