"""The GAN's train block: checked with located errors; each step equal to torch autograd's on an equal
model; `axon train` writes samples each epoch and resumes exactly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from axon.cli import main
from axon.frontend import AxonNameError, AxonTypeError, AxonValueError, ArityError, parse, train_spec
from axon.gan_trainer import EMA, GanTrainer
from axon.ir import AxonError
from axon.runtime.safetensors import load
from loopback import needs_loopback

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gan.axon"
SOURCE = EXAMPLE.read_text().replace("gaussians()", "gaussians(n = 320)")
HIDDEN = {"hidden": 8}


def write(tmp_path, text: str = SOURCE) -> Path:
    path = tmp_path / "gan.axon"
    path.write_text(text)
    return path


def spec_of(text: str):
    return train_spec(parse(text, "gan.axon"))


# --- the block -----------------------------------------------------------------------------------------
def test_the_example_block_is_read():
    gan = spec_of(SOURCE).gan
    assert (gan.noise, gan.samples) == ("z", "sample")
    assert (gan.discriminator.params, gan.generator.params) == ("disc", "gen")
    assert gan.discriminator.loss.fn == "d_loss" and gan.generator.loss.fn == "g_loss"
    assert dict(gan.discriminator.optimizer.kwargs)["lr"] == 3e-2 and gan.generator.ema == 0.9


@pytest.mark.parametrize("old, new, error, words, at", [
    ("noise   = z", "noise   = q", AxonNameError, "no input named 'q'", "noise   = q"),
    ("noise   = z", "", ArityError, "needs 'noise = ", "train GAN {"),
    ('params = "gen"', 'params = "disc"', AxonValueError, "both train the group 'disc'", "generator {"),
    ("steps  = 1", "steps  = 0", AxonValueError, "'steps' must be an int of at least 1", "steps  = 0"),
    ("ema    = 0.9", "ema    = 1.5", AxonValueError, "'ema' must be a decay in [0, 1)", "ema    = 1.5"),
    ("d_loss(real_score, fake_score)", "d_loss(real_score, label)", AxonNameError,
     "GAN's losses take model outputs", "d_loss(real_score, label)"),
    ("optim  = adam(lr = 5e-4", "optim  = adum(lr = 5e-4", AxonNameError, "unknown optimizer 'adum'", "adum"),
    ("        ema    = 0.9", "        steps  = 2", AxonNameError, "unknown generator setting 'steps'",
     "steps  = 2"),
    ('params = "disc"', "params = 3", AxonTypeError, "'params' must name a parameter group", "params = 3"),
    ("epochs  = 4", "epochs  = 4  loss = g_loss(fake_score)", ArityError, "goes inside the discriminator",
     "epochs  = 4  loss"),
    ("epochs  = 4", "epochs  = 4  early_stop(patience = 2)", ArityError, "'early_stop' is not supported",
     "early_stop"),
])
def test_mistakes_are_located(old, new, error, words, at):
    assert old in SOURCE
    text = SOURCE.replace(old, new, 1)
    with pytest.raises(error) as e:
        spec_of(text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if at in s)
    assert words in str(e.value) and e.value.span.line == line, str(e.value)


def test_a_missing_step_block_is_named():
    start = SOURCE.index("    generator {")
    text = SOURCE[:start] + SOURCE[SOURCE.index("}", start) + 1:]
    with pytest.raises(ArityError, match="'generator' is missing"):
        spec_of(text)


def test_noise_outside_a_gan_is_refused():
    text = EXAMPLE.parent.joinpath("mlp.axon").read_text().replace("epochs = 15", "epochs = 15  noise = x")
    with pytest.raises(ArityError, match="belongs to a GAN's train block"):
        spec_of(text)


def test_a_group_without_parameters_is_refused(tmp_path):
    with pytest.raises(AxonError, match="group 'critic' holds no parameter.*") as e:
        GanTrainer(write(tmp_path, SOURCE.replace('params = "disc"', 'params = "critic"')), hparams=HIDDEN,
                   claim_folder=False)
    assert "gen, disc" in e.value.hint or "disc, gen" in e.value.hint


# --- the steps against torch -----------------------------------------------------------------------------
def _twin_d(p, z, real):
    def disc(x):
        return F.leaky_relu(x @ p["disc.h1.w"] + p["disc.h1.b"], 0.2) @ p["disc.dense.w"] + p["disc.dense.b"]

    def gen(z):
        h = F.leaky_relu(z @ p["gen.h1.w"] + p["gen.h1.b"], 0.2)
        h = F.leaky_relu(h @ p["gen.h2.w"] + p["gen.h2.b"], 0.2)
        return torch.tanh(h @ p["gen.dense.w"] + p["gen.dense.b"])

    return disc, gen


def test_each_step_equals_torch_autograd(tmp_path):
    """One discriminator step then one generator step (SGD), each against torch on the same weights and
    noise: the discriminator's loss w.r.t. its group only, the generator's non-saturating loss back
    through the updated discriminator w.r.t. the generator's group only."""
    text = SOURCE.replace("adam(lr = 3e-2, betas = [0.0, 0.99])", "sgd(lr = 0.1)").replace(
        "adam(lr = 5e-4, betas = [0.0, 0.99])", "sgd(lr = 0.2)")
    t = GanTrainer(write(tmp_path, text), hparams=HIDDEN, claim_folder=False, seed=3)
    real = t.data.train["inputs"][:12]
    before = {k: v.clone().requires_grad_(True) for k, v in t.params.items()}
    z_d = t._noise(12, "discriminator", 1)
    loss_d = t._run("discriminator", 1, real)
    disc, gen = _twin_d(before, z_d, real)
    twin_d = F.softplus(-disc(real)).mean() + F.softplus(disc(gen(z_d).detach())).mean()
    d_names = [k for k in before if k.startswith("disc.")]
    grads = torch.autograd.grad(twin_d, [before[k] for k in d_names])
    assert loss_d == pytest.approx(float(twin_d.detach()), rel=1e-5)
    for k, g in zip(d_names, grads):
        torch.testing.assert_close(t.params[k], (before[k] - 0.1 * g).detach(), rtol=1e-5, atol=1e-6)
    for k in before:
        if k.startswith("gen."):
            assert torch.equal(t.params[k], before[k].detach()), k  # read, not updated
    mid = {k: v.clone().requires_grad_(True) for k, v in t.params.items()}
    z_g = t._noise(12, "generator", 1)
    loss_g = t._run("generator", 1, real)
    disc, gen = _twin_d(mid, z_g, real)
    twin_g = F.softplus(-disc(gen(z_g))).mean()
    g_names = [k for k in mid if k.startswith("gen.")]
    grads = torch.autograd.grad(twin_g, [mid[k] for k in g_names])
    assert loss_g == pytest.approx(float(twin_g.detach()), rel=1e-5)
    for k, g in zip(g_names, grads):
        torch.testing.assert_close(t.params[k], (mid[k] - 0.2 * g).detach(), rtol=1e-5, atol=1e-6)
    assert all(torch.equal(t.params[k], mid[k].detach()) for k in mid if k.startswith("disc."))


