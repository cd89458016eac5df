"""Where a model's held-out error is, and how much of it any model could remove.

    python benchmarks/heldout_error_budget.py DATA --phase P [RUN_OR_BUNDLE ...]

DATA is a ``vcesdk-data phantoms`` set (e.g. runs/hb/heldout from heldout_comparison.sh).

1. The gain ceiling: the one thing an NCCT cannot tell is each patient's enhancement gain
   (1 +/- ENHANCEMENT_JITTER, uniform; cardiac output and dose). The phantoms are re-rendered
   with the gain at its mean (same seeds, same random draws otherwise) and that noise-free image
   is scored against the noisy target as ``vcesdk-eval`` scores its oracle: the share of the
   headroom (identity -> oracle) a model that predicts everything but the gain would close.
2. For each model: its error against the noise-free truth inside the PSNR window (L 60 / W 500
   HU, both clipped to it, as PSNR sees them), split by phantom label: share of the body, bias,
   RMS and share of the squared error, largest first.

Prints text; exit status 0 whatever the outcome (a measurement, not a test).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import vcesdk.training.phantom as phantom
from vcesdk.io import read_volume
from vcesdk.volume import CTVolume
from vcesdk.training.metrics import image_metrics

LEVEL, WIDTH = 60.0, 500.0   # vcesdk-eval's default PSNR window


def _gain_one(pdir: Path, ncct: CTVolume, phase: str, seed: int, noise_hu: float,
              cupping_hu: float) -> np.ndarray:
    """The patient's noise-free `phase` with the enhancement gain at 1 (HU, rounded as stored);
    `ncct` is the patient's scanned NCCT (its grid)."""
    saved = phantom.ENHANCEMENT_JITTER
    phantom.ENHANCEMENT_JITTER = 0.0      # gain = 1 + 0 x uniform draw: the RNG stream is kept
    try:
        case = phantom.make_phantom(seed, shape=ncct.shape, spacing_mm=ncct.spacing_zyx_mm,
                                    noise_hu=noise_hu, phases=("ncct", phase),
                                    cupping_hu=cupping_hu)
    finally:
        phantom.ENHANCEMENT_JITTER = saved
    stored = read_volume(pdir / "ncct_clean.nii.gz").hu
    if np.abs(case.clean["ncct"] - stored).max() > 0.5:
        raise SystemExit(f"{pdir.name}: the re-rendered NCCT differs from ncct_clean.nii.gz "
                         f"(another generator version or size?)")
    return np.round(case.clean[phase])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--phase", required=True, choices=[x for x in phantom.PHASES if x != "ncct"])
    p.add_argument("models", nargs="*", help="run folders, checkpoints or bundles")
    args = p.parse_intermixed_args(argv)
    data = Path(args.data)
    meta = json.loads((data / "dataset.json").read_text())
    seeds = {r["patient"]: int(r["seed"]) for r in meta["patients"]}
    patients = sorted(d for d in data.iterdir() if d.is_dir() and d.name in seeds)
    rows: dict[str, list[dict]] = {"identity": [], "oracle": [], "gain 1": []}
    for pdir in patients:
        ncct_vol = read_volume(pdir / "ncct.nii.gz")
        ncct = ncct_vol.hu
        truth = read_volume(pdir / f"{args.phase}.nii.gz").hu
        clean = read_volume(pdir / f"{args.phase}_clean.nii.gz").hu
        body = read_volume(pdir / "labels.nii.gz").hu > 0
        rows["identity"].append(image_metrics(ncct, truth, LEVEL, WIDTH, body))
        rows["oracle"].append(image_metrics(clean, truth, LEVEL, WIDTH, body))
        gain_one = _gain_one(pdir, ncct_vol, args.phase, seeds[pdir.name],
                             float(meta["noise_hu"]), float(meta.get("cupping_hu", 0.0)))
        rows["gain 1"].append(image_metrics(gain_one, truth, LEVEL, WIDTH, body))
    mean = {k: {m: float(np.mean([r[m] for r in v])) for m in ("psnr", "mae_hu")}
            for k, v in rows.items()}
    share = [(mean["gain 1"][m] - mean["identity"][m]) / (mean["oracle"][m] - mean["identity"][m])
             for m in ("psnr", "mae_hu")]
    print(f"{args.phase}: identity {mean['identity']['psnr']:.2f} dB / "
          f"{mean['identity']['mae_hu']:.2f} HU, oracle {mean['oracle']['psnr']:.2f} / "
          f"{mean['oracle']['mae_hu']:.2f}, gain at its mean {mean['gain 1']['psnr']:.2f} / "
          f"{mean['gain 1']['mae_hu']:.2f}: {100 * share[0]:.0f} % / {100 * share[1]:.0f} % of "
          f"the headroom")
    if args.models:
        _by_label(args.models, patients, args.phase)
    return 0


def _by_label(models: list[str], patients: list[Path], phase: str) -> None:
    from vcesdk.runtime import Synthesizer
    from vcesdk.training.trainer import bundle_for

    lo, hi = LEVEL - WIDTH / 2, LEVEL + WIDTH / 2
    for model in models:
        acc: dict[int, list[float]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            first = read_volume(patients[0] / "ncct.nii.gz")
            syn = Synthesizer(bundle_for(model, tmp, first), contrast_guard="off")
            for pdir in patients:
                pred = syn.synthesize(read_volume(pdir / "ncct.nii.gz")).hu
                clean = read_volume(pdir / f"{phase}_clean.nii.gz").hu
                labels = read_volume(pdir / "labels.nii.gz").hu.astype(np.int32)
                err = np.clip(pred, lo, hi) - np.clip(clean, lo, hi)
                for k in np.unique(labels[labels > 0]):
                    e = err[labels == k]
                    a = acc.setdefault(int(k), [0.0, 0.0, 0.0])
                    a[0] += e.size
                    a[1] += float(e.sum())
                    a[2] += float((e ** 2).sum())
        n_body = sum(a[0] for a in acc.values())
        sq = sum(a[2] for a in acc.values())
        print(f"\n{model}: RMS in the window {np.sqrt(sq / n_body):.2f} HU")
        print("| label | share of body | bias HU | RMS HU | share of squared error |")
        print("| --- | --- | --- | --- | --- |")
        for k, (n, s, ss) in sorted(acc.items(), key=lambda kv: -kv[1][2]):
            print(f"| {phantom.LABELS[k]} | {n / n_body:.3f} | {s / n:+.1f} | "
                  f"{np.sqrt(ss / n):.1f} | {ss / sq:.3f} |")


if __name__ == "__main__":
    raise SystemExit(main())
