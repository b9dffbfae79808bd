"""`axon.Module`: a compiled .axon model as a torch.nn.Module: parameters, state_dict round trips with
`axon train` checkpoints, train/eval, and training with torch.optim to the same parameters as `axon
train` with the same seed and data."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import axon
from axon import data as datasets
from axon.trainer import Trainer
from numerics import assert_close

SOURCE = """
model Tiny(hidden = 24, classes = 4) {
    input x: f32[batch, 12]
    h = dropout(relu(linear(x, hidden)), p = 0.2)
    output logits = linear(h, classes)
}
train Tiny {
    data   = blobs(classes = 4, features = 12, n = 120, val = 0.25)
    loss   = cross_entropy(logits, label)
    optim  = sgd(lr = 0.1, momentum = 0.9)
    epochs = 1   batch = 30   seed = 3
}
"""


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "tiny.axon"
    path.write_text(SOURCE)
    return path


def test_it_trains_with_torch_sgd_to_the_parameters_axon_train_reaches(src, tmp_path):
    """Same seed (initializers, data order, dropout streams), same batches: torch.optim.SGD on
    axon.Module's parameters ends where `axon train`'s compiled step does."""
    tr = Trainer(src, out_dir=tmp_path / "run", device="cpu", log=lambda *a: None)
    tr.fit()
    net = axon.Module(str(src), seed=3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    for _, batch in datasets.batches(tr.data.train, tr.batch, tr.seed, 0):
        opt.zero_grad()
        F.cross_entropy(net(batch["inputs"]), batch["labels"]).backward()
        opt.step()
    state = net.state_dict()
    for name, t in tr.params.items():
        assert_close(state[name], t, tol=1e-5, what=name)


def test_state_dict_round_trips_with_axon_train_checkpoints(src, tmp_path, gen):
    tr = Trainer(src, out_dir=tmp_path / "run", device="cpu", log=lambda *a: None)
    tr.fit()
    net = axon.Module(str(src))
    assert [k for k, _ in net.named_parameters()] == ["h.w", "h.b", "logits.w", "logits.b"]
    net.load_state_dict(axon.load_checkpoint(tmp_path / "run" / "checkpoint.safetensors"))
    net.eval()
    x = torch.randn(5, 12, generator=gen)
    model = axon.compile(src, device="cpu")
    model.load_weights(tmp_path / "run" / "checkpoint.safetensors")
    assert_close(net(x), model(x), tol=0.0, what="eval output")
    net.save(tmp_path / "w.safetensors")
    again = axon.Module(str(src))
    again.load_state_dict(axon.load_checkpoint(tmp_path / "w.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), net.state_dict().values()))
    with pytest.raises(RuntimeError, match="Missing key"):
        again.load_state_dict({"h.w": torch.zeros(12, 24)})


def test_train_turns_dropout_on_and_eval_off(src, gen):
    net = axon.Module(str(src))
    x = torch.randn(6, 12, generator=gen)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    a, b = net(x), net(x)
    assert not torch.equal(a, b)  # a fresh dropout stream per training call


def test_running_statistics_are_buffers_a_training_call_moves(gen):
    """Batch norm's running mean and variance: buffers (not parameters), moved by a training call as
    torch.nn.BatchNorm2d moves its own, left alone in eval mode."""
    from test_train import BATCHNORM

    net = axon.Module(BATCHNORM.replace("OPTIM", "sgd(lr = 0.1)"))
    params = {k for k, _ in net.named_parameters()}
    buffers = {k for k, _ in net.named_buffers()}
    assert buffers and not params & buffers and all("w" in k or "b" in k for k in params)
    x = torch.randn(6, 2, 5, 3, generator=gen)
    before = {k: v.clone() for k, v in net.named_buffers()}
    net.train()
    net(x).sum().backward()
    bn = torch.nn.BatchNorm2d(4, momentum=0.2)
    c = F.conv2d(x, net.state_dict()["c.w"], net.state_dict()["c.b"], padding=1)
    bn.train()(c)
    moved = {k: v for k, v in net.named_buffers()}
    assert any(not torch.equal(before[k], moved[k]) for k in moved)
    want = {"mean": bn.running_mean, "var": bn.running_var}
    for k, v in moved.items():
        which = "mean" if "mean" in k else "var"
        assert_close(v, want[which], tol=1e-5, what=k)
    net.eval()
    net(x)
    assert all(torch.equal(moved[k], v) for k, v in net.named_buffers())


def test_torch_amp_grad_scaler_drives_it(src, gen):
    """torch.amp.GradScaler scales the loss, unscales the gradients Axon's backward gives, and steps."""
    net = axon.Module(str(src))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x, y = torch.randn(7, 12, generator=gen), torch.randint(0, 4, (7,), generator=gen)
    before = net.state_dict()["h.w"].clone()
    loss = F.cross_entropy(net(x), y)
    scaler.scale(loss).backward()
    grad = net.h.w.grad.clone()
    scaler.step(opt)
    scaler.update()
    torch.testing.assert_close(net.state_dict()["h.w"], before - 0.1 * grad / 1024.0)
