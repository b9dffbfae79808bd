"""`axon prune`: a trained model's weights pruned, optionally fine-tuned with the masks in the compiled
step, written with a ledger.

    axon prune FILE --method magnitude --amount A [--scope layer|global] [--weights W.safetensors]
               [--finetune EPOCHS] [--schedule oneshot|cubic] [--skip NAME ...] --out DIR

DIR/pruned.safetensors   the model's parameters, pruned entries zero: an ordinary model (`axon run
                         FILE --weights DIR/pruned.safetensors`, `axon eval`, `axon quantize --weights`)
DIR/masks.safetensors    one mask per pruned weight (1 keeps, 0 removes); its metadata: the settings
DIR/ledger.json          per layer: parameters and nonzeros, multiply-adds of a batch with and without
                         the zeros, the 32x32 weight tiles that are all zero, what runs it; validation
                         before and after
DIR/finetune/            with --finetune: the fine-tuning run (checkpoints, metrics), masks kept in its
                         compiled step so removed weights stay zero
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from axon.ir import AxonError, Graph, OpKind, init_params
from axon.ir.shapes import concrete
from axon.passes.structured import GRANULARITIES
from axon.runtime.pruning import PruneError, Pruner

PRUNED, MASKS, LEDGER_JSON = "pruned.safetensors", "masks.safetensors", "ledger.json"
FORMAT = "axon-pruning/1"
TILE = 32  # the weight tile a block-sparse matmul would skip (BLOCK_K x BLOCK_N)
K = OpKind


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="prune a model's weights (magnitude), fine-tune, and write a ledger")
    p.add_argument("file", help="an .axon model with a train block (its validation data is measured)")
    p.add_argument("--model", default=None, help="the model to prune (default: the file's only one)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a hyper-parameter (an int, a float, true or false)")
    p.add_argument("--method", default="magnitude", choices=("magnitude", "structured"),
                   help="magnitude: the entries of least |w| set to zero (torch.nn.utils.prune."
                        "l1_unstructured); structured: whole neurons, channels or heads removed, the graph "
                        "rewritten to the smaller shapes (ranked as ln_structured ranks them)")
    p.add_argument("--amount", type=float, required=True, metavar="A",
                   help="the share removed, in [0, 1): of each weight's entries (magnitude; with --scope "
                        "global of all of them), or of each layer's neurons/channels/heads (structured)")
    p.add_argument("--granularity", default=None, choices=GRANULARITIES,
                   help="structured: neuron (a dense layer's outputs), channel (a convolution's), head "
                        "(an attention's); default neuron")
    p.add_argument("--norm", type=float, default=2, metavar="N",
                   help="structured: rank by the Ln norm of the producing weights' slices (default 2)")
    p.add_argument("--scope", default="layer", choices=("layer", "global"),
                   help="layer: each weight by itself; global: the least |w| over all pruned weights")
    p.add_argument("--weights", default=None, metavar="W.safetensors",
                   help="the trained weights: a trainer's best/checkpoint file, or plain parameters")
    p.add_argument("--finetune", type=int, default=0, metavar="EPOCHS",
                   help="train this many epochs with the masks in the step (the train block's optimizer)")
    p.add_argument("--schedule", default="oneshot", choices=("oneshot", "cubic"),
                   help="with --finetune: prune all at once first, or along Zhu & Gupta's cubic ramp over "
                        "the first half of the epochs")
    p.add_argument("--skip", nargs="+", action="extend", default=[], metavar="NAME",
                   help="layers left dense: a parameter name, its layer (`logits`) or a glob")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder the results go to")
    p.add_argument("--batch", type=int, default=None, help="validation batch (default: the train block's)")
    p.add_argument("--seed", type=int, default=None, help="override the data split's seed")
    p.add_argument("--device", default=None, help="'cuda' or 'cpu' (default: CUDA when present)")


def command(args, hparams: dict) -> int:
    from axon import ledger
    from axon.quantize_cmd import _origin
    from axon.runtime.pruning import check_amount

    try:
        check_amount(args.amount, "--amount: the share")
    except PruneError as e:
        raise AxonError(str(e.args[0]), hint="0.9 removes nine entries in ten") from None
    if args.finetune < 0:
        raise AxonError(f"--finetune must be 0 or more epochs, got {args.finetune}")
    if args.schedule == "cubic" and not args.finetune:
        raise AxonError("--schedule cubic prunes gradually while fine-tuning: it needs --finetune EPOCHS")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise AxonError(f"--out {out}: exists and is not a folder")
    run = _origin(args.weights) if args.weights else {}
    hparams = {**run.get("hparams", {}), **hparams}
    setup = ledger.Setup.make(args.file, args.model, hparams, args.seed if args.seed is not None
                              else run.get("seed"), args.batch or run.get("batch"), args.device)
    if setup.spec is None:
        raise AxonError(f"{args.file}: pruning measures (and fine-tunes) on the train block's data, and "
                        f"this model has no train block")
    graph = setup.graph
    if args.weights:
        from axon.api import fitting_weights

        params, origin = fitting_weights(graph, args.weights), str(args.weights)
    else:
        params = init_params(graph, setup.seed)
        origin = f"the initializers (seed {setup.seed}): no --weights given"
        print("note: no --weights: pruning the initializers")
    settings = {"method": args.method, "amount": args.amount, "scope": args.scope,
                "schedule": args.schedule, "skip": list(args.skip)}
    if args.method == "structured":
        return _structured(args, hparams, setup, params, origin, out)
    if args.granularity is not None:
        raise AxonError("--granularity applies to --method structured (magnitude prunes single entries)")
    before = setup.metrics(graph, params)
    out.mkdir(parents=True, exist_ok=True)
    if args.finetune:
        params, masks, pruner = _finetune(args, hparams, settings, out, setup)
    else:
        from axon.trainer import TrainError, pruner as make_pruner

        try:
            pruner = make_pruner(graph, {**settings, "start": 0}, 1)
        except TrainError as e:
            raise AxonError(str(e.args[0])) from None
        masks = {n: torch.ones_like(params[n]) for n in pruner.layers}
        pruner.update(0, params, {}, masks)
    after = setup.metrics(graph, params)
    record = ledger_record(setup, graph, params, masks, pruner, settings, origin, before, after)
    _write(out, graph, params, masks, settings, setup, hparams)
    from axon.codegen.files import atomic_write

    atomic_write(out / LEDGER_JSON, json.dumps(record, indent=1) + "\n")
    print(format_table(record))
    print(f"written: {out / PRUNED}, {out / MASKS}, {out / LEDGER_JSON}")
    return 0


def _finetune(args, hparams, settings, out: Path, setup, init=None, structure=None):
    """Fine-tune from the weights with the pruning in the step (magnitude) or the smaller model
    (structured); returns the last parameters (not the best: the validation split that picks a best
    would then also grade it), the masks and the pruner (magnitude)."""
    from axon.trainer import Trainer

    prune = None if structure else {**settings, "start": 0, "end": max(1, args.finetune // 2)
                                    if args.schedule == "cubic" else None}
    tr = Trainer(args.file, args.model, hparams=hparams or None, device=args.device,
                 out_dir=out / "finetune", epochs=args.finetune, seed=setup.seed,
                 init=init or args.weights, prune=prune, structure=structure)
    tr.fit()
    params = {k: v.detach().cpu() for k, v in tr.params.items()}
    return params, {k: v.detach().cpu() for k, v in tr.masks.items()}, tr.pruner


def _write(out: Path, graph: Graph, params, masks, settings, setup, hparams, structure=None) -> None:
    from axon.runtime.safetensors import save

    meta = {"format": FORMAT, "model": graph.name, "prune": json.dumps(settings, sort_keys=True),
            "run": json.dumps({"seed": setup.seed, "batch": setup.batch, "hparams": hparams}, sort_keys=True)}
    if structure is not None:
        meta["structure"] = json.dumps(structure, sort_keys=True)
    save({n: params[n].detach().cpu().contiguous() for n in graph.params}, out / PRUNED, meta)
    if masks is not None:
        save({n: m.detach().cpu().contiguous() for n, m in masks.items()}, out / MASKS, meta)


# --- structured ------------------------------------------------------------------------------------
def _structured(args, hparams, setup, params, origin, out: Path) -> int:
    from axon.codegen.files import atomic_write
    from axon.passes.structured import apply, candidates, plan

    if args.scope != "layer" or args.schedule != "oneshot":
        raise AxonError("--scope and --schedule apply to --method magnitude (structured pruning removes "
                        "each layer's share at once)")
    granularity = args.granularity or "neuron"
    graph, skip = setup.graph, tuple(args.skip)
    cands = candidates(graph, granularity, skip)
    structure = plan(graph, params, granularity, args.amount, args.norm, skip)
    small, sparams = apply(graph, structure, params)
    settings = {"method": "structured", "amount": args.amount, "granularity": granularity,
                "norm": args.norm, "skip": list(skip)}
    before = setup.metrics(graph, params)
    out.mkdir(parents=True, exist_ok=True)
    _write(out, small, sparams, None, settings, setup, hparams, structure)
    if args.finetune:
        sparams, _, _ = _finetune(args, hparams, settings, out, setup, init=out / PRUNED, structure=structure)
        _write(out, small, sparams, None, settings, setup, hparams, structure)
    after = setup.metrics(small, sparams)
    record = structured_record(setup, graph, small, params, sparams, cands, structure, settings, origin,
                               before, after)
    atomic_write(out / LEDGER_JSON, json.dumps(record, indent=1) + "\n")
    print(format_structured(record))
    print(f"written: {out / PRUNED} (with the structure in its metadata: `axon run/eval FILE --pruned "
          f"{out}`), {out / LEDGER_JSON}")
    return 0


def read_pruned(folder: str | Path) -> tuple[dict | None, dict]:
    """The structure (None for magnitude pruning) and run settings of DIR/pruned.safetensors."""
    from axon.runtime.safetensors import load_metadata

    p = Path(folder)
    path = p / PRUNED if p.is_dir() or not p.suffix else p
    if not path.is_file():
        raise AxonError(f"{path}: no such file", hint="write one with `axon prune FILE ... --out DIR`")
    meta = load_metadata(path)
    if meta.get("format") != FORMAT:
        raise AxonError(f"{path}: not a file written by `axon prune` (its metadata has no 'format': "
                        f"{FORMAT})")
    try:
        structure = json.loads(meta["structure"]) if "structure" in meta else None
        run = json.loads(meta.get("run", "{}"))
    except ValueError as e:
        raise AxonError(f"{path}: its metadata is damaged ({e})") from None
    return structure, run


def pruned_graph(folder, graph: Graph) -> Graph:
    """`graph` as `axon prune` left it: with the recorded structure removed (magnitude: unchanged)."""
    from axon.passes.structured import apply

    structure, _ = read_pruned(folder)
    return apply(graph, structure) if structure else graph


def pruned_weights(folder, graph: Graph) -> dict[str, torch.Tensor]:
    from axon.api import fitting_weights

    p = Path(folder)
    return fitting_weights(graph, p / PRUNED if p.is_dir() else p)


def compiled(args, compile_graph):
    """`axon run --pruned DIR`: the model with the recorded structure removed, compiled by the command's
    `compile_graph(args, graph)`, with the pruned weights."""
    from axon.driver import graph_of

    if args.weights:
        raise AxonError("--weights and --pruned both give the weights: the pruned folder holds them")
    _, run = read_pruned(args.pruned)
    hparams = {**(run.get("hparams") or {}), **dict(_overrides(args))}
    graph = graph_of(Path(args.file), args.model, hparams=hparams or None, training=args.training,
                     loss=args.loss)
    model, env = compile_graph(args, pruned_graph(args.pruned, graph))
    params = pruned_weights(args.pruned, model.graph)
    if model.graphs is not None:
        with torch.no_grad():
            for name, t in model.params.items():
                t.copy_(params[name])
    else:
        model.params = {k: v.to(model.device) for k, v in params.items()}
    return model, env


def _overrides(args):
    from axon.cli import override

    return [override(s) for s in args.set]


def evaluate(args, hparams: dict) -> dict[str, float]:
    """`axon eval --pruned DIR`: validation metrics of the pruned model."""
    from axon import ledger

    _, run = read_pruned(args.pruned)
    hparams = {**(run.get("hparams") or {}), **hparams}
    setup = ledger.Setup.make(args.file, args.model, hparams,
                              args.seed if args.seed is not None else run.get("seed"),
                              args.batch or run.get("batch"), args.device)
    if setup.validation is None:
        raise AxonError(f"{args.file}: model '{setup.graph.name}' has no train block: nothing to validate on")
    graph = pruned_graph(args.pruned, setup.graph)
    return setup.metrics(graph, pruned_weights(args.pruned, graph))


def structured_record(setup, graph, small, params, sparams, cands, structure, settings, origin, before,
                      after) -> dict:
    from axon.passes.quantize import weight_uses

    env = setup.sizes(graph)
    old, new = weight_uses(graph), weight_uses(small)
    layers = []
    for c in cands:
        row = {"layer": c.name, "seed": c.label, "pruned": c.group is not None, "reason": c.reason}
        if c.group is not None:
            keep = structure["keep"][c.label]
            names = sorted(c.group.params())
            row.update(channels=c.group.channels, kept=len(keep), weights=names,
                       params_before=sum(params[n].numel() for n in names),
                       params_after=sum(sparams[n].numel() for n in names))
        layers.append(row)
    weights = []
    for name, u in old.items():
        if not u.sites:
            continue
        small_env = setup.sizes(small)
        weights.append({"weight": name, "shape_before": list(params[name].shape),
                        "shape_after": list(sparams[name].shape),
                        "macs_before": sum(_macs(s, env) for s in u.sites),
                        "macs_after": sum(_macs(s, small_env) for s in new[name].sites)})
    return {"model": graph.name, "file": setup.file, "weights": origin, "settings": settings,
            "batch": setup.batch, "layers": layers, "weight_shapes": weights,
            "params": {"before": sum(p.numel() for p in params.values()),
                       "after": sum(p.numel() for p in sparams.values())},
            "macs": {"before": sum(w["macs_before"] for w in weights),
                     "after": sum(w["macs_after"] for w in weights)},
            "validation": _validation(setup, before, after)}


def format_structured(record: dict) -> str:
    s = record["settings"]
    lines = [f"{record['model']} pruned: structured, {s['granularity']}s, amount {s['amount']}, "
             f"L{s['norm']:g} norm (weights: {record['weights']}); MACs at batch {record['batch']}"]
    rows = [("layer", "kept", "its weights' parameters", "or why not pruned")]
    for r in record["layers"]:
        if r["pruned"]:
            rows.append((r["layer"], f"{r['kept']} of {r['channels']}",
                         f"{r['params_before']:,} -> {r['params_after']:,}", ", ".join(r["weights"])))
        else:
            rows.append((r["layer"], "-", "-", r["reason"]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines += ["  ".join(f"{c:<{w}}" for c, w in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    rows = [("weight", "shape before -> after", "MACs per batch before -> after")]
    for w in record["weight_shapes"]:
        rows.append((w["weight"], f"{'x'.join(map(str, w['shape_before']))} -> "
                                  f"{'x'.join(map(str, w['shape_after']))}",
                     f"{w['macs_before']:,} -> {w['macs_after']:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines += ["  ".join(f"{c:<{w}}" for c, w in zip(row[:2], widths)) + "  " + row[2] for row in rows]
    p, m = record["params"], record["macs"]
    lines.append(f"parameters {p['before']:,} -> {p['after']:,} ({p['after'] / p['before']:.1%}); "
                 f"matmul/conv multiply-adds {m['before']:,} -> {m['after']:,} "
                 f"({m['after'] / max(m['before'], 1):.1%})")
    lines.append(_validation_line(record["validation"]))
    return "\n".join(line.rstrip() for line in lines)


# --- the ledger ------------------------------------------------------------------------------------
def ledger_record(setup, graph: Graph, params, masks, pruner: Pruner, settings, origin, before,
                  after) -> dict:
    from axon.passes.masks import prunable
    from axon.passes.quantize import weight_uses

    env = setup.sizes(graph)
    uses = weight_uses(graph)
    why = prunable(graph, tuple(settings["skip"]))
    rows = []
    for name, reason in why.items():
        w = params[name]
        macs = sum(_macs(site, env) for site in uses[name].sites)
        nonzero = int((w != 0).sum())
        tiles, empty = _tiles(w, uses[name].sites[0].op if uses[name].sites else None)
        rows.append({
            "layer": name, "op": uses[name].sites[0].op.value if uses[name].sites else "-",
            "shape": list(w.shape), "params": w.numel(), "nonzero": nonzero,
            "sparsity": 1 - nonzero / w.numel() if w.numel() else 0.0,
            "bytes_before": w.numel() * w.element_size(), "bytes_after": w.numel() * w.element_size(),
            "macs": macs, "macs_nonzero": round(macs * nonzero / w.numel()) if w.numel() else 0,
            "tiles": tiles, "tiles_empty": empty,
            "runs": "dense " + (uses[name].sites[0].op.value if uses[name].sites else "op")
                    + (f": the zeros are multiplied ({empty} of {tiles} {TILE}x{TILE} weight tiles all zero; "
                       f"block pruning lets a kernel skip them)" if reason is None else ""),
            "pruned": reason is None, "reason": reason})
    listed = [r for r in rows if r["pruned"]]
    total = sum(r["params"] for r in listed)
    record = {"model": graph.name, "file": setup.file, "weights": origin, "settings": settings,
              "schedule": pruner.record(), "batch": setup.batch, "layers": rows,
              "pruned": {"params": total, "nonzero": sum(r["nonzero"] for r in listed),
                         "macs": sum(r["macs"] for r in listed),
                         "macs_nonzero": sum(r["macs_nonzero"] for r in listed)},
              "validation": _validation(setup, before, after)}
    return record


def _macs(site, env) -> int:
    """Multiply-adds of one matmul or conv2d node at the measured sizes."""
    out = math.prod(concrete(site.shape, env))
    if site.op == K.MATMUL:
        return out * concrete(site.inputs[0].shape, env)[-1]
    return out * math.prod(concrete(site.inputs[1].shape, env)[1:])  # conv2d: C_in/groups * kh * kw


def _tiles(w: torch.Tensor, op) -> tuple[int, int]:
    """The TILE x TILE tiles of the weight as the kernel reads it (a matmul's [K, N]; a conv's
    [C_out, C_in*kh*kw]) and how many are all zero."""
    m = w.reshape(w.shape[0], -1) if op == K.CONV2D else w.reshape(-1, w.shape[-1])
    rows, cols = -(-m.shape[0] // TILE), -(-m.shape[1] // TILE)
    padded = torch.zeros(rows * TILE, cols * TILE, dtype=torch.bool)
    padded[:m.shape[0], :m.shape[1]] = m != 0
    nonzero = padded.view(rows, TILE, cols, TILE).any(dim=3).any(dim=1)
    return rows * cols, int((~nonzero).sum())


def _validation(setup, before, after) -> dict:
    from axon import data as datasets

    v = {"examples": datasets.num_examples(setup.validation), "before": before, "after": after,
         "loss_increase": after["loss"] - before["loss"]}
    if "acc" in before:
        v["acc_change"] = after["acc"] - before["acc"]
    return v


def format_table(record: dict) -> str:
    head = ("layer", "op", "weight", "nonzero / params", "MACs per batch: all -> nonzero",
            "runs / why not pruned")
    rows = [head]
    for r in record["layers"]:
        rows.append((r["layer"], r["op"], "x".join(map(str, r["shape"])),
                     f"{r['nonzero']:,} / {r['params']:,} ({r['sparsity']:.1%} zero)",
                     f"{r['macs']:,} -> {r['macs_nonzero']:,}",
                     r["runs"] if r["pruned"] else f"dense: {r['reason']}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
    lines = ["  ".join(f"{c:<{w}}" for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
    s = record["settings"]
    lines.insert(0, f"{record['model']} pruned: {s['method']}, amount {s['amount']}, scope {s['scope']}, "
                    f"schedule {s['schedule']} (weights: {record['weights']}); MACs at batch "
                    f"{record['batch']}")
    p = record["pruned"]
    lines.append(f"pruned weights: {p['nonzero']:,} of {p['params']:,} nonzero "
                 f"({1 - p['nonzero'] / max(p['params'], 1):.1%} removed); their multiply-adds "
                 f"{p['macs']:,} -> {p['macs_nonzero']:,} nonzero (the dense kernels still execute all)")
    lines.append(_validation_line(record["validation"]))
    return "\n".join(line.rstrip() for line in lines)


def _validation_line(v: dict) -> str:
    b, a = v["before"], v["after"]
    acc = (f"; acc {b['acc']:.2%} -> {a['acc']:.2%} ({100 * v['acc_change']:+.2f} points)"
           if "acc_change" in v else "")
    return (f"validation ({v['examples']} examples): loss {b['loss']:.4f} -> {a['loss']:.4f} "
            f"({v['loss_increase']:+.4f} nats){acc}")
