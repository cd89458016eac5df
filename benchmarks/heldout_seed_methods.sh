#!/usr/bin/env bash
# Held-out comparison of the seed papers' methods (#5) and 004's misalignment study, on the
# phantom sets of benchmarks/heldout_baselines.sh (run that first, or let this make them).
#
#   benchmarks/heldout_seed_methods.sh [WORK_DIR]     (default runs/heldout_baselines)
#   PHASES="pvp" (default) | "ap pvp dp"; THREADS=N torch CPU threads; STUDY=0 skips the
#   misalignment study
#
# Steps per method (2 CPU cores; each small recipe with its stages scaled to the run):
#   mangan_small 2000; two_stage_small 2000 (perceptual pretraining 200, stage 1 600);
#   dual_path_small 800 (pretraining 100); dyefreenet_small 1500 (pretraining 150, primary 500).
# Misalignment study (004): training sets with targets distorted by I + kU, k = 0.01 / 0.02 /
# 0.05 (`vcesdk-data phantoms --misalign k`, the same patients), pix2pix2d_small and
# two_stage_small trained on the misaligned targets (--misaligned-truth), evaluated on the
# aligned held-out set.
set -euo pipefail
work=${1:-runs/heldout_baselines}
phases=${PHASES:-pvp}
threads=${THREADS:-0}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/benchmarks/phantom_sets.sh"

train() {  # recipe phase data run [extra args...]
  local recipe=$1 phase=$2 data=$3 run=$4
  shift 4
  echo "== $recipe $phase $data -> $run"
  vcesdk-train "$here/training/recipes/$recipe.yaml" --data "$data" --out "$run" \
      --phase "$phase" --set train.val_every=500 --set train.ckpt_every=500 \
      --threads "$threads" "$@"
}

models=()
for phase in $phases; do
  r="$work/runs"
  train mangan_small "$phase" "$work/train" "$r/mangan_small_$phase" --max-steps 2000 \
      --set optim.decay_every=1500
  train two_stage_small "$phase" "$work/train" "$r/two_stage_small_$phase" --max-steps 2000 \
      --set loss.pretrain_steps=200 --set loss.stage1_steps=600 --set optim.decay_every=200
  train dual_path_small "$phase" "$work/train" "$r/dual_path_small_$phase" --max-steps 800 \
      --set loss.pretrain_steps=100
  train dyefreenet_small "$phase" "$work/train" "$r/dyefreenet_small_$phase" --max-steps 1500 \
      --set loss.pretrain_steps=150 --set loss.primary_steps=500
  models+=("$r/mangan_small_$phase" "$r/two_stage_small_$phase" "$r/dual_path_small_$phase"
           "$r/dyefreenet_small_$phase")
done
rm -rf "$work/report_seed_methods"
vcesdk-eval "${models[@]}" --data "$work/heldout" --out "$work/report_seed_methods"

[ "${STUDY:-1}" = 1 ] || exit 0
study=()
for k in 0.01 0.02 0.05; do
  data="$work/train_misalign_$k"
  [ -d "$data" ] || vcesdk-data phantoms --out "$data" --patients 20 --phases ncct,pvp \
      --seed 0 --size 160 160 32 --spacing 4 2 2 --misalign "$k" --no-dicom
  train pix2pix2d_small pvp "$data" "$work/runs/misalign_${k}_pix2pix2d" --max-steps 2000 \
      --set optim.decay_every=1500 --set "name=pix2pix2d-small-k$k" --misaligned-truth
  train two_stage_small pvp "$data" "$work/runs/misalign_${k}_two_stage" --max-steps 2000 \
      --set loss.pretrain_steps=200 --set loss.stage1_steps=600 --set optim.decay_every=200 \
      --set "name=two-stage-small-k$k" --misaligned-truth
  study+=("$work/runs/misalign_${k}_pix2pix2d" "$work/runs/misalign_${k}_two_stage")
done
rm -rf "$work/report_misalignment"
vcesdk-eval "${study[@]}" --data "$work/heldout" --out "$work/report_misalignment"
