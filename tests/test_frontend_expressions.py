"""Differential test of expressions: random expression trees over broadcasting inputs, printed with the
fewest parentheses the grammar's precedence allows, compiled, evaluated, and compared with the same
tree computed directly in PyTorch. A precedence or associativity slip in the grammar, or a wrong
operator in elaboration, shows up as a mismatch."""
import random

import pytest
import torch

from axon.frontend import compile_source
from axon.ir import evaluate
from numerics import assert_close

INPUTS = {"x": (4, 5), "y": (5,), "z": (4, 1)}
# binary operator -> (precedence, torch function), all left-associative; '**' (4, right-associative)
# and '/' (2) come in through the "pow" and "div" nodes
BINARY = {"+": (1, torch.add), "-": (1, torch.sub), "*": (2, torch.mul)}
UNARY_CALLS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu, "abs": torch.abs}
ATOM = 9


def tree(rng: random.Random, depth: int):
    if depth == 0 or rng.random() < 0.2:
        return ("leaf", rng.choice(["x", "y", "z", "x", "2.5", "0.5"]))
    kind = rng.random()
    if kind < 0.45:
        return ("bin", rng.choice(["+", "-", "*", "+", "-", "*"]), tree(rng, depth - 1), tree(rng, depth - 1))
    if kind < 0.55:
        return ("pow", tree(rng, depth - 1))
    if kind < 0.65:
        return ("neg", tree(rng, depth - 1))
    if kind < 0.75:
        return ("div", tree(rng, depth - 1), tree(rng, depth - 1))
    if kind < 0.85:
        return ("where", tree(rng, depth - 1), tree(rng, depth - 1))
    return ("call", rng.choice(list(UNARY_CALLS)), tree(rng, depth - 1))


def render(t) -> tuple[str, int]:
    """Source text and the precedence of its outermost operator (ATOM for atoms and calls)."""
    kind = t[0]
    if kind == "leaf":
        return t[1], ATOM
    if kind == "bin":
        op, (lt, lp), (rt, rp) = t[1], render(t[2]), render(t[3])
        p = BINARY[op][0]
        left = lt if lp >= p else f"({lt})"
        right = rt if rp > p else f"({rt})"  # left-associative: an equal-precedence right side needs ()
        return f"{left} {op} {right}", p
    if kind == "pow":  # abs(a) ** 2.0: the base is a call, the exponent a literal
        return f"abs({render(t[1])[0]}) ** 2.0", 4
    if kind == "neg":
        text, p = render(t[1])
        return (f"-{text}" if p >= 3 else f"-({text})"), 3
    if kind == "div":
        (lt, lp), (rt, _) = render(t[1]), render(t[2])
        left = lt if lp >= 2 else f"({lt})"
        return f"{left} / (abs({rt}) + 1.0)", 2
    if kind == "where":
        a, b = render(t[1])[0], render(t[2])[0]
        return f"where({a} > {b}, {a}, {b})", ATOM
    return f"{t[1]}({render(t[2])[0]})", ATOM


def reference(t, env):
    kind = t[0]
    if kind == "leaf":
        return env[t[1]] if t[1] in env else torch.tensor(float(t[1]))
    if kind == "bin":
        return BINARY[t[1]][1](reference(t[2], env), reference(t[3], env))
    if kind == "pow":
        return reference(t[1], env).abs() ** 2.0
    if kind == "neg":
        return -reference(t[1], env)
    if kind == "div":
        return reference(t[1], env) / (reference(t[2], env).abs() + 1.0)
    if kind == "where":
        a, b = reference(t[1], env), reference(t[2], env)
        return torch.where(a > b, a, b)
    return UNARY_CALLS[t[1]](reference(t[2], env))


@pytest.mark.parametrize("seed", range(60))
def test_random_expression_matches_torch(seed):
    rng = random.Random(seed)
    t = tree(rng, 5)
    text, _ = render(t)
    decls = "\n".join(f"input {n}: f32[{', '.join(map(str, s))}]" for n, s in INPUTS.items())
    g = compile_source(f"model M {{\n{decls}\noutput out = ({text}) + x * 0.0\n}}", "expr.axon")
    gen = torch.Generator().manual_seed(seed)
    env = {n: torch.randn(s, generator=gen) for n, s in INPUTS.items()}
    assert_close(evaluate(g, env)["out"], reference(t, env) + env["x"] * 0.0, what=text)
