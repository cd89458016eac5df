# Sourced by the held-out benchmark scripts: the phantom sets they share, made once in $work.
# TRAIN_PATIENTS training patients (default 20: seeds 0-19) in $train_set, and 8 held-out ones
# (seeds 9000-9007) in $work/heldout, all phases, 160 x 160 x 32 at 4 x 2 x 2 mm. $train_tag
# names what was trained on another count N ("_tN"; "" for the default 20): the set is
# $work/train$train_tag (its first 20 patients those of $work/train).
train_patients=${TRAIN_PATIENTS:-20}
train_tag=""
[ "$train_patients" = 20 ] || train_tag="_t$train_patients"
train_set="$work/train$train_tag"
mkdir -p "$work/runs"
[ -d "$train_set" ] || vcesdk-data phantoms --out "$train_set" --patients "$train_patients" \
    --phases ncct,ap,pvp,dp --seed 0 --size 160 160 32 --spacing 4 2 2 --no-dicom
[ -d "$work/heldout" ] || vcesdk-data phantoms --out "$work/heldout" --patients 8 \
    --phases ncct,ap,pvp,dp --seed 9000 --size 160 160 32 --spacing 4 2 2 --no-dicom
