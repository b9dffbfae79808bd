"""The quantization ledger: per layer, what `quantize{...}` did and what it cost.

For every float parameter of rank >= 2: bytes before and after, how it is stored (int8, int4 and the
group, or float with the reason), what runs it (the kernels the fusion plan makes of the dequantized
weight and its matmul), and for a quantized layer its relative output error ||y_q - y|| / ||y||: the
layer's op applied to the float model's own activations on one validation batch (so one layer's error
does not include the layers before it), with the float weight (y) and with the dequantized one (y_q), or,
for int8-dynamic and fp8 layers, as the quantized model computes it (the activations quantized per row,
codes times codes, rescaled).
For the whole model: the validation loss and accuracy of the float and of the quantized model, measured
as `axon eval` does (the train block's data and seed, the evaluation graph, compiled kernels).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from axon import data as datasets
from axon.driver import executable, kernel_groups, load_ast, load_graph, optimize
from axon.ir import DType, Graph, GraphBuilder, OpKind, evaluate
from axon.passes.quant_weights import dequantize, view
from axon.passes.quantize import CODES, Layer, QuantizeError, codes_matmul, weight_uses

K = OpKind
QUIET = lambda *a, **k: None  # noqa: E731


@dataclass
class Setup:
    """The float model as validated: its evaluation graph (optimized), the data, seed and batch."""

    file: str
    graph: Graph
    seed: int
    batch: int
    device: object
    spec: object = None        # the train block, or None
    data: object = None        # its data set
    binding: object = None

    @property
    def validation(self):
        return self.data.val if self.data is not None and datasets.num_examples(self.data.val) else None

    @classmethod
    def make(cls, file, model=None, hparams=None, seed=None, batch=None, device=None) -> Setup:
        from axon.frontend import train_spec, training_graph
        from axon.trainer import bind

        spec = train_spec(load_ast(file), model) if str(file).endswith(".axon") else None
        if spec is None:
            graph = load_graph(file, model, hparams=hparams or None)
            graph, _ = optimize(graph, out=QUIET)
            return cls(str(file), graph, seed or 0, batch or 4, device)
        graph, spec = training_graph(load_ast(file), model, hparams=hparams or None, training=False)
        seed = seed if seed is not None else (spec.seed if spec.seed is not None else 0)
        data = datasets.make(spec.data.name, dict(spec.data.kwargs), seed, span=spec.data.span,
                             option_spans={k.name: k.span for k in spec.data.call.kwargs})
        binding = bind(graph, spec)
        graph, _ = optimize(graph, out=QUIET)
        return cls(str(file), graph, seed, batch or spec.batch or 32, device, spec, data, binding)

    def quantized(self, settings) -> Graph:
        """The evaluation graph through the quantize pass (and dead code elimination after it)."""
        from axon.passes.manager import format_pass

        graph, _ = optimize(self.graph, f"{format_pass(settings.make_pass())},dce", out=QUIET)
        return graph

    def metrics(self, graph: Graph, params: dict[str, torch.Tensor]) -> dict[str, float]:
        """Validation loss (and accuracy) of `graph` with `params`, through its compiled kernels."""
        from axon.trainer import validate

        exe = executable(graph, self.device)
        params = {k: v.to(exe.device) for k, v in params.items() if k in graph.params}
        return validate(exe, params, self.validation, self.binding, self.batch)

    def calibration(self, count: int):
        """The inputs of the first `count` batches of the training split (its order: the split is
        shuffled once by the data set's seed), for calibrating activation ranges."""
        from axon.trainer import SEED_INPUT

        if self.data is None:
            raise QuantizeError(f"{self.file}: int8-static calibrates on the train block's data, and this "
                                f"model has no train block",
                                hint="add a train block, or use --mode int8-dynamic (no calibration)")
        split = self.data.train
        n = datasets.num_examples(split)
        for start in range(0, min(n, count * self.batch), self.batch):
            inputs = self.binding.feed({k: v[start:start + self.batch] for k, v in split.items()})
            if SEED_INPUT in self.graph.inputs:
                inputs[SEED_INPUT] = torch.tensor(0, dtype=torch.int64)
            yield inputs

    def sample(self) -> tuple[dict[str, torch.Tensor], str]:
        """Inputs of one batch for measuring layer errors: the first validation batch, or random inputs
        when the model has no train block (or an empty validation split)."""
        from axon.trainer import SEED_INPUT

        split = self.validation
        if split is None:
            from axon.run import bind_dims, random_inputs

            env = bind_dims(self.graph, {"batch": self.batch} if "batch" in _symbols(self.graph) else {})
            return random_inputs(self.graph, env, self.seed), f"random inputs ({env})"
        part = {k: v[:self.batch] for k, v in split.items()}
        inputs = self.binding.feed(part)
        if SEED_INPUT in self.graph.inputs:
            inputs[SEED_INPUT] = torch.tensor(0, dtype=torch.int64)
        return inputs, f"the first validation batch ({len(part['inputs'])} examples)"


    def sizes(self, graph: Graph) -> dict[str, int]:
        """The symbolic sizes of `graph` at one measured batch (its inputs' shapes), for the GPU compile."""
        from axon.ir import Sym
        from axon.run import bind_dims

        inputs, _ = self.sample()
        given = {}
        for name, node in graph.inputs.items():
            if name in inputs:
                for d, size in zip(node.shape, inputs[name].shape):
                    if isinstance(d, Sym):
                        given[str(d)] = int(size)
        return bind_dims(graph, {k: v for k, v in given.items() if k in _symbols(graph)})


def _symbols(graph: Graph) -> list[str]:
    from axon.run import symbols

    return symbols(graph)


# --- measuring ---------------------------------------------------------------------------------------
def layer_errors(graph: Graph, layers: list[Layer], params, qparams, inputs) -> dict[str, float]:
    """||y_q - y|| / ||y|| per quantized layer, over every op reading its weight, on the float model's
    activations for `inputs` (the reference evaluator; the norms in f64)."""
    uses = weight_uses(graph)
    chosen = [layer for layer in layers if layer.quantized]
    b, mapping = GraphBuilder.extending(graph)
    taps = []
    for layer in chosen:
        for site in uses[layer.name].sites:
            name = f"quant_tap_{len(taps)}"
            while b.has_output(name):
                name += "_"
            b.output(name, mapping[site.inputs[0]])
            taps.append((layer.name, site, name))
    acts = evaluate(b.build(), inputs, params)
    errors = {}
    for layer in chosen:
        w = view(layer, params[layer.name].detach().cpu())
        wq = dequantize(layer, qparams[layer.q_name], qparams[layer.scale_name])
        num = den = 0.0
        for name, site, tap in taps:
            if name == layer.name:
                y = _apply(site, acts[tap], w).double()
                yq = _dynamic(layer, site, acts[tap], qparams) if layer.kind in CODES \
                    else _apply(site, acts[tap], wq).double()
                num += float(((yq - y) ** 2).sum())
                den += float((y ** 2).sum())
        errors[layer.name] = math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)
    return errors


