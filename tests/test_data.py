"""The data sets of `axon.data`: shapes, dtypes and ranges per maker, determinism by seed, splits,
batch order and resumption, option checking, text tokens, and the GAN's mode coverage."""
import doctest
import io
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

import axon.data
from axon.data import (DATASETS, UNKNOWN, TextFileError, batches, check, decode, make, mode_coverage,
                       num_batches, ring, unigram_entropy)
from axon.frontend import ArityError, AxonNameError, AxonTypeError, AxonValueError, read_axon, train_spec
from axon.ir import Span

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SMALL_TEXT = {"ctx": 16, "limit": 20_000}  # a slice of the shipped corpus, to keep the tests fast


def _rows(t: torch.Tensor) -> Counter:
    return Counter(tuple(r) for r in t.reshape(len(t), -1).tolist())


# --- what each maker makes -------------------------------------------------------------------------------
@pytest.mark.parametrize("image, shape", [(False, (64,)), (True, (1, 8, 8))])
def test_digits_are_scaled_pixels_with_ten_classes(image, shape):
    ds = make("digits", {"val": 0.2, "image": image}, seed=0)
    x, y = ds.train["inputs"], ds.train["labels"]
    assert x.dtype == torch.float32 and x.shape[1:] == shape
    assert y.dtype == torch.int64 and y.shape == (len(x),)
    assert 0 <= x.min() and x.max() == 1 and set(y.tolist()) == set(range(10))
    assert len(x) + len(ds.val["inputs"]) == 1797 and len(ds.val["inputs"]) == 359
    assert ds.info["classes"] == 10


def test_blobs_labels_follow_the_loss_they_feed():
    two = make("blobs", {"classes": 2, "val": 0.2}, seed=0)  # bce_with_logits: f32 {0, 1} [N, 1]
    x, t = two.train["inputs"], two.train["labels"]
    assert x.dtype == torch.float32 and x.shape == (800, 2)
    assert t.dtype == torch.float32 and t.shape == (800, 1) and set(t.flatten().tolist()) == {0.0, 1.0}
    ids = make("blobs", {"classes": 2, "binary": False}, seed=0).train["labels"]
    assert ids.dtype == torch.int64 and ids.shape == (800,)
    many = make("blobs", {"classes": 5, "features": 7, "n": 500}, seed=0)
    assert many.train["inputs"].shape == (400, 7) and set(many.train["labels"].tolist()) == set(range(5))
    line = make("blobs", {"features": 1}, seed=0).train["inputs"]
    assert line.shape == (800, 1)


def test_blobs_are_separable_by_their_centres():
    ds = make("blobs", {"classes": 4, "features": 3}, seed=1)
    x, y = ds.train["inputs"], ds.train["labels"]
    centres = torch.stack([x[y == c].mean(0) for c in range(4)])
    nearest = torch.cdist(ds.val["inputs"], centres).argmin(1)
    assert (nearest == ds.val["labels"]).float().mean() > 0.9


def test_sequences_carry_the_class_only_at_the_start():
    ds = make("sequences", {"steps": 12, "features": 4, "classes": 3}, seed=0)
    x, y = ds.train["inputs"], ds.train["labels"]
    assert x.dtype == torch.float32 and x.shape[1:] == (12, 4) and len(x) + len(ds.val["inputs"]) == 2000
    assert y.dtype == torch.int64 and set(y.tolist()) == {0, 1, 2}

    def centroid_accuracy(steps: slice) -> float:  # nearest class mean, fitted on train, scored on val
        centres = torch.stack([x[y == c, steps].mean(0) for c in range(3)]).flatten(1)
        d = torch.cdist(ds.val["inputs"][:, steps].flatten(1), centres)
        return float((d.argmin(1) == ds.val["labels"]).float().mean())

    assert centroid_accuracy(slice(0, 3)) > 0.99      # the cue decides the class ...
    assert centroid_accuracy(slice(3, 12)) < 0.5      # ... and the rest is noise: a model must remember


