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
from pathlib import Path

import torch

from axon.ir import AxonError, Graph, OpKind, init_params
from axon.passes.structured import GRANULARITIES
from axon.prune_ledger import format_structured, format_table, ledger_record, structured_record
from axon.runtime.pruning import PruneError

PRUNED, MASKS, LEDGER_JSON = "pruned.safetensors", "masks.safetensors", "ledger.json"
FORMAT = "axon-pruning/1"
K = OpKind


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="prune a model's weights (magnitude), fine-tune, and write a ledger")
    p.add_argument("file", help="an .axon model with a train block (its validation data is measured)")
    p.add_argument("--model", default=None, help="the model to prune (default: the file's only one)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a hyper-parameter (an int, a float, true or false)")
    p.add_argument("--method", default="magnitude", choices=("magnitude", "structured", "block"),
                   help="magnitude: the entries of least |w| set to zero (torch.nn.utils.prune."
                        "l1_unstructured); structured: whole neurons, channels or heads removed, the graph "
                        "rewritten to the smaller shapes (ranked as ln_structured ranks them); block: "
                        "square blocks of least L1 norm removed, and the matmuls run block-sparse kernels "
                        "that skip them")
    p.add_argument("--amount", type=float, required=True, metavar="A",
                   help="the share removed, in [0, 1): of each weight's entries (magnitude; with --scope "
                        "global of all of them), or of each layer's neurons/channels/heads (structured)")
    p.add_argument("--granularity", default=None, metavar="G",
                   help="structured: neuron (a dense layer's outputs, the default), channel (a "
                        "convolution's), head (an attention's); block: block:16, block:32 (default) or "
                        "block:64; magnitude: element (default) or an N:M pattern such as 2:4 (N kept of "
                        "every M along K)")
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
        if args.granularity not in (None, *GRANULARITIES):
            raise AxonError(f"--method structured removes {', '.join(GRANULARITIES)}s, not "
                            f"'{args.granularity}'")
        return _structured(args, hparams, setup, params, origin, out)
    settings["granularity"] = _granularity(args)
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
    sparse = None
    if pruner.kind == "block":  # deployed through block-sparse kernels: their counters measured
        after, sparse = measure_block_sparse(setup, graph, params, pruner.layers, pruner.size)
    else:
        after = setup.metrics(graph, params)
    settings["layers"] = list(pruner.layers)
    record = ledger_record(setup, graph, params, masks, pruner, settings, origin, before, after, sparse)
    _write(out, graph, params, masks, settings, setup, hparams)
    from axon.codegen.files import atomic_write

    atomic_write(out / LEDGER_JSON, json.dumps(record, indent=1) + "\n")
    print(format_table(record))
    print(f"written: {out / PRUNED}, {out / MASKS}, {out / LEDGER_JSON}")
    return 0


def _granularity(args) -> str:
    """The mask's granularity for --method magnitude or block, checked."""
    from axon.runtime.pruning import parse_granularity

    default = "block:32" if args.method == "block" else "element"
    g = args.granularity or default
    try:
        kind, _ = parse_granularity(g)
    except PruneError as e:
        raise AxonError(str(e.args[0])) from None
    if (kind == "block") != (args.method == "block"):
        method = "block" if kind == "block" else "magnitude"
        raise AxonError(f"--granularity {g} goes with --method {method}")
    return g


def measure_block_sparse(setup, graph: Graph, params, layers, block: int):
    """The validation metrics of the model with `layers` as block-sparse matmuls, and per layer the block
    products their kernels executed over the validation set: with the weights' own block indices, and
    with every block listed (the dense count), both read from the kernels' counters."""
    from axon.driver import executable
    from axon.passes.block_sparse import BlockSparse, block_index, index_names
    from axon.trainer import validate

    params = {k: v for k, v in params.items() if k in graph.params}  # not a fine-tuning run's counters
    sgraph = BlockSparse(block, "|".join(layers)).run(graph)
    filled = {**params, **block_indices(params, layers, block)}
    dense = {**params, **{k: v for k, v in init_params(sgraph).items() if k not in params}}
    counts = {}
    for name, values in (("sparse", filled), ("dense", dense)):
        exe = executable(sgraph, setup.device)
        dev = {k: v.to(exe.device) for k, v in values.items() if k in sgraph.params}
        metrics = validate(exe, dev, setup.validation, setup.binding, setup.batch)
        counts[name] = {n: int(dev[index_names(n)[2]]) for n in layers}
        if name == "sparse":
            after = metrics
    blocks = {n: (int(block_index(params[n], block)[0][:, 0].sum()),
                  int(init_params(sgraph)[index_names(n)[0]][:, 0].sum())) for n in layers}
    return after, {"block": block, "tiles": counts["sparse"], "dense_tiles": counts["dense"],
                   "blocks": blocks}


