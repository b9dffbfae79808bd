"""Ahead-of-time compiles: every kernel a graph needs, compiled for a CUDA target on any machine, with
the resource figures that decide whether it runs well there.

For each kernel and each config its launch may take (`Launch.configs`, or its one `meta`), a job goes to
a pool of compile workers (`aot_worker.py`, separate processes with Triton imported as a compiler). A
worker launches the kernel through Triton's own `JITFunction.run` on a stand-in CUDA driver: arguments are
specialized as at a real launch, the kernel is compiled to a cubin for the target, Triton's launch-time
checks run, and the cubin's registers, stack (spills), shared memory and tensor-core instructions are
read back. Results are cached on disk by job, so a second sweep costs nothing.

A config that spills or cannot launch is *pruned*: the runtime's tuner never tries it (`runtime/tune.py`
reads the same figures from the real compile). A kernel whose every config is pruned, or that fails to
compile, is a failure.

>>> rows = compile_launches(launches_for(graph, kernel_groups, env, parse("sm_90")))   # doctest: +SKIP
>>> print(format_table(rows, parse("sm_90")))                                         # doctest: +SKIP
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .cache import CompiledKernel, cache_dir, compile_group, needs_wide
from .files import atomic_write
from .launch import Launch
from .target import Target

WORKER = Path(__file__).with_name("aot_worker.py")
SHOWN_META = ("BLOCK", "BLOCK_ROWS", "BLOCK_COLS", "BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_D", "BLOCK_E")


@dataclass
class Row:
    """One kernel at one config, compiled for a target: its figures, or its error."""

    index: int                 # the kernel's place in the launch list
    kind: str                  # pointwise, reduce, matmul, conv2d, index, attention, attention_bwd
    what: str                  # what it computes (its first IR node)
    config: dict               # block sizes and launch options
    default: bool              # the config the launch takes untuned
    ok: bool = False
    error: str = ""
    regs: int = 0
    stack: int = 0             # bytes of local memory per thread: spills
    spill_stores: int = 0      # STL / LDL instructions in the SASS (counted when there is a stack)
    spill_loads: int = 0
    shared: int = 0            # bytes of shared memory per block
    num_warps: int = 0
    tensor_cores: str = ""     # wgmma, tcgen05, mma or none
    tc_instructions: int = 0
    tc_types: str = ""         # the tensor-core instructions' operand types (bf16, tf32, s8, e4m3)
    occupancy: float = 0.0     # resident warps / the SM's maximum
    blocks_per_sm: int = 0
    compile_s: float = 0.0
    launch_us: float | None = None  # host time per launch through Triton's launch path (jobs with `repeat`)
    cached: bool = False       # the figures came from the result cache
    file: str = ""             # the kernel's cache file

    @property
    def spills(self) -> bool:
        return bool(self.stack or self.spill_stores)

    @property
    def pruned(self) -> str:
        """Why the tuner never tries this config ("" if it may)."""
        if not self.ok:
            return "does not compile or launch"
        if self.spills:
            return f"spills ({self.stack} B of stack)"
        return ""


RESULTS = 3  # the worker's result format (2: tensor-core operand types): older saved results are stale


@dataclass
class Job:
    row: Row
    path: Path
    name: str
    args: list = field(default_factory=list)
    grid: tuple = ()
    meta: dict = field(default_factory=dict)
    repeat: int = 0            # also time this many launches (the host's cost of one)

    def payload(self, target: Target) -> dict:
        return {"path": str(self.path), "name": self.name, "args": self.args, "grid": list(self.grid),
                "meta": self.meta, "arch": target.arch, "limits": asdict(target.limits),
                "repeat": self.repeat}

    def key(self, target: Target) -> str:
        body = {**self.payload(target), "path": self.path.name, "results": RESULTS}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:40]


def launches_for(groups, env: dict[str, int], target: Target) -> list[tuple[CompiledKernel, Launch]]:
    """Each group's kernel generated for `target` (never loaded here) and its launch at sizes `env`."""
    out = []
    for group in groups:
        kernel = compile_group(group, needs_wide(group, env), target=target)
        out.append((kernel, kernel.prepare(env)))
    return out


def jobs_for(launches, target: Target, all_configs: bool = True) -> list[Job]:
    """One job per kernel and config (or only each launch's default config): the arguments as Triton's
    binder will see them."""
    jobs = []
    for i, (kernel, launch) in enumerate(launches):
        args = [{"ptr": _dtype(v.node), "offset": v.offset * v.node.dtype.torch.itemsize}
                for v in launch.inputs]
        args += [{"ptr": _dtype(o), "offset": 0} for o in launch.outputs]
        args += [{"int": int(s)} for s in launch.scalars]
        what = _headline(kernel.group)
        configs = launch.configs if all_configs and launch.configs else (launch.meta,)
        for c, meta in enumerate(configs):
            row = Row(i, kernel.group.kind, what, dict(meta), c == 0, file=kernel.path.name)
            jobs.append(Job(row, kernel.path, kernel.spec.name, args, tuple(launch.grid), dict(meta)))
    return jobs


