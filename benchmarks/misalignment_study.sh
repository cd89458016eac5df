#!/usr/bin/env bash
# 004's misalignment study on phantoms: training sets whose contrast phase is distorted by
# I + kU, k = 0.01 / 0.02 / 0.05 (`vcesdk-data phantoms --misalign k`, the patients of the
# held-out comparison's training set), pix2pix2d_small and two_stage_small trained on the
# misaligned targets (--misaligned-truth), evaluated on the aligned held-out set.
#
#   benchmarks/misalignment_study.sh [WORK_DIR]     (default runs/heldout, shared with
#   benchmarks/heldout_comparison.sh); THREADS=N torch CPU threads (default 1)
set -euo pipefail
work=${1:-runs/heldout}
threads=${THREADS:-1}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/benchmarks/phantom_sets.sh"

train() {  # recipe data run [extra args...]
  local recipe=$1 data=$2 run=$3
  shift 3
  echo "== $recipe $data -> $run"
  vcesdk-train "$here/training/recipes/$recipe.yaml" --data "$data" --out "$run" \
      --phase pvp --threads "$threads" --misaligned-truth "$@"
}

study=()
for k in 0.01 0.02 0.05; do
  data="$work/train_misalign_$k"
  [ -d "$data" ] || vcesdk-data phantoms --out "$data" --patients 20 --phases ncct,pvp \
      --seed 0 --size 160 160 32 --spacing 4 2 2 --misalign "$k" --no-dicom
  train pix2pix2d_small "$data" "$work/runs/misalign_${k}_pix2pix2d" --set "name=pix2pix2d-small-k$k"
  # the paper's adversarial-only stage 1 (the recipe's paired term and noise-free target need
  # aligned pairs)
  train two_stage_small "$data" "$work/runs/misalign_${k}_two_stage" --set "name=two-stage-small-k$k" \
      --set loss.paired_weight=0 --set data.noise_free_target=false
  study+=("$work/runs/misalign_${k}_pix2pix2d" "$work/runs/misalign_${k}_two_stage")
done
rm -rf "$work/report_misalignment"
vcesdk-eval "${study[@]}" --data "$work/heldout" --out "$work/report_misalignment"
