"""Large graphs for scale tests and the scale benchmark: deep chains with clean-up work in them."""
from __future__ import annotations

from axon.ir import DType, Graph, GraphBuilder, Sym


def deep_graph(n_nodes: int) -> Graph:
    """About `n_nodes` nodes: a long dependent chain (as an unrolled RNN makes) of elementwise ops,
    reductions and reshapes, with x*1, x+0 and double transposes for the clean-up passes to remove."""
    b = GraphBuilder("deep")
    x = b.input("x", DType.F32, (Sym.of("batch"), 8))
    w = b.param("w", DType.F32, (8, 8))
    h = x
    step = 0
    while len(b) < n_nodes:
        step += 1
        a = b.add(b.mul(h, 1.0), 0.0)                    # simplify removes both
        a = b.transpose(b.transpose(a))                  # double transpose: one permute pair
        a = b.tanh(b.add(b.matmul(a, w), float(step % 7) / 10))
        if step % 5 == 0:
            m = b.mean(a, 1, keepdim=True)
            a = b.sub(a, m)
        h = a
    b.output("h", h)
    b.output("total", b.sum(h))
    return b.build()