def _dynamic(layer: Layer, site, a: torch.Tensor, qparams) -> torch.Tensor:
    """The quantized model's matmul for a dynamic layer on activations `a` (the reference evaluator)."""
    b = GraphBuilder("layer")
    x = b.input("a", site.inputs[0].dtype, tuple(a.shape))
    q = b.param(layer.q_name, DType.from_torch(qparams[layer.q_name].dtype), layer.q_shape)
    s = b.param(layer.scale_name, DType.F32, layer.scale_shape)
    weights = (q, s) + ((b.param(layer.in_scale_name, DType.F32, ()),) if layer.kind == "st8" else ())
    b.output("y", codes_matmul(b, layer, x, weights))
    names = [layer.q_name, layer.scale_name] + ([layer.in_scale_name] if layer.kind == "st8" else [])
    params = {name: qparams[name] for name in names}
    return evaluate(b.build(), {"a": a}, params)["y"].double()


def _apply(site, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The site's op (matmul or conv2d, its attributes) on activations `a` and weight `w`."""
    b = GraphBuilder("layer")
    x = b.input("a", site.inputs[0].dtype, tuple(a.shape))
    p = b.param("w", site.inputs[1].dtype, tuple(w.shape))
    b.output("y", b.node(site.op, (x, p), site.attrs))
    return evaluate(b.build(), {"a": a}, {"w": w.to(site.inputs[1].dtype.torch)})["y"]


def what_runs(qgraph: Graph, layers: list[Layer]) -> dict[str, str]:
    """Per quantized layer, the kernels its weight goes through: `unpack_int4 + dequantize + matmul`
    in one kernel when fused, else each kernel's part, `->` between kernels."""
    groups = kernel_groups(qgraph)
    users = qgraph.users()
    out = {}
    for layer in layers:
        if not layer.quantized:
            continue
        q = qgraph.params.get(layer.q_name)
        if q is None:
            out[layer.name] = "nothing (the model no longer reads it)"
            continue
        chain, frontier = [q], [q]
        while frontier:  # q -> unpack_int4 -> dequantize -> matmul/conv2d
            nxt = [u for n in frontier for u in users[n] if u not in chain]
            chain += nxt
            frontier = [u for u in nxt if u.op in (K.UNPACK_INT4, K.DEQUANTIZE)]
        rows = _row_quantization([n for n in chain if n.op == K.QMATMUL])
        parts = []
        for g in groups:
            ops = [n.op.value for n in g.nodes if n in chain and n.op != K.PARAM]
            row_ops = [n.op.value for n in g.nodes if n in rows]
            if row_ops and layer.kind == "st8":
                host = [n for n in g.nodes if n not in rows]
                parts.append("x quantized" + (f" in the epilogue of its producer ({g.kind} kernel)" if host
                                              else " by a kernel of its own"))
            elif row_ops:
                parts.append("x per row: " + " + ".join(dict.fromkeys(row_ops)))
            if ops:
                parts.append(" + ".join(dict.fromkeys(ops)) + (" (codes x codes, rescaled in the epilogue)"
                                                               if rows else ""))
        if len(parts) == 1:
            out[layer.name] = f"fused: {parts[0]} in one kernel"
        else:
            out[layer.name] = f"{len(parts)} kernels: " + " -> ".join(parts) + \
                ("" if rows else " (not fused)")
    return out


def _row_quantization(qmatmuls) -> set:
    """The nodes quantizing the activations of `qmatmuls` per row: the quantize under the left operand
    (through reshapes) and the scale computation feeding it (amax, divide, clamp, casts)."""
    found, stack = set(), [m.inputs[0] for m in qmatmuls]
    while stack:
        n = stack.pop()
        if n in found or n.op not in (K.RESHAPE, K.QUANTIZE, K.MAXIMUM, K.DIV, K.MAX, K.MIN, K.NEG, K.CAST):
            continue
        found.add(n)
        stack += list(n.inputs[1:] if n.op == K.QUANTIZE else n.inputs)
    return found


def measure(setup: Setup, settings, layers: list[Layer], params, qgraph: Graph, qparams, origin: str,
            target=None) -> dict:
    """The ledger as a JSON-ready dict; with `target` (a GPU `Target`), what each quantized layer's
    kernels compile to there (`ledger_target`)."""
    inputs, where = setup.sample()
    errors = layer_errors(setup.graph, layers, params, qparams, inputs)
    runs = what_runs(qgraph, layers)
    compiled = {}
    if target is not None:
        from axon.ledger_target import compiled_for

        compiled = compiled_for(qgraph, layers, setup.sizes(qgraph), target)
    rows = []
    for layer in layers:
        kind = layer.kind + (f" g{layer.group}" if layer.kind == "int4" else "")
        if layer.quantized:
            how = runs[layer.name]
        elif layer.sites:
            how = f"float {layer.op}: {layer.reason}"
        else:
            how = f"float: {layer.reason}"
        rows.append({"layer": layer.name, "op": layer.op, "shape": list(layer.weight_shape), "kind": kind,
                     "bytes_before": layer.bytes_before, "bytes_after": layer.bytes_after,
                     "rel_error": errors.get(layer.name), "runs": how, "compiled": compiled.get(layer.name),
                     "zeros": float((params[layer.name] == 0).float().mean()) if layer.name in params
                     else 0.0,
                     "note": layer.reason if layer.quantized else "", "plan": layer.record()})
    before = sum(math.prod(n.shape) * n.dtype.itemsize for n in setup.graph.params.values())
    after = sum(t.numel() * t.element_size() for t in qparams.values())
    record = {"model": setup.graph.name, "file": setup.file, **settings.record(), "weights": origin,
              "error_batch": where, "layers": rows, "target": target.name if target is not None else None,
              "params_bytes": {"before": before, "after": after},
              "layer_bytes": {"before": sum(r["bytes_before"] for r in rows),
                              "after": sum(r["bytes_after"] for r in rows)},
              "validation": None}
    if setup.validation is not None:
        b = setup.metrics(setup.graph, params)
        a = setup.metrics(qgraph, qparams)
        record["validation"] = {"examples": datasets.num_examples(setup.validation), "batch": setup.batch,
                                "seed": setup.seed, "before": b, "after": a,
                                "loss_increase": a["loss"] - b["loss"],
                                **({"acc_change": a["acc"] - b["acc"]} if "acc" in a and "acc" in b else {})}
    return record


# --- reporting ---------------------------------------------------------------------------------------
def format_table(record: dict) -> str:
    """The ledger as a table, then the totals and the validation before and after."""
    pruned = record.get("pruned") is not None or any(r.get("zeros") for r in record["layers"])
    head = ("layer", "op", "weight", *(("zeros",) if pruned else ()), "stored", "bytes before -> after",
            "rel. error", "runs / why float")
    rows = [head]
    for r in record["layers"]:
        ratio = f" ({r['bytes_after'] / r['bytes_before']:.0%})" if r["kind"] != "float" else ""
        err = "-" if r["rel_error"] is None else f"{r['rel_error']:.2e}"
        note = f" [{r['note']}]" if r["note"] else ""
        on = f" | {record.get('target')}: {r['compiled']}" if r.get("compiled") else ""
        zeros = (f"{r.get('zeros', 0):.0%}",) if pruned else ()
        rows.append((r["layer"], r["op"], "x".join(map(str, r["shape"])), *zeros, r["kind"],
                     f"{r['bytes_before']:,} -> {r['bytes_after']:,}{ratio}", err, r["runs"] + note + on))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
    lines = ["  ".join(f"{c:<{w}}" for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
    mode = record["mode"] + (f", group {record['group']}" if record["mode"] == "int4-weight" else "")
    lb, pb = record["layer_bytes"], record["params_bytes"]
    lines.insert(0, f"{record['model']} quantized {mode} (weights: {record['weights']}); errors on "
                    f"{record['error_batch']}")
    lines.append(f"weights listed: {lb['before']:,} -> {lb['after']:,} bytes ({_ratio(lb)}); all parameters: "
                 f"{pb['before']:,} -> {pb['after']:,} bytes ({_ratio(pb)})")
    v = record["validation"]
    p = record.get("pruned")
    if p:
        lines.insert(1, f"pruned first by `axon prune` ({p['settings']}): validation of the unpruned model "
                        f"{p['unpruned']}")
    if v is None:
        lines.append("validation: none (the model has no train block)")
    else:
        b, a = v["before"], v["after"]
        acc = (f"; acc {b['acc']:.2%} -> {a['acc']:.2%} ({100 * v['acc_change']:+.2f} points)"
               if "acc_change" in v else "")
        lines.append(f"validation ({v['examples']} examples): loss {b['loss']:.4f} -> {a['loss']:.4f} "
                     f"({v['loss_increase']:+.4f} nats){acc}")
    return "\n".join(line.rstrip() for line in lines)


def format_calibration(c: dict) -> str:
    """The int8-static calibration: per layer the largest |x| seen, the range taken, the scale and the
    share of the values clipped."""
    how = c["method"] + (f" {c['percentile']}" if "percentile" in c else "")
    lines = [f"calibration: {how} over {c['batches']} training batch(es) of {c['batch']}"]
    rows = [("layer input", "max |x|", "range", "scale", "clipped")]
    for name, r in c["layers"].items():
        rows.append((name, f"{r['amax']:.4g}", f"{r['threshold']:.4g}", f"{r['scale']:.4g}",
                     f"{r['clipped']:.3%}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(f"{c:<{w}}" for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _ratio(d: dict) -> str:
    return f"{d['after'] / d['before']:.1%}" if d["before"] else "-"


def write(record: dict, json_path: Path, png_path: Path) -> None:
    from axon.codegen.files import atomic_write

    atomic_write(json_path, json.dumps(record, indent=1) + "\n")
    plot(record, png_path)


def plot(record: dict, path: Path) -> None:
    """Bytes before and after, one pair of bars per layer (float fallbacks orange)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from axon.codegen.files import atomic_write

    rows = record["layers"]
    n = max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.32 * n), dpi=100)
    ys = range(len(rows))
    before = [r["bytes_before"] / 1024 for r in rows]
    after = [r["bytes_after"] / 1024 for r in rows]
    from matplotlib.patches import Patch

    ax.barh([y + 0.2 for y in ys], before, height=0.4, color="tab:gray")
    colors = ["tab:orange" if r["kind"] == "float" else "tab:blue" for r in rows]
    ax.barh([y - 0.2 for y in ys], after, height=0.4, color=colors)
    ax.legend(handles=[Patch(color="tab:gray", label="before (float)"),
                       Patch(color="tab:blue", label="after: quantized"),
                       Patch(color="tab:orange", label="after: left float")], loc="lower right", fontsize=7)
    ax.set_yticks(list(ys), [f"{r['layer']} ({r['kind']})" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("KiB")
    mode = record["mode"] + (f" g{record['group']}" if record["mode"] == "int4-weight" else "")
    ax.set_title(f"{record['model']}: weight bytes per layer, {mode}", fontsize=9)
    fig.tight_layout()
    try:
        atomic_write(path, writer=lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
