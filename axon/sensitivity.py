"""`axon quantize --sensitivity`: what each layer costs when it alone is quantized.

Each quantizable layer is quantized on its own (every other layer float) and the model validated as
`axon eval` does; the cost is the accuracy lost, in points (or, for a model without accuracy, the
validation loss gained, in nats). The ranking is printed, written into ledger.json ("sensitivity") and
drawn (sensitivity.png); `--max-drop X` then leaves float every layer costing more than X.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from axon.codegen.files import atomic_write
from axon.passes.quant_weights import convert


def rank(setup, settings, layers, params, act_amax=None) -> dict:
    """The float model's validation metrics, and per quantized layer its metrics alone quantized and its
    cost, most costly first."""
    base = setup.metrics(setup.graph, params)
    use_acc = "acc" in base
    rows = []
    chosen = [layer for layer in layers if layer.quantized]
    for layer in chosen:
        others = tuple(o.name for o in chosen if o is not layer)
        one = replace(settings, skip=tuple(settings.skip) + others)
        qgraph = setup.quantized(one)
        qparams = {**params, **convert([layer], params, act_amax)}
        m = setup.metrics(qgraph, {n: qparams[n] for n in qgraph.params})
        cost = (base["acc"] - m["acc"]) * 100 if use_acc else m["loss"] - base["loss"]
        rows.append({"layer": layer.name, "kind": layer.kind, "cost": cost,
                     **{f"val_{k}": v for k, v in m.items()}})
    rows.sort(key=lambda r: -r["cost"])
    return {"unit": "accuracy points" if use_acc else "nats of loss", "float": base, "layers": rows}


def over(record: dict, max_drop: float) -> dict[str, float]:
    """The layers costing more than `max_drop`, with their cost."""
    return {r["layer"]: r["cost"] for r in record["layers"] if r["cost"] > max_drop}


def format_ranking(record: dict, max_drop: float | None = None) -> str:
    lines = [f"sensitivity: each layer alone quantized, cost in {record['unit']} (most costly first)"]
    width = max([len(r["layer"]) for r in record["layers"]] + [5])
    for r in record["layers"]:
        mark = "  -> left float (over --max-drop)" if max_drop is not None and r["cost"] > max_drop else ""
        lines.append(f"  {r['layer']:<{width}}  {r['kind']:<5} {r['cost']:+.4f}{mark}")
    return "\n".join(lines)


def plot(record: dict, path: Path, max_drop: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(reversed(record["layers"]))
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2), dpi=100)
    colors = ["tab:red" if max_drop is not None and r["cost"] > max_drop else "tab:blue" for r in rows]
    ax.barh(range(len(rows)), [r["cost"] for r in rows], color=colors)
    ax.set_yticks(range(len(rows)), [f"{r['layer']} ({r['kind']})" for r in rows], fontsize=7)
    ax.set_xlabel(f"cost when quantized alone ({record['unit']})")
    if max_drop is not None:
        ax.axvline(max_drop, color="tab:red", linestyle="--", label=f"--max-drop {max_drop}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        atomic_write(path, writer=lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def skipped_layers(layers, costs: dict[str, float], max_drop: float, unit: str) -> list:
    """`layers` with those in `costs` left float, the reason naming their cost."""
    from axon.passes.quantize import Layer

    out = []
    for layer in layers:
        if layer.name in costs:
            fields = {**asdict(layer), "kind": "float", "bytes_after": layer.bytes_before,
                      "reason": f"sensitivity: costs {costs[layer.name]:.4f} {unit} > --max-drop {max_drop}"}
            out.append(Layer(**fields))
        else:
            out.append(layer)
    return out
