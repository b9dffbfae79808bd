"""`torch.compile(model, backend="axon")`: Dynamo's graphs imported to Axon IR and run as Axon kernels,
outputs and gradients against eager PyTorch; dynamic sizes; partial graphs around ops Axon leaves to
eager (and `explain` naming them); an AdamW loop following eager's loss curve."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import axon.dynamo as dyn
from numerics import assert_close

pytestmark = pytest.mark.filterwarnings("ignore")


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(F.max_pool2d(torch.relu(self.bn(self.c(x))), 2).flatten(1))


class GPTBlock(nn.Module):
    """A GPT-2 block: pre-norm causal self-attention (scaled_dot_product_attention) and a GELU MLP."""

    def __init__(self, d=16, heads=4):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(a)
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


def _first(y):
    return y[0] if isinstance(y, tuple) else y


MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 3)), (5, 7)),
    "cnn-batchnorm": (CNN, (2, 3, 8, 8)),
    "lstm": (lambda: nn.LSTM(6, 8, batch_first=True), (2, 5, 6)),
    "gru": (lambda: nn.GRU(6, 8, batch_first=True), (2, 5, 6)),
    "transformer-layer": (lambda: nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True),
                          (2, 5, 16)),
    "gpt-block": (GPTBlock, (2, 5, 16)),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo(monkeypatch):
    monkeypatch.setattr(torch._dynamo.config, "allow_rnn", True)  # else Dynamo runs RNNs eagerly
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_models_match_eager_forward_and_backward(name, gen):
    """The whole graph is one Axon region; outputs and the gradients of every parameter and of the
    input match eager; batch norm's running statistics move as eager's do."""
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make()
    twin = copy.deepcopy(model)
    x = torch.randn(*shape, generator=gen)
    start = len(dyn.REPORTS)
    compiled = torch.compile(model, backend=dyn.axon_backend)
    xa, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = _first(compiled(xa)), _first(twin(xe))
    assert_close(got, want, tol=1e-5, what=f"{name} output")
    assert dyn.REPORTS[start].whole, str(dyn.REPORTS[start])
    dout = torch.randn(want.shape, generator=gen)
    got.backward(dout)
    want.backward(dout)
    assert_close(xa.grad, xe.grad, tol=1e-5, what="input gradient")
    for (pname, p), q in zip(model.named_parameters(), twin.parameters()):
        # (absolute too: a conv bias before batch norm has a gradient of rounding noise around 0)
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=f"{name} {pname} gradient")
    for (bname, b), c in zip(model.named_buffers(), twin.buffers()):
        assert_close(b.float(), c.float(), tol=1e-6, what=f"{name} {bname}")


def test_dynamic_batch_sizes_compile_once(gen):
    """After the second size Dynamo marks the batch dynamic: Axon's graph keeps it symbolic, and the
    same compile serves every later size."""
    model = nn.Sequential(nn.Linear(7, 5), nn.GELU(), nn.LayerNorm(5), nn.Linear(5, 3))
    compiled = torch.compile(model, backend=dyn.axon_backend)
    start = len(dyn.REPORTS)
    for n in (4, 6, 9, 13):
        x = torch.randn(n, 7, generator=gen)
        assert_close(compiled(x), model(x), tol=1e-5, what=f"batch {n}")
    first, second = dyn.REPORTS[start:]
    assert first.symbolic == [] and len(second.symbolic) == 1  # the batch, one symbol for every size


class WithCumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.cumsum(torch.relu(self.a(x)), dim=1)).tanh()


def test_an_unsupported_op_runs_eagerly_between_axon_regions(gen):
    """cumsum has no Axon translation: the graph is split, the regions around it are compiled, the
    result and the gradients still match eager, and explain names the op."""
    model = WithCumsum()
    twin = copy.deepcopy(model)
    x = torch.randn(5, 6, generator=gen)
    start = len(dyn.REPORTS)
    compiled = torch.compile(model, backend=dyn.axon_backend)
    got, want = compiled(x), twin(x)
    assert_close(got, want, tol=1e-5, what="output")
    report = dyn.REPORTS[start]
    assert not report.whole and len(report.regions) == 2 and report.unsupported == {"aten.cumsum": 1}
    got.sum().backward()
    want.sum().backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert_close(p.grad, q.grad, tol=1e-5, what="gradient")
    text = dyn.explain(WithCumsum(), x)
    assert "aten.cumsum x1" in text and "2 Axon region(s)" in text


@pytest.mark.parametrize("name", ["mlp", "transformer-layer"])
def test_twenty_adamw_steps_follow_eager(name, gen):
    make, shape = MODELS[name]
    torch.manual_seed(1)
    model = make()
    twin = copy.deepcopy(model)
    compiled = torch.compile(model, backend=dyn.axon_backend)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (model, twin)]
    xs = [torch.randn(*shape, generator=gen) for _ in range(4)]
    target = torch.randn(_first(twin(xs[0])).shape, generator=gen)
    for step in range(20):
        losses = []
        for opt, fn in ((opts[0], compiled), (opts[1], twin)):
            opt.zero_grad()
            loss = F.mse_loss(_first(fn(xs[step % 4])), target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) <= 1e-4 * abs(losses[1]), (step, losses)


def test_the_backend_is_found_by_name():
    """`backend="axon"` resolves through the torch_dynamo_backends entry point."""
    from torch._dynamo.backends.registry import lookup_backend

    assert lookup_backend("axon") is dyn.axon_backend


@pytest.mark.parametrize("name", list(MODELS))
def test_the_aot_autograd_variant_compiles_atens_own_backward(name, gen):
    """backend="axon_aot": aot_autograd's forward and backward graphs, each imported and compiled by
    Axon, whole or in regions (the fused CPU attention, convolution_backward and the pooling backward
    left to eager between them); outputs and gradients match eager."""
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make()
    twin = copy.deepcopy(model)
    start = len(dyn.REPORTS)
    compiled = torch.compile(model, backend=dyn.axon_aot_backend)
    x = torch.randn(*shape, generator=gen)
    got, want = _first(compiled(x)), _first(twin(x))
    assert_close(got, want, tol=1e-5, what="output")
    got.sum().backward()
    want.sum().backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    forward, backward = dyn.REPORTS[start:start + 2]
    assert (forward.whole or forward.regions) and (backward.whole or backward.regions)


def test_a_graph_holding_its_own_tensors_runs_eagerly_and_says_so(gen):
    """An optimizer step compiled with the backend: its graph holds the optimizer's state, which Axon
    must not trace (tracing could run an in-place update for real): eager, correct, and explained."""
    model = nn.Linear(5, 3)
    twin = copy.deepcopy(model)
    x = torch.randn(4, 5, generator=gen)
    for m in (model, twin):
        m(x).sum().backward()
    opts = [torch.optim.AdamW(m.parameters(), lr=0.1, foreach=False) for m in (model, twin)]
    start = len(dyn.REPORTS)
    step = torch.compile(opts[0].step, backend=dyn.axon_backend)
    for _ in range(3):
        step()
        opts[1].step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
    assert "holds tensors of its own" in str(dyn.REPORTS[start])
