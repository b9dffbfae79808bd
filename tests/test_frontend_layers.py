"""The prelude's layers, each compiled from a one-line model and evaluated, against PyTorch with the same
parameter tensors. Shapes are irregular (batch 5, 7 channels, 9x11 images)."""
import pytest
import torch
import torch.nn.functional as F

from axon.frontend import compile_source
from axon.ir import evaluate, verify
from twins import copy_rnn_cell
from numerics import assert_close


def layer(body: str, inputs: dict, seed: int = 0, scale: float = 0.5, training: bool = False,
          positive: tuple = ()):
    """Compile `model M { <inputs> <body> }`, give every parameter a seeded random value (absolute for
    names ending in `positive`), evaluate; returns (outputs, params)."""
    decls = "\n".join(f"input {k}: {_type(v)}" for k, v in inputs.items())
    g = compile_source(f"model M {{\n{decls}\n{body}\n}}", "layer.axon", training=training)
    verify(g)
    gen = torch.Generator().manual_seed(seed)
    params = {}
    for name, node in g.params.items():
        t = torch.randn(tuple(node.shape), generator=gen) * scale
        params[name] = t.abs() + 0.5 if name.endswith(positive) and positive else t
    return evaluate(g, inputs, params), params


def _type(t: torch.Tensor) -> str:
    dt = {torch.float32: "f32", torch.int64: "i64"}[t.dtype]
    return f"{dt}[{', '.join(str(d) for d in t.shape)}]" if t.dim() else f"{dt}[]"


