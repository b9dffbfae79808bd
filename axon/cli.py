"""The `axon` command line.

    axon check FILE                          parse, elaborate and verify; exit 0, or 1 with the error
    axon show FILE                           the IR after the clean-up pipeline
    axon show FILE --stage ast|ir|PASS       the AST, the graph as written/elaborated, or after a pass
    axon show FILE --params                  parameters with shapes, initializers and counts
    axon show FILE --print-after-all --time  every pass's output and a timing table
    axon show FILE --dot                     the graph in Graphviz DOT
    axon show FILE --stage triton            the generated Triton kernels
    axon show FILE --memory [--batch N] [--dim NAME=N] [--step]
                                             the memory plan (buffers shared by liveness, peak bytes);
                                             --step: of the whole training step
    axon show FILE --saved                   what a compiled model used from torch.autograd saves for
                                             its backward, and what the backward recomputes
    axon run FILE [--inputs x.npz] [--weights w.safetensors] [--batch N] [--check] [--cuda-graphs]
                                             run the model's kernels; print each output's statistics
                                             (--check: and its error against the reference evaluator)
    axon compile FILE --target sm_90 [--step] [--dtype bf16 | --precision bf16] [--tf32] [--json OUT]
                                             compile every kernel (forward, or the whole training step)
                                             ahead of time for a GPU target, on any machine: a table of
                                             registers, spills, shared memory, tensor-core instructions,
                                             occupancy and compile time per kernel and config; exit 1 if
                                             a kernel has no config that compiles, launches, no spills
    axon compile FILE --emit DIR             write each kernel as a standalone file with its launcher
    axon train FILE [--epochs N] [--out DIR] [--resume] [--cuda-graphs] [--precision bf16|f16|f32] [--nproc N]
                                             run the file's train block: one compiled step, validation
                                             each epoch, checkpoints, metrics.json and curve.png;
                                             --precision: mixed precision as torch.autocast (+ GradScaler
                                             for f16)
    axon eval FILE --checkpoint CK           the validation metrics of a saved model
    axon quantize FILE --mode int8-weight|int4-weight [--group 64] [--weights W] [--skip NAME ...] --out DIR
                                             weight-only quantization: DIR/quantized.safetensors, and a
                                             ledger (ledger.json, ledger.png, printed) of each layer's
                                             bytes, error and kernels, validation before and after
    axon run FILE --quantized DIR            run (axon eval FILE --quantized DIR: validate) the model
                                             quantized, with the weights `axon quantize` wrote
    axon prune FILE --amount A [--weights W] [--finetune E] --out DIR
                                             magnitude pruning (masks kept while fine-tuning):
                                             DIR/pruned.safetensors, masks, and a ledger
    axon passes                              the passes there are, with what each is for
    axon bench FILE [--mode forward|train|kernels|host] [--json OUT.json] [--plot OUT.png] [--no-compile]
                    [--cuda-graphs]
                                             time Axon against PyTorch eager and torch.compile

FILE is an `.axon` model or `.axir` IR text. User errors (bad syntax, bad shapes, unknown names or
passes, missing files) print a located message and exit 1; they never show a Python traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from axon.args import dim, load, override
from axon.ir import AxonError
from axon.show import show, shown_graph
from axon.passes.autocast import PRECISIONS

CUDA_GRAPHS_HELP = ("replay the whole launch list as one CUDA graph, captured at the first call at each set "
                    "of sizes (needs a CUDA GPU)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="axon", description="Axon, a deep-learning compiler.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="parse, elaborate and verify a model or graph file")
    _source_args(c)

    s = sub.add_parser("show", help="print a model's AST, IR or parameters after a compiler stage")
    _source_args(s)
    s.add_argument("--stage", default=None,
                   help="'ast', 'ir' (before any pass), a pass name to stop after (default: all), "
                        "'fused' (the kernel groups) or 'triton' (the generated kernels)")
    s.add_argument("--pipeline", default=None, help="passes to run, e.g. 'fold,simplify,cse,dce'")
    s.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")
    s.add_argument("--time", action="store_true", help="print each pass's time and node counts")
    s.add_argument("--dot", action="store_true", help="print Graphviz DOT instead of IR text")
    s.add_argument("--params", action="store_true", help="list the parameters with shapes and counts")
    s.add_argument("--memory", action="store_true",
                   help="the memory plan: each intermediate buffer's bytes, offset and live launches, and "
                        "the peak with and without reuse")
    s.add_argument("--step", action="store_true",
                   help="with --memory or --stage fused: the whole training step (forward, loss, backward, "
                        "update)")
    _precision_arg(s, "with --step: the training step in mixed precision, as torch.autocast")
    s.add_argument("--why-not", action="store_true",
                   help="with --stage fused: also list every fusion refused, and why")
    s.add_argument("--no-fusion", action="store_true", help="one kernel per node (the unfused baseline)")
    s.add_argument("--saved", action="store_true",
                   help="the activations saved for backward (gradients wrt every parameter and float "
                        "input), and those recomputed instead")
    s.add_argument("--batch", type=int, default=None,
                   help="with --memory: the 'batch' dimension (default 4; --step: the train block's)")
    s.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="with --memory: another symbolic dimension's size (default 4)")

    r = sub.add_parser("run", help="run a model's generated kernels on given or random inputs")
    _source_args(r)
    _run_args(r)
    r.add_argument("--inputs", default=None, metavar="X.npz", help="inputs by name (default: random)")
    r.add_argument("--weights", default=None, metavar="W.safetensors",
                   help="parameters by name, or a trainer's best.safetensors or checkpoint.safetensors "
                        "(default: the model's initializers)")
    r.add_argument("--quantized", default=None, metavar="DIR",
                   help="run the model through the quantize pass, with the weights `axon quantize` "
                        "wrote to DIR")
    r.add_argument("--pruned", default=None, metavar="DIR",
                   help="run the model as `axon prune` left it in DIR: its structure removed (structured "
                        "pruning), with the pruned weights")
    r.add_argument("--check", action="store_true",
                   help="also run the reference evaluator and print each output's error (exit 1 if over)")
    r.add_argument("--cuda-graphs", action="store_true", help=CUDA_GRAPHS_HELP)

    e = sub.add_parser("compile", help="compile a model's kernels ahead of time for a GPU target, or write "
                                       "them as standalone files")
    _source_args(e)
    _run_args(e)
    e.add_argument("--target", default=None, metavar="ARCH",
                   help="sm_80, sm_90, sm_100, ... or native: compile every kernel for it and print each "
                        "one's resources (default: native on a GPU)")
    e.add_argument("--step", action="store_true",
                   help="the whole training step (forward, loss, backward, optimizer update)")
    e.add_argument("--dtype", default=None, choices=("bf16", "f16"),
                   help="the model in 16 bits, as module.to(torch.bfloat16): tensor cores for its dots")
    _precision_arg(e, "mixed precision, as torch.autocast (f32 master weights, 16-bit dots on tensor "
                      "cores, softmax and the loss in f32); with --step, the mixed-precision training step")
    e.add_argument("--tf32", action="store_true",
                   help="f32 dots on TF32 tensor cores (torch.set_float32_matmul_precision('high'))")
    e.add_argument("--quantized", default=None, metavar="DIR",
                   help="--target: the model quantized as `axon quantize` wrote it to DIR (its pass "
                        "settings): the table shows the quantized kernels (wgmma s8/e4m3 for codes x codes)")
    e.add_argument("--json", default=None, metavar="OUT.json", help="--target: write the table as JSON")
    e.add_argument("--workers", type=int, default=None, help="--target: compile processes (default: cores)")
    e.add_argument("--cold", action="store_true",
                   help="--target: compile with empty caches, then again warm, and report both times")
    e.add_argument("--emit", default=None, metavar="DIR", help="write each kernel as a standalone file")

    t = sub.add_parser("train", help="train a model by its train block")
    _train_args(t)
    t.add_argument("--resume", action="store_true",
                   help="continue the run in OUT (its checkpoint.safetensors) with the settings it was "
                        "started with")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run in OUT (default: a new run never writes into another run's "
                        "folder; without --out it takes the next free name, runs/MODEL-2, ...)")
    t.add_argument("--no-checkpoint-on-interrupt", dest="checkpoint_on_interrupt", action="store_false",
                   help="on Ctrl-C or SIGTERM, stop without writing a checkpoint of the step reached")
    t.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also checkpoint every STEPS optimizer steps (default: each epoch only)")
    t.add_argument("--cuda-graphs", action="store_true", help=CUDA_GRAPHS_HELP)
    t.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel training on N local processes (torch.distributed: gloo on CPU, NCCL "
                        "on GPUs), each on its share of the global batch, gradients all-reduced; the same "
                        "as torchrun --nproc-per-node N -m axon.train FILE ...")
    _precision_arg(t, "f32 (default), or mixed precision as torch.autocast: f32 master weights, matmul, "
                      "conv and attention in bf16/f16, softmax, norms and the loss in f32; f16 with dynamic "
                      "loss scaling as GradScaler (a resumed run keeps its precision)", PRECISIONS)
    t.add_argument("--qat", default=None, metavar="MODE",
                   choices=("int8-weight", "int4-weight", "int8-dynamic", "int8-static", "fp8"),
                   help="quantization-aware training: the weights (int8-dynamic, fp8: and the activations "
                        "per row) fake-quantized where `axon quantize --mode MODE` will quantize them, "
                        "gradients straight through (a resumed run keeps it)")
    t.add_argument("--qat-group", type=int, default=64, choices=(32, 64, 128), metavar="G",
                   help="--qat int4-weight: the group size (default 64)")
    t.add_argument("--init", default=None, metavar="W.safetensors",
                   help="start from these parameters (a trainer's best/checkpoint file, or plain ones) with "
                        "fresh optimizer state: fine-tuning, e.g. --qat from a float model")

    v = sub.add_parser("eval", help="validation metrics of a checkpoint")
    _train_args(v)
    v.add_argument("--checkpoint", default=None, metavar="CK", help="a checkpoint written by axon train")
    v.add_argument("--quantized", default=None, metavar="DIR",
                   help="instead: the model quantized, with the weights `axon quantize` wrote to DIR")
    v.add_argument("--pruned", default=None, metavar="DIR",
                   help="instead: the model as `axon prune` wrote it to DIR")

    from axon.quantize_cmd import add_parser as _quantize_parser

    _quantize_parser(sub)

    from axon.prune_cmd import add_parser as _prune_parser

    _prune_parser(sub)

    from axon.attrib_cmd import add_parsers as _attrib_parsers

    _attrib_parsers(sub)

    sub.add_parser("passes", help="list the passes")

    bn = sub.add_parser("bench", help="time a model or kernels against PyTorch eager and torch.compile")
    bn.add_argument("file", nargs="?", default=None,
                    help="an .axon model (not needed for --mode kernels; --mode host: default the examples)")
    bn.add_argument("--model", default=None, help="the model to time (default: the file's only one)")
    bn.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a hyper-parameter (an int, a float, true or false)")
    bn.add_argument("--mode", default="forward",
                    help="'forward', 'train' (one training step), 'kernels', or 'host' (host time per "
                         "launch: Axon's own, a bare Triton launch, PyTorch eager's dispatch)")
    bn.add_argument("--batch", type=int, default=None, help="the 'batch' dimension (default on a GPU: the "
                                                             "train block's, else 64; 4 on the CPU)")
    bn.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                    help="another symbolic dimension's size (default 32 on a GPU, 4 on the CPU)")
    bn.add_argument("--repeats", type=int, default=None, help="timed calls (default 50 on a GPU, 3 on CPU)")
    bn.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 10 GPU, 1 CPU)")
    bn.add_argument("--device", default=None, help="'cuda' or 'cpu' (default: CUDA when present)")
    bn.add_argument("--seed", type=int, default=0, help="seed of the weights and random inputs")
    bn.add_argument("--json", default=None, metavar="OUT.json", help="write the record as JSON")
    bn.add_argument("--plot", default=None, metavar="OUT.png", help="write a comparison bar chart")
    bn.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    bn.add_argument("--quantized", default=None, metavar="DIR",
                    help="--mode forward: also time the model as `axon quantize` wrote it to DIR (weight "
                         "bytes and kernel counts of both in the record)")
    bn.add_argument("--cuda-graphs", action="store_true",
                    help="forward/train: replay Axon's launch list as a CUDA graph, against torch.compile "
                         "in mode 'reduce-overhead' (its CUDA graphs)")
    return p


def _precision_arg(p: argparse.ArgumentParser, help: str, choices=PRECISIONS[1:]) -> None:
    p.add_argument("--precision", default=None, choices=choices, help=help)


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="an .axon model or .axir IR text")
    p.add_argument("--model", default=None, help="the model to compile (default: the file's only one)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a hyper-parameter (an int, a float, true or false)")
    p.add_argument("--training", action="store_true", help="compile for training (dropout on)")
    p.add_argument("--loss", action="store_true",
                   help="add the train block's loss as output 'loss' (labels become inputs)")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=None, help="the 'batch' dimension of random inputs")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="another symbolic dimension's size (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initializers and random inputs")
    p.add_argument("--device", default=None, help="'cuda' or 'cpu' (default: CUDA when present)")
    p.add_argument("--no-fusion", action="store_true", help="one kernel per node (the unfused baseline)")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="an .axon model with a train block")
    p.add_argument("--model", default=None, help="the model to train (default: the file's only one)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a hyper-parameter (an int, a float, true or false)")
    p.add_argument("--epochs", type=int, default=None, help="override the train block's epochs")
    p.add_argument("--batch", type=int, default=None, help="override the train block's batch size")
    p.add_argument("--seed", type=int, default=None, help="override the train block's seed")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default: runs/MODEL)")
    p.add_argument("--device", default=None, help="'cuda' or 'cpu' (default: CUDA when present)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if args.command in COMPILING:  # the cache folder checked (and any warning said) before any work
            from axon.codegen.cachedir import ensure_cache_dir

            ensure_cache_dir()
        return _COMMANDS[args.command](args)
    except AxonError as e:
        print(str(e), file=sys.stderr)
        return getattr(e, "exit_code", 1)
    except KeyboardInterrupt:  # outside a run's steps (parsing, compiling) or a second Ctrl-C
        print("\ninterrupted; files already written are whole (each is replaced atomically)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `axon show big.axon | head`
        return 0


def _check(args) -> int:
    g = load(args)
    print(f"{args.file}: ok ({len(g)} nodes, {len(g.inputs)} inputs, {len(g.params)} params, "
          f"{len(g.outputs)} outputs)")
    return 0


def _compiled(args, pipeline: str | None = None, hparams: dict | None = None, graph=None):
    """The file's model compiled as the command says (or `graph`, made from it), and its sizes."""
    import axon
    from axon.passes.manager import DEFAULT_PIPELINE
    from axon.run import bind_dims

    hparams = {**(hparams or {}), **dict(override(s) for s in args.set)}
    model = axon.compile(graph if graph is not None else Path(args.file), args.model,
                         hparams=hparams or None, training=args.training,
                         loss=args.loss, device=args.device, seed=args.seed,
                         cuda_graphs=getattr(args, "cuda_graphs", False),
                         pipeline=pipeline or DEFAULT_PIPELINE)
    dims = dict(dim(s) for s in args.dim)
    if args.batch is not None:
        dims["batch"] = args.batch
    return model, bind_dims(model.graph, dims)


