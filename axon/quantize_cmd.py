"""`axon quantize`: a model's weights quantized by the `quantize` pass, written with a ledger; and the
quantized model that `axon run --quantized DIR` and `axon eval --quantized DIR` compile.

    axon quantize FILE --mode int8-weight|int4-weight [--group 64] [--weights W.safetensors]
                  [--skip NAME ...] [--min-size N] --out DIR

DIR/quantized.safetensors   the quantized model's parameters: `<name>.q` and `<name>.scale` for each
                            quantized weight, every other parameter as it was; its metadata names the
                            format, the model, the pass options (mode, group, skip, min_size) and the
                            settings of the run the weights came from (seed, batch, hparams)
DIR/ledger.json, ledger.png what was done to each layer, bytes before/after, the layer's relative output
                            error, what runs it, validation loss/accuracy before and after (axon.ledger)

A model with a train block is measured on its validation split (as `axon eval` does); without one, the
layers' errors are measured on random inputs and no validation is reported.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from axon.ir import AxonError, Graph, init_params
from axon.passes.manager import DEFAULT_PIPELINE, format_pass
from axon.passes.quantize import GROUPS, MIN_SIZE, MODES, Quantize, QuantizeError

QUANTIZED, LEDGER_JSON, LEDGER_PNG = "quantized.safetensors", "ledger.json", "ledger.png"
FORMAT = "axon-weight-quantization/1"
META_FORMAT, META_MODEL, META_PASS, META_RUN = "format", "model", "quantize", "run"
META_PRUNING = "pruning"


@dataclass(frozen=True)
class Settings:
    """The pass's options, as the quantized file's metadata records them."""

    mode: str
    group: int = 64
    skip: tuple[str, ...] = ()
    min_size: int = MIN_SIZE

    def make_pass(self) -> Quantize:
        for name in self.skip:
            if not name or set(name) & set("|,{}="):
                raise QuantizeError(f"--skip '{name}': a layer name or glob pattern (letters, digits, "
                                    f"'.', '_', '*', '?')")
        return Quantize(self.mode, self.group, "|".join(self.skip), self.min_size)

    @property
    def pipeline(self) -> str:
        """The clean-up pipeline, then the quantize pass and dead code elimination."""
        return f"{DEFAULT_PIPELINE},{format_pass(self.make_pass())},dce"

    def record(self) -> dict:
        return {"mode": self.mode, "group": self.group, "skip": list(self.skip), "min_size": self.min_size}

    @classmethod
    def from_record(cls, raw: str, path: Path) -> Settings:
        try:
            rec = json.loads(raw)
            s = cls(rec["mode"], rec["group"], tuple(rec["skip"]), rec["min_size"])
        except (ValueError, KeyError, TypeError) as e:
            raise QuantizeError(f"{path}: its '{META_PASS}' metadata is damaged ({e})") from None
        if s.mode not in MODES:
            raise QuantizeError(f"{path}: its metadata names mode '{s.mode}'; the modes are "
                                f"{', '.join(MODES)}")
        if s.group not in GROUPS or not isinstance(s.min_size, int) or s.min_size < 0 \
                or not all(isinstance(n, str) for n in s.skip):
            raise QuantizeError(f"{path}: its '{META_PASS}' metadata is damaged ({raw})")
        return s


# --- reading a quantized folder ----------------------------------------------------------------------
@dataclass(frozen=True)
class Quantized:
    """A quantized folder's file, its pass settings and the run settings of the weights' origin."""

    path: Path
    settings: Settings
    model: str
    run: dict            # seed, batch, hparams (those known)
    pruning: dict | None = None  # `axon prune`'s {"structure", "settings"}: a pruned model, quantized


def add_parser(sub) -> None:
    """`axon quantize`'s arguments, on the CLI's subparsers."""
    q = sub.add_parser("quantize", help="quantize a model's weights (weight-only int8/int4) with a ledger")
    q.add_argument("file", help="an .axon model (with a train block: its validation data is measured)")
    q.add_argument("--model", default=None, help="the model to quantize (default: the file's only one)")
    q.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a hyper-parameter (an int, a float, true or false)")
    q.add_argument("--mode", default=None, choices=MODES,
                   help="(default: the file's quantize block) int8-weight: i8 codes, a scale per output "
                        "channel; "
                        "int4-weight: two codes a byte, "
                        "a scale per --group elements along the contraction axis; int8-dynamic: int8 "
                        "weights, activations quantized per row at run time, i8 x i8 -> i32 matmuls; "
                        "fp8: the same with e4m3 codes (fp8 tensor cores, sm_89+)")
    q.add_argument("--group", type=int, default=None, choices=GROUPS,
                   help="int4-weight group size (default 64)")
    q.add_argument("--weights", default=None, metavar="W.safetensors",
                   help="the float weights: a trainer's best.safetensors or checkpoint.safetensors (its "
                        "run's seed and batch then pick the validation data), or plain parameters "
                        "(default: the initializers)")
    q.add_argument("--pruned", default=None, metavar="DIR",
                   help="quantize the model `axon prune` wrote to DIR (its structure, its weights): the "
                        "ledger shows each layer's zeros beside its codes")
    q.add_argument("--skip", nargs="+", action="extend", default=None, metavar="NAME",
                   help="layers left float: a parameter name, its layer (`logits`) or a glob (`block.*.up*`)")
    q.add_argument("--min-size", type=int, default=None, metavar="N",
                   help=f"weights of fewer elements stay float (default {MIN_SIZE})")
    q.add_argument("--out", required=True, metavar="DIR",
                   help="the folder quantized.safetensors and the ledger go to")
    q.add_argument("--batch", type=int, default=None, help="validation batch (default: the train block's)")
    q.add_argument("--seed", type=int, default=None, help="override the data split's seed")
    q.add_argument("--device", default=None, help="'cuda' or 'cpu' (default: CUDA when present)")
    q.add_argument("--calibrate", type=int, default=None, metavar="N",
                   help="int8-static: batches of the train block's training split to measure each "
                        "layer's activation range on (default 16)")
    q.add_argument("--method", default=None, choices=("minmax", "percentile", "entropy"),
                   help="int8-static: the range from the largest |x| seen (minmax), a percentile of |x| "
                        "(percentile), or the KL-divergence minimum of TensorRT (entropy)")
    q.add_argument("--percentile", type=float, default=None, metavar="P",
                   help="the percentile --method percentile takes (default 99.99)")
    q.add_argument("--sensitivity", action="store_true",
                   help="also quantize each layer alone and rank the layers by what that costs (accuracy "
                        "points, or nats of validation loss for a model without accuracy): printed, in "
                        "ledger.json and sensitivity.png")
    q.add_argument("--max-drop", type=float, default=None, metavar="X",
                   help="leave float the layers that cost more than X alone (implies --sensitivity)")
    q.add_argument("--target", default="sm_90", metavar="sm_NN|none",
                   help="also compile each quantized layer's kernels ahead of time for this GPU and show "
                        "their tensor-core instructions, registers and spills (default sm_90; no GPU "
                        "needed); 'none' skips it")


def read(folder: str | Path) -> Quantized:
    """The settings of DIR/quantized.safetensors (or of that file named directly), header checked."""
    from axon.runtime.safetensors import load_metadata

    p = Path(folder)
    path = p / QUANTIZED if p.is_dir() or not p.suffix else p
    if not path.is_file():
        raise QuantizeError(f"{path}: no such file", hint="write one with `axon quantize FILE --mode ... "
                                                          "--out DIR`")
    meta = load_metadata(path)  # a damaged header: SafetensorsError naming the file
    if meta.get(META_FORMAT) != FORMAT:
        raise QuantizeError(f"{path}: not a file written by `axon quantize` (its metadata has no "
                            f"'{META_FORMAT}': {FORMAT})")
    settings = Settings.from_record(meta.get(META_PASS, ""), path)
    try:
        run = json.loads(meta.get(META_RUN, "{}"))
        assert isinstance(run, dict)
        pruning = json.loads(meta[META_PRUNING]) if META_PRUNING in meta else None
        assert pruning is None or isinstance(pruning, dict)
    except (ValueError, AssertionError):
        raise QuantizeError(f"{path}: its '{META_RUN}' or '{META_PRUNING}' metadata is damaged") from None
    return Quantized(path, settings, meta.get(META_MODEL, ""), run, pruning)


def pruned(q: Quantized, graph: Graph) -> Graph:
    """`graph` pruned as the model was before it was quantized (unchanged when it was not)."""
    if not q.pruning:
        return graph
    from axon.prune_cmd import apply_pruning

    return apply_pruning(graph, q.pruning.get("structure"), q.pruning.get("settings") or {})


def fit(q: Quantized, graph: Graph, device=None) -> dict[str, torch.Tensor]:
    """The file's tensors (checksums verified) as the parameters of the quantized `graph`: names,
    shapes and dtypes must match, else a QuantizeError saying what differs."""
    from axon.api import _type_of
    from axon.runtime.safetensors import load

    if q.model and q.model != graph.name:
        raise QuantizeError(f"{q.path}: quantized weights of model '{q.model}', not '{graph.name}'")
    tensors = load(q.path)
    problems = []
    missing = [n for n in graph.params if n not in tensors]
    unexpected = [n for n in tensors if n not in graph.params]
    if missing:
        problems.append("missing " + ", ".join(f"'{n}'" for n in missing[:6]))
    if unexpected:
        problems.append("unexpected " + ", ".join(f"'{n}'" for n in unexpected[:6]))
    for name, node in graph.params.items():
        t = tensors.get(name)
        if t is not None and (tuple(t.shape) != tuple(node.shape) or t.dtype != node.dtype.torch):
            problems.append(f"'{name}' is {_type_of(t)}, the model under {q.settings.mode} wants {node.type}")
    if problems:
        s = q.settings
        raise QuantizeError(f"{q.path}: the quantized weights do not fit {graph.name} quantized with mode "
                            f"{s.mode}" + (f", group {s.group}" if s.mode == "int4-weight" else "") + ": "
                            + "; ".join(problems[:8]),
                            hint="the file's metadata names a mode or options its tensors were not made "
                                 "with, or the model changed since: quantize it again")
    return {n: tensors[n].to(device) if device is not None else tensors[n] for n in graph.params}


# --- `axon quantize` ----------------------------------------------------------------------------------
def command(args, hparams: dict) -> int:
    from axon import ledger
    from axon.passes.quant_weights import convert
    from axon.codegen.target import parse as parse_target
    from axon.runtime.safetensors import save

    _defaults(args)
    settings = Settings(args.mode, args.group, tuple(args.skip), args.min_size)
    settings.make_pass()
    if args.min_size < 0:
        raise QuantizeError(f"--min-size must be >= 0, got {args.min_size}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise QuantizeError(f"--out {out}: exists and is not a folder")
    run, pruned = _source(args)
    hparams = {**run.get("hparams", {}), **hparams}
    if args.batch is not None:
        run["batch"] = args.batch
    if args.seed is not None:
        run["seed"] = args.seed
    setup = ledger.Setup.make(args.file, args.model, hparams, run.get("seed"), run.get("batch"),
                              args.device)
    if args.pruned:  # the smaller (or block-sparse) model, as pruned
        from axon.prune_cmd import pruned_graph

        setup.graph = pruned_graph(args.pruned, setup.graph)
    graph, qgraph = setup.graph, setup.quantized(settings)
    params, origin = _weights(args, graph, setup.seed)
    layers = settings.make_pass().plan(graph)
    act_amax, calibration = _calibrate(args, setup, layers, params) if settings.mode == "int8-static" \
        else (None, None)
    sens = None
    if args.sensitivity or args.max_drop is not None:
        from axon import sensitivity

        sens = sensitivity.rank(setup, settings, layers, params, act_amax)
        print(sensitivity.format_ranking(sens, args.max_drop))
        costly = sensitivity.over(sens, args.max_drop) if args.max_drop is not None else {}
        if costly:  # quantized again with them left float
            settings = replace(settings, skip=tuple(settings.skip) + tuple(costly))
            qgraph = setup.quantized(settings)
            layers = sensitivity.skipped_layers(layers, costly, args.max_drop, sens["unit"])
    qparams = {**params, **convert(layers, params, act_amax)}
    qparams = {n: qparams[n].detach().cpu().contiguous() for n in qgraph.params}
    out.mkdir(parents=True, exist_ok=True)
    if sens is not None:
        sens["max_drop"] = args.max_drop
        sensitivity.plot(sens, out / "sensitivity.png", args.max_drop)
    run = {"seed": setup.seed, "batch": setup.batch, "hparams": hparams}
    meta = {META_FORMAT: FORMAT, META_MODEL: graph.name, META_PASS: json.dumps(settings.record()),
            META_RUN: json.dumps(run, sort_keys=True)}
    if pruned is not None:
        meta[META_PRUNING] = json.dumps(pruned["pruning"], sort_keys=True)
    save(qparams, out / QUANTIZED, meta)
    target = None if args.target == "none" else parse_target(args.target)
    record = ledger.measure(setup, settings, layers, params, qgraph, qparams, origin, target)
    if pruned is not None:
        record["pruned"] = {k: v for k, v in pruned.items() if k != "pruning"}
    if sens is not None:
        record["sensitivity"] = sens
    if calibration:
        record["calibration"] = calibration
        print(ledger.format_calibration(calibration))
    ledger.write(record, out / LEDGER_JSON, out / LEDGER_PNG)
    print(ledger.format_table(record))
    extra = f", {out / 'sensitivity.png'}" if sens is not None else ""
    print(f"written: {out / QUANTIZED}, {out / LEDGER_JSON}, {out / LEDGER_PNG}{extra}")
    return 0


DEFAULTS = {"group": 64, "skip": [], "min_size": MIN_SIZE, "calibrate": 16, "method": "minmax",
            "percentile": 99.99}


def _defaults(args) -> None:
    """Settings the command line leaves out, from the file's `quantize` block, else the defaults; the
    mode from one of them."""
    spec = None
    if str(args.file).endswith(".axon"):
        from axon.driver import load_ast
        from axon.frontend import quantize_spec

        spec = quantize_spec(load_ast(args.file), args.model)
    for name, default in {"mode": None, **DEFAULTS}.items():
        if getattr(args, name) is None:
            given = getattr(spec, name, None) if spec is not None else None
            setattr(args, name, list(given) if name == "skip" and given is not None else
                    given if given is not None else default)
    if args.mode is None:
        raise QuantizeError(f"{args.file}: no quantization mode: give --mode, or `mode = ...` in a "
                            f"`quantize` block for the model",
                            hint=f"the modes: {', '.join(MODES)}")


def _calibrate(args, setup, layers, params) -> tuple[dict[str, float], dict]:
    """int8-static: each layer's activation range over `--calibrate` training batches by `--method`."""
    from axon.passes.quantize import weight_uses
    from axon.runtime.calibrate import calibrate

    if args.calibrate < 1:
        raise QuantizeError(f"--calibrate {args.calibrate}: int8-static needs at least one batch of "
                            f"calibration data")
    uses = weight_uses(setup.graph)
    taps = {layer.name: [site.inputs[0] for site in uses[layer.name].sites]
            for layer in layers if layer.kind == "st8"}
    observers = calibrate(setup.graph, params, taps, setup.calibration(args.calibrate), args.method,
                          args.percentile)
    rows = {}
    for name, o in observers.items():
        t = o.threshold()
        rows[name] = {"amax": o.amax, "threshold": t, "scale": t / 127, "clipped": o.clipped(t),
                      "values": o.count}
    batches = min(args.calibrate, -(-len(next(iter(setup.data.train.values()))) // setup.batch))
    record = {"method": args.method, "batches": batches, "batch": setup.batch, "layers": rows,
              **({"percentile": args.percentile} if args.method == "percentile" else {})}
    return {name: r["threshold"] for name, r in rows.items()}, record


def _source(args) -> tuple[dict, dict | None]:
    """The run settings the weights come with (seed, batch, hparams), and with --pruned what pruning
    did (for the ledger)."""
    if args.pruned and args.weights:
        raise QuantizeError("--weights and --pruned both give the weights: the pruned folder holds them")
    if not args.pruned:
        return (_origin(args.weights) if args.weights else {}), None
    from axon.prune_cmd import read_pruned

    structure, run, prune_settings = read_pruned(args.pruned)
    pruned = {"settings": {k: v for k, v in prune_settings.items() if k not in ("layers", "model")},
              "unpruned": _unpruned(args.pruned),
              "pruning": {"structure": structure, "settings": prune_settings}}
    return {k: v for k, v in run.items() if v is not None}, pruned


def _weights(args, graph: Graph, seed: int) -> tuple[dict, str]:
    """The float weights to quantize, and where they come from."""
    if args.pruned:
        from axon.prune_cmd import pruned_weights

        return pruned_weights(args.pruned, graph), f"{args.pruned} (pruned)"
    if args.weights:
        from axon.api import fitting_weights

        return fitting_weights(graph, args.weights), str(args.weights)
    origin = f"the initializers (seed {seed}): no --weights given"
    print(f"note: no --weights: quantizing {origin.split(':')[0]}")
    return init_params(graph, seed), origin


def _unpruned(folder) -> str:
    """The unpruned model's validation, as `axon prune` measured it (its ledger beside the weights)."""
    try:
        v = json.loads((Path(folder) / "ledger.json").read_text())["validation"]["before"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown (no ledger.json beside the pruned weights)"
    return f"loss {v['loss']:.4f}" + (f", acc {v['acc']:.2%}" if "acc" in v else "")


def _origin(weights: str | Path) -> dict:
    """The run settings (seed, batch, hparams) of a trainer's checkpoint, so the validation split is the
    run's own; {} for a file of plain parameters."""
    from axon.runtime import checkpoint
    from axon.runtime.safetensors import load_metadata

    p = Path(weights)
    if not p.is_file():
        raise AxonError(f"--weights {p}: no such file")
    meta = load_metadata(p)
    if "progress" not in meta:
        return {}
    run = checkpoint.run_record(p, meta) or {}
    return {k: run[k] for k in ("seed", "batch", "hparams") if run.get(k) is not None}


# --- `axon run --quantized`, `axon eval --quantized` --------------------------------------------------------
def compiled(args, compile_model, overrides: dict):
    """`axon run --quantized`: the model compiled through the file's quantize pass (by the command's own
    `compile_model(args, pipeline, hparams)`), its parameters the file's; and the dimension sizes
    (`overrides`: the command line's --set)."""
    if args.weights:
        raise QuantizeError("--weights and --quantized both give the weights: the quantized folder holds "
                            "them")
    q = read(args.quantized)
    graph = None
    if q.pruning:  # the pruned model, then the quantize pass
        from axon.driver import graph_of

        hp = {**(q.run.get("hparams") or {}), **overrides}
        graph = pruned(q, graph_of(Path(args.file), args.model, hparams=hp or None, training=args.training,
                                   loss=args.loss))
    model, env = compile_model(args, q.settings.pipeline, q.run.get("hparams"), graph=graph)
    model.replace_params(fit(q, model.graph, model.device))
    return model, env


def evaluate(args, hparams: dict) -> dict[str, float]:
    """The validation metrics of the quantized model in args.quantized (as `axon eval` measures them)."""
    from axon import ledger

    for name in ("epochs", "batch"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise QuantizeError(f"--{name} must be at least 1, got {value}")
    q = read(args.quantized)
    hparams = {**q.run.get("hparams", {}), **hparams}
    setup = ledger.Setup.make(args.file, args.model, hparams,
                              args.seed if args.seed is not None else q.run.get("seed"),
                              args.batch or q.run.get("batch"), args.device)
    if setup.validation is None:
        raise QuantizeError(f"{args.file}: model '{setup.graph.name}' has no train block: nothing to "
                            f"validate on", hint="use `axon run FILE --quantized DIR`")
    setup.graph = pruned(q, setup.graph)
    qgraph = setup.quantized(q.settings)
    return setup.metrics(qgraph, fit(q, qgraph))