def randn(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


X = randn(5, 3, 7)


def test_linear_with_and_without_bias():
    out, p = layer("output y = linear(x, 6)\noutput z = linear(x, 4, bias = false)", {"x": X})
    assert_close(out["y"], X @ p["y.w"] + p["y.b"])
    assert_close(out["z"], X @ p["z.w"])
    assert "z.b" not in p


@pytest.mark.parametrize("call, ref", [
    ("relu(x)", torch.relu), ("tanh(x)", torch.tanh), ("sigmoid(x)", torch.sigmoid),
    ("gelu(x)", F.gelu), ("gelu(x, approximate = true)", lambda x: F.gelu(x, approximate="tanh")),
    ("silu(x)", F.silu), ("leaky_relu(x, slope = 0.1)", lambda x: F.leaky_relu(x, 0.1)),
    ("softplus(x)", F.softplus), ("softplus(x, beta = 2.0)", lambda x: F.softplus(x, beta=2.0)),
    ("softmax(x)", lambda x: torch.softmax(x, -1)), ("softmax(x, axis = 1)", lambda x: torch.softmax(x, 1)),
    ("log_softmax(x)", lambda x: torch.log_softmax(x, -1)),
    ("flatten(x)", lambda x: x.flatten(1)), ("flatten(x, start = 0)", lambda x: x.flatten()),
    ("dropout(x, p = 0.3)", lambda x: x),
])
def test_activations(call, ref):
    x = X * 4
    out, _ = layer(f"output y = {call}", {"x": x})
    assert_close(out["y"], ref(x))


def test_softmax_is_stable_for_large_logits():
    x = torch.tensor([[1000.0, 0.0, -1000.0], [3.0, 3.0, 3.0]])
    out, _ = layer("output y = softmax(x)\noutput z = log_softmax(x)", {"x": x})
    assert_close(out["y"], torch.softmax(x, -1))
    assert_close(out["z"], torch.log_softmax(x, -1))


def test_layernorm_and_rmsnorm():
    out, p = layer("output y = layernorm(x)\noutput z = rmsnorm(x, eps = 1e-5)", {"x": X})
    assert_close(out["y"], F.layer_norm(X, (7,), p["y.w"], p["y.b"], eps=1e-5))
    assert_close(out["z"], F.rms_norm(X, (7,), p["z.w"], eps=1e-5))


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("shape", [(5, 7, 4, 3), (6, 7)])
def test_batchnorm(training, shape):
    x = randn(*shape)
    out, p = layer("output y = batchnorm(x)", {"x": x}, training=training, positive=("running_var",))
    ref = F.batch_norm(x, p["y.running_mean"], p["y.running_var"], p["y.w"], p["y.b"],
                       training=training, eps=1e-5)
    assert_close(out["y"], ref)


@pytest.mark.parametrize("opts, kw", [
    ("", {}), (", stride = 2", {"stride": 2}), (", padding = 2", {"padding": 2}),
    (", dilation = 2, padding = 1", {"dilation": 2, "padding": 1}),
    (", groups = 7, bias = false", {"groups": 7}),
    (", stride = [1, 2], padding = [2, 0]", {"stride": (1, 2), "padding": (2, 0)}),
])
def test_conv2d(opts, kw):
    x = randn(2, 7, 9, 11)
    out, p = layer(f"output y = conv2d(x, 14, 3{opts})", {"x": x})
    assert_close(out["y"], F.conv2d(x, p["y.w"], p.get("y.b"), **kw))


@pytest.mark.parametrize("kernel, stride, padding", [
    (2, 0, 0), (3, 2, 1), (3, 1, 0), (2, 3, 1), ((2, 3), 0, 0), ((3, 2), (1, 2), (1, 0)),
])
def test_pooling(kernel, stride, padding):
    x = randn(2, 3, 9, 11)

    def axon(v):
        return str(list(v)) if isinstance(v, tuple) else str(v)
    opts = f"{axon(kernel)}, stride = {axon(stride)}, padding = {axon(padding)}"
    out, _ = layer(f"output m = max_pool2d(x, {opts})\noutput a = avg_pool2d(x, {opts})", {"x": x})
    s = stride or kernel
    assert_close(out["m"], F.max_pool2d(x, kernel, s, padding))
    assert_close(out["a"], F.avg_pool2d(x, kernel, s, padding))


@pytest.mark.parametrize("kernel", [2, (2, 3), 4])
def test_pooling_over_tiles_forward_and_gradient(kernel):
    """Windows that tile the input take the reshape-and-reduce path; values and gradients as torch's."""
    import axon

    x = randn(2, 3, 8, 12)
    k = str(list(kernel)) if isinstance(kernel, tuple) else str(kernel)
    model = axon.compile(f"model M {{\n input x: f32[2, 3, 8, 12]\n output m = max_pool2d(x, {k})\n"
                         f" output a = avg_pool2d(x, {k})\n}}")
    mine, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = model.run({"x": mine})
    dm, da = randn(*out["m"].shape, seed=2), randn(*out["a"].shape, seed=3)
    ((out["m"] * dm).sum() + (out["a"] * da).sum()).backward()
    m, a = F.max_pool2d(theirs, kernel), F.avg_pool2d(theirs, kernel)
    ((m * dm).sum() + (a * da).sum()).backward()
    assert_close(out["m"], m)
    assert_close(out["a"], a)
    assert_close(mine.grad, theirs.grad)


def test_conv2d_with_a_rectangular_kernel():
    x = randn(2, 3, 9, 11)
    out, p = layer("output y = conv2d(x, 5, [3, 5], dilation = [2, 1])", {"x": x})
    assert tuple(p["y.w"].shape) == (5, 3, 3, 5)
    assert_close(out["y"], F.conv2d(x, p["y.w"], p["y.b"], dilation=(2, 1)))


def test_embedding():
    idx = torch.tensor([[0, 3, 9], [9, 1, 1]])
    out, p = layer("output y = embedding(idx, 10, 6)", {"idx": idx})
    assert_close(out["y"], F.embedding(idx, p["y.w"]))


def test_dropout_in_training_zeroes_and_rescales():
    x = torch.ones(64, 50)
    g = compile_source("model M { input x: f32[64, 50]  output y = dropout(x, p = 0.25) }", "d.axon",
                       training=True)
    assert "seed" in g.inputs
    y = evaluate(g, {"x": x, "seed": torch.tensor(7)})["y"]
    assert set(y.unique().tolist()) <= {0.0, torch.tensor(1 / 0.75).item()}
    assert 0.2 < (y == 0).float().mean().item() < 0.3
    y2 = evaluate(g, {"x": x, "seed": torch.tensor(8)})["y"]
    assert not torch.equal(y, y2)


@pytest.mark.parametrize("causal", [False, True])
def test_attention(causal):
    x = randn(3, 5, 8)
    out, p = layer(f"output y = attention(x, 2, causal = {str(causal).lower()})", {"x": x})

    def split(w):
        return (x @ w).reshape(3, 5, 2, 4).transpose(1, 2)
    q, k, v = (split(p[f"y.{w}"]) for w in ("wq", "wk", "wv"))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert_close(out["y"], o.transpose(1, 2).reshape(3, 5, 8) @ p["y.wo"])


def _copy_cell(cell, p, prefix):
    with torch.no_grad():
        cell.weight_ih.copy_(p[f"{prefix}.wi"].T)
        cell.weight_hh.copy_(p[f"{prefix}.wh"].T)
        cell.bias_ih.copy_(p[f"{prefix}.bi"])
        cell.bias_hh.copy_(p[f"{prefix}.bh"])


def test_cells():
    x, h, c = randn(5, 3), randn(5, 4, seed=2), randn(5, 4, seed=3)
    out, p = layer("output r = rnn_cell(x, h)\nhl, cl = lstm_cell(x, h, c)\noutput l = hl\n"
                   "output lc = cl\noutput g = gru_cell(x, h)", {"x": x, "h": h, "c": c})
    rnn, lstm, gru = torch.nn.RNNCell(3, 4), torch.nn.LSTMCell(3, 4), torch.nn.GRUCell(3, 4)
    _copy_cell(rnn, p, "r")
    _copy_cell(lstm, p, "hl")
    _copy_cell(gru, p, "g")
    with torch.no_grad():
        assert_close(out["r"], rnn(x, h))
        hl, cl = lstm(x, (h, c))
        assert_close(out["l"], hl)
        assert_close(out["lc"], cl)
        assert_close(out["g"], gru(x, h))


@pytest.mark.parametrize("layer_name, module", [("rnn", torch.nn.RNN), ("lstm", torch.nn.LSTM),
                                                 ("gru", torch.nn.GRU)])
def test_sequence_layers(layer_name, module):
    xs = randn(2, 6, 3)
    out, p = layer(f"output y = {layer_name}(xs, 5)", {"xs": xs}, scale=0.4)
    assert sorted(p) == ["y.cell.bh", "y.cell.bi", "y.cell.wh", "y.cell.wi"]
    m = module(3, 5, batch_first=True)
    copy_rnn_cell(m, p, "y.cell")
    with torch.no_grad():
        ref, _ = m(xs)
    assert_close(out["y"], ref)


def test_losses():
    logits, labels = randn(5, 3, 7), torch.randint(0, 7, (5, 3), generator=torch.Generator().manual_seed(4))
    target = randn(5, 3, 7, seed=5)
    prob = torch.rand(5, 3, 7, generator=torch.Generator().manual_seed(6))
    out, _ = layer("output ce = cross_entropy(z, labels)\noutput nl = nll(log_softmax(z), labels)\n"
                   "output se = mse(z, t)\noutput bce = bce_with_logits(z * 10.0, q)",
                   {"z": logits, "labels": labels, "t": target, "q": prob})
    assert_close(out["ce"], F.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1)))
    assert_close(out["nl"], F.nll_loss(torch.log_softmax(logits, -1).reshape(-1, 7), labels.reshape(-1)))
    assert_close(out["se"], F.mse_loss(logits, target))
    assert_close(out["bce"], F.binary_cross_entropy_with_logits(logits * 10, prob))


def test_transformer_block_names():
    out, p = layer("output y = transformer_block(x, 2)", {"x": randn(2, 3, 8)})
    assert sorted(p) == sorted([
        "y.ln1.w", "y.ln1.b", "y.attn.wq", "y.attn.wk", "y.attn.wv", "y.attn.wo", "y.ln2.w", "y.ln2.b",
        "y.up.w", "y.up.b", "y.down.w", "y.down.b"])
    assert tuple(out["y"].shape) == (2, 3, 8)