def block_indices(params, layers, block: int) -> dict[str, torch.Tensor]:
    """The block-sparse parameters of `layers`: each weight's block indices and a zero counter."""
    from axon.passes.block_sparse import block_index, index_names

    out = {}
    for n in layers:
        i, it, t = index_names(n)
        out[i], out[it] = block_index(params[n], block)
        out[t] = torch.zeros(1, dtype=torch.int64)
    return out


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


def read_pruned(folder: str | Path) -> tuple[dict | None, dict, dict]:
    """The structure (None unless structured), the run settings and the pruning settings of
    DIR/pruned.safetensors."""
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
        settings = {**json.loads(meta.get("prune", "{}")), "model": meta.get("model")}
    except ValueError as e:
        raise AxonError(f"{path}: its metadata is damaged ({e})") from None
    return structure, run, settings


def _block(settings: dict) -> tuple[int, list[str]] | None:
    """(block, layers) of block pruning, else None."""
    g = str(settings.get("granularity", ""))
    return (int(g.split(":")[1]), list(settings.get("layers") or [])) if g.startswith("block:") else None


def pruned_graph(folder, graph: Graph) -> Graph:
    """`graph` as `axon prune` left it: with the recorded structure removed (structured), its block-pruned
    matmuls block-sparse (block), else unchanged."""
    structure, _, settings = read_pruned(folder)
    if settings.get("model") not in (None, graph.name):
        raise AxonError(f"{folder}: weights of model '{settings['model']}' pruned, not of '{graph.name}'")
    return apply_pruning(graph, structure, settings)


def apply_pruning(graph: Graph, structure: dict | None, settings: dict) -> Graph:
    """What `axon prune` recorded (its structure and settings), done to `graph`."""
    from axon.passes.structured import apply

    if structure:
        return apply(graph, structure)
    blocks = _block(settings)
    if blocks:  # the block-pruned weights' matmuls as block-sparse kernels
        from axon.passes.block_sparse import BlockSparse

        return BlockSparse(blocks[0], "|".join(blocks[1])).run(graph)
    return graph


def pruned_weights(folder, graph: Graph) -> dict[str, torch.Tensor]:
    """The pruned parameters for `graph` (pruned_graph's), block indices computed from the weights."""
    from axon.api import fitting_weights
    from axon.passes.block_sparse import index_names

    p = Path(folder)
    path = p / PRUNED if p.is_dir() else p
    blocks = _block(read_pruned(path)[2])
    if not blocks:
        return fitting_weights(graph, path)
    extra = {k for n in blocks[1] for k in index_names(n)}
    base = fitting_weights(Graph([n for n in graph.nodes if n.op != OpKind.PARAM or n.name not in extra],
                                 {}, graph.name), path)
    return {**base, **block_indices(base, blocks[1], blocks[0])}


def compiled(args, compile_graph, overrides: dict):
    """`axon run --pruned DIR`: the model with the recorded structure removed, compiled by the command's
    `compile_graph(args, graph)`, with the pruned weights (`overrides`: the command line's --set)."""
    from axon.driver import graph_of

    if args.weights:
        raise AxonError("--weights and --pruned both give the weights: the pruned folder holds them")
    _, run, _ = read_pruned(args.pruned)
    hparams = {**(run.get("hparams") or {}), **overrides}
    graph = graph_of(Path(args.file), args.model, hparams=hparams or None, training=args.training,
                     loss=args.loss)
    model, env = compile_graph(args, pruned_graph(args.pruned, graph))
    model.replace_params(pruned_weights(args.pruned, model.graph))
    return model, env


def evaluate(args, hparams: dict) -> dict[str, float]:
    """`axon eval --pruned DIR`: validation metrics of the pruned model."""
    from axon import ledger

    _, run, _ = read_pruned(args.pruned)
    hparams = {**(run.get("hparams") or {}), **hparams}
    setup = ledger.Setup.make(args.file, args.model, hparams,
                              args.seed if args.seed is not None else run.get("seed"),
                              args.batch or run.get("batch"), args.device)
    if setup.validation is None:
        raise AxonError(f"{args.file}: model '{setup.graph.name}' has no train block: nothing to validate on")
    graph = pruned_graph(args.pruned, setup.graph)
    return setup.metrics(graph, pruned_weights(args.pruned, graph))


