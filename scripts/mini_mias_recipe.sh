#!/usr/bin/env bash
# The shipped recipe on the real mini-MIAS development set, on CPU, at the physical scale chosen by
# benchmarks/bench_mias_cv.py (docs/real-data.md has every configuration measured):
#   scripts/mini_mias_recipe.sh [MIAS_DIR] [OUT_DIR] [HOLDOUT_DIR]
# MIAS_DIR defaults to ../shared/data/mini-mias-dev (mdbNNN.pgm + Info.txt), OUT_DIR to mias-recipe.
# Trains on all development women (a stratified 20 % of them are the validation split that sets the stored
# operating threshold; the weights kept are the last ones, see configs/mini-mias/whole.yaml). Circles from
# Info.txt are the lesion ROIs of the patch stage; the whole-image stage sees image labels only.
# HOLDOUT_DIR (optional): another mini-MIAS folder of different women (same layout), prepared with the same
# spec and evaluated with flip TTA; every hold-out image is in one split of that prepared folder, which
# `evaluate --split` then names.
set -euo pipefail
MIAS=${1:-../shared/data/mini-mias-dev}
OUT=${2:-mias-recipe}
HOLDOUT=${3:-}
MK=${MAMMOKIT:-.venv/bin/mammokit}
CFG=configs/mini-mias
SEED=${SEED:-0}
SPACING=${SPACING:-0.6}   # mm per pixel: 344 x 256 px = a 206 x 154 mm canvas
HEIGHT=${HEIGHT:-344}
WIDTH=${WIDTH:-256}
start=$(date +%s)
$MK prepare mini-mias --root "$MIAS" --out "$OUT/prepared" --pixel-spacing "$SPACING" --height "$HEIGHT" \
  --width "$WIDTH" --workers 2 --seed "$SEED" --no-progress --set split.test_fraction=0 --set split.val_fraction=0.2
[ -f "$OUT/patches/patches.json" ] || $MK patches --data "$OUT/prepared" --out "$OUT/patches" --scheme s10 \
  --seed "$SEED" --workers 2
resume() { [ -d "$1/checkpoints" ] && [ ! -f "$1/model.json" ] && echo --resume || true; }
[ -f "$OUT/runs/patch/model.json" ] || $MK train patch --data "$OUT/patches" --out "$OUT/runs/patch" \
  -c "$CFG/patch.yaml" --device cpu --seed "$SEED" $(resume "$OUT/runs/patch")
[ -f "$OUT/runs/whole/model.json" ] || $MK train whole --data "$OUT/prepared" --from-patch "$OUT/runs/patch" \
  --out "$OUT/runs/whole" -c "$CFG/whole.yaml" --device cpu --seed "$SEED" $(resume "$OUT/runs/whole")
echo "mini-MIAS recipe trained in $(( ($(date +%s) - start) / 60 )) min: $OUT/runs/whole"
if [ -n "$HOLDOUT" ]; then
  $MK prepare mini-mias --root "$HOLDOUT" --out "$OUT/holdout" --pixel-spacing "$SPACING" --height "$HEIGHT" \
    --width "$WIDTH" --workers 2 --no-progress --set split.test_fraction=0 --set split.val_fraction=0
  # val_fraction=0 and test_fraction=0 put every hold-out image in the split named "train"
  $MK evaluate "$OUT/runs/whole" --data "$OUT/holdout" --split train --tta --out "$OUT/holdout-eval" --seed "$SEED"
  echo "hold-out report: $OUT/holdout-eval/report.html"
fi