def compile_jobs(jobs: list[Job], target: Target, workers: int | None = None, use_cache: bool = True,
                 env: dict[str, str] | None = None) -> list[Row]:
    """Compile every job (cached results reused unless `use_cache` is False); rows in job order."""
    if target.interpreted:
        raise ValueError("ahead-of-time compiles need a CUDA target, not the interpreter")
    store = cache_dir() / "aot"
    todo: dict[str, list[Job]] = {}  # one compile per distinct job (an unrolled loop repeats kernels)
    for job in jobs:
        key = job.key(target)
        saved = _load(store / f"{key}.json") if use_cache and key not in todo else None
        if saved is not None:
            _fill(job.row, saved, target)
            job.row.cached = True
        else:
            todo.setdefault(key, []).append(job)
    if todo:
        results = _run_pool([same[0] for same in todo.values()], target, workers, env)
        for (key, same), result in zip(todo.items(), results):
            for i, job in enumerate(same):
                _fill(job.row, result, target)
                job.row.cached = i > 0
            if result.get("ok") and use_cache:
                _save(store / f"{key}.json", result)
    return [j.row for j in jobs]


def compile_launches(launches, target: Target, **options) -> list[Row]:
    return compile_jobs(jobs_for(launches, target), target, **options)


# --- the worker pool ---------------------------------------------------------------------------------
class Worker:
    """One compile process (Triton imported as a compiler), kept for later sweeps of this process."""

    def __init__(self, env: dict[str, str]):
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, payload: dict) -> dict:
        self.proc.stdin.write(json.dumps(payload) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if line:
            return json.loads(line)
        self.log.seek(0)
        tail = self.log.read()[-2000:].strip()
        return {"ok": False, "error": f"the compile worker died: {tail or 'no output'}"}

    def close(self) -> None:
        if self.alive:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


_IDLE: dict[tuple, list[Worker]] = {}  # started workers by their environment, between sweeps
_LOCK = threading.Lock()


@atexit.register
def _close_workers() -> None:
    for workers in _IDLE.values():
        for w in workers:
            w.close()
    _IDLE.clear()


def _run_pool(jobs: list[Job], target: Target, workers: int | None, env: dict[str, str] | None) -> list[dict]:
    count = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    worker_env = {**os.environ, **(env or {}), "TRITON_INTERPRET": "0"}
    key = tuple(sorted(worker_env.items()))  # a worker started under other settings is not reused
    pending: queue.Queue = queue.Queue()
    for i, job in enumerate(jobs):
        pending.put((i, job.payload(target)))
    results: list[dict] = [{} for _ in jobs]

    def serve() -> None:
        with _LOCK:
            idle = [w for w in _IDLE.get(key, []) if w.alive]
            worker = idle.pop() if idle else None
            _IDLE[key] = idle
        worker = worker or Worker(worker_env)
        while True:
            try:
                i, payload = pending.get_nowait()
            except queue.Empty:
                break
            if not worker.alive:
                worker.close()
                worker = Worker(worker_env)
            results[i] = worker.run({**payload, "id": i})
        with _LOCK:
            _IDLE.setdefault(key, []).append(worker)

    threads = [threading.Thread(target=serve, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# --- results ---------------------------------------------------------------------------------------------
def _fill(row: Row, result: dict, target: Target) -> None:
    row.ok = bool(result.get("ok"))
    if not row.ok:
        row.error = result.get("error", "unknown error")
        return
    for name in ("regs", "stack", "spill_stores", "spill_loads", "shared", "num_warps", "tensor_cores",
                 "tc_instructions", "compile_s", "launch_us"):
        setattr(row, name, result.get(name))
    row.tc_types = result.get("tc_types", "")
    row.blocks_per_sm, row.occupancy = occupancy(row.regs, row.shared, row.num_warps, target)


def occupancy(regs: int, shared: int, num_warps: int, target: Target) -> tuple[int, float]:
    """Blocks resident per SM and the fraction of the SM's warp slots they fill (CUDA's occupancy
    calculator: registers per warp in allocation units, 1 KiB of shared memory reserved per block)."""
    lim = target.limits
    per_warp = -(-max(regs, 1) * 32 // lim.reg_unit) * lim.reg_unit
    by_regs = lim.regs_per_sm // (per_warp * num_warps) if num_warps else 0
    by_smem = lim.smem_per_sm // (shared + 1024) if shared else lim.blocks_per_sm
    by_threads = lim.threads_per_sm // (32 * num_warps) if num_warps else 0
    blocks = min(by_regs, by_smem, by_threads, lim.blocks_per_sm)
    return blocks, blocks * num_warps / (lim.threads_per_sm // 32)


def saved(key: str) -> dict | None:
    """The cached result of the job with `key` (`Job.key`), or None when missing or damaged."""
    return _load(cache_dir() / "aot" / f"{key}.json")


def _load(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None  # missing or damaged (not JSON, not text, a folder): compile again and rewrite
    return data if isinstance(data, dict) and data.get("ok") else None


def _save(path: Path, result: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(result))
    except OSError:
        pass  # a read-only cache only costs the next sweep a compile


def _headline(group) -> str:
    """What a kernel computes, in one label: its template's node, else its first reduction, else its
    first output; with the number of other nodes it fuses."""
    from .groups import TEMPLATES
    from .rowwise import REDUCTIONS

    nodes = list(group.nodes)
    main = next((n for n in nodes if n.op in TEMPLATES or n.op.value.startswith("matmul")), None) \
        or next((n for n in nodes if n.op in REDUCTIONS or n.op.value in ("argmax", "argmin")), None) \
        or (group.outputs[0] if group.outputs[0] in nodes else nodes[-1])
    label = dict(zip(nodes, group.labels)).get(main, main.op.value)
    return label + (f" +{len(nodes) - 1}" if len(nodes) > 1 else "")


def _dtype(node) -> str:
    return str(node.dtype.torch).removeprefix("torch.")


def summary(rows: list[Row]) -> dict:
    """Counts over a sweep: kernels, configs, failures (kernels with no usable config), spills at the
    configs kept, and compile seconds."""
    kernels: dict[int, list[Row]] = {}
    for r in rows:
        kernels.setdefault(r.index, []).append(r)
    failed = [i for i, rs in kernels.items() if not any(r.ok and not r.spills for r in rs)]
    return {"kernels": len(kernels), "configs": len(rows), "failed": len(failed),
            "failed_kernels": failed, "pruned": sum(1 for r in rows if r.pruned),
            "tensor_core_kernels": sum(1 for rs in kernels.values() if any(r.tensor_cores not in ("", "none")
                                                                           for r in rs)),
            "compiled": sum(1 for r in rows if not r.cached), "cached": sum(1 for r in rows if r.cached),
            "compile_s": round(sum(r.compile_s for r in rows if not r.cached), 2)}


# --- the report --------------------------------------------------------------------------------------
def config_text(kind: str, config: dict) -> str:
    """A config in a few characters: tile (M x N x K, rows x cols, or the block), warps, stages."""
    c = config
    if "BLOCK_D" in c:
        tile = f"{c['BLOCK_M']}x{c['BLOCK_N']} d{c['BLOCK_D']} e{c['BLOCK_E']}"
    elif "BLOCK_M" in c:
        tile = f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c.get('BLOCK_K', '?')}"
    elif "BLOCK_ROWS" in c:
        tile = f"{c['BLOCK_ROWS']}x{c['BLOCK_COLS']}"
    else:
        tile = str(c.get("BLOCK", ""))
    stages = f" s{c['num_stages']}" if "num_stages" in c else ""
    return f"{tile} w{c.get('num_warps', 4)}{stages}"


def _size(n: int) -> str:
    return f"{n / 1024:.1f}K" if n >= 1024 else str(n)


def format_table(rows: list[Row], target: Target, title: str = "") -> str:
    """One line per kernel and config, then the sweep's summary."""
    head = ("#", "kernel", "computes", "config", "regs", "spill", "smem", "tensor cores", "occupancy",
            "compile", "status")
    lines = []
    for r in rows:
        what = r.what if len(r.what) <= 44 else r.what[:41] + "..."
        if not r.ok:
            status = "FAILED: " + r.error.splitlines()[0][:160] if r.error else "FAILED"
            lines.append((str(r.index) if r.default else "", r.kind if r.default else "",
                          what if r.default else "", config_text(r.kind, r.config), "", "", "", "", "", "",
                          status))
            continue
        spill = f"{r.stack}B" + (f" ({r.spill_stores} st)" if r.spill_stores else "") if r.spills else "-"
        tc = r.tensor_cores if r.tensor_cores == "none" else \
            f"{r.tensor_cores} x{r.tc_instructions}" + (f" {r.tc_types}" if r.tc_types else "")
        status = ("pruned: " + r.pruned) if r.pruned else ("default" if r.default else "ok")
        compile_s = "cached" if r.cached else f"{r.compile_s:.2f}s"
        first = (str(r.index), r.kind, what) if r.default else ("", "", "")
        lines.append((*first, config_text(r.kind, r.config), str(r.regs), spill, _size(r.shared), tc,
                      f"{r.occupancy:.0%} ({r.blocks_per_sm} blk)", compile_s, status))
    widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = [title] if title else []
    out.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    out += ["  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in lines]
    s = summary(rows)
    files = len({r.file for r in rows})
    out.append(f"{s['kernels']} kernels ({files} distinct), {s['configs']} configs for {target}: "
               f"{s['compiled']} compiled ({s['compile_s']:.1f}s of compile), {s['cached']} from the cache; "
               f"{s['pruned']} pruned; tensor cores in {s['tensor_core_kernels']} kernels; "
               + (f"FAILED: {s['failed']} kernel(s) with no config that compiles, launches and does not "
                  f"spill ({', '.join(map(str, s['failed_kernels']))})" if s["failed"] else "no failures"))
    return "\n".join(out)
