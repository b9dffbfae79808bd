"""Fuzzing: mangled examples and token soup either compile (with their training graph, when they have a
train block) or raise an `AxonError` (never another exception, never a Python traceback to the user),
and each finishes within a time limit.

The mutations are seeded, so a failure reproduces: the test id names the seed.
"""
import random
import re
import signal
from pathlib import Path

import pytest

from axon.frontend import compile_source, parse, training_graph
from axon.ir import AxonError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SOURCES = [(EXAMPLES / f"{n}.axon").read_text() for n in ("perceptron", "mlp", "cnn", "lstm", "gan")]
TOKENS = ["(", ")", "[", "]", "{", "}", ",", ":", "=", "+", "-", "*", "/", "//", "%", "@", "**", "<", "==",
          "..", "...", "fn", "model", "input", "output", "param", "return", "repeat", "for", "in", "if",
          "else", "as", "assert", "and", "or", "not", "true", "false", "x", "h", "batch", "0", "1", "-1",
          "3", "1000000", "2.5", "1e9", '"a"', "f32", "i64", "linear", "relu", "reshape", "shape(x)",
          "[1, 2]", "\n", "#", "inf", "nan", "sum", "zeros", "iota", "é", "\t", "$"]
NAMES = ["x", "h", "linear", "b", "batch", "heads", "d", "t", "hs", "relu", "conv2d", "lstm", "output"]
SECONDS = 20  # per program; the elaborator's own unroll limits keep the worst case to a few seconds


def mutate(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(6)
        i = rng.randrange(len(text) + 1)
        if kind == 0:  # delete a few characters
            text = text[:i] + text[i + rng.randint(1, 8):]
        elif kind in (1, 2):  # insert a token
            text = f"{text[:i]} {rng.choice(TOKENS)} {text[i:]}"
        elif kind == 3:  # duplicate a line elsewhere
            lines = text.splitlines()
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(lines))
            text = "\n".join(lines)
        elif kind == 4:  # change a number
            nums = list(re.finditer(r"\d+", text))
            if nums:
                m = rng.choice(nums)
                number = rng.choice(["0", "1", "7", "999", "-3", "65", "100000"])
                text = text[:m.start()] + number + text[m.end():]
        else:  # change a name
            names = list(re.finditer(r"[a-z_]+", text))
            if names:
                m = rng.choice(names)
                text = text[:m.start()] + rng.choice(NAMES) + text[m.end():]
    return text


def program(seed: int) -> str:
    rng = random.Random(seed)
    if rng.random() < 0.8:
        return mutate(rng, rng.choice(SOURCES))
    return " ".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 30)))


def _timeout(signum, frame):
    raise TimeoutError


@pytest.mark.parametrize("block", range(4))
def test_only_axon_errors_come_out_and_nothing_hangs(block):
    previous = signal.signal(signal.SIGALRM, _timeout)
    try:
        for seed in range(block * 60, block * 60 + 60):
            text = program(seed)
            signal.alarm(SECONDS)
            try:
                compile_source(text, "fuzz.axon")
                if "train" in text:
                    training_graph(parse(text, "fuzz.axon"))
            except AxonError as e:
                assert str(e).startswith("fuzz.axon:") or e.span is None, str(e)
            except TimeoutError:
                pytest.fail(f"seed {seed}: still compiling after {SECONDS} s:\n{text}")
            except Exception as e:  # noqa: BLE001 - the point of the test
                pytest.fail(f"seed {seed}: {type(e).__name__}: {e}\n{text}")
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)
