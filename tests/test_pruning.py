"""Magnitude pruning: masks equal to torch.nn.utils.prune's, kept in the compiled training step (the
weights and optimizer states of removed entries stay exactly zero, the rest trains as torch's pruned
module trains), a gradual schedule run from the train block, masks in checkpoints."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import prune as tprune

from axon.frontend import parse, training_graph
from axon.ir import AxonError, init_params
from axon.optim import LR_INPUT, STEP_INPUT
from axon.passes.masks import mask_input_name, prunable
from axon.runtime import Executable, checkpoint
from axon.runtime.pruning import (PruneError, cubic_sparsity, global_unstructured, l1_unstructured,
                                  ln_structured)
from axon.trainer import NEW, Trainer, TrainError, step_graph
from numerics import assert_close

SHAPES = [(13, 7), (5, 3, 3, 2), (1, 29)]


class Holder(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.weight = torch.nn.Parameter(w.clone())


def _weights(gen, shape, ties=False):
    w = torch.randn(shape, generator=gen)
    return (w * 4).round() / 4 if ties else w  # few distinct magnitudes: many ties


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("amount", [0.0, 0.3, 0.55, 0.9])
@pytest.mark.parametrize("ties", [False, True])
def test_l1_unstructured_is_torchs(shape, amount, ties, gen):
    w = _weights(gen, shape, ties)
    m = Holder(w)
    tprune.l1_unstructured(m, "weight", amount)
    assert torch.equal(l1_unstructured(w, amount), m.weight_mask)


@pytest.mark.parametrize("amount", [0.25, 0.8])
@pytest.mark.parametrize("ties", [False, True])
def test_global_unstructured_is_torchs(amount, ties, gen):
    ws = {f"w{i}": _weights(gen, s, ties) * (i + 1) for i, s in enumerate(SHAPES)}
    mods = {k: Holder(w) for k, w in ws.items()}
    tprune.global_unstructured([(m, "weight") for m in mods.values()], tprune.L1Unstructured, amount=amount)
    got = global_unstructured(ws, amount)
    for k, m in mods.items():
        assert torch.equal(got[k], m.weight_mask), k
    removed = sum(int((g == 0).sum()) for g in got.values())
    assert removed == round(amount * sum(w.numel() for w in ws.values()))


@pytest.mark.parametrize("shape, dim", [((13, 7), 0), ((13, 7), 1), ((6, 3, 3, 2), 0), ((6, 3, 3, 2), -1)])
@pytest.mark.parametrize("n", [1, 2, float("inf")])
def test_ln_structured_is_torchs(shape, dim, n, gen):
    w = _weights(gen, shape)
    m = Holder(w)
    tprune.ln_structured(m, "weight", 0.5, n=n, dim=dim)
    assert torch.equal(ln_structured(w, 0.5, n, dim), m.weight_mask)


def test_amounts_and_axes_out_of_range_are_refused():
    w = torch.ones(4, 5)
    for bad in (1.0, -0.1, float("nan"), True):
        with pytest.raises(PruneError, match="fraction in"):
            l1_unstructured(w, bad)
    with pytest.raises(PruneError, match="axis 2 is out of range"):
        ln_structured(w, 0.5, 2, 2)
    with pytest.raises(PruneError, match="rank 2"):
        ln_structured(torch.ones(5), 0.5)


def test_a_later_mask_keeps_what_an_earlier_one_removed(gen):
    w = torch.randn(11, 9, generator=gen)
    first = l1_unstructured(w, 0.3)
    grown = w + 5 * (first == 0)  # removed entries that would now rank high stay removed
    second = l1_unstructured(grown, 0.6, previous=first)
    assert bool((second <= first).all()) and int((second == 0).sum()) == round(0.6 * 99)


def test_the_cubic_schedule_is_zhu_and_gupta():
    got = [cubic_sparsity(0.9, e, 1, 5) for e in range(7)]
    want = [0.0] + [0.9 * (1 - (1 - (e - 1) / 4) ** 3) for e in range(1, 5)] + [0.9, 0.9]
    assert got == pytest.approx(want) and got[1] == 0.0


from test_train import MLP  # noqa: E402  (the same MLP as the unpruned steps are checked on)


@pytest.mark.parametrize("optim, make_opt", [
    ("sgd(lr = 0.1, momentum = 0.9, weight_decay = 0.01)",
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("adam(lr = 0.01, weight_decay = 0.001, clip = 0.5)", lambda p: torch.optim.Adam(p, lr=0.01,
                                                                                      weight_decay=0.001)),
    ("adamw(lr = 0.01, weight_decay = 0.1)", lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
], ids=["sgd", "adam-clip", "adamw"])
def test_masked_steps_train_as_torchs_pruned_module(optim, make_opt, gen):
    """Three compiled steps with masks equal torch training w_orig under prune's w = w_orig * mask
    (clipping included); removed entries are zero in the weights and in every optimizer state."""
    loss_graph, spec = training_graph(parse(MLP.replace("OPTIM", optim)))
    pruned = ("h.w", "logits.w")
    step = step_graph(loss_graph, {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)}, masked=pruned)
    assert {mask_input_name(n) for n in pruned} <= set(step.inputs)
    params = init_params(step, 0)
    masks = {n: l1_unstructured(params[n], 0.6) for n in pruned}
    params.update({n: params[n] * masks[n] for n in pruned})
    start = {k: v.clone() for k, v in params.items()}
    states = {n: torch.zeros(tuple(i.shape), dtype=i.dtype.torch) for n, i in step.inputs.items()
              if n.startswith("state.")}
    feeds = [{"x": torch.randn(7, 9, generator=gen), "label": torch.randint(0, 5, (7,), generator=gen)}
             for _ in range(3)]
    exe = Executable(step)
    for t, feed in enumerate(feeds, 1):
        scalars = {STEP_INPUT: torch.tensor(float(t), dtype=torch.float64),
                   LR_INPUT: torch.tensor(spec.optimizer.get("lr"), dtype=torch.float64)}
        out = exe({**feed, **scalars, **states, **{mask_input_name(n): m for n, m in masks.items()}}, params,
                  poison=True)
        params = {k: out[NEW + k] for k in params}
        states = {k: out[NEW + k] for k in states}

    p = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    opt = make_opt(list(p.values()))
    for feed in feeds:
        opt.zero_grad()
        w = {k: p[k] * masks[k] if k in masks else p[k] for k in p}  # prune's reparametrization
        h = torch.relu(feed["x"] @ w["h.w"] + w["h.b"])
        F.cross_entropy(h @ w["logits.w"] + w["logits.b"], feed["label"]).backward()
        if "clip" in optim:
            torch.nn.utils.clip_grad_norm_(list(p.values()), 0.5)
        opt.step()
    for k in p:
        want = p[k].detach() * masks[k] if k in masks else p[k].detach()
        assert_close(params[k], want, tol=1e-5, what=k)
    for n in pruned:
        removed = masks[n] == 0
        assert bool((params[n][removed] == 0).all())
        for s, v in states.items():
            if s.endswith("." + n):
                assert bool((v[removed] == 0).all()), s


TINY = """
model Tiny(hidden = 24, classes = 4) {
    input x: f32[batch, 12]
    h = relu(linear(x, hidden))
    output logits = linear(h, classes)
}
train Tiny {
    data   = blobs(classes = 4, features = 12, n = 120, val = 0.25)
    loss   = cross_entropy(logits, label)
    optim  = adam(lr = 1e-2)
    epochs = 4   batch = 30
    PRUNE
}
"""


def _trainer(tmp_path, prune, out="run", **kw):
    src = tmp_path / "tiny.axon"
    src.write_text(TINY.replace("PRUNE", prune))
    return Trainer(src, out_dir=tmp_path / out, device="cpu", log=lambda *a: None, **kw)


def test_a_gradual_schedule_from_the_train_block(tmp_path):
    """prune { amount, schedule = "cubic", end }: masks grow at the start of each epoch of the ramp
    (each removing what the one before did), the last at exactly round(amount * numel) per layer;
    checkpoints hold the masks, and the weights they remove are zero."""
    tr = _trainer(tmp_path, 'prune { amount = 0.75  schedule = "cubic"  start = 1  end = 3 }')
    seen = []
    real = tr.pruner.update

    def spy(epoch, params, states, masks):
        got = real(epoch, params, states, masks)
        seen.append((epoch, got, {k: m.clone() for k, m in masks.items()}))
        return got

    tr.pruner.update = spy
    tr.fit()
    targets = [(e, a) for e, a, _ in seen]
    assert targets == [(0, None), (1, 0.0), (2, pytest.approx(0.75 * (1 - 0.5 ** 3))), (3, 0.75)]
    for (_, _, before), (_, _, after) in zip(seen, seen[1:]):
        assert all(bool((after[k] <= before[k]).all()) for k in after)
    final = seen[-1][2]
    assert {k: int((m == 0).sum()) for k, m in final.items()} == {"h.w": round(0.75 * 288),
                                                                  "logits.w": round(0.75 * 96)}
    ck = checkpoint.read(tmp_path / "run" / "checkpoint.safetensors", "Tiny", tr.params, tr.states, "cpu",
                         tr.masks)
    for k, m in ck.masks.items():
        assert torch.equal(m, final[k]) and bool((ck.params[k][m == 0] == 0).all())
    assert ck.run["prune"]["end"] == 3 and ck.run["prune"]["layers"] == ["h.w", "logits.w"]


def test_global_scope_and_skip(tmp_path):
    tr = _trainer(tmp_path, 'prune { amount = 0.5  scope = "global"  skip = ["logits"] }')
    assert tr.pruner.layers == ("h.w",)
    tr.fit()
    assert int((tr.masks["h.w"] == 0).sum()) == 144 and "logits.w" not in tr.masks


def test_resume_keeps_the_masks_and_refuses_other_pruning(tmp_path):
    tr = _trainer(tmp_path, "prune { amount = 0.5 }", epochs=2)
    tr.fit()
    again = _trainer(tmp_path, "prune { amount = 0.5 }", resume=True, epochs=3)
    again.fit()
    assert torch.equal(again.masks["h.w"], tr.masks["h.w"])
    assert bool((again.params["h.w"][tr.masks["h.w"] == 0] == 0).all())
    with pytest.raises(TrainError, match="prune"):
        _trainer(tmp_path, "prune { amount = 0.6 }", resume=True, epochs=4)


def test_a_mask_that_is_not_zeros_and_ones_is_refused(tmp_path):
    tr = _trainer(tmp_path, "prune { amount = 0.5 }")
    bad = {k: torch.full_like(m, 0.5) for k, m in tr.masks.items()}
    path = tmp_path / "bad.safetensors"
    checkpoint.write(path, tr.params, tr.states, tr.progress, tr.run, "Tiny", 0, None, bad)
    with pytest.raises(AxonError, match="mask 'mask/h.w' holds values other than 0 and 1"):
        checkpoint.read(path, "Tiny", tr.params, tr.states, "cpu", tr.masks)


def test_pruning_past_the_last_epoch_or_with_nothing_to_prune_is_refused(tmp_path):
    with pytest.raises(TrainError, match="starts at epoch 4, but the run has 4 epochs"):
        _trainer(tmp_path, "prune { amount = 0.5  start = 4 }")
    with pytest.raises(TrainError, match="no matmul or conv2d weight is left"):
        _trainer(tmp_path, 'prune { amount = 0.5  skip = ["*"] }', out="r2")


def test_what_can_be_pruned_and_why_not():
    from pathlib import Path

    gpt = training_graph(parse((Path(__file__).parents[1] / "examples" / "gpt.axon").read_text()))[0]
    why = prunable(gpt)
    assert why["tok.w"].startswith("not a matmul or conv2d weight") and why["logits.w"] is None
    assert json.dumps(why)  # plain data, for the ledger


def test_block_granularity_from_the_train_block_keeps_whole_blocks_zero(tmp_path):
    tr = _trainer(tmp_path, 'prune { amount = 0.5  granularity = "block:16" }')
    tr.fit()
    m = tr.masks["h.w"]  # [12, 24]: one block row, two block columns, one removed
    padded = torch.zeros(16, 32)
    padded[:12, :24] = m
    per = padded.view(1, 16, 2, 16).amax(dim=(1, 3))
    assert per.tolist() in ([[1.0, 0.0]], [[0.0, 1.0]])
    assert bool((tr.params["h.w"][m == 0] == 0).all())
    # the step runs block-sparse kernels: both layers forward, and logits' gradient for h (dx)
    ops = [n.op.value for n in tr.step_exe.graph.nodes]
    assert ops.count("bsmatmul") == 3 and tr.params["h.w.blocks"][:, 0].tolist() in ([1, 0], [0, 1])
    assert int(tr.params["h.w.tiles"]) > 0 and int(tr.params["logits.w.tiles"]) > 0
    with pytest.raises(AxonError, match="granularity"):
        _trainer(tmp_path, 'prune { amount = 0.5  granularity = "block:20" }', out="r3")
