#!/usr/bin/env bash
# Held-out comparison of the baselines (#4): every small recipe trained per phase on one phantom
# training set, evaluated against the NCCT identity baseline on phantom seeds never used in
# training (9000+). Not part of the test suite (about an hour on 2 CPU cores).
#
#   benchmarks/heldout_baselines.sh [WORK_DIR]      (default runs/heldout_baselines)
#   STEPS=2000 DECAY=1500 PHASES="ap pvp dp" RECIPES="unet_l1_small ..." to change the protocol,
#   THREADS=N for torch CPU threads (default: torch's)
#
# Writes WORK_DIR/{train,heldout} (phantom datasets), WORK_DIR/runs/<recipe>_<phase> (run
# folders) and WORK_DIR/report (vcesdk-eval: report.md, report.json, PNGs).
set -euo pipefail
work=${1:-runs/heldout_baselines}
steps=${STEPS:-2000}
decay=${DECAY:-1500}
phases=${PHASES:-"ap pvp dp"}
recipes=${RECIPES:-"unet_l1_small pix2pix2d_small pix2pix25d_small pix2pix3d_small cyclegan_small"}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/benchmarks/phantom_sets.sh"
models=()
for phase in $phases; do
  for recipe in $recipes; do
    run="$work/runs/${recipe}_${phase}"
    echo "== $recipe $phase -> $run"
    vcesdk-train "$here/training/recipes/$recipe.yaml" --data "$work/train" --out "$run" \
        --phase "$phase" --max-steps "$steps" --set optim.decay_every="$decay" \
        --set train.val_every=500 --set train.ckpt_every=500 --threads "${THREADS:-0}"
    models+=("$run")
  done
done
rm -rf "$work/report"
vcesdk-eval "${models[@]}" --data "$work/heldout" --out "$work/report"
