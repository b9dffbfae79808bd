"""How the compiler's IR side scales: each stage's time and nodes per second as graphs grow.

    python bench/ir_scale.py                                  # all three tables below
    python bench/ir_scale.py --gpt 2,8,32 --lstm 12,48,192 --chains 1000,10000,50000 --repeats 3
    python bench/ir_scale.py --gpt 2,8,32 --lstm "" --chains ""   # one table only

- GPT training step (`examples/gpt.axon --set layers=N`) and LSTM training step (`examples/lstm.axon
  --set steps=N`, an unrolled RNN): a training step compiled as `axon train` compiles it, stage by stage:
  elaborate (the model and its loss, from the parsed file), step (autodiff, the optimizer update and the
  clean-up pipeline: `axon.trainer.step_graph`), fuse (`passes.fusion.fuse`), groups
  (`codegen.fused_groups`) and plan (the memory plan). No kernel source is generated or compiled.
- chains (`tests/bigraphs.deep_graph`): build, verify, print, parse back, the clean-up pipeline, fuse,
  groups and plan on one long dependent chain.

Each figure is the median of `--repeats` runs. nodes/s divides the nodes of the graph a stage works on
(the training step's, for every stage of a step) by the stage's time: constant nodes/s across sizes
means linear time. (A CPU benchmark of the compiler itself: no kernels run here.)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from axon.codegen import fused_groups  # noqa: E402
from axon.frontend import training_graph  # noqa: E402
from axon.driver import load_ast  # noqa: E402
from axon.ir import Sym, verify  # noqa: E402
from axon.ir.text import parse_graph, print_graph  # noqa: E402
from axon.passes.fusion import fuse  # noqa: E402
from axon.passes.manager import DEFAULT_PIPELINE, PassManager, parse_pipeline  # noqa: E402
from axon.runtime.memory import plan_graph  # noqa: E402
from axon.trainer import step_graph  # noqa: E402
from bigraphs import deep_graph  # noqa: E402

SIZE = 8  # every symbolic dimension, for the memory plan


def _median(fn, repeats: int) -> tuple[float, object]:
    """(median seconds, the last result) of `repeats` calls of fn()."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _env(graph) -> dict[str, int]:
    return {f: SIZE for n in graph.nodes for d in n.shape if isinstance(d, Sym) for f in d.factors}


def time_step(path: Path, hparam: str, n: int, repeats: int) -> tuple[int, int, dict[str, float]]:
    """(step nodes, kernels, seconds by stage) of one training step of `path` with `hparam`=n."""
    module = load_ast(path)
    t: dict[str, float] = {}
    t["elaborate"], (loss_graph, spec) = _median(
        lambda: training_graph(module, hparams={hparam: n}), repeats)
    optimizer = {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)}
    t["step"], step = _median(lambda: step_graph(loss_graph, optimizer), repeats)
    t["fuse"], fusion = _median(lambda: fuse(step), repeats)
    t["groups"], groups = _median(lambda: fused_groups(step, fusion.groups), repeats)
    env = _env(step)
    t["plan"], _ = _median(lambda: plan_graph(groups, step, env), repeats)
    return len(step), len(groups), t


def time_chain(n: int, repeats: int) -> tuple[int, int, dict[str, float]]:
    """(nodes, kernels, seconds by stage) of the deep chain of about n nodes."""
    pm = PassManager(parse_pipeline(DEFAULT_PIPELINE))
    t: dict[str, float] = {}
    t["build"], g = _median(lambda: deep_graph(n), repeats)
    t["verify"], _ = _median(lambda: verify(g), repeats)
    t["print"], text = _median(lambda: print_graph(g), repeats)
    t["parse"], _ = _median(lambda: parse_graph(text), repeats)
    t["pipeline"], _ = _median(lambda: pm.run(g), repeats)
    t["fuse"], fusion = _median(lambda: fuse(g), repeats)
    t["groups"], groups = _median(lambda: fused_groups(g, fusion.groups), repeats)
    env = _env(g)
    t["plan"], _ = _median(lambda: plan_graph(groups, g, env), repeats)
    return len(g), len(groups), t


def table(title: str, size_name: str, rows: list[tuple[int, int, int, dict[str, float]]]) -> str:
    """One block per size: each stage's milliseconds and nodes/s, then the total."""
    lines = [title, f"{size_name:>7} {'nodes':>7} {'kernels':>7}  {'stage':<10} {'ms':>9} {'nodes/s':>11}"]
    for size, nodes, kernels, t in rows:
        stages = [*t.items(), ("total", sum(t.values()))]
        for k, (stage, s) in enumerate(stages):
            head = f"{size:>7} {nodes:>7} {kernels:>7}" if k == 0 else " " * 23
            rate = f"{nodes / s:>11,.0f}" if s > 0 else f"{'-':>11}"
            lines.append(f"{head}  {stage:<10} {s * 1e3:>9.1f} {rate}")
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpt", default="2,8,32", help="layers of examples/gpt.axon ('' to skip)")
    ap.add_argument("--lstm", default="12,48,192", help="steps of examples/lstm.axon ('' to skip)")
    ap.add_argument("--chains", default="1000,10000,50000", help="nodes of the deep chains ('' to skip)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    blocks = []
    for name, hparam, sizes in (("gpt", "layers", args.gpt), ("lstm", "steps", args.lstm)):
        if _sizes(sizes):
            path = ROOT / "examples" / f"{name}.axon"
            rows = [(n, *time_step(path, hparam, n, args.repeats)) for n in _sizes(sizes)]
            blocks.append(table(f"{name.upper()} training step: examples/{name}.axon --set {hparam}=N "
                                f"(median of {args.repeats})", hparam, rows))
            print(blocks[-1] + "\n", flush=True)
    if _sizes(args.chains):
        rows = [(n, *time_chain(n, args.repeats)) for n in _sizes(args.chains)]
        print(table(f"deep chains: tests/bigraphs.deep_graph(N) (median of {args.repeats})", "N", rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
