#!/usr/bin/env bash
# Data-parallel scaling on one machine: training tokens/s per GPU with 1 and with N GPUs.
#
#   bash scripts/scaling.sh [N] [OUT_DIR]        # N: default all GPUs; OUT_DIR: runs/scaling
#   PART=manager PER_GPU=64 STEPS=300 bash scripts/scaling.sh 8
#
# Weak scaling: the global batch is PER_GPU x (number of GPUs), so each GPU does the same
# work per step and perfect scaling keeps tokens/s per GPU constant. A token is one position
# of a training window (batch x context per step). The time is the training loop's own
# ("<part>: done, S steps in T s"), which leaves out start-up, the tokenizer and the shards
# but includes the warm-up steps and the one validation at the end. No install needed
# (PYTHONPATH=src); needs CUDA GPUs. A smoke test of the script itself on a CPU:
#   DEVICE=cpu PRESET=tiny STEPS=5 bash scripts/scaling.sh 2 /tmp/scaling
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH=src
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-seed}
N=${1:-$("$PY" -c 'import torch; print(torch.cuda.device_count())')}
OUT=${2:-runs/scaling}
PART=${PART:-peer}          # manager (over roots) or peer (over chunks): a language model
PER_GPU=${PER_GPU:-64}      # windows per GPU per step
STEPS=${STEPS:-300}
CONTEXT=$("$PY" -c "from fractal_flood.models.config import get_preset; print(get_preset('$PRESET').$PART['context'])")
if [ "$N" -lt 1 ]; then echo "scaling.sh: no GPU found (DEVICE=cpu for a smoke test)" >&2; exit 2; fi
mkdir -p "$OUT"
"$PY" -c 'import torch; print("GPUs:", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])' | tee "$OUT/results.txt"
for n in 1 "$N"; do
    dir="$OUT/n$n"
    rm -rf "$dir" "$dir.shards"
    "$PY" -m torch.distributed.run --standalone --nproc_per_node "$n" -m fractal_flood train \
        --preset "$PRESET" --parts "$PART" --lm-steps "$STEPS" --batch $((PER_GPU * n)) \
        --eval-every 1000000 --save-every 1000000 --device "$DEVICE" --no-progress --keep-below-bar \
        --out "$dir" | tee "$dir.log"
    awk -v n="$n" -v b=$((PER_GPU * n)) -v T="$CONTEXT" -v part="$PART" '
        $0 ~ part": done," { steps = $3; secs = $6; sub(/s$/, "", secs)
            tps = steps * b * T / secs
            printf "RESULT %d GPU(s): global batch %d x %d tokens, %d steps in %.1f s: %.0f tokens/s, %.0f tokens/s per GPU\n", n, b, T, steps, secs, tps, tps / n }' \
        "$dir.log" | tee -a "$OUT/results.txt"
done
