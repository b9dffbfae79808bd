"""The data sets a `train` block names (`data = digits(val = 0.2)`), as tensors, deterministic by seed.

    >>> ds = make("blobs", {"classes": 4, "val": 0.2}, seed=0)
    >>> ds.train["inputs"].shape, ds.train["labels"].dtype
    (torch.Size([800, 2]), torch.int64)
    >>> [i for i, batch in batches(ds.train, 64, seed=0, epoch=0)][-1]   # 800 // 64 = 12 full batches
    11

Nothing is downloaded, ever: `digits` are the 8x8 scans that ship inside scikit-learn, `text` reads a
corpus that ships with Python (`pydoc_data.topics`, the Python docs' topics) or a local file, and the
rest is synthetic. A split is a dict of tensors by role: "inputs" (what the model reads) and "labels"
(what the loss compares with). `DATASETS` maps each name to its `Maker`, which knows its options;
`check(name, options)` reports a bad name or option before anything is built.

Randomness comes from numpy generators seeded by (seed, stream): one stream makes the synthetic data,
one splits train from val, one orders each epoch's batches, so changing one never moves another.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from axon.frontend.errors import ArityError, AxonNameError, AxonTypeError, AxonValueError
from axon.frontend.values import show
from axon.ir import AxonError, Span
from axon.ir.errors import did_you_mean

MAKE_STREAM, SPLIT_STREAM, BATCH_STREAM = 0, 1, 2  # the three independent random streams of a seed
CUE = 2.0                   # the size of a `sequences` cue (its noise has std 0.5 by default)
UNKNOWN = "\ufffd"          # the text token that stands for every character left out of a capped vocab
COVERAGE_SHARE = 0.25       # a mode is covered when it holds a quarter of its fair share (1/modes)
COVERAGE_STDS = 3.0         # ... of the samples within this many standard deviations of its centre
READ_CHUNK = 1 << 20        # characters a text file is read by: a `limit` reads about that many, no more


# --- options and the registry ------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One option of a data set: its default (None: decided by the maker) and the values it takes."""

    default: object
    kind: type                      # int, float, bool or str; an int is accepted where a float is
    low: float | None = None        # inclusive
    high: float | None = None       # inclusive, or exclusive when `high_open`
    high_open: bool = False
    choices: tuple = ()

    def words(self) -> str:
        """What a value must be, as the end of "must be ...": "an int >= 1", "in [0, 1)"."""
        if self.choices:
            return "one of " + ", ".join(_show(c) for c in self.choices)
        noun = {int: "an int", float: "a number", bool: "true or false", str: "a string"}[self.kind]
        if self.low is not None and self.high is not None:
            return f"{noun} in [{self.low}, {self.high}{')' if self.high_open else ']'}"
        return f"{noun} >= {self.low}" if self.low is not None else noun

    def problem(self, v) -> type | None:
        """The error class for a wrong value `v`, or None when it fits."""
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if self.kind is bool:
            return None if isinstance(v, bool) else AxonTypeError
        if self.kind is str:
            return None if isinstance(v, str) and (not self.choices or v in self.choices) else (
                AxonValueError if isinstance(v, str) else AxonTypeError)
        if not number or (self.kind is int and not isinstance(v, int)):
            return AxonTypeError
        bad = not math.isfinite(v) or (self.low is not None and v < self.low) or (
            self.high is not None and (v >= self.high if self.high_open else v > self.high))
        return AxonValueError if bad else None


@dataclass(frozen=True)
class Maker:
    """A data set's builder with its options. `maker(options, seed)` checks the options, fills in the
    defaults and builds the `DataSet`."""

    name: str
    build: Callable[..., DataSet]
    options: dict[str, Option]
    rules: tuple[tuple[str, Callable[[dict, set], bool], str], ...]  # (option, holds(all, given), why)
    doc: str

    def __call__(self, options: dict, seed: int) -> DataSet:
        return make(self.name, options, seed)

    def defaults(self) -> dict:
        return {k: o.default for k, o in self.options.items()}


DATASETS: dict[str, Maker] = {}


def dataset(name: str, rules=(), **options: Option):
    """Register the decorated function as the maker of data set `name`, with these options."""
    def register(fn):
        DATASETS[name] = Maker(name, fn, options, tuple(rules), (fn.__doc__ or "").strip().splitlines()[0])
        return fn
    return register


