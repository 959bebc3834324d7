#!/usr/bin/env bash
# Everything that needs a GPU, in one run of about 7 minutes on one H100 / H200, from the
# repository root with nothing installed (PYTHONPATH=src, plain python3):
#   1. the CUDA tests (-m cuda), then the other tests that skip without a GPU or without
#      transformers (selected by keyword: they are the ones a CPU run could not check), and
#      the fused step's tests with its Triton kernels compiled;
#   2. the full bench (every row capped in time, the sequential baseline at small sizes);
#   3. a torch.profiler table of one manager decode step (eager, CUDA graph, compiled in the
#      graph, the fused Triton step in the graph): scripts/profile_step.py -> profile_step.txt
#      (no Chrome traces: the device returns at most 8 files); the bench has the fused
#      step's end-to-end rows;
#   4. whether torch.compile slows later uncompiled work in the same process, and which
#      clean-up undoes it: scripts/compile_aftereffects.py -> compile_aftereffects.txt.
# Writes bench.json, bench.md, bench.png, gpu_check.log, profile_step.txt and
# compile_aftereffects.txt (6 files) into OUT_DIR and prints a short table last. The bench
# rewrites bench.json after every row, so a run cut short keeps its rows.
# Usage: scripts/gpu_check.sh [OUT_DIR]   (default: $OUT, else out/gpu_check)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-out/gpu_check}}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
LOG="$OUT/gpu_check.log"
: > "$LOG"
rc=0

step() {  # label, time limit (s), command...: run it, log it, return its status
  local label=$1 limit=$2
  shift 2
  echo "== $label ($(date -u +%H:%M:%S))" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local status=$?
  echo "== $label: exit $status" | tee -a "$LOG"
  return "$status"
}

step "machine" 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader;
  python3 -c "import sys, torch; print(\"python\", sys.version.split()[0], \"torch\", torch.__version__,
  \"cuda\", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else \"NO GPU\")";
  python3 -c "import triton; print(\"triton\", triton.__version__)" 2>/dev/null || echo "no triton: the fused rows are skipped";
  date -u' || rc=1
step "CUDA tests" 150 python3 -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m cuda tests || rc=1
# exit 5 = nothing selected, which is fine
# (and the fused step's tests, which the CPU runs in Triton's interpreter: here compiled)
step "tests that skip on a CPU" 120 python3 -m pytest -q -p no:cacheprovider --continue-on-collection-errors \
  -m "not cuda" -k "(cuda or gpu or hf_ or transformers or fused) and not without" tests
s=$?; [ "$s" -eq 0 ] || [ "$s" -eq 5 ] || rc=1
step "bench (full)" 330 python3 -m fractal_flood bench --device cuda \
  --json "$OUT/bench.json" --markdown "$OUT/bench.md" --plot "$OUT/bench.png" || rc=1

# each in a fresh process, so the bench's compiled rows cannot colour them
step "profile of one manager step" 150 bash -c 'set -o pipefail; python3 scripts/profile_step.py --device cuda \
  --modes eager,graph,compile,fused | tee "$0/profile_step.txt"' "$OUT" || rc=1
step "compile after-effects" 240 bash -c 'set -o pipefail; python3 scripts/compile_aftereffects.py --device cuda \
  | tee "$0/compile_aftereffects.txt"' "$OUT" || rc=1

echo | tee -a "$LOG"
if [ -s "$OUT/bench.json" ]; then
  python3 -c 'import json, sys
from fractal_flood.measure.report import short_table
d = json.load(open(sys.argv[1]))
print(short_table(d) + ("\n(partial: the bench stopped early)" if d["run"].get("partial") else ""))' \
    "$OUT/bench.json" 2>&1 | tee -a "$LOG"
else
  echo "no bench.json: the bench did not get to its first row" | tee -a "$LOG"
fi
echo "gpu_check: exit $rc, files in $OUT" | tee -a "$LOG"
exit "$rc"
