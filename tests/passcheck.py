"""The one helper every pass test goes through: IR text in, IR text out, with the nodes added and
removed counted by op, the result verified, and the reference evaluator giving the same outputs before
and after on random inputs.

>>> check_pass("simplify", '''
... graph g {
...   input %x: f32[3]
...   %0 = const(value=1.0) : f32[]
...   %1 = mul(%x, %0) : f32[3]
...   output %y = %1
... }''', '''
... graph g {
...   input %x: f32[3]
...   output %y = %x
... }''', {"const": -1, "mul": -1})
"""
from __future__ import annotations

import textwrap
from collections import Counter

import torch

from axon.ir import Graph, evaluate, verify
from axon.ir.text import parse_graph, print_graph
from axon.passes import PassManager
from numerics import assert_close
from strategies import random_inputs


def ir(text: str) -> str:
    """IR text written indented inside a test, as `print_graph` writes it."""
    return textwrap.dedent(text).strip()


def op_delta(before: Graph, after: Graph) -> dict[str, int]:
    """Nodes added (+) and removed (-) by op name, e.g. {"mul": -1, "const": -1}."""
    delta = Counter(str(n.op) for n in after.nodes)
    delta.subtract(str(n.op) for n in before.nodes)
    return {op: n for op, n in sorted(delta.items()) if n}


def check_pass(pipeline: str, before: str, after: str, delta: dict[str, int] | None = None,
               evaluates: bool = True, seed: int = 0) -> Graph:
    """Run `pipeline` (verifying after each pass) on the IR text `before`; the result must print as
    `after` exactly, change the node counts by `delta`, and evaluate to the same outputs."""
    g = verify(parse_graph(ir(before)))
    out = PassManager(pipeline, verify=True).run(g)
    got = print_graph(out)
    assert got == ir(after), f"{pipeline} gave\n{got}\nexpected\n{ir(after)}"
    if delta is not None:
        changed = op_delta(g, out)
        assert changed == delta, f"{pipeline} changed the nodes by {changed}, expected {delta}"
    if evaluates:
        assert_same_values(g, out, seed)
    return out


def assert_same_values(before: Graph, after: Graph, seed: int = 0, **fixed: torch.Tensor) -> None:
    """The reference evaluator gives `after` the outputs it gives `before`, on random inputs (`fixed`
    replaces some, such as labels that must be valid indices)."""
    assert after.outputs.keys() == before.outputs.keys() and after.inputs.keys() == before.inputs.keys()
    inputs, params = random_inputs(before, torch.Generator().manual_seed(seed))
    inputs.update(fixed)
    want = evaluate(before, inputs, params)
    got = evaluate(after, inputs, {k: v for k, v in params.items() if k in after.params})
    for name, ref in want.items():
        assert got[name].dtype == ref.dtype, f"{name}: {got[name].dtype} vs {ref.dtype}"
        assert_close(got[name], ref, ref.dtype if ref.is_floating_point() else None, what=name)