def check(name: str, options: dict, span: Span | None = None,
          option_spans: dict[str, Span] | None = None) -> dict:
    """The options of data set `name` with the defaults filled in, or a located AxonError naming the
    data sets or options there are. `span` is the call's place, `option_spans` each option's.

    >>> check("digits", {"val": 0.2})
    {'val': 0.2, 'image': False}
    """
    where = option_spans or {}
    maker = DATASETS.get(name)
    if maker is None:
        known = f"known data sets: {', '.join(DATASETS)}"
        close = did_you_mean(name, DATASETS)
        raise AxonNameError(f"unknown data set '{name}'", span, hint=f"{close} {known}" if close else known)
    for key, value in options.items():
        option = maker.options.get(key)
        if option is None:
            known = f"options of {name}: {', '.join(maker.options)}"
            close = did_you_mean(key, maker.options)
            raise ArityError(f"data set '{name}' has no option '{key}'", where.get(key, span),
                             hint=f"{close} {known}" if close else known)
        kind = option.problem(value)
        if kind is not None:
            raise kind(f"'{key}' of {name} must be {option.words()}, got {_show(value)}",
                       where.get(key, span))
    full = maker.defaults() | {k: float(v) if maker.options[k].kind is float else v
                               for k, v in options.items()}
    for key, holds, message in maker.rules:
        if not holds(full, set(options)):
            raise AxonValueError(f"{name}: {message}", where.get(key, span))
    return full


def make(name: str, options: dict | None = None, seed: int = 0, span: Span | None = None,
         option_spans: dict[str, Span] | None = None) -> DataSet:
    """The data set `name` built with `options` (checked, defaults filled in) and `seed`. `span` and
    `option_spans` (as for `check`) place an error: a bad text file at its `file = ...`, any other at
    the call."""
    full = check(name, options or {}, span, option_spans)
    try:
        return DATASETS[name].build(seed=seed, **full)
    except AxonError as e:
        where = (option_spans or {}).get("file", span) if isinstance(e, TextFileError) else span
        if where is not None:
            e.with_span(where)
        raise


def _show(v) -> str:
    return f'"{v}"' if isinstance(v, str) else show(v)


# --- data sets and splits ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSet:
    """Two splits, each a dict of tensors by role ("inputs", "labels"), and `info`: "description" and,
    by kind, "classes"; "vocab", "itos", "stoi", "unigram_entropy" (text); "modes", "radius", "std"."""

    name: str
    train: dict[str, torch.Tensor]
    val: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)

    def summary(self) -> str:
        """A line for the data set, then one per split: `train: 1438 examples, inputs f32[1438, 64], ...`."""
        lines = [f"{self.name}: {self.info.get('description', '')}"]
        for split, tensors in (("train", self.train), ("val", self.val)):
            parts = [f"{role} {_type(t)}" for role, t in tensors.items()]
            lines.append(f"  {split}: {num_examples(tensors)} examples, {', '.join(parts)}")
        return "\n".join(lines)


def _type(t: torch.Tensor) -> str:
    short = {torch.float32: "f32", torch.int64: "i64"}.get(t.dtype, str(t.dtype))
    return f"{short}[{', '.join(map(str, t.shape))}]"


def num_examples(split: dict[str, torch.Tensor]) -> int:
    return len(next(iter(split.values())))


