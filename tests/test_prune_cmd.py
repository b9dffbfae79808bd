"""`axon prune`: magnitude pruning of a model's weights (one shot, or while fine-tuning), written as an
ordinary model plus masks, with a ledger of what each layer keeps and what that costs."""
from __future__ import annotations

import json

import pytest
import torch

from axon.cli import main
from axon.driver import graph_of
from axon.ir import init_params
from axon.runtime.pruning import l1_unstructured
from axon.runtime.safetensors import load, save

TINY = """
model Tiny(hidden = 40, classes = 4) {
    input x: f32[batch, 12]
    h = relu(linear(x, hidden))
    output logits = linear(h, classes)
}
train Tiny {
    data   = blobs(classes = 4, features = 12, n = 120, val = 0.25)
    loss   = cross_entropy(logits, label)
    optim  = adam(lr = 1e-2)
    epochs = 3   batch = 30   early_stop(patience = 1)
}
"""


@pytest.fixture
def model(tmp_path):
    src = tmp_path / "tiny.axon"
    src.write_text(TINY)
    gen = torch.Generator().manual_seed(3)
    weights = {k: torch.randn(v.shape, generator=gen) * 0.3 for k, v in init_params(graph_of(src)).items()}
    save(weights, tmp_path / "w.safetensors")
    return src, weights


