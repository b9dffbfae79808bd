"""Every example compiles, and its graph, run by the reference evaluator, matches a PyTorch twin written
by hand with the same parameter tensors (copied by name). Shapes are irregular on purpose (batch 5,
sequence 7)."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from axon.frontend import load, read_axon, train_spec
from axon.ir import evaluate, verify
from axon.ir.init import init_params as ir_init_params
from axon.ir.text import parse_graph, print_graph
from axon.passes.manager import DEFAULT_PIPELINE, PassManager, parse_pipeline
from numerics import assert_close
from twins import copy_rnn_cell, gpt_twin

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NAMES = ["perceptron", "mlp", "cnn", "lstm", "gpt", "gan"]


def init_params(graph, seed: int = 0, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """Deterministic parameters by name (any init will do: both sides get the same tensors)."""
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(tuple(node.shape), generator=gen) * scale
            for name, node in graph.params.items()}


def run(name: str, inputs: dict, scale: float = 0.5):
    g = load(EXAMPLES / f"{name}.axon")
    verify(g)
    p = init_params(g, scale=scale)
    return evaluate(g, inputs, p), p


@pytest.mark.parametrize("name", NAMES)
def test_example_checks_clean(name):
    g = load(EXAMPLES / f"{name}.axon")
    verify(g)
    assert g.outputs
    spec = train_spec(read_axon(EXAMPLES / f"{name}.axon"))
    assert spec is None or spec.model == g.name
    values = ir_init_params(g, seed=0)  # every declared initializer is one the IR can draw
    assert values.keys() == g.params.keys() and all(torch.isfinite(v).all() for v in values.values())


@pytest.mark.parametrize("name", NAMES)
def test_example_graph_prints_parses_back_and_survives_the_clean_up_pipeline(name):
    g = load(EXAMPLES / f"{name}.axon")
    text = print_graph(g)
    assert print_graph(parse_graph(text, file=name)) == text
    opt = PassManager(parse_pipeline(DEFAULT_PIPELINE), verify=True).run(g)
    p = init_params(g)
    gen = torch.Generator().manual_seed(3)
    inputs = {}
    for n, node in g.inputs.items():
        shape = tuple(d if isinstance(d, int) else 5 for d in node.shape)
        inputs[n] = (torch.randint(0, 8, shape, generator=gen) if node.dtype.is_int
                     else torch.randn(shape, generator=gen))
    before = evaluate(g, inputs, p)
    after = evaluate(opt, inputs, {k: v for k, v in p.items() if k in opt.params})
    for out in g.outputs:
        assert_close(after[out], before[out], what=out)


def test_perceptron(gen):
    x = torch.randn(5, 2, generator=gen)
    out, p = run("perceptron", {"x": x})
    assert_close(out["logit"], x @ p["logit.w"] + p["logit.b"])


def test_mlp(gen):
    x = torch.randn(5, 64, generator=gen)
    out, p = run("mlp", {"x": x})
    h = torch.relu(x @ p["h.w"] + p["h.b"])  # dropout is the identity outside training
    assert_close(out["logits"], h @ p["logits.w"] + p["logits.b"])


def test_cnn(gen):
    x = torch.randn(5, 1, 8, 8, generator=gen)
    out, p = run("cnn", {"image": x})
    h = torch.relu(F.conv2d(x, p["c1.w"], p["c1.b"], padding=1))
    h = F.max_pool2d(torch.relu(F.conv2d(h, p["c2.w"], p["c2.b"], padding=1)), 2)
    h = torch.relu(h.flatten(1) @ p["h.w"] + p["h.b"])  # dropout is off outside training
    assert_close(out["logits"], h @ p["logits.w"] + p["logits.b"])


def test_lstm_against_torch_lstm(gen):
    x = torch.randn(5, 12, 4, generator=gen)
    out, p = run("lstm", {"x": x}, scale=0.3)
    lstm = torch.nn.LSTM(4, 16, batch_first=True)
    copy_rnn_cell(lstm, p, "hs.cell")
    with torch.no_grad():
        hs, _ = lstm(x)
    assert_close(out["logits"], hs[:, -1] @ p["logits.w"] + p["logits.b"])


def test_gpt(gen):
    tokens = torch.randint(0, 65, (5, 7), generator=gen)
    out, p = run("gpt", {"tokens": tokens}, scale=0.3)
    assert_close(out["logits"], gpt_twin(tokens, p), tol=1e-4)


def test_gan_shares_the_discriminator(gen):
    z, real = torch.randn(5, 2, generator=gen), torch.randn(5, 2, generator=gen)
    out, p = run("gan", {"z": z, "real": real})

    def lin(x, name):
        return x @ p[f"{name}.w"] + p[f"{name}.b"]

    h = F.leaky_relu(lin(z, "gen.h1"), 0.2)
    h = F.leaky_relu(lin(h, "gen.h2"), 0.2)
    fake = torch.tanh(lin(h, "gen.dense"))

    def disc(x):
        return lin(F.leaky_relu(lin(x, "disc.h1"), 0.2), "disc.dense")

    assert_close(out["sample"], fake)
    assert_close(out["fake_score"], disc(fake))
    assert_close(out["real_score"], disc(real))
    assert not any(n.startswith("disc_") for n in p), "the two discriminator calls share weights"


def test_training_graphs_add_typed_labels_and_a_scalar_loss(gen):
    from axon.frontend import training_graph

    g, spec = training_graph(read_axon(EXAMPLES / "cnn.axon"))
    assert str(g.inputs["label"].type) == "i64[batch]" and str(g.outputs["loss"].type) == "f32[]"
    p = init_params(g)
    x, y = torch.randn(5, 1, 8, 8, generator=gen), torch.randint(0, 10, (5,), generator=gen)
    out = evaluate(g, {"image": x, "label": y, "seed": torch.tensor(3)}, p)  # seed: the dropout's
    assert_close(out["loss"], F.cross_entropy(out["logits"], y))

    g, spec = training_graph(read_axon(EXAMPLES / "gpt.axon"))
    assert str(g.inputs["next_tokens"].type) == "i64[batch, seq]"
    tokens, targets = (torch.randint(0, 65, (3, 6), generator=gen) for _ in range(2))
    out = evaluate(g, {"tokens": tokens, "next_tokens": targets}, init_params(g, scale=0.3))
    assert_close(out["loss"], F.cross_entropy(out["logits"].reshape(-1, 65), targets.reshape(-1)))

    g, spec = training_graph(read_axon(EXAMPLES / "perceptron.axon"))
    x, t = torch.randn(5, 2, generator=gen), torch.rand(5, 1, generator=gen)
    out = evaluate(g, {"x": x, "label": t}, init_params(g))
    assert_close(out["loss"], F.binary_cross_entropy_with_logits(out["logit"], t))