def test_text_windows_are_next_character_pairs():
    ds = make("text", {**SMALL_TEXT, "val": 0.1}, seed=0)
    x, y = ds.train["inputs"], ds.train["labels"]
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.shape[1] == 16
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert 0 <= x.min() and max(x.max(), y.max()) < ds.info["vocab"] == len(ds.info["itos"])
    assert len(x) + len(ds.val["inputs"]) == (20_000 - 1) // 16


def test_text_round_trips_through_itos(tmp_path):
    source = "the quick brown fox jumps over the lazy dog.\n" * 20
    (tmp_path / "fox.txt").write_text(source, encoding="utf-8")
    ds = make("text", {"file": str(tmp_path / "fox.txt"), "ctx": 8, "val": 0.0}, seed=0)
    x, y = ds.train["inputs"], ds.train["labels"]  # windows every ctx, ascending: they tile the text
    assert decode(x, ds.info["itos"]) + decode(y[-1, -1:], ds.info["itos"]) == source[:len(x) * 8 + 1]
    assert all(ds.info["itos"][i] == c for c, i in ds.info["stoi"].items())


def test_a_text_limit_reads_only_what_it_keeps(tmp_path, monkeypatch):
    """A corpus far larger than the limit: only about the limit is read and decoded, so a tail that is
    not even UTF-8 does not matter."""
    head = "the quick brown fox jumps over the lazy dog.\n" * 100  # 4,500 characters
    path = tmp_path / "big.txt"
    path.write_bytes(head.encode() + b"\xff" * 8_000_000)
    read = []

    class Counting(io.FileIO):
        def readinto(self, b):
            n = super().readinto(b)
            read.append(n or 0)
            return n

    def spy(file, mode="r", encoding=None, errors=None, newline=None):
        assert mode == "r"
        return io.TextIOWrapper(io.BufferedReader(Counting(file)), encoding, errors, newline)

    monkeypatch.setattr(axon.data, "open", spy, raising=False)
    monkeypatch.setattr(axon.data, "READ_CHUNK", 1000)
    ds = make("text", {"file": str(path), "ctx": 8, "limit": 4000}, seed=0)
    assert ds.info["characters"] == 4000 and sum(read) < 100_000
    assert set(ds.info["itos"]) == set(head)
    with pytest.raises(TextFileError, match="big.txt' is not UTF-8 text: line 101 holds the byte 0xff"):
        make("text", {"file": str(path), "ctx": 8}, seed=0)  # no limit: the whole file is the corpus


def test_a_text_file_that_cannot_be_used_is_named_and_placed(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("plain words, then caf\xe9\n".encode("latin-1"))
    (tmp_path / "folder.txt").mkdir()
    call, option = Span("m.axon", 3, 12), Span("m.axon", 3, 17)
    for name, words in [("empty.txt", "is empty"),
                        ("latin1.txt", "is not UTF-8 text: line 1 holds the byte 0xe9"),
                        ("folder.txt", "is a directory, not a text file"),
                        ("missing.txt", "does not exist")]:
        file = str(tmp_path / name)
        with pytest.raises(TextFileError) as e:
            make("text", {"file": file, "ctx": 8}, seed=0)
        assert e.value.message == f"the text file '{file}' {words}" and e.value.span is None
        with pytest.raises(TextFileError) as e:  # with the train block's places: at `file = ...`
            make("text", {"file": file, "ctx": 8}, seed=0, span=call, option_spans={"file": option})
        assert e.value.span == option
    (tmp_path / "short.txt").write_text("abc")
    with pytest.raises(AxonValueError) as e:  # a text too short for two windows: at the call
        make("text", {"file": str(tmp_path / "short.txt"), "ctx": 8}, seed=0, span=call,
             option_spans={"file": option})
    assert "short.txt': 3 characters make 0 windows" in e.value.message and e.value.span == call


def test_a_capped_vocab_keeps_the_most_frequent_characters():
    ds = make("text", {**SMALL_TEXT, "vocab": 10}, seed=0)
    itos = ds.info["itos"]
    assert len(itos) == ds.info["vocab"] == 10 and itos[0] == UNKNOWN and " " in itos and "e" in itos
    assert ds.train["inputs"].max() < 10 and (ds.train["inputs"] == 0).any()  # rare characters -> unknown


def test_unigram_entropy_is_the_context_free_baseline():
    assert unigram_entropy(torch.tensor([0, 1, 2, 3] * 5), vocab=4) == pytest.approx(math.log(4))
    assert unigram_entropy(torch.zeros(10, dtype=torch.int64), vocab=4) == 0
    ds = make("text", SMALL_TEXT, seed=0)
    assert 2.5 < ds.info["unigram_entropy"] < math.log(ds.info["vocab"])  # English: about 3.2 nats


def test_gaussians_lie_on_the_ring():
    ds = make("gaussians", {"n": 800, "val": 0.25}, seed=0)
    x, y = ds.train["inputs"], ds.train["labels"]
    assert x.dtype == torch.float32 and x.shape == (600, 2) and set(y.tolist()) == set(range(8))
    assert (x.norm(dim=1) - 0.8).abs().max() < 0.05 * 5 and x.abs().max() < 1  # inside tanh's range
    centres = torch.from_numpy(ring(8, 0.8)).float()
    assert torch.equal(torch.cdist(x, centres).argmin(1), y)


# --- determinism and splits ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, options", [("digits", {}), ("blobs", {"classes": 3}), ("sequences", {}),
                                           ("text", SMALL_TEXT), ("gaussians", {"val": 0.1})])