def test_one_shot_masks_are_l1_unstructured_and_the_result_is_an_ordinary_model(model, tmp_path, capsys):
    src, weights = model
    out = tmp_path / "p"
    assert main(["prune", str(src), "--amount", "0.7", "--weights", str(tmp_path / "w.safetensors"),
                 "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    pruned, masks = load(out / "pruned.safetensors"), load(out / "masks.safetensors")
    assert set(masks) == {"h.w", "logits.w"}
    for name, m in masks.items():
        assert torch.equal(m, l1_unstructured(weights[name], 0.7))
        assert torch.equal(pruned[name], weights[name] * m)
    assert torch.equal(pruned["h.b"], weights["h.b"])
    ledger = json.loads((out / "ledger.json").read_text())
    (hw,) = [r for r in ledger["layers"] if r["layer"] == "h.w"]
    assert hw["nonzero"] == 480 - round(0.7 * 480) and hw["macs"] == 30 * 12 * 40
    assert hw["macs_nonzero"] == round(hw["macs"] * hw["nonzero"] / 480)
    n = ledger["validation"]["examples"]
    assert n > 20 and f"validation ({n} examples)" in text
    assert main(["run", str(src), "--weights", str(out / "pruned.safetensors"), "--check"]) == 0


def test_global_scope_ranks_all_weights_together(model, tmp_path):
    src, weights = model
    out = tmp_path / "g"
    assert main(["prune", str(src), "--amount", "0.5", "--scope", "global", "--weights",
                 str(tmp_path / "w.safetensors"), "--out", str(out), "--device", "cpu"]) == 0
    masks = load(out / "masks.safetensors")
    assert sum(int((m == 0).sum()) for m in masks.values()) == round(0.5 * (480 + 160))


def test_fine_tuning_keeps_the_removed_weights_zero(model, tmp_path, capsys):
    src, _ = model
    out = tmp_path / "f"
    assert main(["prune", str(src), "--amount", "0.8", "--weights", str(tmp_path / "w.safetensors"),
                 "--finetune", "3", "--schedule", "cubic", "--out", str(out), "--device", "cpu"]) == 0
    log = capsys.readouterr().out
    assert "early stop" not in log  # not while the masks grow
    pruned, masks = load(out / "pruned.safetensors"), load(out / "masks.safetensors")
    for name, m in masks.items():
        assert int((m == 0).sum()) == round(0.8 * m.numel())
        assert bool((pruned[name][m == 0] == 0).all())
    assert (out / "finetune" / "checkpoint.safetensors").is_file()


@pytest.mark.parametrize("args, message", [
    (["--amount", "1"], "fraction in [0, 1)"),
    (["--amount", "0.5", "--schedule", "cubic"], "needs --finetune"),
    (["--amount", "0.5", "--finetune", "-1"], "--finetune must be 0 or more"),
    (["--amount", "0.5", "--skip", "*"], "no matmul or conv2d weight is left"),
])
def test_bad_requests_are_refused_before_anything_is_written(model, tmp_path, capsys, args, message):
    src, _ = model
    assert main(["prune", str(src), *args, "--out", str(tmp_path / "x"), "--device", "cpu"]) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x" / "pruned.safetensors").exists()


WIDE = TINY.replace("hidden = 40", "hidden = 64").replace("features = 12", "features = 32").replace(
    "f32[batch, 12]", "f32[batch, 32]")


@pytest.mark.parametrize("finetune", ["0", "2"])
def test_block_pruning_runs_block_sparse_kernels_that_execute_a_quarter_of_the_blocks(tmp_path, capsys,
                                                                                        finetune):
    """--method block at 0.75: three in four 16x16 blocks of each weight removed; the ledger's block
    products, counted by the kernels over the validation set, are a quarter of the dense count; `axon run
    --pruned` compiles the same block-sparse matmuls."""
    src = tmp_path / "wide.axon"
    src.write_text(WIDE)
    assert main(["prune", str(src), "--method", "block", "--granularity", "block:16", "--amount", "0.75",
                 "--finetune", finetune, "--out", str(tmp_path / "b"), "--device", "cpu"]) == 0
    ledger = json.loads((tmp_path / "b" / "ledger.json").read_text())
    rows = {r["layer"]: r for r in ledger["layers"]}
    assert (rows["h.w"]["blocks_kept"], rows["h.w"]["blocks"]) == (2, 8)
    assert (rows["logits.w"]["blocks_kept"], rows["logits.w"]["blocks"]) == (1, 4)
    for r in rows.values():
        assert r["tile_products"] * 4 == r["dense_tile_products"] > 0
    masks = load(tmp_path / "b" / "masks.safetensors")
    blocks = masks["h.w"].view(2, 16, 4, 16).amax(dim=(1, 3))
    assert int(blocks.sum()) == 2
    assert bool((masks["h.w"].view(2, 16, 4, 16) == blocks[:, None, :, None]).all())  # whole blocks
    capsys.readouterr()
    assert main(["run", str(src), "--pruned", str(tmp_path / "b"), "--check"]) == 0

    from axon.prune_cmd import pruned_graph

    g = pruned_graph(tmp_path / "b", graph_of(src))
    assert [n.op.value for n in g.nodes if n.op.value.endswith("matmul")] == ["bsmatmul", "bsmatmul"]


def test_two_of_four(model, tmp_path):
    src, weights = model
    assert main(["prune", str(src), "--granularity", "2:4", "--amount", "0.5", "--weights",
                 str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "nm"), "--device", "cpu"]) == 0
    m = load(tmp_path / "nm" / "masks.safetensors")["h.w"]  # [12, 40]: groups of 4 along K
    assert bool((m.view(3, 4, 40).sum(dim=1) == 2).all())


@pytest.mark.parametrize("args, message", [
    (["--granularity", "2:4", "--amount", "0.9"], "removes 0.5 of each weight"),
    (["--method", "block", "--granularity", "element", "--amount", "0.5"], "goes with --method magnitude"),
    (["--granularity", "block:48", "--amount", "0.5"], "unknown pruning granularity"),
    (["--method", "structured", "--granularity", "block:16", "--amount", "0.5"], "removes neuron"),
])
def test_granularities_that_do_not_fit_are_refused(model, tmp_path, capsys, args, message):
    src, _ = model
    assert main(["prune", str(src), *args, "--out", str(tmp_path / "x"), "--device", "cpu"]) != 0
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("method", ["magnitude", "structured"])
def test_pruning_then_quantizing_reports_both_in_one_ledger(model, tmp_path, capsys, method):
    """`axon quantize --pruned DIR`: the pruned model (its structure, its zeros) quantized; the ledger
    lists each layer's zeros beside its codes and the unpruned model's validation; the quantized folder
    runs as the pruned model quantized."""
    src, _ = model
    prune_dir, q_dir = tmp_path / "p", tmp_path / "q"
    assert main(["prune", str(src), "--method", method, "--amount", "0.5", "--weights",
                 str(tmp_path / "w.safetensors"), "--out", str(prune_dir), "--device", "cpu"]) == 0
    assert main(["quantize", str(src), "--mode", "int8-weight", "--min-size", "16", "--pruned",
                 str(prune_dir), "--out", str(q_dir), "--device", "cpu", "--target", "none"]) == 0
    text = capsys.readouterr().out
    ledger = json.loads((q_dir / "ledger.json").read_text())
    assert ledger["pruned"]["settings"]["method"] == method and "unpruned model" in text
    (hw,) = [r for r in ledger["layers"] if r["layer"] == "h.w"]
    assert hw["kind"] == "int8"
    assert (hw["shape"], hw["zeros"]) == (([12, 20], 0.0) if method == "structured" else ([12, 40], 0.5))
    assert main(["run", str(src), "--quantized", str(q_dir), "--check"]) == 0
    assert main(["eval", str(src), "--quantized", str(q_dir), "--device", "cpu"]) == 0
    assert f"val loss {ledger['validation']['after']['loss']:.4f}" in capsys.readouterr().out
