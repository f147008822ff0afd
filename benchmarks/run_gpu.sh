#!/usr/bin/env bash
# Every throughput benchmark on one GPU machine (H100/H200, torch preinstalled, no network), in under 6 min.
#
#   OUT=/path/to/results bash benchmarks/run_gpu.sh      # from the repository root
#
# Writes $OUT/bench.log (all output), $OUT/env.txt (GPU, driver, torch, cuDNN, CPUs) and the last line of each
# benchmark, its JSON summary, as $OUT/<name>.json: train, predict, train_compile, prepare, metrics and,
# time permitting, train_freeze3.
# Order: the figures the GPU target needs first; each run gets a time limit, clipped to what is left of
# BUDGET_S (default 330 s), so that a slow compile cannot push the whole script past its slot.
set -uo pipefail # no -e: one failing benchmark must not cost the others their run

OUT=${OUT:-${TMPDIR:-/tmp}/salgan-bench-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) # absolute, before the cd below
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then # the first interpreter on PATH that has torch
    for candidate in python3 python; do
        if "$candidate" -c 'import torch' 2>/dev/null; then PY=$candidate && break; fi
    done
fi
[[ -n "$PY" ]] || { echo "no python with torch on PATH; set PYTHON" >&2 && exit 1; }
BUDGET_S=${BUDGET_S:-330}
LOG="$OUT/bench.log"
: >"$LOG"
# Generated images and prepared arrays, made once by the first train run and reused by the others.
DATA=$(mktemp -d "${TMPDIR:-/tmp}/salgan-bench.XXXXXX")
trap 'rm -rf "$DATA"' EXIT

bench() { # bench NAME LIMIT_S SCRIPT [ARGS...]
    local name=$1 limit=$2 left=$((BUDGET_S - SECONDS))
    shift 2
    ((left < limit)) && limit=$left
    if ((limit < 30)); then
        echo "== $name: skipped, ${left}s of the ${BUDGET_S}s budget left" | tee -a "$LOG"
        return
    fi
    echo "== $name (limit ${limit}s, t=${SECONDS}s): $PY $*" | tee -a "$LOG"
    local start=$SECONDS
    timeout -k 10 "$limit" "$PY" "$@" 2>&1 | tee -a "$LOG" "$DATA/$name.out"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start))s" | tee -a "$LOG"
    # The summary is the last line that is a JSON object; none when the run failed or timed out.
    grep '^{' "$DATA/$name.out" | tail -n 1 >"$OUT/$name.json"
    [[ -s "$OUT/$name.json" ]] || rm -f "$OUT/$name.json"
}

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit,driver_version --format=csv 2>&1
    "$PY" -c 'import platform, torch; print("python", platform.python_version(), "torch", torch.__version__,
"cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "gpus", torch.cuda.device_count())'
    echo "cpus $(nproc), compiler for torch.compile: $(command -v gcc || command -v cc || echo none)"
} 2>&1 | tee "$OUT/env.txt" | tee -a "$LOG"

# 1. Training step, full configuration (256x192, width 1.0, batch 32): naive, fast, and fast with the split
#    streamed from pinned host memory (train.data_placement: stream; its cost per step is "streamed_cost").
#    512 images (generated on every core, about 40/s each), 100 timed steps per fast path, as many naive.
bench train 170 benchmarks/bench_train.py --images 512 --steps 100 --streamed --data "$DATA/data"
# 2. Predict at 640x480 with PNG writing, on 256 images of their own.
bench predict 60 benchmarks/bench_predict.py --images 256 --data "$DATA/data"
# 3. The same training step under torch.compile (compilation happens in the untimed warm-up).
bench train_compile 170 benchmarks/bench_train.py --compile --skip-naive --images 512 --steps 100 \
    --data "$DATA/data"
# 4. CPU-side stages in their default modes, on the machine's 16 cores.
bench prepare 60 benchmarks/bench_prepare.py
bench metrics 60 benchmarks/bench_metrics.py
# 5. If time is left: the SALICON GPU profile's frozen conv1-conv3 (profiles/salicon-gpu.yaml), fast paths only.
bench train_freeze3 60 benchmarks/bench_train.py --freeze-blocks 3 --skip-naive --images 512 --steps 100 \
    --data "$DATA/data"

echo "== done in ${SECONDS}s; results in $OUT: $(cd "$OUT" && ls | tr "\n" " ")" | tee -a "$LOG"
