"""How the IR scales: verify, print, parse and the clean-up pipeline on graphs of 1k/10k/50k nodes.

    python bench/ir_scale.py [--sizes 1000,10000,50000] [--repeats 3]

Prints the median time of each stage and the time per node; roughly constant time per node across
sizes means linear scaling. (A CPU benchmark of the compiler itself: no kernels run here.)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from axon.ir import verify  # noqa: E402
from axon.ir.text import parse_graph, print_graph  # noqa: E402
from axon.passes.manager import DEFAULT_PIPELINE, PassManager, parse_pipeline  # noqa: E402
from bigraphs import deep_graph  # noqa: E402


def _median_time(fn, arg, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,50000")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    stages = ("build", "verify", "print", "parse", "pipeline")
    print(f"{'nodes':>8} " + " ".join(f"{s + ' s':>10}" for s in stages) + f" {'us/node (total)':>16}")
    for n in (int(s) for s in args.sizes.split(",")):
        g = deep_graph(n)
        text = print_graph(g)
        pm = PassManager(parse_pipeline(DEFAULT_PIPELINE))
        work = {
            "build": (deep_graph, n), "verify": (verify, g), "print": (print_graph, g),
            "parse": (parse_graph, text), "pipeline": (pm.run, g),
        }
        t = {stage: _median_time(fn, arg, args.repeats) for stage, (fn, arg) in work.items()}
        per_node = sum(t.values()) / len(g) * 1e6
        print(f"{len(g):>8} " + " ".join(f"{t[s]:>10.3f}" for s in stages) + f" {per_node:>16.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
