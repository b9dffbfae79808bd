"""A compile worker: launches generated kernels through Triton's own launch path, for a CUDA target, on a
machine that may have no GPU at all.

Run as a separate process (`python aot_worker.py`, started by `codegen.aot`) with TRITON_INTERPRET=0, so
Triton is imported as a compiler, not as the interpreter. A stand-in CUDA driver takes the place of the
real one: it names the target architecture and its device limits, reads the resource figures of each
cubin with `cuobjdump` where the real driver would load it, and records the launch instead of making it.
Everything else is Triton's own `JITFunction.run`: binding and specializing the arguments (integer
widths, the value 1, 16-byte alignment of pointers and sizes), compiling to TTIR, TTGIR, PTX and a cubin
with `ptxas`, the check that the globals a kernel read have not changed, and the launch-time resource
checks (shared memory, threads per block). A kernel that passes here compiles and launches on the GPU.

Protocol: one JSON job per line on stdin, one JSON result per line on the stdout it started with (Triton
prints compiler errors to stdout, so that is moved to stderr). Nothing of Axon is imported here.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

PROTOCOL = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)  # whatever Triton or ptxas prints goes to stderr

os.environ["TRITON_INTERPRET"] = "0"
import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.driver import DriverBase  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

BASE = 1 << 40              # where stand-in pointers start: 256-byte aligned, as CUDA's allocator
GRID_LIMITS = (2**31 - 1, 65535, 65535)
TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def resources(cubin: bytes) -> dict:
    """REG, STACK, LOCAL and SHARED of the cubin's kernel, from `cuobjdump --dump-resource-usage`."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([os.path.join(TOOLS, "cuobjdump"), "--dump-resource-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
        figures = {k.lower(): int(v) for k, v in re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", out)}
        if figures.get("stack") or figures.get("local"):
            sass = subprocess.run([os.path.join(TOOLS, "nvdisasm"), f.name], capture_output=True, text=True,
                                  check=True).stdout
            figures["spill_stores"] = len(re.findall(r"\bSTL\b", sass))
            figures["spill_loads"] = len(re.findall(r"\bLDL\b", sass))
        return figures
    finally:
        os.unlink(f.name)


def max_threads(regs: int, limits: dict) -> int:
    """Threads one block may have at `regs` registers each (CUDA allocates per warp, in units)."""
    unit = limits["reg_unit"]
    per_warp = -(-max(regs, 1) * 32 // unit) * unit
    return min(limits["threads_per_block"], (limits["regs_per_sm"] // per_warp) * 32)


class StandInDriver(DriverBase):
    """Triton's CUDA driver as far as compiling and launching need it, with no GPU behind it."""

    def __init__(self, arch: int, limits: dict):
        self.arch, self.limits = arch, limits
        self.launched: list[tuple] = []
        self.figures: dict = {}
        self.utils = _Utils(self)
        outer = self

        class Launcher:
            def __init__(self, src, metadata):
                self.metadata = metadata

            def __call__(self, grid_x, grid_y, grid_z, *rest):
                for size, top, axis in zip((grid_x, grid_y, grid_z), GRID_LIMITS, "xyz"):
                    if not 0 <= size <= top:
                        raise RuntimeError(f"grid {axis} of {size} is outside CUDA's limit of {top}")
                outer.launched.append((grid_x, grid_y, grid_z))

        self.launcher_cls = Launcher

    @classmethod
    def is_active(cls):
        return True

    def map_python_to_cpp_type(self, ty: str) -> str:
        return ty

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_benchmarker(self):
        raise RuntimeError("no GPU: nothing can be timed")

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=None):
        return divmod(self.arch, 10)


class _Utils:
    def __init__(self, owner: StandInDriver):
        self.owner = owner

    def load_binary(self, name, cubin, shared, device):
        figures = resources(cubin)
        self.owner.figures = figures
        return 0, 0, figures.get("reg", 0), figures.get("local", 0), max_threads(figures.get("reg", 0),
                                                                                  self.owner.limits)

    def unload_module(self, module):
        pass

    def get_device_properties(self, device):
        lim = self.owner.limits
        return {"max_shared_mem": lim["smem_per_block"], "max_num_regs": lim["regs_per_sm"],
                "multiprocessor_count": 132, "warpSize": 32, "sm_clock_rate": 1_980_000,
                "mem_clock_rate": 2_619_000, "mem_bus_width": 5120}


class Pointer:
    """A tensor argument as Triton's binder sees one: a dtype and an address (never dereferenced)."""

    def __init__(self, dtype: str, address: int):
        self.dtype = getattr(torch, dtype)
        self.address = address

    def data_ptr(self) -> int:
        return self.address


_MODULES: dict[str, object] = {}


def kernel(path: str, name: str):
    if path not in _MODULES:
        # the name Axon's runtime gives it, so both compiles are one in Triton's cache
        spec = importlib.util.spec_from_file_location(f"axon_kernel_{os.path.basename(path)[:-3]}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[path] = module
    return getattr(_MODULES[path], name)


def tensor_cores(ptx: str) -> tuple[str, int, str]:
    """Which tensor-core instructions the PTX uses, how many, and the type of their A operands (bf16,
    tf32, s8, e4m3, ...): wgmma (sm_90: `.f32.bf16.bf16`, the A type second), tcgen05 (sm_100), mma
    (`.s32.s8.s8.s32`, the A type third from the end)."""
    for kind, pattern, at in (("wgmma", r"\bwgmma\.mma_async\.sync\.aligned\.m\d+n\d+k\d+((?:\.\w+)+)", 1),
                              ("tcgen05", r"\btcgen05\.mma()", None),
                              ("mma", r"\bmma\.sync\.aligned\.m\d+n\d+k\d+\.row\.col((?:\.\w+)+)", -3)):
        found = re.findall(pattern, ptx)
        if found:
            types = {t.split(".")[1:][at] for t in found if at is not None and len(t.split(".")) > 3}
            return kind, len(found), ",".join(sorted(types))
    return "none", 0, ""


def run(job: dict, drv: StandInDriver) -> dict:
    args = []
    for i, a in enumerate(job["args"]):
        if "ptr" in a:
            args.append(Pointer(a["ptr"], BASE * (i + 1) + a.get("offset", 0)))
        else:
            args.append(a["int"])
    fn = kernel(job["path"], job["name"])
    drv.launched.clear()
    drv.figures = {}
    t0 = time.perf_counter()
    compiled = fn.run(*args, grid=tuple(job["grid"]), warmup=False, **job["meta"])
    seconds = time.perf_counter() - t0
    if not drv.launched and all(job["grid"]):
        raise RuntimeError("the kernel compiled but was not launched")
    figures = drv.figures or resources(compiled.asm["cubin"])
    kind, count, types = tensor_cores(compiled.asm["ptx"])
    launch_us = launch_cost(fn, args, job) if job.get("repeat") else None
    return {"ok": True, "launch_us": launch_us, "regs": figures.get("reg", 0),
            "stack": figures.get("stack", 0),
            "local": figures.get("local", 0), "spill_stores": figures.get("spill_stores", 0),
            "spill_loads": figures.get("spill_loads", 0), "shared": compiled.metadata.shared,
            "num_warps": compiled.metadata.num_warps, "num_stages": compiled.metadata.num_stages,
            "tensor_cores": kind, "tc_instructions": count, "tc_types": types,
            "compile_s": round(seconds, 4)}


def launch_cost(fn, args, job: dict) -> float:
    """Microseconds of host time per launch through `JITFunction.run` once compiled (binding and
    specializing the arguments, the cache lookup, the globals check, the launcher's call): the median
    of `repeat` launches, the launcher itself a stand-in that does nothing."""
    grid, meta = tuple(job["grid"]), job["meta"]
    samples = []
    for _ in range(job["repeat"]):
        t0 = time.perf_counter_ns()
        fn.run(*args, grid=grid, warmup=False, **meta)
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    return samples[len(samples) // 2] / 1e3


def main() -> None:
    drivers: dict[int, StandInDriver] = {}
    for line in sys.stdin:
        job = json.loads(line)
        arch = job["arch"]
        if arch not in drivers:
            drivers[arch] = StandInDriver(arch, job["limits"])
        driver.set_active(drivers[arch])
        try:
            result = run(job, drivers[arch])
        except Exception as e:  # noqa: BLE001 - every failure is a row of the report, with its message
            message = f"{type(e).__name__}: {e}".strip()
            where = traceback.extract_tb(e.__traceback__)[-1]
            result = {"ok": False, "error": message[:4000],
                      "where": f"{os.path.basename(where.filename)}:{where.lineno}"}
        result["id"] = job["id"]
        PROTOCOL.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