def test_a_seed_gives_the_same_data_and_split_and_the_split_partitions_it(name, options):
    a, b, c = make(name, options, seed=3), make(name, options, seed=3), make(name, options, seed=4)
    for split in ("train", "val"):
        for role in ("inputs", "labels"):
            assert torch.equal(getattr(a, split)[role], getattr(b, split)[role])
    assert not torch.equal(a.val["inputs"], c.val["inputs"])
    whole = make(name, {**options, "val": 0}, seed=3).train["inputs"]
    assert _rows(a.train["inputs"]) + _rows(a.val["inputs"]) == _rows(whole)  # a partition of the whole
    if name != "text":  # (text repeats itself: two windows may read the same)
        assert not _rows(a.train["inputs"]) & _rows(a.val["inputs"])


def test_the_split_is_stratified():
    ds = make("digits", {"val": 0.2}, seed=0)
    train, val = (torch.bincount(s["labels"], minlength=10) for s in (ds.train, ds.val))
    total = train + val
    assert val.tolist() == [round(0.2 * int(n)) for n in total]


# --- batches -----------------------------------------------------------------------------------------------
def _epoch(split, seed, epoch, start=0, size=32):
    return [(i, b["labels"].tolist()) for i, b in batches(split, size, seed=seed, epoch=epoch, start=start)]


def test_batches_are_full_distinct_and_reproducible():
    split = make("blobs", {"classes": 3, "n": 1000}, seed=0).train   # 799 examples: 24 batches of 32
    full = _epoch(split, seed=5, epoch=2)
    assert [i for i, _ in full] == list(range(24)) == list(range(num_batches(split, 32)))
    assert all(len(b) == 32 for _, b in full)
    assert full == _epoch(split, seed=5, epoch=2)
    assert full != _epoch(split, seed=5, epoch=3) and full != _epoch(split, seed=6, epoch=2)
    seen = [tuple(r) for _, b in batches(split, 32, seed=5, epoch=2) for r in b["inputs"].tolist()]
    assert len(set(seen)) == len(seen) == 24 * 32  # a permutation: no example twice in an epoch


def test_a_resumed_epoch_is_the_tail_of_the_full_one():
    split = make("sequences", {"n": 300}, seed=0).train
    full = _epoch(split, seed=1, epoch=4, size=16)
    for k in (0, 3, len(full) - 1, len(full)):
        assert _epoch(split, seed=1, epoch=4, start=k, size=16) == full[k:]


def test_a_batch_larger_than_the_split_is_an_error():
    split = make("blobs", {"n": 50}, seed=0).train
    with pytest.raises(AxonValueError, match="batch size 64 does not fit a split of 40 examples"):
        batches(split, 64, seed=0, epoch=0)