def _run(args) -> int:
    from axon.runtime import describe
    from axon.run import check_fits, compare, random_inputs, read_npz, summary

    if args.quantized and args.pruned:
        raise AxonError("--quantized and --pruned each give the model's weights: one of them")
    if args.quantized:
        from axon.quantize_cmd import compiled

        model, env = compiled(args, _compiled, dict(override(s) for s in args.set))
    elif args.pruned:
        from axon.prune_cmd import compiled

        model, env = compiled(args, lambda a, g: _compiled(a, graph=g), dict(override(s) for s in args.set))
    else:
        model, env = _compiled(args)
    print(describe(model.device), file=sys.stderr)
    if args.weights:
        model.load_weights(args.weights)
    if args.inputs:
        inputs = read_npz(args.inputs, model.graph)
    else:
        check_fits(model.executable, env)
        inputs = random_inputs(model.graph, env, args.seed)
    outputs = model.run(inputs)
    graphed = " (replayed as one CUDA graph)" if model.graphs is not None else ""
    print(f"{model.graph.name}: {len(model.kernels)} kernels{graphed}; inputs "
          + ", ".join(f"{k} {list(v.shape)}" for k, v in inputs.items()))
    for name, t in outputs.items():
        print(summary(name, t))
    if not args.check:
        return 0
    want = model.reference(inputs)
    failed = 0
    for name, t in outputs.items():
        worst, rel, ok = compare(t, want[name])
        failed += not ok
        print(f"check {name}: max |error| {worst:.3g}, relative {rel:.3g}  {'ok' if ok else 'FAILED'}")
    return 1 if failed else 0