def _split(n: int, val: float, seed: int, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train and val indices (each ascending): `val` of the examples held out, by `seed`; with
    `labels`, that fraction of every class (stratified), and never a whole class."""
    rng = np.random.default_rng([seed, SPLIT_STREAM])
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    held = []
    for idx in groups:
        k = min(round(val * len(idx)), len(idx) - 1) if len(idx) else 0
        held.append(rng.permutation(idx)[:k])
    val_idx = np.sort(np.concatenate(held)).astype(np.int64)
    return np.setdiff1d(np.arange(n), val_idx), val_idx


def _dataset(name: str, inputs: np.ndarray, labels: np.ndarray, val: float, seed: int, info: dict,
             stratify: np.ndarray | None = None) -> DataSet:
    tr, va = _split(len(inputs), val, seed, stratify)
    x, y = torch.from_numpy(np.ascontiguousarray(inputs)), torch.from_numpy(np.ascontiguousarray(labels))
    return DataSet(name, {"inputs": x[tr], "labels": y[tr]}, {"inputs": x[va], "labels": y[va]}, info)


def batches(split: dict[str, torch.Tensor], batch_size: int, seed: int, epoch: int,
            start: int = 0) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """(index, batch) for one epoch of `split`, in an order that depends only on (seed, epoch), from
    batch `start` on: a run resumed at batch k sees exactly what the killed run would have. The last
    partial batch is dropped, so every batch has `batch_size` examples (shapes stay fixed).

    >>> split = {"inputs": torch.arange(10.0)[:, None], "labels": torch.arange(10)}
    >>> [b["labels"].tolist() for _, b in batches(split, 4, seed=0, epoch=0)]
    [[8, 2, 1, 0], [5, 6, 7, 4]]
    """
    n = num_examples(split)
    count = num_batches(split, batch_size)
    assert 0 <= start <= count, f"batch {start} of an epoch of {count} batches"
    order = torch.from_numpy(np.random.default_rng([seed, BATCH_STREAM, epoch]).permutation(n))
    return ((i, {role: t[order[i * batch_size:(i + 1) * batch_size]] for role, t in split.items()})
            for i in range(start, count))


def num_batches(split: dict[str, torch.Tensor], batch_size: int) -> int:
    """Full batches in an epoch of `split` (the last partial one is dropped)."""
    n = num_examples(split)
    if not 1 <= batch_size <= n:
        raise AxonValueError(f"batch size {batch_size} does not fit a split of {n} examples",
                             hint=f"use a batch between 1 and {n}")
    return n // batch_size


# --- the makers ----------------------------------------------------------------------------------------
def _val(default: float) -> Option:
    return Option(default, float, 0, 1, high_open=True)


def _count(default: int | None, low: int = 1) -> Option:
    return Option(default, int, low)


@dataset("digits", val=_val(0.2), image=Option(False, bool))
def digits(seed: int, val: float, image: bool) -> DataSet:
    """The 8x8 handwritten digits that ship with scikit-learn: 1797 scans, 10 classes."""
    from sklearn.datasets import load_digits  # ships its data: nothing is downloaded

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)  # pixels 0..16 -> [0, 1]
    y = d.target.astype(np.int64)
    x = x.reshape(-1, 1, 8, 8) if image else x
    info = {"classes": 10, "description": "8x8 handwritten digits (scikit-learn), 10 classes"}
    return _dataset("digits", x, y, val, seed, info, stratify=y)


@dataset("blobs", val=_val(0.2), classes=_count(2, 2), features=_count(2), n=_count(1000, 2),
         spread=Option(3.0, float, 0), std=Option(1.0, float, 0), binary=Option(None, bool),
         rules=[("binary", lambda o, _: not o["binary"] or o["classes"] == 2,
                 "binary labels need classes = 2")])
def blobs(seed: int, val: float, classes: int, features: int, n: int, spread: float, std: float,
          binary: bool | None) -> DataSet:
    """Gaussian clusters: `classes` centres `spread` from the origin, evenly around a circle in a random
    plane (on a line when features = 1), each with `std`. With 2 classes the labels are f32 {0, 1}
    [N, 1] for bce_with_logits (`binary = false`: i64 class ids [N] for cross_entropy)."""
    rng = np.random.default_rng([seed, MAKE_STREAM])
    if features == 1:
        centres = np.linspace(-spread, spread, classes)[:, None]
    else:
        plane, _ = np.linalg.qr(rng.standard_normal((features, 2)))
        angle = 2 * np.pi * np.arange(classes) / classes + rng.uniform(0, 2 * np.pi)
        centres = spread * (np.cos(angle)[:, None] * plane[:, 0] + np.sin(angle)[:, None] * plane[:, 1])
    y = np.arange(n) % classes
    x = (centres[y] + std * rng.standard_normal((n, features))).astype(np.float32)
    binary = classes == 2 if binary is None else binary
    labels = y.astype(np.float32)[:, None] if binary else y.astype(np.int64)
    info = {"classes": classes, "binary": binary,
            "description": f"{classes} Gaussian blobs in {features}-D, centres {spread} from the origin"}
    return _dataset("blobs", x, labels, val, seed, info, stratify=y)


@dataset("sequences", val=_val(0.2), steps=_count(12), features=_count(4), classes=_count(3, 2),
         n=_count(2000, 2), cue=_count(3), noise=Option(0.5, float, 0),
         rules=[("cue", lambda o, _: o["cue"] < o["steps"], "the cue must be shorter than the sequence"),
                ("classes", lambda o, _: o["classes"] <= (2 * o["features"]) ** o["cue"],
                 "more classes than cues of this length and width")])
def sequences(seed: int, val: float, steps: int, features: int, classes: int, n: int, cue: int,
              noise: float) -> DataSet:
    """Sequence classification that needs memory: the first `cue` steps carry the class's cue, the
    whole sequence carries Gaussian noise of std `noise`, and the class is read after the last step,
    so the model must carry the start to the end."""
    rng = np.random.default_rng([seed, MAKE_STREAM])
    y = np.arange(n) % classes
    x = noise * rng.standard_normal((n, steps, features))
    x[:, :cue] += _cues(classes, cue, features)[y]
    info = {"classes": classes, "description": f"{classes}-class sequences of {steps} steps, "
                                               f"the class cued in the first {cue}"}
    return _dataset("sequences", x.astype(np.float32), y.astype(np.int64), val, seed, info, stratify=y)


def _cues(classes: int, cue: int, features: int) -> np.ndarray:
    """[classes, cue, features]: at each cue step one feature is +-CUE (a signed one-hot, one of
    2 * features). Class k's symbol at step s is (k + k // base^s) % base for s >= 1 (k % base at step
    0), so the first 2 * features classes repeat their symbol at every step and all classes differ."""
    base = 2 * features
    out = np.zeros((classes, cue, features))
    for k in range(classes):
        for s in range(cue):
            symbol = (k // base**s + k * (s > 0)) % base
            out[k, s, symbol % features] = CUE if symbol < features else -CUE
    return out


def python_docs() -> str:
    """The Python docs' topics (`pydoc_data.topics`, part of the standard library), in key order."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:
        raise AxonValueError("this Python has no 'pydoc_data' (the 'python-docs' corpus)",
                             hint="give a local text file: text(file = \"input.txt\")") from e
    return "\n\n".join(topics[k] for k in sorted(topics))


