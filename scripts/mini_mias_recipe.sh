#!/usr/bin/env bash
# The full recipe on the real mini-MIAS development set, on CPU, at a reduced image size.
#   scripts/mini_mias_recipe.sh [MIAS_DIR] [OUT_DIR]
# MIAS_DIR defaults to ../shared/data/mini-mias-dev (mdbNNN.pgm + Info.txt), OUT_DIR to mias-recipe.
# Circles from Info.txt are the lesion ROIs of the patch stage; the whole-image stage sees image labels only.
# Split: by woman (a woman = a left/right file pair), stratified, seeded; 30 % of women held out for test
# (more than the paper's 15 %, because mini-MIAS has only ~35 malignant images).
set -euo pipefail
MIAS=${1:-../shared/data/mini-mias-dev}
OUT=${2:-mias-recipe}
MK=${MAMMOKIT:-.venv/bin/mammokit}
CFG=src/mammokit/configs_builtin
SEED=${SEED:-1}
start=$(date +%s)
$MK prepare mini-mias --root "$MIAS" --out "$OUT/prepared" --height 320 --width 256 --workers 2 --seed "$SEED" \
  --no-progress --set split.test_fraction=0.3 --set split.val_fraction=0.25
$MK patches --data "$OUT/prepared" --out "$OUT/patches" --scheme s10 --classes 5 --seed "$SEED" --workers 2
$MK train patch --data "$OUT/patches" --out "$OUT/runs/patch" -c "$CFG/demo_patch.yaml" --device cpu --seed "$SEED" \
  --set trainer.progress_bar=false
$MK train whole --data "$OUT/prepared" --from-patch "$OUT/runs/patch" --out "$OUT/runs/whole" \
  -c "$CFG/demo_whole.yaml" --device cpu --seed "$SEED" --set trainer.progress_bar=false
$MK evaluate "$OUT/runs/whole" --data "$OUT/prepared" --split test --tta --out "$OUT/eval" --seed "$SEED"
echo "mini-MIAS recipe finished in $(( ($(date +%s) - start) / 60 )) min; report: $OUT/eval/report.html"
