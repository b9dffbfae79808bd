"""Saliency maps and adversarial examples through Axon's compiled input gradients, against the same
computations with torch.autograd on an equal model; `axon explain` / `axon attack` write their files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from axon import ledger
from axon.attrib_cmd import Gradients
from axon.cli import main
from axon.ir import init_params
from axon.runtime import attribution as A
from axon.runtime.safetensors import save
from numerics import assert_close

SOURCE = """
model Tiny(hidden = 24, classes = 4) {
    input x: f32[batch, 12]
    h = tanh(linear(x, hidden))
    output logits = linear(h, classes)
}
train Tiny {
    data   = blobs(classes = 4, features = 12, n = 120, val = 0.25)
    loss   = cross_entropy(logits, label)
    optim  = adam(lr = 1e-2)
    epochs = 1   batch = 10
}
"""


@pytest.fixture
def model(tmp_path):
    src = tmp_path / "tiny.axon"
    src.write_text(SOURCE)
    setup = ledger.Setup.make(src, device="cpu")
    gen = torch.Generator().manual_seed(4)
    params = {k: torch.randn(v.shape, generator=gen) * 0.5 for k, v in init_params(setup.graph).items()}
    save(params, tmp_path / "w.safetensors")
    return src, setup, params


def torch_grads(params, of: str, labels):
    """The same model in torch: (output, d(sum dout * output)/dx) by autograd."""
    def f(x, dout):
        x = x.clone().requires_grad_()
        logits = torch.tanh(x @ params["h.w"] + params["h.b"]) @ params["logits.w"] + params["logits.b"]
        out = logits if of == "logits" else F.cross_entropy(logits, labels)
        (out * dout).sum().backward()
        return out.detach(), x.grad
    return f


@pytest.mark.parametrize("method", ["gradient", "integrated", "smoothgrad"])
def test_saliency_equals_torch_autograd(model, method):
    _, setup, params = model
    axon_grad = Gradients(setup, params, "logits")
    x, y = setup.validation["inputs"][:5], setup.validation["labels"][:5]
    axon_grad.labels = y
    ref = torch_grads(params, "logits", y)
    dout = A.one_hot(y, 4, x)
    run = {"gradient": lambda g: A.gradient(g, x, dout),
           "integrated": lambda g: A.integrated(g, x, dout, steps=8),
           "smoothgrad": lambda g: A.smoothgrad(g, x, dout, samples=4, seed=3)}[method]
    assert_close(run(axon_grad), run(ref), tol=1e-5, what=method)


def test_integrated_gradients_add_up_to_the_logit_difference(model):
    """Completeness: the attributions sum to f(x) - f(baseline), up to the Riemann sum's error."""
    _, setup, params = model
    g = Gradients(setup, params, "logits")
    x, y = setup.validation["inputs"][:3], setup.validation["labels"][:3]
    dout = A.one_hot(y, 4, x)
    ig = A.integrated(g, x, dout, steps=256)
    fx = (g(x, dout)[0] * dout).sum(-1)
    f0 = (g(torch.zeros_like(x), dout)[0] * dout).sum(-1)
    torch.testing.assert_close(ig.sum(-1), fx - f0, rtol=2e-2, atol=2e-2)


def test_fgsm_and_pgd_equal_torch_autograd(model):
    _, setup, params = model
    g = Gradients(setup, params, "loss")
    x, y = setup.validation["inputs"][:10], setup.validation["labels"][:10]
    g.labels = y
    ref = torch_grads(params, "loss", y)
    one = torch.ones(())
    assert torch.equal(A.fgsm(g, x, one, 0.1, 0.0, 1.0), A.fgsm(ref, x, one, 0.1, 0.0, 1.0))
    assert_close(A.pgd(g, x, one, 0.1, 5), A.pgd(ref, x, one, 0.1, 5), tol=1e-6, what="pgd")


