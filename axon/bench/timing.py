"""Timing: medians of repeated calls (CUDA events on a GPU, wall-clock on the CPU), the device's ceilings,
kernel launches counted by the profiler, and one case timed three ways (Axon, eager, torch.compile)."""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Mapping

import torch

IMPLS = ("axon", "eager", "compiled")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> dict:
    """Median, min and inter-quartile range (ms) of `repeats` calls of `fn` after `warmup` calls.
    On CUDA each call is timed by events with the device idle before it, so a call's time includes
    the gaps where the GPU waits for the host (launch overhead is part of what is measured)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return summarize(samples)


def summarize(samples_ms: list[float]) -> dict:
    s = sorted(samples_ms)
    if len(s) >= 2:
        q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
    else:
        q1 = q3 = s[0]
    return {"median_ms": statistics.median(s), "min_ms": s[0], "iqr_ms": q3 - q1, "repeats": len(s)}


def ceilings(device: torch.device) -> dict:
    """The device's measured copy bandwidth (a large tensor cloned: read + write) and f32 matmul rate
    (torch.mm, with torch's current TF32 setting, recorded)."""
    gpu = device.type == "cuda"
    n = (1 << 28) if gpu else (1 << 22)          # 1 GiB of f32 on a GPU, 16 MiB on the CPU
    m = 8192 if gpu else 512
    copy = _timed_op(lambda: [torch.empty(n, dtype=torch.float32, device=device).uniform_()],
                     lambda x: x.clone(), device)
    mm = _timed_op(lambda: [torch.randn(m, m, device=device), torch.randn(m, m, device=device)],
                   torch.mm, device)
    return {"copy_gbps": 2 * n * 4 / (copy["median_ms"] * 1e-3) / 1e9,
            "matmul_tflops": 2 * m ** 3 / (mm["median_ms"] * 1e-3) / 1e12,
            "copy_bytes": 2 * n * 4, "matmul_size": m,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def _timed_op(make: Callable[[], list], op: Callable, device: torch.device) -> dict:
    """`op` on operands `make` gives, timed; the operands are freed when it returns."""
    args = make()
    gpu = device.type == "cuda"
    return measure(lambda: op(*args), device, 10 if gpu else 5, 3)


def kernel_launches(fn: Callable[[], object], device: torch.device) -> int | None:
    """CUDA kernels one call of a PyTorch function launches (torch.profiler); None off the GPU or when
    the profiler cannot say."""
    if device.type != "cuda":
        return None
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize(device)
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                   and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
        return len(kernels)
    except Exception:  # noqa: BLE001 - a count is a nicety; the timing stands without it
        return None


@contextlib.contextmanager
def ieee_f32():
    """Full-precision f32 matmuls and convolutions in PyTorch (no TF32) while the bench runs: Axon's
    kernels compute f32 in full precision, so both sides do the same arithmetic."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# --- one case, three ways --------------------------------------------------------------------------------
def time_case(case, s, device: torch.device, ceil: Mapping[str, float]) -> dict:
    """The three timings of one case (`cases.Case`, with settings `s`), with launches, rates against the
    ceilings and speed-ups."""
    impls = {"axon": {**measure(case.axon, device, s.repeats, s.warmup), "launches": case.launches,
                      "kernels": case.kernels},
             "eager": {**measure(case.eager, device, s.repeats, s.warmup),
                       "launches": kernel_launches(case.eager, device)}}
    if not s.compile:
        impls["compiled"] = {"skipped": "--no-compile"}
    else:
        compiled, why = try_compile(case.make_compiled)
        if compiled is None:
            impls["compiled"] = {"error": why}
        else:
            impls["compiled"] = {**measure(compiled, device, s.repeats, s.warmup),
                                 "launches": kernel_launches(compiled, device)}
    for r in impls.values():
        if "median_ms" not in r:
            continue
        seconds = r["median_ms"] * 1e-3
        if case.bytes:
            r["gbps"] = case.bytes / seconds / 1e9
            r["pct_copy_bw"] = 100 * r["gbps"] / ceil["copy_gbps"]
        if case.flops:
            r["tflops"] = case.flops / seconds / 1e12
            r["pct_matmul_peak"] = 100 * r["tflops"] / ceil["matmul_tflops"]
    base = impls["axon"]["median_ms"]
    speedup = {f"{k}/axon": impls[k]["median_ms"] / base if "median_ms" in impls[k] and base > 0 else None
               for k in ("eager", "compiled")}
    return {"case": case.name, "shapes": case.shapes, "bytes": case.bytes, "flops": case.flops,
            **case.extra, "check": case.check, "impls": impls, "speedup": speedup}


def try_compile(make: Callable[[], Callable[[], object]]):
    """(the compiled step, None) or (None, why it failed): torch.compile fails lazily, at the first
    call, so that call is made here."""
    try:
        import torch._dynamo

        torch._dynamo.reset()  # each case compiles afresh: no recompile limits, no shapes made dynamic
        step = make()
        step()
        return step, None
    except Exception as e:  # noqa: BLE001 - any failure of Inductor is recorded, not raised
        text = str(e).strip().splitlines()
        return None, f"{type(e).__name__}: {text[0][:300] if text else ''}".rstrip(": ")
