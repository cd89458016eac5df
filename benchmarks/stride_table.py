"""Quality and latency of the demo bundles against the slice stride (``Synthesizer(stride=)``).

    python benchmarks/stride_table.py [DIR] [--strides 1 2 4 8] [--bundles B ...]
        [--latency-ct CT ...] [--repeats 3] [--json PATH]
    python benchmarks/stride_table.py --rescore PATH   (the table again from a written JSON)

For each bundle (default ``vcesdk.DEFAULT_BUNDLES``: AP, PVP, DP) and each stride:

(a) quality on a held-out phantom set DIR (default ``runs/hb/heldout``, made by
    ``vcesdk-data phantoms --out runs/hb/heldout --patients 8 --phases ncct,ap,pvp,dp
    --seed 9000 --size 160 160 32 --spacing 4 2 2 --no-dicom``), scored as ``vcesdk-eval``
    scores (:mod:`vcesdk.training.evaluate`: its truth file, its L 60 / W 500 window, the body
    from ``labels.nii.gz`` > 0, :func:`vcesdk.training.metrics.image_metrics`): PSNR (dB) and
    MAE (HU), mean and SD over the patients, and the per-patient difference to stride 1;
(b) the real-anatomy check on the shipped sample (``vcesdk.data.sample_dir()``,
    :func:`vcesdk.training.anatomy.real_anatomy_check`, as ``vcesdk-eval --real-anatomy``):
    mean |error| over the organ groups, HU;
(c) latency on the ONNX Runtime CPU provider: model ms/slice
    (:attr:`vcesdk.runtime.LatencyReport.median_ms_per_slice`) and end-to-end ms/slice, median
    of ``--repeats`` calls after one warm-up, on the sample CT and on lung1.

Then the rule for the default stride: a stride is *within noise* of stride 1 when, for every
bundle, its mean PSNR and mean MAE differ from stride 1's by no more than the standard error
of stride 1's mean over the held-out patients (SD / sqrt(n): the uncertainty of the figure
itself), and its organ mean |error| by no more than 1 HU (the HU quantum of CT); the
recommended stride is the one with the smallest end-to-end latency on lung1 (summed over the
bundles) among those within noise.

Writes one JSON (``--json``) and prints a markdown table and the recommendation. A
measurement, not a test: exit status 0 whatever it finds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import vcesdk
from vcesdk.data import sample_dir
from vcesdk.training.anatomy import find_case_files, real_anatomy_check
from vcesdk.training.evaluate import DEFAULT_WINDOW, _truth
from vcesdk.training.metrics import image_metrics
from vcesdk.training.store import find_phase

ROOT = Path(__file__).resolve().parents[1]
LUNG1 = ROOT.parent / "shared" / "data" / "ct" / "pyradiomics_lung1" / "lung1_image.nrrd"
PROVIDER = "CPUExecutionProvider"
ORGAN_TOLERANCE_HU = 1.0
"""Organ mean |error| within this of stride 1 counts as within noise (the HU quantum)."""


def held_out_cases(data: Path, phase: str) -> list[dict[str, Any]]:
    """Each patient of `data` with an NCCT and a `phase` truth, read once: {"patient", "ncct"
    (CTVolume), "truth" (float32 HU), "body" (bool mask: labels > 0, else truth > -500 HU, as
    vcesdk-eval)}."""
    cases = []
    for pdir in sorted(p for p in data.iterdir() if p.is_dir() and find_phase(p, "ncct")):
        truth_path = _truth(pdir, phase)
        if truth_path is None:
            continue
        truth = vcesdk.read_volume(truth_path).hu
        labels = pdir / "labels.nii.gz"
        body = (vcesdk.read_volume(labels).hu.astype(np.int32) > 0 if labels.is_file()
                else truth > -500)
        cases.append({"patient": pdir.name, "ncct": vcesdk.read_volume(find_phase(pdir, "ncct")),
                      "truth": truth, "body": body})
    if not cases:
        raise SystemExit(f"no patient in {data} has an NCCT and a {phase} scan")
    return cases


def quality(syn: vcesdk.Synthesizer, cases: list[dict]) -> dict[str, Any]:
    """PSNR / SSIM / MS-SSIM / MAE of each case at the evaluation window (per patient)."""
    level, width = DEFAULT_WINDOW
    return {c["patient"]: image_metrics(syn.synthesize(c["ncct"]).hu, c["truth"], level, width,
                                        c["body"]) for c in cases}


def latency(syn: vcesdk.Synthesizer, vol: vcesdk.CTVolume, repeats: int) -> dict[str, Any]:
    """Median model and end-to-end ms/slice over `repeats` calls after one warm-up."""
    syn.synthesize(vol)
    reports = []
    for _ in range(repeats):
        syn.synthesize(vol)
        reports.append(syn.last_latency)
    return {"windows": reports[0].windows, "window": list(reports[0].window),
            "slices": reports[0].slices,
            "model_ms_per_slice": statistics.median(r.median_ms_per_slice for r in reports),
            "end_to_end_ms_per_slice": statistics.median(r.end_to_end_ms_per_slice
                                                         for r in reports),
            "model_s": statistics.median(r.model_s for r in reports), "repeats": repeats}


def _mean_sd(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "n": len(v)}


WORSE = {"psnr": -1.0, "mae_hu": 1.0}
"""Sign of a change that is worse: lower PSNR, higher MAE."""


def summarise(rows: list[dict]) -> None:
    """Add the paired differences to stride 1 and the within-noise verdict to each row
    (rows of one bundle, stride 1 among them)."""
    for bundle in {r["bundle"] for r in rows}:
        mine = [r for r in rows if r["bundle"] == bundle]
        ref = next((r for r in mine if r["stride"] == 1), None)
        if ref is None:
            continue
        se = {m: ref["quality"][m]["sd"] / math.sqrt(ref["quality"][m]["n"])
              for m in ("psnr", "mae_hu")}
        for r in mine:
            diffs = {m: [r["per_patient"][p][m] - ref["per_patient"][p][m]
                         for p in ref["per_patient"]] for m in ("psnr", "mae_hu")}
            r["vs_stride_1"] = {m: {**_mean_sd(d), "patients_worse": int(sum(
                WORSE[m] * v > 0 for v in d))} for m, d in diffs.items()}
            r["vs_stride_1"]["organ_mean_abs_error_hu"] = (
                r["organ_mean_abs_error_hu"] - ref["organ_mean_abs_error_hu"])
            r["noise"] = {"psnr_se": se["psnr"], "mae_hu_se": se["mae_hu"],
                          "organ_tolerance_hu": ORGAN_TOLERANCE_HU}
            r["within_noise"] = bool(
                abs(r["quality"]["psnr"]["mean"] - ref["quality"]["psnr"]["mean"]) <= se["psnr"]
                and abs(r["quality"]["mae_hu"]["mean"] - ref["quality"]["mae_hu"]["mean"])
                <= se["mae_hu"]
                and abs(r["vs_stride_1"]["organ_mean_abs_error_hu"]) <= ORGAN_TOLERANCE_HU)


def recommend(rows: list[dict], latency_case: str) -> dict[str, Any]:
    """The stride with the smallest end-to-end latency on `latency_case` (summed over bundles)
    among the strides within noise of stride 1 for every bundle."""
    strides = sorted({r["stride"] for r in rows})
    ok = [s for s in strides if all(r.get("within_noise") for r in rows if r["stride"] == s)]
    cost = {s: sum(r["latency"][latency_case]["end_to_end_ms_per_slice"]
                   for r in rows if r["stride"] == s) for s in strides}
    best = min(ok, key=lambda s: cost[s]) if ok else None
    return {"stride": best, "within_noise": ok, "end_to_end_ms_per_slice_sum": cost,
            "latency_case": latency_case}


def markdown(rows: list[dict], cases: list[str]) -> str:
    head = ["phase", "stride", "PSNR dB", "d PSNR", "MAE HU", "d MAE",
            "patients worse PSNR / MAE", "organ mean \\|error\\| HU"]
    for c in cases:
        head += [f"windows {c}", f"model ms/slice {c}", f"end-to-end ms/slice {c}"]
    head.append("within noise")
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in rows:
        q, d = r["quality"], r.get("vs_stride_1", {})
        cells = [r["phase"].upper(), str(r["stride"]),
                 f"{q['psnr']['mean']:.2f} +/- {q['psnr']['sd']:.2f}",
                 f"{d['psnr']['mean']:+.3f}" if d else "-",
                 f"{q['mae_hu']['mean']:.2f} +/- {q['mae_hu']['sd']:.2f}",
                 f"{d['mae_hu']['mean']:+.3f}" if d else "-",
                 f"{d['psnr']['patients_worse']} / {d['mae_hu']['patients_worse']} of "
                 f"{d['psnr']['n']}" if d else "-",
                 f"{r['organ_mean_abs_error_hu']:.1f}"]
        for c in cases:
            lat = r["latency"][c]
            cells += [str(lat["windows"]), f"{lat['model_ms_per_slice']:.1f}",
                      f"{lat['end_to_end_ms_per_slice']:.1f}"]
        cells.append({True: "yes", False: "no"}.get(r.get("within_noise"), "-"))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", nargs="?", default=str(ROOT / "runs" / "hb" / "heldout"),
                   help="held-out phantom set (vcesdk-data layout)")
    p.add_argument("--strides", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--bundles", nargs="+", default=[str(b) for b in vcesdk.DEFAULT_BUNDLES])
    p.add_argument("--latency-ct", nargs="+", default=None, metavar="CT",
                   help="CTs timed (default: the shipped sample and lung1)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per CT (3)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    p.add_argument("--rescore", default=None, metavar="PATH",
                   help="no model runs: the differences, verdicts and table again from the "
                        "per-patient values of a JSON this script wrote")
    args = p.parse_args(argv)
    if args.rescore:
        report = json.loads(Path(args.rescore).read_text(encoding="utf-8"))
        return _finish(report, args.json)
    if 1 not in args.strides:
        p.error("--strides must include 1 (the reference)")
    t_start = time.time()
    files = find_case_files(sample_dir())
    sample = vcesdk.read_volume(files["ct"])
    timed = {"sample": sample, "lung1": vcesdk.read_volume(LUNG1)} if args.latency_ct is None \
        else {Path(c).name: vcesdk.read_volume(c) for c in args.latency_ct}
    rows = []
    for bpath in args.bundles:
        bundle = vcesdk.load_bundle(bpath)
        cases = held_out_cases(Path(args.data), bundle.phase)
        for stride in args.strides:
            syn = vcesdk.Synthesizer(bundle, providers=[PROVIDER], contrast_guard="off",
                                     stride=stride)
            per = quality(syn, cases)
            organs = real_anatomy_check(sample, files["labels"], files["label_json"],
                                        {bundle.phase: syn.synthesize(sample)},
                                        files["masks_dir"], model=bundle.name)
            row = {"bundle": bundle.name, "phase": bundle.phase, "stride": stride,
                   "bundle_stride": syn.bundle_stride, "provider": syn.provider,
                   "quality": {m: _mean_sd([v[m] for v in per.values()])
                               for m in ("psnr", "ssim", "ms_ssim", "mae_hu")},
                   "per_patient": per,
                   "organ_mean_abs_error_hu": organs["phases"][bundle.phase]["mean_abs_error_hu"],
                   "organs_error_hu": {k: o["error_hu"] for k, o in
                                       organs["phases"][bundle.phase]["organs"].items()},
                   "latency": {name: latency(syn, vol, args.repeats)
                               for name, vol in timed.items()}}
            rows.append(row)
            print(f"{bundle.phase} stride {stride}: PSNR {row['quality']['psnr']['mean']:.2f} "
                  f"MAE {row['quality']['mae_hu']['mean']:.2f} organ "
                  f"{row['organ_mean_abs_error_hu']:.1f} "
                  + " ".join(f"{k} {v['end_to_end_ms_per_slice']:.0f} ms/slice"
                             for k, v in row["latency"].items()), file=sys.stderr)
    report = {"data": str(args.data), "window": list(DEFAULT_WINDOW), "provider": PROVIDER,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "note": "shared with background training jobs; run under nice"},
              "latency_inputs": {k: {"shape": list(v.shape), "spacing_mm":
                                     list(v.spacing_zyx_mm)} for k, v in timed.items()},
              "rows": rows, "seconds": time.time() - t_start}
    return _finish(report, args.json)


def _finish(report: dict[str, Any], json_path: str | None) -> int:
    """Differences to stride 1, verdicts, recommendation; print the table; write the JSON."""
    rows = report["rows"]
    summarise(rows)
    cases = list(report["latency_inputs"])
    latency_case = "lung1" if "lung1" in cases else cases[0]
    rec = report["recommendation"] = recommend(rows, latency_case)
    report["rule"] = (__doc__.split("Then the rule for the default stride: ")[1]
                      .split("\n\n")[0].replace("\n", " "))
    print(markdown(rows, cases))
    print()
    print(f"strides within noise of stride 1 for every bundle: {rec['within_noise']}; "
          f"recommended default stride: {rec['stride']} (smallest end-to-end latency on "
          f"{latency_case} among those)")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
