#!/usr/bin/env bash
# What a session lent a GPU runs first (bench/README.md, "The GPU check"): the device, the GPU-marked
# tests, the kernel sweep, and one training step of the MLP, CNN and GPT examples with and without CUDA
# graphs, each against PyTorch eager and torch.compile. At most GPU_CHECK_BUDGET seconds in all (default
# 570): every step runs under `timeout`, its limit cut to what is left. A step that fails, times out or
# finds no time left is reported and the others still run; then the script exits 1.
#
#   bench/gpu_check.sh                          # records in bench/results/
#   GPU_CHECK_RESULTS=/somewhere bench/gpu_check.sh
#
# Writes <model>-train-<gpu>.json, <model>-train-graphs-<gpu>.json, kernels-<gpu>.json (axon bench
# records), gpu-check-<gpu>.json (each step: command, exit status, seconds) and gpu-check-<gpu>.log.
# Needs torch with CUDA already installed; installs Axon (`pip install -e ".[dev]"`, the README's install,
# with the installed torch pinned) only when `import axon` does not find this checkout.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-570}
RESULTS=${GPU_CHECK_RESULTS:-bench/results}
START=$(date +%s)
unset TRITON_INTERPRET  # the check is of the compiled kernels, never the interpreter
mkdir -p "$RESULTS"
STEPS=$(mktemp)
trap 'rm -f "$STEPS"' EXIT

die() { echo "gpu_check: $*" >&2; exit 1; }

# --- set up: a CUDA torch, and Axon from this checkout ----------------------------------------------------
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die "torch sees no CUDA GPU ($PY): this script is for a machine lent one"
TORCH=$($PY -c "import torch; print(torch.__version__)")
HERE=$($PY -c "import axon.runtime as r, pathlib; print(pathlib.Path(r.__file__).resolve().parents[1])" 2>/dev/null)
if [ "$HERE" != "$ROOT" ]; then
    echo "installing Axon from $ROOT (torch $TORCH stays)"
    CONSTRAINT=$(mktemp)
    echo "torch==$TORCH" > "$CONSTRAINT"
    # offline (no index reachable), with the dependencies already there: build with what is installed
    $PY -m pip install -q -e ".[dev]" -c "$CONSTRAINT" \
        || $PY -m pip install -q --no-build-isolation --no-deps -e . \
        || die "pip install -e .[dev] failed"
    $PY -c "import axon, lark, networkx, sklearn, matplotlib, pytest, hypothesis" \
        || die "Axon's dependencies are not all installed (pyproject.toml lists them)"
    rm -f "$CONSTRAINT"
    [ "$($PY -c 'import torch; print(torch.__version__)')" = "$TORCH" ] || die "the install changed torch"
fi
GPU=$($PY - <<'EOF'
import re, torch
name = torch.cuda.get_device_name().lower().replace("nvidia", "")
m = re.search(r"\b([a-z]+\d+[a-z]*)\b", name)
print(m.group(1) if m else "gpu")
EOF
)
LOG="$RESULTS/gpu-check-$GPU.log"
: > "$LOG"

# --- the steps -----------------------------------------------------------------------------------------
# step NAME LIMIT COMMAND...: run COMMAND under `timeout` (LIMIT seconds, or what is left of the budget)
step() {
    local name=$1 limit=$2; shift 2
    local left=$(( BUDGET - ($(date +%s) - START) - 5 ))
    (( limit > left )) && limit=$left
    if (( limit < 15 )); then
        echo "== $name: not run, the budget of ${BUDGET}s is spent" | tee -a "$LOG"
        printf '%s\t%s\t%s\t%s\n' "$name" "no time left" 0 "$*" >> "$STEPS"
        return
    fi
    echo "== $name (at most ${limit}s): $*" | tee -a "$LOG"
    local t0=$(date +%s) rc=0
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG" || rc=$?
    local status="ok"
    (( rc == 124 || rc == 137 )) && status="timed out after ${limit}s"
    (( rc != 0 && rc != 124 && rc != 137 )) && status="failed (exit $rc)"
    echo "== $name: $status in $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$*" >> "$STEPS"
}

AXON=("$PY" -m axon.cli)
step device 30 "$PY" -c "
import torch, triton
from axon.runtime import choose, describe
print(describe(choose(None)))
p = torch.cuda.get_device_properties(0)
print(f'{p.name}: {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, sm{p.major}{p.minor}; '
      f'torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}')"
step "gpu tests" 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
step "kernels bench" 120 "${AXON[@]}" bench --mode kernels --json "$RESULTS/kernels-$GPU.json"
for model in mlp cnn gpt; do
    case $model in mlp) limit=45 ;; cnn) limit=60 ;; gpt) limit=100 ;; esac
    step "$model train" "$limit" "${AXON[@]}" bench "examples/$model.axon" --mode train \
        --json "$RESULTS/$model-train-$GPU.json"
    step "$model train, CUDA graphs" "$limit" "${AXON[@]}" bench "examples/$model.axon" --mode train \
        --cuda-graphs --json "$RESULTS/$model-train-graphs-$GPU.json"
done

# --- the summary -----------------------------------------------------------------------------------------
"$PY" - "$STEPS" "$RESULTS/gpu-check-$GPU.json" "$START" <<'EOF'
import json, subprocess, sys, time
from datetime import datetime, timezone

import torch

steps_file, out, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
steps = []
for line in open(steps_file):
    name, status, seconds, command = line.rstrip("\n").split("\t", 3)
    steps.append({"step": name, "status": status, "seconds": int(seconds), "command": command})
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    commit = "unknown"
record = {"tool": "bench/gpu_check.sh", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
          "commit": commit or "unknown", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
          "seconds": int(time.time()) - start, "steps": steps}
with open(out, "w") as f:
    f.write(json.dumps(record, indent=1) + "\n")
width = max(len(s["step"]) for s in steps)
for s in steps:
    print(f"{s['step']:<{width}}  {s['status']:<24} {s['seconds']:>4}s")
print(f"{record['seconds']}s in all; summary in {out}")
sys.exit(0 if all(s["status"] == "ok" for s in steps) else 1)
EOF