CORPORA = {"python-docs": python_docs}


@dataset("text", val=_val(0.1), corpus=Option("python-docs", str, choices=tuple(CORPORA)),
         file=Option(None, str), ctx=_count(32), vocab=_count(None, 2), limit=_count(None, 2),
         rules=[("file", lambda _, given: not {"file", "corpus"} <= given,
                 "give a corpus or a file, not both")])
def text(seed: int, val: float, corpus: str, file: str | None, ctx: int, vocab: int | None,
         limit: int | None) -> DataSet:
    """Characters as tokens: windows of ctx + 1 characters taken every ctx (inputs [N, ctx], labels the
    next characters [N, ctx]) from the first `limit` characters of a shipped corpus or a local UTF-8
    file (relative to the current folder). `vocab` keeps the vocab - 1 most frequent characters and
    maps the rest to one unknown token."""
    source = read_text(file, limit) if file is not None else CORPORA[corpus]()[:limit]
    windows = max(len(source) - 1, 0) // ctx
    if windows < 2:
        what = f"the text file '{file}'" if file is not None else f"the corpus '{corpus}'"
        if not source:
            kind = TextFileError if file is not None else AxonValueError
            raise kind(f"{what} is empty", hint=f"a text data set needs at least 2 * ctx + 1 = "
                                                f"{2 * ctx + 1} characters")
        raise AxonValueError(f"{what}: {len(source)} characters make {windows} windows of ctx + 1 = "
                             f"{ctx + 1}", hint="use a longer text, a larger limit or a smaller ctx")
    itos = _vocabulary(source, vocab)
    stoi = {c: i for i, c in enumerate(itos)}
    ids = encode(source, stoi)
    x = ids[:windows * ctx].reshape(windows, ctx)
    y = ids[1:windows * ctx + 1].reshape(windows, ctx)
    ds = _dataset("text", x, y, val, seed, {})
    scored = ds.val if num_examples(ds.val) else ds.train  # the baseline for the val loss
    ds.info.update(vocab=len(itos), itos=itos, stoi=stoi, ctx=ctx, characters=len(source),
                   unigram_entropy=unigram_entropy(scored["labels"], len(itos)),
                   description=f"{len(source):,} characters of {file or corpus}, {len(itos)} tokens")
    return ds


class TextFileError(AxonValueError):
    """A `text(file = ...)` that cannot be used: missing, a directory, unreadable, not UTF-8, empty."""


_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8


def read_text(file: str, limit: int | None = None) -> str:
    """The first `limit` characters (all, without a limit) of the UTF-8 file `file`, read READ_CHUNK
    characters at a time: a small limit on a large corpus reads about that much, and bytes past the
    limit are never decoded, so they need not be UTF-8. Newlines are read as `\n`."""
    what = f"the text file '{file}'"
    p = Path(file)
    if not p.exists():
        raise TextFileError(f"{what} does not exist",
                            hint=f"a relative path is read from the current folder, {Path.cwd()}")
    if p.is_dir():
        raise TextFileError(f"{what} is a directory, not a text file")
    if not p.is_file():  # a FIFO or a device: reading could block or never end
        raise TextFileError(f"{what} is not a regular file")
    parts, count = [], 0
    try:
        with open(p, encoding="utf-8", errors="surrogateescape") as f:
            while limit is None or count < limit:
                part = f.read(READ_CHUNK if limit is None else min(READ_CHUNK, limit - count))
                if not part:
                    break
                parts.append(part)
                count += len(part)
    except OSError as e:
        raise TextFileError(f"cannot read {what}: {e.strerror or e}") from None
    text = "".join(parts)
    bad = _NOT_UTF8.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        raise TextFileError(f"{what} is not UTF-8 text: line {line} holds the byte "
                            f"0x{ord(bad.group()) - 0xdc00:02x}", hint="save it as UTF-8")
    return text


