"""A bench record shown: the text table `axon bench` prints, the JSON file and the bar chart."""
from __future__ import annotations

import json
from pathlib import Path

from .timing import IMPLS


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_table(record: dict) -> str:
    """The record as a text table: one row per case and implementation, then each case's check."""
    if record["mode"] == "host":
        from .host import format_table as host_table

        return host_table(record)
    c, s = record["ceilings"], record["settings"]
    graphs = " (CUDA graphs: Axon's, torch.compile's 'reduce-overhead')" if s.get("cuda_graphs") else ""
    lines = [f"axon bench --mode {record['mode']} on {record['device']['name']}{graphs}: median of "
             f"{s['repeats']} after {s['warmup']} warm-up; commit {record['axon']['commit'][:12]}",
             f"ceilings: copy {c['copy_gbps']:.1f} GB/s, f32 matmul {c['matmul_tflops']:.3g} TFLOP/s",
             ""]
    w = max([len(r["case"]) for r in record["runs"]] + [10])
    head = (f"{'case':<{w}} {'impl':<9} {'median ms':>10} {'min ms':>9} {'IQR ms':>8} {'launch':>6} "
            f"{'GB/s':>8} {'%copy':>6} {'TFLOP/s':>8} {'%mm':>6} {'vs axon':>8}")
    lines += [head, "-" * len(head)]
    for run_ in record["runs"]:
        for i, (impl, r) in enumerate(run_["impls"].items()):
            name = run_["case"] if i == 0 else ""
            if "median_ms" not in r:
                why = r.get("error") or f"skipped ({r.get('skipped')})"
                lines.append(f"{name:<{w}} {impl:<9} {'failed: ' + why if 'error' in r else why}")
                continue
            ratio = run_["speedup"].get(f"{impl}/axon")
            lines.append(f"{name:<{w}} {impl:<9} {r['median_ms']:>10.4g} {r['min_ms']:>9.4g} "
                         f"{r['iqr_ms']:>8.3g} "
                         f"{_num(r.get('launches'), 'd'):>6} {_num(r.get('gbps'), '.1f'):>8} "
                         f"{_num(r.get('pct_copy_bw'), '.0f'):>6} {_num(r.get('tflops'), '.3g'):>8} "
                         f"{_num(r.get('pct_matmul_peak'), '.0f'):>6} "
                         f"{'' if ratio is None else f'{ratio:.2f}x':>8}")
    lines.append("")
    for run_ in record["runs"]:
        ch = run_["check"]
        lines.append(f"check {run_['case']}: max |error| {ch['max_abs_error']:.3g}, relative "
                     f"{ch['max_rel_error']:.3g} against {ch.get('against', 'PyTorch')} "
                     f"({len(ch['outputs'])} outputs) "
                     f"{'ok' if ch['ok'] else 'DISAGREE'}")
    lines.append("vs axon: the implementation's time over Axon's (above 1: Axon is faster); launch: kernels "
                 "per call (Axon's launch list; torch's by the profiler, GPU only)")
    return "\n".join(lines)


def write_json(record: dict, path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(record, indent=1, default=str) + "\n")


def plot(record: dict, path: str | Path) -> None:
    """A bar chart of each case's median time per implementation (log scale), as a PNG."""
    from .settings import BenchError

    if record["mode"] == "host":
        raise BenchError("--plot draws the timed modes (forward, train, kernels); --mode host prints its "
                         "table")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = record["runs"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(runs) + 2), 4.5), dpi=100)
    width = 0.8 / len(IMPLS)
    for j, impl in enumerate(IMPLS):
        xs, ys = [], []
        for i, r in enumerate(runs):
            t = r["impls"].get(impl, {}).get("median_ms")
            if t is not None:
                xs.append(i + (j - 1) * width)
                ys.append(t)
        ax.bar(xs, ys, width, label={"axon": "Axon", "eager": "PyTorch eager",
                                     "compiled": "torch.compile"}[impl])
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([r["case"] for r in runs], rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("median time per call (ms)")
    ax.set_title(f"axon bench --mode {record['mode']} on {record['device']['name']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    plt.close(fig)
