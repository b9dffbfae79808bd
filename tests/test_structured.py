"""Structured pruning: channel groups found through the graph, the graph rewritten to the smaller
shapes, numbers equal to the original model with the removed channels cut off, refusals named."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch.nn.utils import prune as tprune

from axon.cli import main
from axon.driver import executable, graph_of
from axon.ir import evaluate, init_params, verify
from axon.passes.structured import (StructureError, apply, candidates, channel_index, choose, find_group,
                                    plan, seeds, shrink, slice_params)
from axon.runtime.safetensors import load, save
from axon.trainer import Trainer, TrainError
from numerics import assert_close

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name):
    g = graph_of(EXAMPLES / f"{name}.axon")
    gen = torch.Generator().manual_seed(11)
    return g, {k: torch.randn(v.shape, generator=gen) * 0.5 for k, v in init_params(g, 0).items()}


def _group(g, granularity, label):
    (lab, node, axis), = [s for s in seeds(g, granularity) if s[0] == label]
    return find_group(g, node, axis, lab)


INPUTS = {"mlp": lambda gen: {"x": torch.randn(3, 64, generator=gen)},
          "cnn": lambda gen: {"image": torch.randn(2, 1, 8, 8, generator=gen)},
          "gpt": lambda gen: {"tokens": torch.randint(0, 65, (2, 7), generator=gen)}}


@pytest.mark.parametrize("model, granularity, label, layout", [
    ("mlp", "neuron", "h.w", {"h.w": (1, 1, 1), "h.b": (0, 1, 1), "logits.w": (0, 1, 1)}),
    ("cnn", "channel", "c1.w", {"c1.w": (0, 1, 1), "c1.b": (0, 1, 1), "c2.w": (1, 1, 1)}),
    ("cnn", "channel", "c2.w", {"c2.w": (0, 1, 1), "c2.b": (0, 1, 1), "h.w": (0, 1, 16)}),
    ("gpt", "head", "block.0.attn.wq:heads", {"block.0.attn.wq": (1, 1, 8), "block.0.attn.wk": (1, 1, 8),
                                              "block.0.attn.wv": (1, 1, 8), "block.0.attn.wo": (0, 1, 8)}),
    ("gpt", "neuron", "block.1.up.w", {"block.1.up.w": (1, 1, 1), "block.1.up.b": (0, 1, 1),
                                       "block.1.down.w": (0, 1, 1)}),
])
def test_the_smaller_graph_computes_the_model_with_those_channels_cut_off(model, granularity, label, layout,
                                                                            gen):
    """The group holds the weights that index the channels, with where each channel lies (a conv
    channel flattened into a dense layer is a block of 16 rows; a head is 8 columns); the rewritten
    graph verifies, and its outputs equal the original model's with the removed channels' consumer
    weights zeroed (what removing them means), on the evaluator and through the kernels."""
    g, params = _example(model)
    group = _group(g, granularity, label)
    assert {k: (m.axis, m.outer, m.inner) for k, m in group.params().items()} == layout
    keep = choose(group, params, 0.5)
    small = verify(shrink(g, group, keep))
    sparams = slice_params(group, params, keep)
    assert {k: tuple(v.shape) for k, v in sparams.items()} == \
        {k: tuple(n.shape) for k, n in small.params.items()}
    cut = dict(params)
    drop = [c for c in range(group.channels) if c not in keep]
    for name, m in group.params().items():
        if name not in group.producers():
            cut[name] = cut[name].index_fill(m.axis, channel_index(m, group.channels, drop,
                                                                   cut[name].shape[m.axis]), 0.0)
    inputs = INPUTS[model](gen)
    (out,) = g.outputs
    want = evaluate(g, inputs, cut)[out]
    got = evaluate(small, inputs, sparams)[out]
    assert_close(got, want, tol=1e-5, what=out)
    if model == "cnn":  # the generated kernels at the new sizes
        assert_close(executable(small, "cpu")(inputs, sparams)[out], want, tol=1e-4, what=out)
    removed = sum(params[n].numel() - sparams[n].numel() for n in group.params())
    assert removed == sum(params[n].numel() for n in group.params()) // 2


def test_a_single_producer_is_ranked_as_ln_structured_ranks_it(gen):
    g, params = _example("mlp")
    group = _group(g, "neuron", "h.w")
    for amount, n in ((0.3, 2), (0.5, 1), (0.75, float("inf"))):
        holder = torch.nn.Module()
        holder.weight = torch.nn.Parameter(params["h.w"].clone())
        tprune.ln_structured(holder, "weight", amount, n=n, dim=1)
        kept = holder.weight_mask.any(dim=0).nonzero().flatten().tolist()
        assert choose(group, params, amount, n) == kept


@pytest.mark.parametrize("model, granularity, label, why", [
    ("mlp", "neuron", "logits.w", "the model's output 'logits' has this dimension"),
    ("gpt", "neuron", "block.0.attn.wo", "reduces over the channels"),
    ("gpt", "neuron", "block.0.attn.wq", "splits each channel across axes"),
    ("gpt", "neuron", "logits.w", "the model's output 'logits'"),
])
def test_what_cannot_be_removed_is_refused_with_the_reason(model, granularity, label, why):
    g, _ = _example(model)
    with pytest.raises(StructureError, match=why):
        _group(g, granularity, label)
    (c,) = [c for c in candidates(g, granularity) if c.label == label]
    assert c.group is None and why in c.reason


def test_heads_are_one_group_per_attention_and_a_plan_applies_to_any_graph_of_the_model():
    g, params = _example("gpt")
    heads = [c for c in candidates(g, "head") if c.group is not None]
    assert [c.name for c in heads] == ["block.0.attn heads", "block.1.attn heads"]
    structure = plan(g, params, "head", 0.25)
    assert [len(k) for k in structure["keep"].values()] == [3, 3]
    json.dumps(structure)
    small, sparams = apply(g, structure, params)
    assert tuple(small.params["block.0.attn.wq"].shape) == (32, 24)
    assert tuple(small.params["block.1.attn.wo"].shape) == (24, 32)
    train = apply(graph_of(EXAMPLES / "gpt.axon", training=True, loss=True), structure)
    assert tuple(train.params["block.0.attn.wk"].shape) == (32, 24)
    with pytest.raises(StructureError, match="keeps channels"):
        apply(g, {"granularity": "head", "keep": {"block.0.attn.wq:heads": [0, 9]}})
    with pytest.raises(StructureError, match="does not have"):
        apply(g, {"granularity": "head", "keep": {"nope:heads": [0]}})
    with pytest.raises(StructureError, match="no channel that can be removed"):
        candidates(g, "channel")


TINY = """
model Tiny(hidden = 40, classes = 4) {
    input x: f32[batch, 12]
    h = dropout(relu(linear(x, hidden)), p = 0.1)
    output logits = linear(h, classes)
}
train Tiny {
    data   = blobs(classes = 4, features = 12, n = 120, val = 0.25)
    loss   = cross_entropy(logits, label)
    optim  = adam(lr = 1e-2)
    epochs = 2   batch = 30
}
"""


def test_axon_prune_structured_fine_tunes_the_smaller_model_and_run_eval_load_it(tmp_path, capsys):
    src = tmp_path / "tiny.axon"
    src.write_text(TINY)
    gen = torch.Generator().manual_seed(2)
    save({k: torch.randn(v.shape, generator=gen) * 0.3 for k, v in init_params(graph_of(src)).items()},
         tmp_path / "w.safetensors")
    out = tmp_path / "s"
    assert main(["prune", str(src), "--method", "structured", "--amount", "0.5", "--weights",
                 str(tmp_path / "w.safetensors"), "--finetune", "2", "--out", str(out),
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^h +20 of 40 ", text, re.M), text
    weights = load(out / "pruned.safetensors")
    assert tuple(weights["h.w"].shape) == (12, 20) and tuple(weights["logits.w"].shape) == (20, 4)
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["params"] == {"before": 12 * 40 + 40 + 40 * 4 + 4, "after": 12 * 20 + 20 + 20 * 4 + 4}
    assert main(["run", str(src), "--pruned", str(out), "--check"]) == 0
    assert main(["eval", str(src), "--pruned", str(out), "--device", "cpu"]) == 0
    assert f"val loss {ledger['validation']['after']['loss']:.4f}" in capsys.readouterr().out
    # the fine-tuning run's checkpoint describes the smaller model: a resume with another is refused
    other = {"granularity": "neuron", "keep": {"h.w": list(range(10))}}
    with pytest.raises(TrainError, match="structure"):
        Trainer(src, out_dir=out / "finetune", resume=True, device="cpu", structure=other,
                log=lambda *a: None)
    assert main(["prune", str(src), "--method", "structured", "--granularity", "channel", "--amount", "0.5",
                 "--out", str(tmp_path / "c"), "--device", "cpu"]) != 0
    assert "no channel that can be removed" in capsys.readouterr().err
