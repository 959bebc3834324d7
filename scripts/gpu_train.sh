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
# A model directory has one writer (train.lock), so each part trains in its own directory
# with a copy of one tokenizer, made once here; the parts are gathered into $DIR at the end
# (each part's JSON records the tokenizer's sha256, so a mix-up would refuse to load).
rm -rf "$DIR/renderer" "$DIR/manager" "$DIR/peer"  # this script always trains afresh
python3 - "$DIR" <<'PY'
import sys
from fractal_flood import checkpoint as ckpt
from fractal_flood.models.config import get_preset
from fractal_flood.corpus.reader import load_corpus
from fractal_flood.hierarchy.tokenizer import HierarchicalTokenizer
p = get_preset("seed")
ckpt.save_tokenizer(sys.argv[1], HierarchicalTokenizer.train(load_corpus(), p.num_chunks, p.num_roots))
PY
train() {  # part, extra args...
  local part=$1; shift
  mkdir -p "$DIR/$part"
  cp "$DIR/tokenizer.json" "$DIR/$part/"
  python3 -m fractal_flood train --preset seed --out "$DIR/$part" --parts "$part" --device cuda \
    --time-limit "$LIMIT" --no-progress "$@" > "$DIR/train_$part.log" 2>&1
}
start=$(date +%s)
train renderer --steps 4000 --eval-every 500 --save-every 1000 & p1=$!
train manager --lm-steps 3000 --eval-every 250 --save-every 1000 & p2=$!
train peer --lm-steps 3000 --eval-every 250 --save-every 1000 & p3=$!
rc=0; wait $p1 || rc=1; wait $p2 || rc=1; wait $p3 || rc=1
echo "training wall time: $(( $(date +%s) - start ))s, rc=$rc"
for part in renderer manager peer; do
  cp "$DIR/$part/$part.json" "$DIR/$part/$part.safetensors" "$DIR/" || rc=1
done
cat "$DIR"/train_*.log > "$OUT/train.log"
cat "$OUT/train.log"
cp "$DIR"/tokenizer.json "$DIR"/*.json "$DIR"/*.safetensors "$OUT"/ 2>/dev/null || true
python3 -m fractal_flood generate --model "$DIR" --roots 300 --prompt "ROMEO:" --device cuda || rc=1
exit $rc
