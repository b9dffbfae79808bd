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


def _trainer(tmp_path, augment, out, **kw):
    src = tmp_path / "net.axon"
    src.write_text(SOURCE.replace("AUGMENT", augment))
    return Trainer(src, out_dir=tmp_path / out, device="cpu", log=lambda *a: None, **kw)


def test_two_runs_and_a_resumed_run_train_on_the_same_augmented_batches(tmp_path):
    block = "augment { crop = 1  flip = true  rotate = 8  noise = 0.02 }"
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