def _compile(args) -> int:
    if args.emit is not None and args.target is None:
        from axon.runtime.emit import emit

        model, env = _compiled(args)
        files = emit(model.executable, env, args.emit)
        print(f"{len(files)} kernels written to {args.emit} (sizes {env}); run one with `python FILE`")
        return 0
    from axon import precompile

    return precompile.command(args, _aot_graph(args))


def _aot_graph(args):
    """The graph `compile --target` compiles: the model, or with --step the whole training step, in
    --dtype if given; and the sizes of its symbolic dimensions (the train block's batch, else a GPU's
    defaults: batch 64, other dimensions 32)."""
    from axon.driver import optimize
    from axon.run import bind_dims

    if args.dtype and args.precision:
        raise AxonError("--dtype runs the whole model in 16 bits and --precision mixes 16-bit dots with f32 "
                        "master weights: give one of them")
    args.pipeline = None
    quantized = getattr(args, "quantized", None)
    if quantized and args.step:
        raise AxonError("--quantized compiles the quantized model's forward; a training step trains float "
                        "weights (for quantization-aware training: axon train --qat)")
    g, dims = shown_graph(args)
    if args.dtype:
        g, _ = optimize(g, f"dtype{{to={args.dtype}}},fold,simplify,cse,dce", out=lambda *a, **k: None)
    if quantized:
        from axon.passes.manager import format_pass
        from axon.quantize_cmd import read

        p = format_pass(read(quantized).settings.make_pass())
        g, _ = optimize(g, f"{p},fold,simplify,cse,dce", out=lambda *a, **k: None)
    if args.batch is None and "batch" not in dims:
        dims["batch"] = _train_batch(args) or 64
    dims = {**{s: 32 for s in _symbols(g)}, **dims}
    return g, bind_dims(g, dims)


