"""The quantization ledger's view from the GPU: each quantized layer's kernels compiled ahead of time for
a target (sm_90 by default; no GPU needed, `codegen/aot.py`), and what they compile to — the tensor-core
instructions and their operand types (wgmma s8, e4m3, bf16; mma where a tile has fewer than 64 rows;
none on FMA units), registers and spills."""
from __future__ import annotations

from axon.codegen import aot
from axon.codegen.target import Target
from axon.driver import kernel_groups
from axon.ir import Graph


def layer_kernels(qgraph: Graph, layers, groups) -> dict[str, list[int]]:
    """Per quantized layer, the indices (in `groups`) of the kernels that read its stored weight or
    compute with its codes."""
    users = qgraph.users()
    out = {}
    for layer in layers:
        q = qgraph.params.get(layer.q_name) if layer.quantized else None
        if q is None:
            continue
        chain, frontier = {q}, [q]
        while frontier:  # q -> unpack_int4 -> dequantize -> matmul/conv2d/qmatmul
            nxt = [u for n in frontier for u in users[n] if u not in chain]
            chain.update(nxt)
            frontier = [u for u in nxt if u.op.value in ("unpack_int4", "dequantize")]
        out[layer.name] = [i for i, g in enumerate(groups) if chain & set(g.nodes)]
    return out


def compiled_for(qgraph: Graph, layers, env: dict[str, int], target: Target) -> dict[str, str]:
    """Per quantized layer, what its kernels compile to on `target`: 'wgmma s8 x2, 62 regs' (or the
    failure), one entry per kernel."""
    groups = kernel_groups(qgraph)
    rows = aot.compile_jobs(aot.jobs_for(aot.launches_for(groups, env, target), target, False), target)
    by_kernel = {r.index: r for r in rows if r.default}
    out = {}
    for name, kernels in layer_kernels(qgraph, layers, groups).items():
        parts = []
        for i in kernels:
            r = by_kernel.get(i)
            if r is None:
                continue
            if not r.ok:
                parts.append(f"FAILED: {(r.error or '').splitlines()[0][:80]}")
                continue
            tc = "no tensor cores" if r.tensor_cores in ("none", "") else \
                f"{r.tensor_cores} {r.tc_types} x{r.tc_instructions}".replace("  ", " ")
            spill = f", {r.stack} B spilled" if r.spills else ""
            parts.append(f"{tc}, {r.regs} regs{spill}")
        out[name] = "; ".join(parts)
    return out
