#!/usr/bin/env bash
# Held-out comparison of every small recipe (five baselines, four seed-paper methods) per phase:
# each trained on one phantom training set with its own recipe schedule (at most 15 minutes per
# run on 2 CPU cores; two-stage 14.9 minutes on an idle machine, 15.6-16.4 sharing it), evaluated by vcesdk-eval against the NCCT identity and the oracle (the
# noise-free truth) on phantom seeds never used in training (9000+). Not part of the tests.
#
#   benchmarks/heldout_comparison.sh [WORK_DIR]          (default runs/heldout)
#   PHASES="ap pvp dp" (default) RECIPES="..." to run a subset; THREADS=N torch threads per run
#   (default 1); JOBS=N runs at a time (default 2: one per core of the CI machine);
#   TRAIN_PATIENTS=N training phantoms (default 20; the README's table says which it used)
#
# Writes WORK_DIR/{train,heldout} (phantom sets, with <phase>_clean.nii.gz), WORK_DIR/runs/
# <recipe>_<phase> (run folders with log.jsonl and time.txt) and WORK_DIR/report (report.md,
# report.json with the oracle rows and headroom_closed, PNGs); another TRAIN_PATIENTS=N adds
# "_tN" to the training set, run and report folders (train_tN, <recipe>_<phase>_tN, report_tN).
set -euo pipefail
work=${1:-runs/heldout}
phases=${PHASES:-"ap pvp dp"}
recipes=${RECIPES:-"unet_l1_small pix2pix2d_small pix2pix25d_small pix2pix3d_small cyclegan_small mangan_small dual_path_small dyefreenet_small two_stage_small"}
threads=${THREADS:-1}
jobs=${JOBS:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/benchmarks/phantom_sets.sh"

train() {  # recipe phase
  local run="$work/runs/$1_$2$train_tag"
  [ -f "$run/time.txt" ] && return 0   # finished earlier
  local t0=$SECONDS
  OMP_WAIT_POLICY=passive vcesdk-train "$here/training/recipes/$1.yaml" --data "$train_set" \
      --out "$run" --phase "$2" --threads "$threads" > "$run.log" 2>&1
  echo "$((SECONDS - t0)) s" > "$run/time.txt"
  echo "== $1 $2: $((SECONDS - t0)) s"
}

models=()
for phase in $phases; do
  for recipe in $recipes; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
    train "$recipe" "$phase" &
    models+=("$work/runs/${recipe}_${phase}$train_tag")
  done
done
wait
rm -rf "$work/report$train_tag"
vcesdk-eval "${models[@]}" --data "$work/heldout" --out "$work/report$train_tag"
