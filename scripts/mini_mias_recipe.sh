#!/usr/bin/env bash
# The shipped recipe on the real mini-MIAS development set, on CPU, at the physical scale chosen by
# benchmarks/bench_mias_cv.py (docs/real-data.md has every configuration measured):
#   scripts/mini_mias_recipe.sh [MIAS_DIR] [OUT_DIR] [HOLDOUT_DIR]
# MIAS_DIR defaults to ../shared/data/mini-mias-dev (mdbNNN.pgm + Info.txt), OUT_DIR to mias-recipe.
# Trains on all development women (a stratified 20 % of them are the validation split that sets the stored
# operating threshold; the weights kept are the last ones, see configs/mini-mias/whole.yaml). Circles from
# Info.txt are the lesion ROIs of the patch stage; the whole-image stage sees image labels only. The whole-image
# model sees both breasts (configs/mini-mias/whole.yaml, `model.bilateral: concat`): each film is scored beside
# the same view of the woman's other breast, paired by patient id and view; a film without its partner is
# scored alone (column `context` = single). It is evaluated without flip TTA (EVAL_TTA=--tta to add it): in the
# cross-validation TTA lowered this model's pooled AUC (0.694 -> 0.632, docs/real-data.md, round 3).
# SCALE=0.2 trains the paper's scale instead (below).
# WHOLE_SEEDS=N (default 1) trains N whole-image models from the one patch classifier (training seeds SEED ..
# SEED+N-1; the extra ones two at a time, one thread each, which uses 2 cores better than one 2-thread run) and
# evaluates/predicts with their average (`evaluate RUN RUN ...`, `predict RUN --ensemble RUN ...`).
# HOLDOUT_DIR (optional): another mini-MIAS folder of different women (same layout), prepared with the same
# spec and evaluated (EVAL_TTA); every hold-out image is in one split of that prepared folder, which
# `evaluate --split` then names.
set -euo pipefail
MIAS=${1:-../shared/data/mini-mias-dev}
OUT=${2:-mias-recipe}
HOLDOUT=${3:-}
MK=${MAMMOKIT:-.venv/bin/mammokit}
# SCALE picks a measured configuration (docs/real-data.md); CFG, SPACING, HEIGHT, WIDTH and EVAL_TTA override
# its parts. 0.6 (default): 344 x 299 px = a 206 x 179 mm canvas; mini-MIAS films are 204.8 mm tall and 179 mm
# holds 212 of the 214 development breasts unshrunk (benchmarks/breast_sizes.py); a larger breast is shrunk to
# fit, never refused; both breasts, scored without TTA. 0.2: the paper's scale (mini-MIAS' native pixel), the
# same 206 x 179 mm on 1032 x 897 px, the one-image model in bfloat16 autocast, scored with 4-flip TTA; 9x the
# pixels, about 4x the default's CPU (a GPU, or a CPU with AVX512-BF16/AMX).
SCALE=${SCALE:-0.6}
case "$SCALE" in
  0.6) D_CFG=configs/mini-mias D_SPACING=0.6 D_HEIGHT=344 D_WIDTH=299 D_TTA= ;;
  0.2) D_CFG=configs/mini-mias/0.2mm D_SPACING=0.2 D_HEIGHT=1032 D_WIDTH=897 D_TTA=--tta ;;
  *) echo "SCALE must be 0.6 (the default) or 0.2 (the paper's scale), got '$SCALE'" >&2; exit 2 ;;
esac
CFG=${CFG:-$D_CFG}  # the patch.yaml + whole.yaml to train with
SEED=${SEED:-0}
WHOLE_SEEDS=${WHOLE_SEEDS:-1}
EVAL_TTA=${EVAL_TTA-$D_TTA}  # "--tta" averages the four flips in the hold-out evaluation; empty: no TTA
SPACING=${SPACING:-$D_SPACING}  # mm per pixel
HEIGHT=${HEIGHT:-$D_HEIGHT}
WIDTH=${WIDTH:-$D_WIDTH}
PY=${PYTHON:-$(dirname "$MK")/python}
start=$(date +%s)
# A step that leaves some images out (exit 1: they are rows of its errors.csv) does not stop the recipe: it says
# how many and why, and the recipe goes on with the rest; any other failure, or nothing usable left, stops it.
partial() {  # partial FOLDER WHAT COMMAND...
  local folder=$1 what=$2 rc=0
  shift 2
  "$@" || rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then echo "$what failed (exit $rc)" >&2; exit "$rc"; fi
  "$PY" -m mammokit.data.left_out "$folder" "$what" || exit 1  # prints what was left out and why
}
partial "$OUT/prepared" prepare $MK prepare mini-mias --root "$MIAS" --out "$OUT/prepared" --pixel-spacing "$SPACING" \
  --height "$HEIGHT" --width "$WIDTH" --workers 2 --seed "$SEED" --no-progress --set split.test_fraction=0 \
  --set split.val_fraction=0.2
[ -f "$OUT/patches/patches.json" ] || partial "$OUT/patches" patches $MK patches --data "$OUT/prepared" \
  --out "$OUT/patches" --scheme s10 --seed "$SEED" --workers 2
resume() { [ -d "$1/checkpoints" ] && [ ! -f "$1/model.json" ] && echo --resume || true; }
[ -f "$OUT/runs/patch/model.json" ] || $MK train patch --data "$OUT/patches" --out "$OUT/runs/patch" \
  -c "$CFG/patch.yaml" --device cpu --seed "$SEED" $(resume "$OUT/runs/patch")
train_whole() {  # train_whole RUN_DIR SEED
  [ -f "$1/model.json" ] || $MK train whole --data "$OUT/prepared" --from-patch "$OUT/runs/patch" \
    --out "$1" -c "$CFG/whole.yaml" --device cpu --seed "$2" $(resume "$1")
}
train_whole "$OUT/runs/whole" "$SEED"
RUNS=("$OUT/runs/whole")
for ((s = 1; s < WHOLE_SEEDS; s += 2)); do  # the extra members two at a time, one thread each
  pids=()
  for t in $s $((s + 1)); do
    [ "$t" -lt "$WHOLE_SEEDS" ] || continue
    RUNS+=("$OUT/runs/whole-seed$t")
    OMP_NUM_THREADS=1 train_whole "$OUT/runs/whole-seed$t" $((SEED + t)) & pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
done
ENSEMBLE=(); for r in "${RUNS[@]:1}"; do ENSEMBLE+=(--ensemble "$r"); done
echo "mini-MIAS recipe trained in $(( ($(date +%s) - start) / 60 )) min: ${RUNS[*]}"
echo "predict new files: $MK predict ${RUNS[0]} FILES... ${ENSEMBLE[*]} --out PREDICTIONS"
if [ -n "$HOLDOUT" ]; then
  partial "$OUT/holdout" "prepare (hold-out)" $MK prepare mini-mias --root "$HOLDOUT" --out "$OUT/holdout" \
    --pixel-spacing "$SPACING" --height "$HEIGHT" --width "$WIDTH" --workers 2 --no-progress \
    --set split.test_fraction=0 --set split.val_fraction=0
  # val_fraction=0 and test_fraction=0 put every hold-out image in the split named "train"
  $MK evaluate "${RUNS[@]}" --data "$OUT/holdout" --split train $EVAL_TTA --out "$OUT/holdout-eval" --seed "$SEED"
  echo "hold-out report: $OUT/holdout-eval/report.html"
fi