def _train_batch(args) -> int | None:
    from axon.driver import load_ast
    from axon.frontend import train_spec

    if not args.file.endswith(".axon"):
        return None
    spec = train_spec(load_ast(args.file), args.model)
    return spec.batch if spec else None


def _symbols(graph) -> list[str]:
    from axon.run import symbols

    return symbols(graph)


def _trainer(args, **extra):
    from axon.driver import load_ast
    from axon.frontend import train_spec
    from axon.runtime import describe
    from axon.trainer import Trainer

    hparams = dict(override(s) for s in args.set)
    for name in ("epochs", "batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise AxonError(f"--{name} must be at least 1, got {value}")
    spec = train_spec(load_ast(args.file), args.model) if args.file.endswith(".axon") else None
    if spec is not None and spec.gan is not None:  # discriminator and generator steps, alternating
        from axon.gan_trainer import GanTrainer as Trainer
    trainer = Trainer(args.file, args.model, hparams=hparams or None, device=args.device, out_dir=args.out,
                      epochs=args.epochs, batch=args.batch, seed=args.seed, log=extra.pop("log", _stdout),
                      precision=getattr(args, "precision", None),
                      qat={"mode": args.qat, "group": args.qat_group} if getattr(args, "qat", None)
                      else None,
                      init=getattr(args, "init", None),
                      **extra)
    if trainer.lead:
        print(describe(trainer.step_exe.device), file=sys.stderr)
    print(trainer.data.summary())
    graphed = " (replayed as a CUDA graph)" if getattr(args, "cuda_graphs", False) else ""
    if trainer.precision != "f32":
        graphed += f" in mixed precision ({trainer.precision} dots, f32 master weights)"
    steps = f"training step {len(trainer.step_exe.kernels)} kernels"
    if getattr(trainer, "dp", None) is not None:
        dp = trainer.dp
        steps = (f"training step on each of {trainer.world.size} ranks: gradients {len(dp.grad_exe.kernels)} "
                 f"kernels, all-reduce, update {len(dp.update_exe.kernels)} kernels")
    if getattr(trainer, "exes", None):  # a GAN: two steps
        steps = ", ".join(f"{role} step {len(exe.kernels)} kernels" for role, exe in trainer.exes.items())
    print(f"compiled in {trainer.compile_s:.1f} s: {steps}{graphed}, "
          f"evaluation {len(trainer.eval_exe.kernels)} kernels")
    return trainer


def _train(args) -> int:
    if args.nproc != 1:
        return _launch(args)
    world = _world(args)
    try:
        return _fit(args, world)
    finally:  # (a process group left to the interpreter's exit can abort it: gloo's threads still up)
        if world is not None:
            world.close()


def _fit(args, world) -> int:
    from axon.runtime.interrupts import Interrupted

    if world is not None and world.rank > 0:  # rank 0 speaks for the run
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of this process)

    trainer = _trainer(args, checkpoint_every=args.checkpoint_every, cuda_graphs=args.cuda_graphs,
                       resume=args.resume, overwrite=args.overwrite,
                       checkpoint_on_interrupt=args.checkpoint_on_interrupt,
                       **({"world": world} if world is not None else {}))
    t0 = time.perf_counter()
    try:
        p = trainer.fit()
    except Interrupted as e:
        if world is not None and world.rank > 0:  # rank 0 says where the run stopped
            return e.exit_code
        e.hint = e.hint and e.hint.replace("--resume", f"axon train {args.file} --resume", 1)
        raise
    last = p.history[-1] if p.history else {}
    acc = f", val acc {last['val_acc']:.2%}" if "val_acc" in last else ""
    base = trainer.data.info.get("unigram_entropy")
    baseline = f" (unigram baseline {base:.4f})" if base is not None else ""
    if "val_loss" in last:
        figures = f"val loss {last['val_loss']:.4f}{baseline}{acc}"
    else:  # a GAN: the modes its samples cover
        figures = "; ".join(f"{k[4:].replace('_', ' ')} {v}" for k, v in last.items() if k.startswith("val_"))
    print(f"{p.stopped}: {p.step} steps in {time.perf_counter() - t0:.1f} s; {figures or 'no figures'}; "
          f"run folder {trainer.out_dir}")
    if trainer.scaler:
        print(f"loss scale {trainer.scaler.scale:g}; {trainer.scaler.skipped} of {p.step} steps skipped "
              f"(a gradient held inf or NaN)")
    return 0