# --- checking a train block's data call ------------------------------------------------------------------
def test_check_fills_in_the_defaults():
    assert check("digits", {}) == {"val": 0.2, "image": False}
    assert check("blobs", {"val": 0})["val"] == 0.0 and isinstance(check("blobs", {"val": 0})["val"], float)
    for name, maker in DATASETS.items():
        assert check(name, {}) == maker.defaults()


@pytest.mark.parametrize("name, options, error, words", [
    ("digit", {}, AxonNameError, "unknown data set 'digit'"),
    ("digits", {"vall": 0.2}, ArityError, "data set 'digits' has no option 'vall'"),
    ("digits", {"val": 1.0}, AxonValueError, "'val' of digits must be a number in [0, 1), got 1.0"),
    ("digits", {"val": "0.2"}, AxonTypeError, "must be a number in [0, 1)"),
    ("digits", {"image": 1}, AxonTypeError, "'image' of digits must be true or false, got 1"),
    ("blobs", {"classes": 2.5}, AxonTypeError, "'classes' of blobs must be an int >= 2, got 2.5"),
    ("blobs", {"classes": 1}, AxonValueError, "an int >= 2"),
    ("blobs", {"classes": 3, "binary": True}, AxonValueError, "binary labels need classes = 2"),
    ("sequences", {"cue": 12}, AxonValueError, "the cue must be shorter than the sequence"),
    ("text", {"corpus": "shakespeare"}, AxonValueError, 'must be one of "python-docs", got "shakespeare"'),
    ("text", {"corpus": "python-docs", "file": "a.txt"}, AxonValueError, "a corpus or a file, not both"),
    ("gaussians", {"std": float("inf")}, AxonValueError, "'std' of gaussians must be a number >= 0"),
])
def test_check_reports_bad_names_and_options(name, options, error, words):
    with pytest.raises(error) as e:
        check(name, options)
    assert words in e.value.message


def test_check_errors_name_what_there_is_and_point_at_the_option():
    with pytest.raises(AxonNameError) as e:
        check("digit", {})
    assert "did you mean 'digits'?" in e.value.hint and "known data sets: digits, blobs" in e.value.hint
    call, option = Span("m.axon", 3, 14), Span("m.axon", 3, 21)
    with pytest.raises(ArityError) as e:
        check("digits", {"vall": 0.2}, span=call, option_spans={"vall": option})
    assert e.value.span == option and "options of digits: val, image" in e.value.hint
    with pytest.raises(AxonNameError) as e:
        check("nope", {}, span=call)
    assert e.value.span == call


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.axon")), ids=lambda p: p.stem)
def test_every_example_names_a_data_set_it_can_have(path):
    spec = train_spec(read_axon(path))
    if spec is not None:
        check(spec.data.name, dict(spec.data.kwargs))


def test_the_gpt_example_text_fits_its_vocabulary():
    spec = train_spec(read_axon(EXAMPLES / "gpt.axon"))
    assert check(spec.data.name, dict(spec.data.kwargs))["vocab"] == 65  # GPT(vocab = 65)


# --- the GAN's measure -------------------------------------------------------------------------------------
def test_mode_coverage_of_perfect_collapsed_and_empty_samples():
    real = make("gaussians", {"n": 4000}, seed=0).train["inputs"]
    perfect = mode_coverage(real)
    assert perfect.covered == 8 and perfect.quality > 0.98 and min(perfect.shares) > 0.1
    one = real[make("gaussians", {"n": 4000}, seed=0).train["labels"] == 3]
    collapsed = mode_coverage(one)
    assert collapsed.covered == 1 and collapsed.shares[3] > 0.98
    assert mode_coverage(torch.zeros(100, 2)).covered == 0 and mode_coverage(torch.zeros(100, 2)).quality == 0
    mostly_one = torch.cat([one[:990], real[:10]])  # 10 stray samples are under a quarter of 1/8
    assert mode_coverage(mostly_one).covered == 1
    assert mode_coverage(torch.zeros(0, 2)).covered == 0


def test_the_module_examples_run():
    assert doctest.testmod(axon.data).failed == 0