def test_the_commands_write_their_pictures_and_numbers(model, tmp_path, capsys):
    src, _, _ = model
    w = str(tmp_path / "w.safetensors")
    assert main(["explain", str(src), "--checkpoint", w, "--method", "integrated", "--steps", "4",
                 "--count", "3", "--out", str(tmp_path / "e"), "--device", "cpu"]) == 0
    saved = np.load(tmp_path / "e" / "saliency.npz", allow_pickle=False)
    assert saved["maps"].shape == (3, 12) and (tmp_path / "e" / "saliency.png").stat().st_size > 1000
    assert main(["attack", str(src), "--checkpoint", w, "--method", "fgsm", "--eps", "0.5",
                 "--out", str(tmp_path / "a"), "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "a" / "attack.json").read_text())
    assert record["adversarial_acc"] < record["clean_acc"] and record["examples"] == 32
    assert (tmp_path / "a" / "attack.png").stat().st_size > 1000
    assert main(["attack", str(src), "--checkpoint", w, "--eps", "-1", "--out", str(tmp_path / "b")]) != 0
    assert "--eps must be a positive number" in capsys.readouterr().err


@pytest.mark.parametrize("attack", ["fgsm(eps = 0.2, alpha = 0.3)",
                                    "pgd(eps = 0.2, steps = 3, step_size = 0.1)"])
def test_adversarial_training_loss_and_gradients_equal_torch(attack, gen):
    """adversarial = ... in the train block: the loss at clean and attacked inputs and its parameter
    gradients (the attack carrying none) equal torch autograd's on an equal model."""
    from axon.frontend import parse, training_graph
    from axon.ir import evaluate
    from axon.passes.autodiff import grad
    from axon.trainer import adversarial_loss

    source = SOURCE.replace("batch = 10", f"batch = 10\n adversarial = {attack}")
    loss_graph, spec = training_graph(parse(source))
    x = torch.rand(6, 12, generator=gen)
    y = torch.randint(0, 4, (6,), generator=gen)
    train = {"inputs": x, "labels": y}
    options = {"attack": spec.adversarial.name, **dict(spec.adversarial.kwargs)}
    g = grad(adversarial_loss(loss_graph, "x", options, train), "loss")
    params = {k: torch.randn(v.shape, generator=gen) * 0.5 for k, v in init_params(loss_graph).items()}
    got = evaluate(g, {"x": x, "label": y}, params)

    p = {k: v.clone().requires_grad_() for k, v in params.items()}

    def loss_at(z):
        return F.cross_entropy(torch.tanh(z @ p["h.w"] + p["h.b"]) @ p["logits.w"] + p["logits.b"], y)

    xd, lo, hi = x, float(x.min()), float(x.max())
    eps, alpha = 0.2, float(options.get("alpha", 0.5))
    adv = xd.clone()
    steps = options.get("steps", 1)
    size = options.get("step_size", eps)
    for _ in range(steps):
        z = adv.clone().requires_grad_()
        gx, = torch.autograd.grad(loss_at(z), z)
        adv = adv + (size if options["attack"] == "pgd" else eps) * gx.sign()
        if options["attack"] == "pgd":
            adv = torch.max(torch.min(adv, xd + eps), xd - eps)
        adv = adv.clamp(lo, hi).detach()
    want = (1 - alpha) * loss_at(xd) + alpha * loss_at(adv)
    want.backward()
    assert_close(got["loss"], want.detach(), tol=1e-5, what="loss")
    for k in params:
        assert_close(got[f"grad.{k}"], p[k].grad, tol=1e-4, what=k)


@pytest.mark.parametrize("setting, message", [
    ("adversarial = fgsm()", "needs eps"),
    ("adversarial = fgsm(eps = -1)", "'eps' must be a positive number"),
    ("adversarial = pgd(eps = 0.1, steps = 0)", "'steps' must be an int of at least 1"),
    ("adversarial = fgsm(eps = 0.1, alpha = 2)", "'alpha' must be in [0, 1]"),
    ("adversarial = cw(eps = 0.1)", "unknown adversarial attack 'cw'"),
])
def test_adversarial_settings_are_checked_where_they_are_written(setting, message):
    from axon.frontend import parse, training_graph
    from axon.ir import AxonError

    with pytest.raises(AxonError, match=message.replace("[", r"\[").replace("]", r"\]")):
        training_graph(parse(SOURCE.replace("batch = 10", f"batch = 10\n {setting}")))


def test_attention_maps_of_the_gpt_example(tmp_path):
    """--method attention: every layer's and head's softmax over keys, causal (nothing above the
    diagonal), rows summing to 1; drawn over the tokens."""
    from pathlib import Path

    from axon.attrib_cmd import attention_probabilities
    from axon.driver import graph_of

    gpt = Path(__file__).parents[1] / "examples" / "gpt.axon"
    graph, layers = attention_probabilities(graph_of(gpt))
    assert layers == 2 and "attention.1" in graph.outputs
    gen = torch.Generator().manual_seed(0)
    params = {k: torch.randn(v.shape, generator=gen) * 0.3 for k, v in init_params(graph).items()}
    save(params, tmp_path / "w.safetensors")
    assert main(["explain", str(gpt), "--checkpoint", str(tmp_path / "w.safetensors"), "--method",
                 "attention", "--out", str(tmp_path / "att"), "--device", "cpu"]) == 0
    saved = np.load(tmp_path / "att" / "attention.npz", allow_pickle=False)
    m = saved["layer0"]                                   # [heads, queries, keys]
    assert m.shape == (4, 32, 32)
    np.testing.assert_allclose(m.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(m, 1) == 0)
    assert (tmp_path / "att" / "attention.png").stat().st_size > 5000
