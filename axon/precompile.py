"""`axon compile --target`: every kernel a model needs, compiled ahead of time for a GPU, on any machine.

>>> rows, seconds = sweep(graph, {"batch": 64}, parse("sm_90"))          # doctest: +SKIP
>>> print(aot.format_table(rows, parse("sm_90")))                        # doctest: +SKIP

The compiles run in worker processes (`axon.codegen.aot`); their results are cached, so a second sweep
is free. `cold=True` measures a cold start: the kernels compiled with an empty Triton cache and no stored
results, then once more with Triton's cache warm (what a second process on the GPU pays).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict

from axon.codegen import aot
from axon.codegen.target import Target, parse
from axon.ir import AxonError, Graph


def sweep(graph: Graph, env: dict[str, int], target: Target, *, fusion: bool = True,
          workers: int | None = None, use_cache: bool = True,
          triton_cache: str | None = None) -> tuple[list[aot.Row], float]:
    """The rows of every kernel of `graph` at sizes `env`, compiled for `target`; and the wall time."""
    from axon.driver import kernel_groups

    t0 = time.perf_counter()
    launches = aot.launches_for(kernel_groups(graph, fusion), env, target)
    env_vars = {"TRITON_CACHE_DIR": triton_cache} if triton_cache else None
    rows = aot.compile_jobs(aot.jobs_for(launches, target), target, workers=workers, use_cache=use_cache,
                            env=env_vars)
    return rows, time.perf_counter() - t0


def command(args, graph_and_env) -> int:
    """The `axon compile --target` command: print the table (and --json); exit 1 on a failed kernel."""
    graph, env = graph_and_env
    target = parse(args.target or "native", tf32=True if args.tf32 else None)
    if target.interpreted:
        raise AxonError("axon compile: this machine has no GPU, so 'native' is Triton's interpreter, which "
                        "compiles nothing; name a target: --target sm_90 (or sm_80, sm_100), or write "
                        "standalone kernel files with --emit DIR")
    fusion = not args.no_fusion
    times = {}
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="axon-triton-cache-") as fresh:
            rows, times["cold"] = sweep(graph, env, target, fusion=fusion, workers=args.workers,
                                        use_cache=False, triton_cache=fresh)
            _, times["warm"] = sweep(graph, env, target, fusion=fusion, workers=args.workers, use_cache=False,
                                     triton_cache=fresh)
    else:
        rows, times["this run"] = sweep(graph, env, target, fusion=fusion, workers=args.workers)
    what = "training step" if args.step else "forward"
    sizes = ", ".join(f"{k}={v}" for k, v in env.items()) or "static shapes"
    title = f"{args.file}: {graph.name} {what} ({len(graph)} nodes; {sizes}) for {target}"
    print(aot.format_table(rows, target, title))
    print("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    summary = aot.summary(rows)
    if args.json:
        record = {"file": args.file, "model": graph.name, "what": what, "target": str(target),
                  "sizes": env, "times_s": times, "summary": summary, "rows": [asdict(r) for r in rows]}
        try:
            with open(args.json, "w") as f:
                json.dump(record, f, indent=1)
        except OSError as e:
            raise AxonError(f"--json {args.json}: cannot write ({e.strerror})") from e
        print(f"table written to {args.json}", file=sys.stderr)
    return 1 if summary["failed"] else 0