def _vocabulary(source: str, cap: int | None) -> list[str]:
    """The characters of `source`, sorted; capped: the cap - 1 most frequent, then UNKNOWN first."""
    counts = Counter(source)
    if cap is None or cap >= len(counts):
        return sorted(counts)
    kept = sorted(counts, key=lambda c: (-counts[c], c))[:cap - 1]
    return [UNKNOWN, *sorted(kept)]


def encode(s: str, stoi: dict[str, int]) -> np.ndarray:
    """Token ids (i64) of `s`; a character outside `stoi` becomes UNKNOWN's id."""
    codes = np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32)
    top = max([int(codes.max(initial=0)), *map(ord, stoi)])
    table = np.full(top + 1, stoi.get(UNKNOWN, -1), np.int64)
    for c, i in stoi.items():
        table[ord(c)] = i
    ids = table[codes]
    assert (ids >= 0).all(), "a character outside the vocabulary, and no unknown token"
    return ids


def decode(ids, itos: list[str]) -> str:
    """The text of token ids (a tensor, an array or a list)."""
    return "".join(itos[i] for i in torch.as_tensor(ids).flatten().tolist())


def unigram_entropy(tokens: torch.Tensor, vocab: int) -> float:
    """The entropy (nats) of the tokens' frequencies: the loss of the best model that ignores context."""
    p = torch.bincount(tokens.flatten(), minlength=vocab).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


# --- the GAN's ring of Gaussians -------------------------------------------------------------------------
@dataset("gaussians", val=_val(0.0), modes=_count(8), radius=Option(0.8, float, 0),
         std=Option(0.05, float, 0), n=_count(10000, 2))
def gaussians(seed: int, val: float, modes: int, radius: float, std: float, n: int) -> DataSet:
    """A 2-D mixture of `modes` Gaussians evenly around a circle of `radius` (inside tanh's [-1, 1] by
    default): inputs f32 [N, 2], labels the mode i64 [N]. See `mode_coverage`."""
    rng = np.random.default_rng([seed, MAKE_STREAM])
    y = np.arange(n) % modes
    x = (ring(modes, radius)[y] + std * rng.standard_normal((n, 2))).astype(np.float32)
    info = {"modes": modes, "radius": radius, "std": std,
            "description": f"{modes} Gaussians (std {std}) on a ring of radius {radius}"}
    return _dataset("gaussians", x, y.astype(np.int64), val, seed, info, stratify=y)


def ring(modes: int, radius: float) -> np.ndarray:
    """The centres of the ring's modes, [modes, 2], the first on the positive x axis."""
    angle = 2 * np.pi * np.arange(modes) / modes
    return radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)


@dataclass(frozen=True)
class Coverage:
    covered: int                # modes holding at least `min_share` of the samples within 3 std
    shares: tuple[float, ...]   # per mode: the fraction of all samples within 3 std of it
    quality: float              # the fraction of samples within 3 std of some mode


def mode_coverage(samples, modes: int = 8, radius: float = 0.8, std: float = 0.05,
                  min_share: float | None = None) -> Coverage:
    """How well generated `samples` [N, 2] cover the ring: a mode counts when at least `min_share` of
    the samples (default a quarter of its fair share, 1 / (4 * modes)) lie within 3 std of it.

    >>> mode_coverage(make("gaussians", {}, seed=0).train["inputs"]).covered
    8
    """
    x = torch.as_tensor(samples).detach().cpu().double().reshape(-1, 2)
    near = torch.cdist(x, torch.from_numpy(ring(modes, radius))) <= COVERAGE_STDS * std  # [N, modes]
    shares = near.double().mean(0) if len(x) else torch.zeros(modes, dtype=torch.float64)
    least = COVERAGE_SHARE / modes if min_share is None else min_share
    return Coverage(int((shares >= least).sum()), tuple(shares.tolist()),
                    float(near.any(1).double().mean()) if len(x) else 0.0)