# --- axon train ------------------------------------------------------------------------------------------
def _train(path, out, *extra):
    return main(["train", str(path), "--set", "hidden=8", "--batch", "32", "--out", str(out), *extra])


def test_axon_train_draws_samples_and_resumes_exactly(tmp_path, capsys):
    path = write(tmp_path, SOURCE.replace("steps  = 1", "steps  = 2"))  # k = 2: 5 generator steps an epoch
    assert _train(path, tmp_path / "whole", "--epochs", "2") == 0
    shown = capsys.readouterr().out
    assert "discriminator step" in shown and "generator step" in shown and "modes" in shown
    metrics = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    last = metrics["history"][-1]
    assert last["step"] == 20 and {"train_loss", "train_loss_g", "val_modes", "val_near"} <= set(last)
    assert 0 <= last["val_modes"] <= 8
    for epoch in (1, 2):
        png = tmp_path / "whole" / "samples" / f"epoch-{epoch:03d}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _train(path, tmp_path / "split", "--epochs", "1") == 0
    assert _train(path, tmp_path / "split", "--epochs", "2", "--resume") == 0
    whole = load(tmp_path / "whole" / "checkpoint.safetensors")
    split = load(tmp_path / "split" / "checkpoint.safetensors")
    assert set(whole) == set(split) and any(k.startswith("state/" + EMA) for k in whole)
    for k in whole:
        assert torch.equal(whole[k], split[k]), k


@needs_loopback
def test_two_processes_train_the_gan_as_one(tmp_path):
    """`--nproc 2`: each step's rows of real samples and noise split over two ranks, both groups'
    gradients summed: the checkpoint equals one process's (both groups, both optimizers, the average)."""
    import os
    import subprocess
    import sys

    path = write(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        command = [sys.executable, "-m", "axon.cli", "train", str(path), "--set", "hidden=8", "--batch", "32",
                   "--epochs", "1", "--out", str(tmp_path / name), *extra]
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
    one, two = (load(tmp_path / d / "checkpoint.safetensors") for d in ("one", "two"))
    assert set(one) == set(two)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=k)


def test_axon_eval_draws_from_the_saved_weight_average(tmp_path, capsys):
    path = write(tmp_path)
    assert _train(path, tmp_path / "r", "--epochs", "1") == 0
    capsys.readouterr()
    ck = tmp_path / "r" / "checkpoint.safetensors"
    assert main(["eval", str(path), "--checkpoint", str(ck), "--set", "hidden=8"]) == 0
    shown = capsys.readouterr().out.strip().splitlines()[-1]
    last = json.loads((tmp_path / "r" / "metrics.json").read_text())["history"][-1]
    assert shown.startswith(f"val modes {last['val_modes']}  val near {last['val_near']:.4f}"), shown


def test_without_samples_an_epoch_draws_nothing(tmp_path):
    path = write(tmp_path, SOURCE.replace("samples = sample ", ""))
    t = GanTrainer(path, hparams=HIDDEN, claim_folder=False)
    assert t.gan.samples is None and t.validate() == {}
