# Sourced by the held-out benchmark scripts: the phantom sets they share, made once in $work.
# 20 training patients (seeds 0-19) and 8 held-out ones (seeds 9000-9007), all phases,
# 160 x 160 x 32 at 4 x 2 x 2 mm.
mkdir -p "$work/runs"
[ -d "$work/train" ] || vcesdk-data phantoms --out "$work/train" --patients 20 \
    --phases ncct,ap,pvp,dp --seed 0 --size 160 160 32 --spacing 4 2 2 --no-dicom
[ -d "$work/heldout" ] || vcesdk-data phantoms --out "$work/heldout" --patients 8 \
    --phases ncct,ap,pvp,dp --seed 9000 --size 160 160 32 --spacing 4 2 2 --no-dicom
