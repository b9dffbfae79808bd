"""Deep graphs go through every stage without recursion: a 10,000-node chain (an unrolled RNN's
depth) verifies, prints, parses back identically, runs the clean-up pipeline and evaluates.

Python's default recursion limit is 1,000 frames, so any recursive walk over this chain would fail.
Times are measured by bench/ir_scale.py, never asserted here.
"""
import sys

import torch

from axon.ir import evaluate, verify
from axon.ir.text import parse_graph, print_graph
from axon.passes.manager import DEFAULT_PIPELINE, PassManager, parse_pipeline
from bigraphs import deep_graph
from numerics import assert_close


def test_ten_thousand_node_chain_through_every_stage():
    assert sys.getrecursionlimit() <= 10_000
    g = deep_graph(10_000)
    assert len(g) >= 10_000
    verify(g)
    text = print_graph(g)
    again = parse_graph(text)
    assert print_graph(again) == text
    opt = PassManager(parse_pipeline(DEFAULT_PIPELINE), verify=True).run(g)
    assert len(opt) < len(g)  # the x*1, x+0 and double transposes are gone
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(1)) / 3
    ref = evaluate(g, {"x": x}, {"w": w})
    new = evaluate(opt, {"x": x}, {"w": w})
    for name in ref:
        assert_close(new[name], ref[name], torch.float32, what=name)