def _world(args):
    """This process's data-parallel ranks when torchrun (or --nproc) started it as one of several."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    from axon.runtime import choose
    from axon.runtime.distributed import World

    if args.out is None:
        raise AxonError("a data-parallel run needs --out DIR: every rank must write to the same folder")
    return World.from_env(choose(args.device))


def _launch(args) -> int:
    """`axon train --nproc N`: N local ranks of `python -m axon.train`, one run folder."""
    from axon.data_parallel import launch
    from axon.runtime.runs import free_folder

    if not 1 <= args.nproc <= 256:
        raise AxonError(f"--nproc must be in [1, 256], got {args.nproc}")
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise AxonError("--nproc starts the ranks itself: give it outside torchrun, or drop it under "
                        "torchrun")
    out = args.out if args.out is not None else str(free_folder(Path("runs") / _model_name(args)))
    rest, skip = [], False
    for a in args.argv[args.argv.index("train") + 1:]:  # the ranks': the command line less --nproc, --out
        if skip:
            skip = False
        elif a in ("--nproc", "--out"):
            skip = True
        elif not a.startswith(("--nproc=", "--out=")):
            rest.append(a)
    print(f"data-parallel training on {args.nproc} processes; run folder {out}", flush=True)
    return launch(rest, args.nproc, out)


def _model_name(args) -> str:
    from axon.driver import load_ast
    from axon.frontend import train_spec

    spec = train_spec(load_ast(args.file), args.model) if args.file.endswith(".axon") else None
    return spec.model if spec else "run"


def _stdout(*a, **k) -> None:  # flushed: a run's log is read as it goes
    print(*a, **k, flush=True)


def _eval(args) -> int:
    given = [x for x in (args.checkpoint, args.quantized, args.pruned) if x is not None]
    if len(given) != 1:
        raise AxonError("axon eval takes --checkpoint CK (a trainer's checkpoint), --quantized DIR (written "
                        "by axon quantize) or --pruned DIR (written by axon prune), one of them")
    if args.quantized or args.pruned:
        from axon import prune_cmd, quantize_cmd

        cmd = quantize_cmd if args.quantized else prune_cmd
        metrics = cmd.evaluate(args, dict(override(s) for s in args.set))
        print("  ".join(f"val {k} {v:.4f}" for k, v in metrics.items()))
        return 0
    trainer = _trainer(args, log=lambda *a, **k: None, claim_folder=False, settings_from=args.checkpoint)
    trainer.load_params(args.checkpoint)
    metrics = trainer.validate()
    print("  ".join(f"val {k} {v:.4f}" if isinstance(v, float) else f"val {k} {v}"
                    for k, v in metrics.items()))
    return 0


def _bench(args) -> int:
    from axon import bench

    settings = bench.Settings(file=args.file, model=args.model, hparams=dict(override(s) for s in args.set),
                              mode=args.mode, batch=args.batch, dims=dict(dim(s) for s in args.dim),
                              repeats=args.repeats, warmup=args.warmup, device=args.device,
                              compile=not args.no_compile, seed=args.seed, cuda_graphs=args.cuda_graphs,
                              quantized=args.quantized)
    if args.plot and args.mode == "host":  # before any measuring
        raise bench.BenchError("--plot draws the timed modes (forward, train, kernels); --mode host prints "
                               "its table")
    record = bench.run(settings, log=lambda line: print(line, file=sys.stderr))
    print(bench.format_table(record))
    if args.json:
        bench.write_json(record, args.json)
        print(f"record written to {args.json}")
    if args.plot:
        bench.plot(record, args.plot)
        print(f"chart written to {args.plot}")
    return 0


def _quantize(args) -> int:
    from axon import quantize_cmd

    if args.batch is not None and args.batch < 1:
        raise AxonError(f"--batch must be at least 1, got {args.batch}")
    return quantize_cmd.command(args, dict(override(s) for s in args.set))


def _explain(args) -> int:
    from axon import attrib_cmd

    attrib_cmd.defaults(args)
    if args.count < 1:
        raise AxonError(f"--count must be at least 1, got {args.count}")
    return attrib_cmd.explain(args)


def _attack(args) -> int:
    from axon import attrib_cmd

    attrib_cmd.defaults(args)
    return attrib_cmd.attack(args)


def _prune(args) -> int:
    from axon import prune_cmd

    if args.batch is not None and args.batch < 1:
        raise AxonError(f"--batch must be at least 1, got {args.batch}")
    return prune_cmd.command(args, dict(override(s) for s in args.set))


def _passes(args) -> int:
    from axon.passes.manager import DEFAULT_PIPELINE, registered_passes

    for name, cls in registered_passes().items():
        why = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:12s} {why}")
    print(f"\ndefault pipeline: {DEFAULT_PIPELINE}")
    return 0


# the commands that generate kernels
COMPILING = ("run", "compile", "train", "eval", "bench", "quantize", "prune", "explain", "attack")
_COMMANDS = {"check": _check, "show": show, "run": _run, "compile": _compile, "train": _train,
             "eval": _eval, "passes": _passes, "bench": _bench, "quantize": _quantize,
             "prune": _prune, "explain": _explain, "attack": _attack}

if __name__ == "__main__":
    sys.exit(main())
