"""`--mode host`: what the host pays per kernel launch, for the examples' training steps (or FILE's), three
ways in the same run:

    axon     Axon's own time: a step called with every kernel launch replaced by a call that does
             nothing, so what is left is checking the tensors, allocating the outputs and building each
             launch's arguments (the plan binds everything else once); per launch and per step
    triton   a bare Triton launch: the time `JITFunction.run` takes per launch of the same kernels once
             compiled (binding and specializing arguments, the cache lookup, the globals check, the
             launcher). On a GPU the step's launches themselves, timed on the host; without one, through
             Triton's own launch path on a stand-in driver in a compile worker (`codegen/aot_worker.py`,
             the kernels compiled for sm_90), the launcher a no-op
    eager    PyTorch eager's per-op dispatch: the twin's training step timed and divided by the ATen ops it
             dispatches (counted by a TorchDispatchMode), and the floor of one tiny `torch.add`

A model with many small kernels on a fast GPU pays these for every launch: Axon's own share is the part
this project controls.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .settings import Settings

EXAMPLES = ("mlp.axon", "cnn.axon", "lstm.axon", "gpt.axon")
TRITON_SAMPLE = 6      # distinct kernels of a step whose bare launch is timed without a GPU
LAUNCH_REPEATS = 200   # bare launches timed per kernel


@dataclass
class HostCase:
    name: str
    prepared: object       # train.Step
    launches: int


def host_cases(s: Settings, device: torch.device):
    from dataclasses import replace

    from .train import prepare_step

    examples = Path(__file__).resolve().parents[2] / "examples"
    files = [s.file] if s.file else [str(examples / f) for f in EXAMPLES]
    for f in files:
        prepared = prepare_step(replace(s, file=f), device)
        prepared.exe(prepared.feeds, prepared.params)  # compiles, plans (and on a GPU tunes) once
        plan = prepared.exe.plan(prepared.env)
        yield HostCase(f"{prepared.loss_graph.name} train step", prepared, len(plan.steps))


class _NoLaunch:
    """A launch that does nothing: what is timed around it is Axon's own."""

    def __call__(self, *args, **kwargs):
        pass


def axon_own(case: HostCase, repeats: int) -> dict:
    p = case.prepared
    plan = p.exe.plan(p.env)
    calls = [st.call for st in plan.steps]
    stub = _NoLaunch()
    try:
        for st in plan.steps:
            st.call = stub if st.call is not None else None
        p.exe(p.feeds, p.params, check_indices=False)
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            p.exe(p.feeds, p.params, check_indices=False)
            samples.append((time.perf_counter_ns() - t0) / 1e3)
    finally:
        for st, call in zip(plan.steps, calls):
            st.call = call
    per_step = statistics.median(samples)
    return {"us_per_step": per_step, "us_per_launch": per_step / max(case.launches, 1),
            "samples": len(samples)}


def triton_launch(case: HostCase, device: torch.device) -> dict:
    p = case.prepared
    plan = p.exe.plan(p.env)
    if device.type == "cuda":
        dynamic = [*(p.feeds.get(n.name, p.params.get(n.name)) for n in plan.bound),
                   *(torch.empty(shape, dtype=dt, device=device) for shape, dt in plan.fresh_specs)]
        ready = [(st.call, [*st.arguments(dynamic), *st.scalars], st.launch.meta)
                 for st in plan.steps if st.call]
        per_launch = []
        for _ in range(20):
            torch.cuda.synchronize()
            t0 = time.perf_counter_ns()
            for call, args, meta in ready:
                call(*args, **meta)
            per_launch.append((time.perf_counter_ns() - t0) / 1e3 / max(len(ready), 1))
        torch.cuda.synchronize()
        return {"us_per_launch": statistics.median(per_launch), "how": "the step's launches, host time"}
    from axon.codegen import aot, compile_group
    from axon.codegen.target import parse

    target = parse("sm_90", tf32=False)
    seen, launches = set(), []
    for st in plan.steps:
        kernel = st.kernel
        if kernel.path.name in seen or len(launches) >= TRITON_SAMPLE:
            continue
        seen.add(kernel.path.name)
        gpu_kernel = compile_group(kernel.group, target=target)
        launches.append((gpu_kernel, gpu_kernel.prepare(p.env)))
    jobs = aot.jobs_for(launches, target, all_configs=False)
    for job in jobs:
        job.repeat = LAUNCH_REPEATS
    rows = aot.compile_jobs(jobs, target, use_cache=False)
    times = [r.launch_us for r in rows if r.ok and r.launch_us is not None]
    return {"us_per_launch": statistics.median(times) if times else None, "kernels_timed": len(times),
            "how": "JITFunction.run on a stand-in driver (sm_90), launcher a no-op"}


def eager_dispatch(case: HostCase, device: torch.device, repeats: int) -> dict:
    from torch.utils._python_dispatch import TorchDispatchMode

    from .twin import twin

    p = case.prepared
    fast = twin(p.graph, p.env, device)
    step, _ = p.torch_step(fast.fn, False)

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    with Count():
        step()
    step()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter_ns()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter_ns() - t0) / 1e3)
    a, b = torch.ones(1, device=device), torch.ones(1, device=device)
    out = torch.empty(1, device=device)
    floor = []
    for _ in range(2000):
        t0 = time.perf_counter_ns()
        torch.add(a, b, out=out)
        floor.append((time.perf_counter_ns() - t0) / 1e3)
    per_step = statistics.median(samples)
    return {"ops": Count.ops, "us_per_step": per_step, "us_per_op": per_step / max(Count.ops, 1),
            "floor_us_per_op": statistics.median(floor)}


def time_host(case: HostCase, s: Settings, device: torch.device, ceilings) -> dict:
    repeats = max(s.repeats, 20)
    impls = {"axon": axon_own(case, repeats), "triton": triton_launch(case, device),
             "eager": eager_dispatch(case, device, max(s.repeats, 3))}
    return {"case": case.name, "launches": case.launches, "dims": case.prepared.env, "impls": impls}


def format_table(record: dict) -> str:
    lines = [f"axon bench --mode host on {record['device']['name']}: host time per launch, microseconds "
             f"(medians); commit {record['axon']['commit'][:12]}", ""]
    head = (f"{'case':<26} {'launches':>8} {'axon/launch':>11} {'axon/step':>10} {'triton/launch':>13} "
            f"{'eager ops':>9} {'eager/op':>9} {'torch.add':>9}")
    lines += [head, "-" * len(head)]
    for r in record["runs"]:
        a, t, e = r["impls"]["axon"], r["impls"]["triton"], r["impls"]["eager"]
        tri = "-" if t.get("us_per_launch") is None else f"{t['us_per_launch']:.2f}"
        lines.append(f"{r['case']:<26} {r['launches']:>8} {a['us_per_launch']:>11.2f} "
                     f"{a['us_per_step']:>10.1f} {tri:>13} {e['ops']:>9} {e['us_per_op']:>9.2f} "
                     f"{e['floor_us_per_op']:>9.2f}")
    lines += ["", "axon/launch: Axon's own host time per launch (the launches replaced by no-ops); "
              "triton/launch: one launch through Triton's JITFunction.run once compiled; eager/op: PyTorch's "
              "eager step over the ATen ops it dispatches (compute included); torch.add: one tiny op, "
              "dispatch alone."]
    if record["runs"]:
        lines.append(f"triton/launch measured as: {record['runs'][0]['impls']['triton']['how']}")
    return "\n".join(lines)
