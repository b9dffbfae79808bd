"""Cold start, side by side: Axon compiling a training step's kernels for a GPU against `torch.compile`
compiling an equal PyTorch training step, each in a fresh process with empty caches.

    python bench/cold_start.py                       # the GPT example, sm_90 (native on a GPU)
    python bench/cold_start.py examples/cnn.axon --target sm_80 --json cold.json

- Axon: `axon compile FILE --step --target T --cold`: the graph built (elaboration, autodiff, optimizer,
  passes, fusion), every kernel generated and compiled by Triton for T, every config the tuner may try,
  in the worker pool (what a first run on that GPU compiles; later runs compile the tuner's choice
  only), then again with Triton's cache warm. Timed as a whole process, Python's start included.
- torch.compile: the PyTorch twin of the same loss graph (every IR node as its torch op: `axon.bench`)
  with the train block's torch.optim optimizer, forward and `optimizer.step` under `torch.compile`; the
  first step (Dynamo, AOTAutograd, Inductor) minus an eager step, then a second compiled process with
  Inductor's cache warm. On this machine's device: Triton for a GPU, C++ for the CPU — so without a GPU the
  two compile for different targets, which the record says.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TORCH_SIDE = r'''
import json, sys, time
import torch
from axon.bench import torch_optimizer, twin, twin_graph
from axon.driver import load_ast
from axon.frontend import training_graph
from axon.ir import init_params
from axon.optim import Schedule
from axon.run import bind_dims, random_inputs, symbols

path = sys.argv[1]
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
loss_graph, spec = training_graph(load_ast(path))
dims = {s: 32 for s in symbols(loss_graph)}
dims["batch"] = spec.batch or 32
env = bind_dims(loss_graph, dims)
graph = twin_graph(loss_graph)
data = {k: v.to(device) for k, v in random_inputs(loss_graph, env, 0).items()}
params = {k: v.to(device).requires_grad_(v.is_floating_point()) for k, v in init_params(graph, 0).items()}
opt = {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)}
leaves = [params[k] for k in graph.params if params[k].is_floating_point()]
optim = torch_optimizer(opt, leaves, Schedule.of(opt, 10**9)(1))
t = twin(graph, env, device)
args = [data[n] for n in graph.inputs] + [params[n] for n in graph.params]
at = list(graph.outputs).index("loss")

def step(forward, update):
    optim.zero_grad(set_to_none=True)
    forward(*args)[at].backward()
    update()
    if device.type == "cuda":
        torch.cuda.synchronize()

def timed(fn):
    t0 = time.perf_counter(); fn(); return time.perf_counter() - t0

eager = min(timed(lambda: step(t.fn, optim.step)) for _ in range(3))
forward, update = torch.compile(t.fn), torch.compile(optim.step)
first = timed(lambda: step(forward, update))
print(json.dumps({"first_step_s": first, "eager_step_s": eager, "compile_s": first - eager,
                  "device": str(device), "torch": torch.__version__}))
'''


def run(cmd, env) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", nargs="?", default=str(ROOT / "examples" / "gpt.axon"))
    p.add_argument("--target", default=None, help="default: native on a GPU, else sm_90")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    import torch

    target = a.target or ("native" if torch.cuda.is_available() else "sm_90")
    record = {"file": a.file, "target": target}
    with tempfile.TemporaryDirectory(prefix="axon-cold-") as tmp:
        env = {**os.environ, "AXON_CACHE_DIR": f"{tmp}/axon", "TRITON_CACHE_DIR": f"{tmp}/triton",
               "TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor"}
        out_json = f"{tmp}/aot.json"
        total, _ = run([sys.executable, "-m", "axon.cli", "compile", a.file, "--step", "--target", target,
                        "--cold", "--json", out_json], env)
        aot = json.loads(Path(out_json).read_text())
        record["axon"] = {"process_s": total, "cold_compile_s": aot["times_s"]["cold"],
                          "warm_compile_s": aot["times_s"]["warm"], "kernels": aot["summary"]["kernels"],
                          "configs": aot["summary"]["configs"], "failed": aot["summary"]["failed"]}
        script = f"{tmp}/torch_side.py"
        Path(script).write_text(TORCH_SIDE)
        cold_total, out = run([sys.executable, script, a.file], env)
        cold = json.loads(out.strip().splitlines()[-1])
        warm_total, out = run([sys.executable, script, a.file], env)  # Inductor's cache now warm
        warm = json.loads(out.strip().splitlines()[-1])
        record["torch_compile"] = {"process_s": cold_total, "cold_compile_s": cold["compile_s"],
                                   "warm_compile_s": warm["compile_s"], "warm_process_s": warm_total,
                                   "device": cold["device"], "torch": cold["torch"]}
    ax, tc = record["axon"], record["torch_compile"]
    print(f"{Path(a.file).name} training step, cold start in fresh processes with empty caches:")
    print(f"  axon (Triton for {target}, {ax['kernels']} kernels, {ax['configs']} configs): process "
          f"{ax['process_s']:.1f} s, of which compiling {ax['cold_compile_s']:.1f} s cold / "
          f"{ax['warm_compile_s']:.1f} s warm")
    print(f"  torch.compile (Inductor on {tc['device']}, torch {tc['torch']}): process "
          f"{tc['process_s']:.1f} s, first step's compile {tc['cold_compile_s']:.1f} s cold / "
          f"{tc['warm_compile_s']:.1f} s warm")
    if a.json:
        Path(a.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
