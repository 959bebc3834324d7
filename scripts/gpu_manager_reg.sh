#!/usr/bin/env bash
# Manager regularisation at full size on one GPU: the seed manager (4 x 128, context 256,
# batch 64, 3000 steps) on the whole shipped corpus with the shipped tokenizer, once per
# setting, all side by side (each step is launch-bound, so they share the chip). Prints one
# row per setting: the best held-out bits per character (the checkpoint LMTask keeps), its
# step, and the last one (how far it overfits after the best). About 4 minutes on an H200.
# Usage: scripts/gpu_manager_reg.sh [OUT_DIR]   (default: $OUT, else out/manager_reg)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-out/manager_reg}}
STEPS=${STEPS:-3000}
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p "$OUT"
# name and flags; "base" is what the shipped manager was trained with
CONFIGS=(
  "base|--dropout 0 --weight-decay 0.01 --decay all"
  "wd0.1-matrices|--dropout 0 --weight-decay 0.1 --decay matrices"
  "wd0.1-matrices+emb|--dropout 0 --weight-decay 0.1 --decay matrices+embeddings"
  "dropout0.1|--dropout 0.1 --weight-decay 0.01 --decay all"
  "dropout0.2|--dropout 0.2 --weight-decay 0.01 --decay all"
  "dropout0.1+wd0.1-matrices|--dropout 0.1 --weight-decay 0.1 --decay matrices"
)
pids=()
for c in "${CONFIGS[@]}"; do
  name=${c%%|*}; flags=${c#*|}
  dir="$OUT/$name"
  rm -rf "$dir"; mkdir -p "$dir"
  cp src/fractal_flood/assets/model/tokenizer.json "$dir/"
  # shellcheck disable=SC2086
  python3 -m fractal_flood train --out "$dir" --parts manager --preset seed --lm-steps "$STEPS" \
    --eval-every 250 --save-every "$STEPS" --device cuda --no-progress $flags > "$dir/train.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
{
  echo "Manager regularisation, $(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  echo
  echo "| setting | flags | best held-out bpc | at step | last held-out bpc |"
  echo "|---|---|---:|---:|---:|"
  for c in "${CONFIGS[@]}"; do
    name=${c%%|*}; flags=${c#*|}
    python3 - "$OUT/$name" "$name" "$flags" <<'EOF'
import json, re, sys
d, name, flags = sys.argv[1:]
meta = json.load(open(f"{d}/manager.json"))
last = re.findall(r"val_bpc=([0-9.]+)", open(f"{d}/train.log").read())[-1]
print(f"| {name} | `{flags}` | {meta['metrics']['val_bpc']:.4f} | {meta['step']} | {float(last):.4f} |")
EOF
  done
} | tee "$OUT/manager_reg.md"
exit "$rc"
