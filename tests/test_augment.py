"""Data augmentation in the train block: crops, flips, rotations and noise on the training batches, the
same in every run with the seed and across a resume, never at evaluation; bad settings refused."""
from __future__ import annotations

import pytest
import torch

from axon.ir import AxonError
from axon.runtime.augment import Augment
from axon.trainer import Trainer

SOURCE = """
model Net(classes = 10) {
    input image: f32[batch, 1, 8, 8]
    output logits = linear(relu(linear(flatten(image), 16)), classes)
}
train Net {
    data   = digits(val = 0.2, image = true)
    loss   = cross_entropy(logits, label)
    optim  = sgd(lr = 0.05)
    epochs = 2   batch = 256
    AUGMENT
}
"""


def test_each_augmentation_does_what_it_says(gen):
    x = torch.rand(5, 1, 8, 8, generator=gen)
    assert torch.equal(Augment()(x, 0, 0, 0), x)
    shifted = Augment(crop=2)(x, 1, 0, 0)
    assert shifted.shape == x.shape and not torch.equal(shifted, x)
    flipped = Augment(flip=True)(x, 1, 0, 0)
    assert all(torch.equal(f, e) or torch.equal(f, e.flip(-1)) for f, e in zip(flipped, x))
    assert torch.allclose(Augment(rotate=1e-9)(x, 1, 0, 0), x, atol=1e-6)
    noisy = Augment(noise=0.1)(x, 1, 0, 0)
    assert 0.05 < float((noisy - x).std()) < 0.15
    everything = Augment(crop=1, flip=True, rotate=10, noise=0.01)
    assert torch.equal(everything(x, 3, 1, 4), everything(x, 3, 1, 4))      # same seed, epoch, batch
    assert not torch.equal(everything(x, 3, 1, 4), everything(x, 3, 1, 5))  # another batch


def test_mixup_mixes_inputs_and_draws_the_same_every_time(gen):
    x, y = torch.rand(6, 1, 8, 8, generator=gen), torch.arange(6)
    mixed, mixed_in, lam = Augment(mixup=0.4).mix(x, y, 2, 0, 3)
    assert 0 < lam < 1 and sorted(mixed_in.tolist()) == list(range(6))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[mixed_in])
    again = Augment(mixup=0.4).mix(x, y, 2, 0, 3)
    assert torch.equal(again[0], mixed) and again[2] == lam
    assert Augment(mixup=0.4).mix(x, y, 2, 0, 4)[2] != lam


def test_the_mixup_loss_is_torchs_on_both_label_sets_with_one_forward(gen):
    """The step's loss: lam * CE(model(x'), y) + (1 - lam) * CE(model(x'), y[perm]), equal to torch's on the
    same weights; the model's matmuls appear once (the forward is shared by both losses)."""
    import torch.nn.functional as F

    from axon.driver import executable
    from axon.frontend import parse, training_graph
    from axon.ir import OpKind, init_params
    from axon.passes.mixup import MIX_LABELS, MIX_LAMBDA, mixup_loss

    loss_graph, _ = training_graph(parse(SOURCE.replace("AUGMENT", ""), "net.axon"))
    g = mixup_loss(loss_graph, "label")
    count = lambda graph: sum(n.op == OpKind.MATMUL for n in graph.nodes)  # noqa: E731
    assert count(g) == count(loss_graph)
    p = init_params(g, seed=1)
    x, y, y2 = torch.rand(7, 1, 8, 8, generator=gen), torch.randint(10, (7,), generator=gen), torch.arange(7)
    out = executable(g, "cpu")({"image": x, "label": y, MIX_LABELS: y2, MIX_LAMBDA: torch.tensor(0.3)}, p)
    h = torch.relu(x.reshape(7, 64) @ p["logits.w"] + p["logits.b"])  # the inner layer (named first)
    logits = h @ p["logits_1.w"] + p["logits_1.b"]
    twin = 0.3 * F.cross_entropy(logits, y) + 0.7 * F.cross_entropy(logits, y2)
    torch.testing.assert_close(out["loss"], twin, rtol=1e-5, atol=1e-6)


def _trainer(tmp_path, augment, out, **kw):
    src = tmp_path / "net.axon"
    src.write_text(SOURCE.replace("AUGMENT", augment))
    return Trainer(src, out_dir=tmp_path / out, device="cpu", log=lambda *a: None, **kw)


def test_two_runs_and_a_resumed_run_train_on_the_same_augmented_batches(tmp_path):
    block = "augment { crop = 1  flip = true  rotate = 8  noise = 0.02  mixup = 0.4 }"
    a = _trainer(tmp_path, block, "a")
    a.fit()
    b = _trainer(tmp_path, block, "b")
    b.fit()
    plain = _trainer(tmp_path, "", "plain")
    plain.fit()
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    assert any(not torch.equal(a.params[k], plain.params[k]) for k in a.params)  # it did augment
    first = _trainer(tmp_path, block, "c", epochs=1)
    first.fit()
    resumed = _trainer(tmp_path, block, "c", epochs=2, resume=True)
    resumed.fit()
    for k in a.params:
        assert torch.equal(a.params[k], resumed.params[k]), k
    with pytest.raises(AxonError, match="augment"):
        _trainer(tmp_path, "augment { crop = 2 }", "c", resume=True, epochs=3)


@pytest.mark.parametrize("block, message", [
    ("augment { crop = -1 }", "'crop' must be an int padding"),
    ("augment { flip = 1 }", "'flip' must be true or false"),
    ("augment { rotate = 400 }", "'rotate' must be degrees"),
    ("augment { noise = -0.1 }", "'noise' must be a standard deviation"),
    ("augment { blur = 1 }", "unknown augment setting 'blur'"),
    ("augment { mixup = 0 }", "'mixup' must be the Beta distribution's alpha"),
    ("augment { }", "the augment block is empty"),
])
def test_bad_settings_are_refused_where_they_are_written(tmp_path, block, message):
    with pytest.raises(AxonError, match=message):
        _trainer(tmp_path, block, "x")


def test_spatial_augmentation_of_flat_inputs_is_refused_before_any_compute(tmp_path):
    src = tmp_path / "flat.axon"
    src.write_text(SOURCE.replace("f32[batch, 1, 8, 8]", "f32[batch, 64]").replace("flatten(image)", "image")
                   .replace(", image = true", "").replace("AUGMENT", "augment { flip = true }"))
    with pytest.raises(AxonError, match=r"crop, flip and rotate augment images \[batch, channels"):
        Trainer(src, out_dir=tmp_path / "f", device="cpu", log=lambda *a: None)
