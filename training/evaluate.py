"""``vcesdk-eval``: rank models against the NCCT identity baseline on held-out paired data.

    vcesdk-eval MODEL [MODEL ...] --data DIR --out REPORT_DIR [--window L W] [--max-cases N]

MODEL is a bundle folder, a run folder holding checkpoint.pt, or a checkpoint file; a
checkpoint is exported to a temporary ONNX bundle first (parity checked on the first held-out
NCCT, as ``vcesdk export`` does), so every model runs through the same runtime.

DIR is a dataset in the layout of ``vcesdk-data`` (``<patient>/ncct.nii.gz``,
``<patient>/<phase>.nii.gz`` or ``<phase>_aligned.nii.gz`` as the truth when present,
``<patient>/labels.nii.gz`` optional) or the user layout of :mod:`vcesdk.training.store`. Each
bundle synthesizes its phase from every NCCT; the NCCT itself is the identity baseline.

Bundles with a "subtraction" auxiliary output (MAN-GAN, 000) also get their predicted
subtraction map scored against the real one (truth - NCCT): ``report.json`` phase entry
``subtraction``: {model: psnr / ssim / ms_ssim / mae_hu}.

Where the dataset has the noise-free truth (``<phase>_clean.nii.gz``, written by
``vcesdk-data phantoms``), each phase also gets an ``oracle`` row (that truth scored against the
noisy target: the ceiling any model can reach) and each model ``headroom_closed`` = (model -
identity) / (oracle - identity) for PSNR and MAE. Where the NCCT's noise-free image is there
too (``ncct_clean.nii.gz``), ``noise_decomposition`` splits each model's (and the identity's)
error against the noise-free truth into the NCCT noise it passes through and the rest
(:func:`vcesdk.training.metrics.noise_decomposition`): an exact enhancer keeps all of the
input's noise and closes only ~62 % of the headroom, so the rest takes denoising.

Writes (atomically) ``report.json``: per phase, ``ncct_identity``, ``oracle`` and each model (under
``models``) carry ``psnr``, ``ssim``, ``ms_ssim``, ``mae_hu`` as ``{"mean", "sd"}`` plus
per-lesion-type MAE;
``report.md``: one table per phase (mean +/- SD, as the seeds' tables) and lesion rows;
``example_<phase>_<model>.png`` (NCCT | sCECT | difference at the window) and
``histogram_<phase>.png`` (body HU histograms of NCCT, target and each model, as 000's Fig. 5).
Metrics: :mod:`vcesdk.training.metrics` (window default L 60 / W 500, 000's).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from vcesdk.errors import InputError, VcesdkError
from vcesdk.io.atomic import atomic_output
from vcesdk.io import read_volume

from .metrics import image_metrics, mae_hu, noise_decomposition
from .phantom import LABEL_OF, LESIONS
from .store import find_phase

METRICS = ("psnr", "ssim", "ms_ssim", "mae_hu")
NOISE_METRICS = ("error_rms_hu", "ncct_noise_kept", "other_error_rms_hu")
DEFAULT_WINDOW = (60.0, 500.0)  # 000_dfb6c11774226ce2.txt: L 60 / W 500 -> [0, 255]


def _truth(pdir: Path, phase: str) -> Path | None:
    aligned = pdir / f"{phase}_aligned.nii.gz"
    return aligned if aligned.is_file() else find_phase(pdir, phase)


SUBTRACTION_WINDOW = (0.0, 1000.0)  # subtraction maps -500..+500 HU -> 0..255 for PSNR


def _summary(values: list[dict], metrics: Sequence[str] = METRICS) -> dict:
    out = {}
    for m in metrics:
        v = np.asarray([d[m] for d in values], dtype=np.float64)
        out[m] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    return out


def _histogram_png(curves: dict[str, np.ndarray], path: Path, lo: float = -200.0,
                   hi: float = 400.0) -> None:
    """Line plot of normalised HU histograms (PIL only): one colour per curve, legend on top."""
    from PIL import Image, ImageDraw

    W, H, pad = 640, 360, 40
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    colours = [(0, 0, 0), (200, 30, 30), (30, 90, 200), (30, 150, 60), (150, 80, 180)]
    bins = np.linspace(lo, hi, 121)
    hists = {k: np.histogram(v, bins=bins)[0].astype(float) for k, v in curves.items()}
    top = max(float(h.max()) for h in hists.values()) or 1.0
    draw.rectangle([pad, pad, W - pad, H - pad], outline=(120, 120, 120))
    for i, (name, h) in enumerate(hists.items()):
        xs = pad + (np.arange(len(h)) + 0.5) / len(h) * (W - 2 * pad)
        ys = H - pad - h / top * (H - 2 * pad)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=colours[i % len(colours)], width=2)
        draw.text((pad + 5 + 150 * i, 10), name, fill=colours[i % len(colours)])
    for x_hu in (lo, 0.0, hi):
        x = pad + (x_hu - lo) / (hi - lo) * (W - 2 * pad)
        draw.text((x - 12, H - pad + 8), f"{x_hu:.0f}", fill=(0, 0, 0))
    draw.text((W // 2 - 20, H - 16), "HU (body)", fill=(0, 0, 0))
    img.save(path, format="PNG")


def evaluate(bundles: Sequence[str | os.PathLike], data: str | os.PathLike,
             out: str | os.PathLike, window: Sequence[float] = DEFAULT_WINDOW,
             max_cases: int | None = None, overwrite: bool = False) -> Path:
    """Evaluate models (bundles, run folders or checkpoints) against the NCCT identity
    baseline (see the module docstring).

    Raises:
        InputError: no patient holds both an NCCT and a model's phase; a model that is neither
            a bundle nor a checkpoint.
    """
    import tempfile

    from vcesdk.runtime import Synthesizer

    data = Path(data)
    level, width = (float(v) for v in window)
    patients = sorted(p for p in data.iterdir() if p.is_dir() and find_phase(p, "ncct"))
    if not patients:
        raise InputError(f"no <patient>/ncct scan under {data}")
    with tempfile.TemporaryDirectory(prefix="vcesdk-eval-") as scratch:
        from .trainer import bundle_for   # torch only for checkpoints: imported here

        parity = read_volume(find_phase(patients[0], "ncct"))
        syns = [Synthesizer(bundle_for(m, scratch, parity), contrast_guard="off")
                for m in bundles]
        return _evaluate(syns, data, patients, out, level, width, max_cases, overwrite)


def headroom_closed(model: dict, identity: dict, oracle: dict) -> dict[str, float]:
    """How much of the gap between the NCCT identity and the oracle (the noise-free truth, the
    best any model can reach against a noisy target) a model closes, per metric:
    (model - identity) / (oracle - identity) of the means, for PSNR and MAE (1 = at the
    ceiling, 0 = no better than returning the input, < 0 = worse).

    Args:
        model, identity, oracle: summaries ({metric: {"mean", "sd"}}).

    Returns:
        {"psnr": fraction, "mae_hu": fraction}; NaN where oracle and identity tie.
    """
    out = {}
    for m in ("psnr", "mae_hu"):
        gap = oracle[m]["mean"] - identity[m]["mean"]
        out[m] = (float((model[m]["mean"] - identity[m]["mean"]) / gap) if abs(gap) > 1e-9
                  else float("nan"))
    return out


def _evaluate(syns: list, data: Path, patients: list[Path], out: str | os.PathLike,
              level: float, width: float, max_cases: int | None, overwrite: bool) -> Path:
    from vcesdk.preview import preview_strip

    names = [s.bundle.name for s in syns]
    if len(set(names)) != len(names):
        raise InputError(f"two bundles share a name ({', '.join(names)})")
    if max_cases:
        patients = patients[:max_cases]
    report: dict = {"data": str(data), "window": {"level": level, "width": width},
                    "phases": {}}
    md = [f"# Evaluation on {data}", "",
          f"Window L {level:g} / W {width:g} HU -> [0, 255] for PSNR (data range 255), SSIM "
          f"and MS-SSIM; MAE in HU over the body. Mean +/- SD over cases.", ""]
    with atomic_output(Path(out), is_dir=True, overwrite=overwrite) as tmp:
        for phase in sorted({s.bundle.phase for s in syns}):
            models = [s for s in syns if s.bundle.phase == phase]
            rows: dict[str, list[dict]] = {"ncct_identity": []}
            oracle: list[dict] = []   # the noise-free truth vs the noisy target, where written
            noise_rows: dict[str, list[dict]] = {}   # error vs the noise-free truth, split
            sub_rows: dict[str, list[dict]] = {}  # models with a "subtraction" output (000)
            lesion_rows: dict[str, dict[str, list[float]]] = {}
            hist: dict[str, list[np.ndarray]] = {"NCCT": [], f"{phase.upper()} (truth)": []}
            cases = []
            for pdir in patients:
                truth_path = _truth(pdir, phase)
                if truth_path is None:
                    continue
                ncct = read_volume(find_phase(pdir, "ncct"))
                truth = read_volume(truth_path)
                if truth.shape != ncct.shape:
                    raise InputError(f"{pdir.name}: {phase} is {truth.shape}, NCCT {ncct.shape};"
                                     f" register the pair first (vcesdk-data store)")
                labels_path = pdir / "labels.nii.gz"
                labels = (read_volume(labels_path).hu.astype(np.int32)
                          if labels_path.is_file() else None)
                body = labels > 0 if labels is not None else truth.hu > -500
                rows["ncct_identity"].append(image_metrics(ncct.hu, truth.hu, level, width,
                                                           body))
                clean_path = pdir / f"{phase}_clean.nii.gz"
                clean = read_volume(clean_path).hu if clean_path.is_file() else None
                ncct_clean_path = pdir / "ncct_clean.nii.gz"
                ncct_clean = (read_volume(ncct_clean_path).hu if clean is not None
                              and ncct_clean_path.is_file() else None)
                if ncct_clean is not None and np.array_equal(ncct_clean[body], ncct.hu[body]):
                    ncct_clean = None   # a noise-free set: no noise to split off
                if clean is not None:
                    oracle.append(image_metrics(clean, truth.hu, level, width, body))
                preds = {}
                for s in models:
                    pred = s.synthesize(ncct).hu
                    preds[s.bundle.name] = pred
                    rows.setdefault(s.bundle.name, []).append(
                        image_metrics(pred, truth.hu, level, width, body))
                    if "subtraction" in s.last_auxiliary:  # vs the real subtraction image
                        sub_rows.setdefault(s.bundle.name, []).append(image_metrics(
                            s.last_auxiliary["subtraction"].hu, truth.hu - ncct.hu,
                            *SUBTRACTION_WINDOW, body))
                if ncct_clean is not None:
                    for name, pred in {"ncct_identity": ncct.hu, **preds}.items():
                        noise_rows.setdefault(name, []).append(
                            noise_decomposition(pred, clean, ncct.hu, ncct_clean, body))
                if labels is not None:
                    for kind in LESIONS:
                        m = labels == LABEL_OF[kind]
                        if m.sum() < 10:
                            continue
                        per = lesion_rows.setdefault(kind, {})
                        per.setdefault("ncct_identity", []).append(mae_hu(ncct.hu, truth.hu, m))
                        for name, pred in preds.items():
                            per.setdefault(name, []).append(mae_hu(pred, truth.hu, m))
                hist["NCCT"].append(ncct.hu[body])
                hist[f"{phase.upper()} (truth)"].append(truth.hu[body])
                for name, pred in preds.items():
                    hist.setdefault(name, []).append(pred[body])
                if not cases:  # the first case is the example figure
                    k = int(np.argmax(body.sum(axis=(1, 2))))
                    for name, pred in preds.items():
                        preview_strip(ncct.hu, pred, tmp / f"example_{phase}_{name}.png",
                                      slices=[k], spacing_mm=ncct.spacing_zyx_mm,
                                      window=(level, width))
                cases.append(pdir.name)
            if not cases:
                continue
            entry = {"cases": cases, "ncct_identity": _summary(rows["ncct_identity"]),
                     "models": {n: _summary(v) for n, v in rows.items() if n != "ncct_identity"},
                     "lesions": {k: {n: {"mae_hu": {"mean": float(np.mean(v)),
                                                    "sd": float(np.std(v, ddof=1))
                                                    if len(v) > 1 else 0.0}, "n": len(v)}
                                     for n, v in per.items()}
                                 for k, per in lesion_rows.items()}}
            if oracle and len(oracle) == len(cases):
                entry["oracle"] = _summary(oracle)
                for summ in entry["models"].values():
                    summ["headroom_closed"] = headroom_closed(summ, entry["ncct_identity"],
                                                              entry["oracle"])
            for name, summ in entry["models"].items():
                entry[name] = summ
            if noise_rows and all(len(v) == len(cases) for v in noise_rows.values()):
                entry["noise_decomposition"] = {n: _summary(v, NOISE_METRICS)
                                                for n, v in noise_rows.items()}
            elif noise_rows:   # said in report.md rather than split over some cases only
                entry["noise_decomposition_left_out"] = (
                    f"{len(cases) - len(noise_rows['ncct_identity'])} of {len(cases)} cases "
                    f"have no ncct_clean.nii.gz or a noise-free NCCT")
            if sub_rows:
                entry["subtraction"] = {n: _summary(v) for n, v in sub_rows.items()}
            report["phases"][phase] = entry
            _histogram_png({k: np.concatenate(v) for k, v in hist.items()},
                           tmp / f"histogram_{phase}.png")
            has_oracle = "oracle" in entry
            md += [f"## {phase.upper()} ({len(cases)} cases)", "",
                   "| model | PSNR (dB) | SSIM | MS-SSIM | MAE (HU) |"
                   + (" headroom closed PSNR / MAE |" if has_oracle else ""),
                   "| --- | --- | --- | --- | --- |" + (" --- |" if has_oracle else "")]
            table = [("NCCT identity", entry["ncct_identity"]),
                     *([("oracle (noise-free truth)", entry["oracle"])] if has_oracle else []),
                     *entry["models"].items()]
            for name, summ in table:
                cells = [f"{summ[m]['mean']:.{1 if m in ('psnr', 'mae_hu') else 3}f} +/- "
                         f"{summ[m]['sd']:.{1 if m in ('psnr', 'mae_hu') else 3}f}"
                         for m in METRICS]
                if has_oracle:
                    h = summ.get("headroom_closed")
                    cells.append(f"{100 * h['psnr']:.0f} % / {100 * h['mae_hu']:.0f} %"
                                 if h else "-")
                md.append(f"| {name} | " + " | ".join(cells) + " |")
            if "noise_decomposition" in entry:
                md += ["", "Error against the noise-free truth (body): RMS, the share of the "
                           "NCCT's own noise passed through (1 = kept, as the identity and an "
                           "exact enhancer; 0 = removed) and the RMS of the rest:", "",
                       "| model | error RMS (HU) | NCCT noise kept | other error RMS (HU) |",
                       "| --- | --- | --- | --- |"]
                for name, summ in entry["noise_decomposition"].items():
                    cells = [f"{summ[m]['mean']:.{d}f} +/- {summ[m]['sd']:.{d}f}"
                             for m, d in zip(NOISE_METRICS, (1, 2, 1))]
                    label = "NCCT identity" if name == "ncct_identity" else name
                    md.append(f"| {label} | " + " | ".join(cells) + " |")
            if "noise_decomposition_left_out" in entry:
                md += ["", f"Noise decomposition left out: "
                           f"{entry['noise_decomposition_left_out']}."]
            if entry["lesions"]:
                md += ["", "Lesion MAE (HU), mean +/- SD over lesions' cases:", "",
                       "| lesion | " + " | ".join(["NCCT identity", *entry["models"]]) + " |",
                       "| --- " * (2 + len(entry["models"])) + "|"]
                for kind, per in entry["lesions"].items():
                    cells = [f"{per[n]['mae_hu']['mean']:.1f} +/- {per[n]['mae_hu']['sd']:.1f} "
                             f"(n={per[n]['n']})" if n in per else "-"
                             for n in ["ncct_identity", *entry["models"]]]
                    md.append(f"| {kind} | " + " | ".join(cells) + " |")
            for name, summ in entry.get("subtraction", {}).items():
                md += ["", f"Predicted subtraction map of {name} vs the real one (truth - NCCT; "
                           f"PSNR on -500..500 HU -> 0..255, as 000's Table 2): PSNR "
                           f"{summ['psnr']['mean']:.1f} +/- {summ['psnr']['sd']:.1f} dB, SSIM "
                           f"{summ['ssim']['mean']:.3f}, MAE {summ['mae_hu']['mean']:.1f} +/- "
                           f"{summ['mae_hu']['sd']:.1f} HU"]
            md += ["", f"![examples](example_{phase}_{models[0].bundle.name}.png)",
                   f"![histograms](histogram_{phase}.png)", ""]
        if not report["phases"]:
            raise InputError(f"no patient in {data} has an NCCT and a "
                             f"{'/'.join(sorted({s.bundle.phase for s in syns}))} scan")
        (tmp / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        (tmp / "report.md").write_text("\n".join(md), encoding="utf-8")
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="vcesdk-eval", description=__doc__.splitlines()[0],
        epilog="--real-anatomy DIR: each MODEL also synthesizes the real native CT in DIR and "
               "OUT/real_anatomy/ gets report.json, report.md and real_anatomy.png: the median "
               "change sCECT - NCCT per organ group (aorta, IVC, portal/splenic vein, liver, "
               "spleen, kidneys, pancreas, muscle, fat, vertebrae) against the literature's "
               "enhancement for the model's phase (vcesdk.training.anatomy). DIR holds ct.nii.gz "
               "(or ct.nii/.nrrd/.mha, or a DICOM folder ct/), total_seg.nii.gz (TotalSegmentator "
               "label map), total_seg_labels.json (or labels.json), optionally "
               "skeletal_muscle.nii.gz and subcutaneous_fat.nii.gz; the package ships one: "
               "vcesdk/data/sample.")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="bundle folder(s), run folder(s) or checkpoint file(s)")
    p.add_argument("--data", default=None,
                   help="held-out dataset folder (optional when --real-anatomy is given)")
    p.add_argument("--real-anatomy", metavar="DIR", default=None,
                   help="real native CT with a TotalSegmentator label map (see below): organ "
                        "by organ enhancement check, written to OUT/real_anatomy/")
    p.add_argument("--out", required=True, help="report folder to create")
    p.add_argument("--window", type=float, nargs=2, default=DEFAULT_WINDOW,
                   metavar=("LEVEL", "WIDTH"), help="HU window (default 60 500, as 000)")
    p.add_argument("--max-cases", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if args.data is None and args.real_anatomy is None:
        p.error("give --data DIR (held-out paired data), --real-anatomy DIR, or both")
    out = Path(args.out)
    anatomy = None
    try:
        if args.real_anatomy is not None:
            from .anatomy import real_anatomy_results, write_real_anatomy_report

            if out.exists() and not args.overwrite:  # refuse before any model runs
                raise InputError(f"output already exists: {out} (choose another or pass "
                                 f"--overwrite)")
            anatomy = real_anatomy_results(args.models, args.real_anatomy)
        if args.data is not None:
            out = evaluate(args.models, args.data, args.out, args.window, args.max_cases,
                           args.overwrite)
        if anatomy is not None:
            if args.data is not None:  # OUT was just written, atomically, by evaluate()
                write_real_anatomy_report(anatomy, out / "real_anatomy")
            else:
                with atomic_output(out, is_dir=True, overwrite=args.overwrite) as tmp:
                    write_real_anatomy_report(anatomy, tmp / "real_anatomy")
    except VcesdkError as exc:   # anything else is a bug: a traceback
        print(f"vcesdk-eval: error: {exc}", file=sys.stderr)
        return 1
    if args.data is not None:
        print((out / "report.md").read_text(encoding="utf-8"))
    if anatomy is not None:
        from .anatomy import summary_lines

        print("\n".join(summary_lines(anatomy)))
        print(f"wrote {out / 'real_anatomy'}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
