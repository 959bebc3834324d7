#!/usr/bin/env bash
# Train the shipped default model on one GPU: renderer, manager and AR peer as three
# processes side by side (each step is launch-bound, so they share the chip well).
# Usage: scripts/gpu_train.sh [OUT_DIR]   (model files and train.log are copied there)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-out/gpu_train}}
DIR=${MODEL_DIR:-runs/seed}
LIMIT=${TIME_LIMIT:-240}
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
date -u
train() {  # part, extra args...
  local part=$1; shift
  python3 -m fractal_flood train --preset seed --out "$DIR" --parts "$part" --device cuda \
    --time-limit "$LIMIT" --no-progress "$@" > "$DIR/train_$part.log" 2>&1
}
start=$(date +%s)
train renderer --steps 4000 --eval-every 500 --save-every 1000 & p1=$!
train manager --lm-steps 3000 --eval-every 250 --save-every 1000 & p2=$!
train peer --lm-steps 3000 --eval-every 250 --save-every 1000 & p3=$!
rc=0; wait $p1 || rc=1; wait $p2 || rc=1; wait $p3 || rc=1
echo "training wall time: $(( $(date +%s) - start ))s, rc=$rc"
cat "$DIR"/train_*.log > "$OUT/train.log"
cat "$OUT/train.log"
cp "$DIR"/tokenizer.json "$DIR"/*.json "$DIR"/*.safetensors "$OUT"/ 2>/dev/null || true
python3 -m fractal_flood generate --model "$DIR" --roots 300 --prompt "ROMEO:" --device cuda || rc=1
exit $rc
