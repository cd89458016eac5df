"""``vcesdk-data``: write paired phantom datasets other tools can read without vcesdk.

    vcesdk-data phantoms --out DIR --patients N --phases ncct,ap,pvp,dp --seed S
                         [--misalign K] [--shift-mm MM] [--elastic-mm MM] [--size H W D]
                         [--spacing Z Y X] [--noise-hu HU] [--cupping-hu HU] [--no-dicom]
    vcesdk-data montage DIR [--patient ID] [--real CT] -o PNG
    vcesdk-data vnc --cta ../shared/data/ct/totalseg_chest_cta --out DIR
    vcesdk-data store DIR --out STORE [--phases ap,pvp,dp] [--registration none|affine|bspline]
                      [--qc-max-px 6]

Layout (written to a temporary sibling, renamed into place when complete):

    DIR/labels.json                      label value -> tissue name
    DIR/dataset.json                     generator settings; per patient: seed, region, lesions,
                                         the misalignment of each phase
    DIR/<patient>/<phase>.nii.gz         each phase as "acquired" (misaligned when K > 0), int16 HU
    DIR/<patient>/<phase>_aligned.nii.gz the aligned ground truth (only when misaligned)
    DIR/<patient>/<phase>_clean.nii.gz   the phase without noise, on the NCCT grid (the oracle
                                         of vcesdk-eval: the best any model can predict)
    DIR/<patient>/<phase>/               the same phase as a DICOM series (one study per patient)
    DIR/<patient>/labels.nii.gz          tissue and lesion labels on the NCCT grid (uint8)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from vcesdk.errors import InputError, VcesdkError
from vcesdk.io.atomic import atomic_output
from vcesdk.io import write_volume
from vcesdk.volume import CTVolume

from .phantom import LABELS, PHASES, make_phantom, misalign, random_misalignment

DATASET_VERSION = 1


def patient_id(seed: int) -> str:
    """Folder name of the phantom patient drawn from `seed`."""
    return f"P{int(seed):05d}"


def _template(seed: int):
    """Patient / study header shared by every phase of one phantom patient."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.PatientName = f"PHANTOM^{patient_id(seed)}"
    ds.PatientID = patient_id(seed)
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "digital phantom; no real patient"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["vcesdk-phantom-study", str(seed)])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["vcesdk-phantom-for", str(seed)])
    ds.StudyDescription = "vcesdk digital phantom"
    ds.StudyID = str(seed)
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.BodyPartExamined = "ABDOMEN"
    ds.PatientPosition = "FFS"
    return ds


def write_patient(out: Path, seed: int, phases: Sequence[str], size_dhw: Sequence[int],
                  spacing_mm: Sequence[float], noise_hu: float, misalign_k: float,
                  shift_mm: float, elastic_mm: float, cupping_hu: float, dicom: bool) -> dict:
    """Generate and write one phantom patient into ``out/<patient>``; returns its record."""
    import SimpleITK as sitk

    case = make_phantom(seed, shape=size_dhw, spacing_mm=spacing_mm, noise_hu=noise_hu,
                        phases=phases, cupping_hu=cupping_hu)
    d = out / patient_id(seed)
    d.mkdir()
    origin = tuple(-(np.asarray(size_dhw[::-1], dtype=float) - 1) / 2.0
                   * np.asarray(spacing_mm[::-1], dtype=float))
    header = _template(seed)
    record = {"patient": patient_id(seed), "seed": int(seed), "region": case.region,
              "lesions": list(case.lesions), "misalignment": {}}
    for i, phase in enumerate(phases):
        hu = case.phases[phase]
        moved = phase != "ncct" and (misalign_k or shift_mm or elastic_mm)
        vol = CTVolume(hu=hu, spacing_zyx_mm=tuple(spacing_mm), origin_xyz_mm=origin,
                       source_headers=[header])
        if moved:
            mis = random_misalignment(seed * 10 + i, k=misalign_k, shift_mm=shift_mm,
                                      elastic_mm=elastic_mm)
            record["misalignment"][phase] = mis.to_json()
            write_volume(vol, d / f"{phase}_aligned.nii.gz")
            vol = vol.with_hu(misalign(hu, spacing_mm, mis))
        write_volume(vol, d / f"{phase}.nii.gz")
        write_volume(CTVolume(hu=case.clean[phase], spacing_zyx_mm=tuple(spacing_mm),
                              origin_xyz_mm=origin, source_headers=[header]),
                     d / f"{phase}_clean.nii.gz")
        if dicom:
            write_volume(vol, d / phase, like=vol,
                         series_description=f"PHANTOM {phase.upper()} {patient_id(seed)}")
    labels = sitk.GetImageFromArray(case.labels)
    labels.SetSpacing(tuple(float(s) for s in spacing_mm[::-1]))
    labels.SetOrigin(origin)
    sitk.WriteImage(labels, str(d / "labels.nii.gz"), useCompression=True)
    return record


def _write_patient(kwargs: dict) -> dict:
    return write_patient(**kwargs)


def generate(out: str | os.PathLike, patients: int, phases: Sequence[str] = PHASES,
             seed: int = 0, size_hwd: Sequence[int] = (256, 256, 64),
             spacing_mm: Sequence[float] = (2.5, 1.5, 1.5), noise_hu: float = 15.0,
             misalign_k: float = 0.0, shift_mm: float = 0.0, elastic_mm: float = 0.0,
             cupping_hu: float = 0.0, dicom: bool = True, jobs: int | None = None,
             progress: bool = True, overwrite: bool = False) -> Path:
    """Write a phantom dataset in the layout of the module docstring.

    Args:
        out: dataset folder to create.
        patients: number of patients; patient i uses seed `seed + i`.
        phases: phases to write, NCCT first (from :data:`PHASES`).
        size_hwd: (H, W, D) voxels, as the command line takes them.
        spacing_mm: (z, y, x) mm.
        misalign_k: k of the random affine I + kU applied to each contrast phase (0.01, 0.02,
            0.05 in 004_f128e01a994d2141.txt); 0 for aligned phases.
        shift_mm, elastic_mm: rigid shift bound and elastic peak displacement, mm.
        jobs: worker processes (default: CPU count).

    Returns:
        The dataset folder.

    Raises:
        InputError: bad arguments; VolumeWriteError: `out` exists (unless `overwrite`).
    """
    from tqdm import tqdm

    phases = [p.strip().lower() for p in phases]
    bad = [p for p in phases if p not in PHASES]
    if bad or not phases:
        raise InputError(f"unknown phase(s) {', '.join(bad) or '(none)'}; valid: "
                         f"{', '.join(PHASES)}")
    if phases[0] != "ncct":
        raise InputError("phases must start with ncct (the reference every phase pairs with)")
    if patients < 1:
        raise InputError(f"--patients must be >= 1, got {patients}")
    h, w, d = (int(v) for v in size_hwd)
    if min(h, w, d) < 8 or max(h, w) > 512:
        raise InputError(f"--size H W D must be 8..512 in-plane and >= 8 slices, got "
                         f"{h} {w} {d}")
    if misalign_k < 0 or shift_mm < 0 or elastic_mm < 0:
        raise InputError("misalignment amounts must be >= 0")
    out = Path(out)
    tasks = [dict(seed=seed + i, phases=phases, size_dhw=(d, h, w), spacing_mm=tuple(spacing_mm),
                  noise_hu=noise_hu, misalign_k=misalign_k, shift_mm=shift_mm,
                  elastic_mm=elastic_mm, cupping_hu=cupping_hu, dicom=dicom)
             for i in range(patients)]
    with atomic_output(out, is_dir=True, overwrite=overwrite) as tmp:
        for t in tasks:
            t["out"] = tmp
        workers = max(1, min(jobs or os.cpu_count() or 1, patients))
        with tqdm(total=patients, desc="phantoms", unit="patient", disable=not progress) as bar:
            records = []
            if workers == 1:
                for t in tasks:
                    records.append(write_patient(**t))
                    bar.update()
            else:
                with ProcessPoolExecutor(workers) as pool:
                    for r in pool.map(_write_patient, tasks):
                        records.append(r)
                        bar.update()
        (tmp / "labels.json").write_text(json.dumps({str(k): v for k, v in LABELS.items()},
                                                    indent=1), encoding="utf-8")
        meta = {"version": DATASET_VERSION, "generator": "vcesdk.training.phantom",
                "phases": phases, "size_hwd": [h, w, d], "spacing_mm": list(spacing_mm),
                "noise_hu": noise_hu, "misalign_k": misalign_k, "shift_mm": shift_mm,
                "elastic_mm": elastic_mm, "cupping_hu": cupping_hu, "dicom": dicom,
                "patients": records}
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out


def montage(dataset: str | os.PathLike, png: str | os.PathLike, patient: str | None = None,
            real: str | os.PathLike | None = None, level: float = 50.0, width: float = 400.0
            ) -> Path:
    """A PNG row: one phantom slice in every phase, then (optionally) a real CT slice, all at
    window level/width `level`/`width` HU, each scaled to the same physical field of view.

    Raises:
        InputError: no such patient; VolumeReadError: unreadable files.
    """
    from PIL import Image

    from vcesdk.io import read_volume
    from vcesdk.volume import orient_volume

    root = Path(dataset)
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    pid = patient or meta["patients"][0]["patient"]
    if not (root / pid).is_dir():
        raise InputError(f"no patient {pid} in {root}")
    labels = read_volume(root / pid / "labels.nii.gz").hu
    k = int(np.argmax([(np.isin(s, [10, 12])).sum() for s in labels]))  # liver + kidney
    tiles = []

    def tile(vol: CTVolume, z: int) -> Image.Image:
        v = orient_volume(vol, "LPS")
        img = np.clip((v.hu[z] - (level - width / 2)) / width * 255.0, 0, 255).astype(np.uint8)
        h_mm, w_mm = v.shape[1] * v.spacing_zyx_mm[1], v.shape[2] * v.spacing_zyx_mm[2]
        scale = 256.0 / max(h_mm, w_mm)
        return Image.fromarray(img).resize((max(1, round(w_mm * scale)),
                                            max(1, round(h_mm * scale))), Image.BILINEAR)

    for phase in meta["phases"]:
        tiles.append(tile(read_volume(root / pid / f"{phase}.nii.gz"), k))
    if real is not None:
        r = orient_volume(read_volume(real), "LPS")
        tiles.append(tile(r, r.shape[0] // 2))
    height = max(t.height for t in tiles)
    canvas = Image.new("L", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), height))
    x = 0
    for t in tiles:
        canvas.paste(t, (x, (height - t.height) // 2))
        x += t.width + 4
    png = Path(png)
    with atomic_output(png, is_dir=False, overwrite=True, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG")
    return png


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vcesdk-data", description="Paired CT data for training "
                                "and evaluation.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("phantoms", help="write a multiphase phantom dataset")
    g.add_argument("--out", required=True, help="dataset folder to create")
    g.add_argument("--patients", type=int, required=True)
    g.add_argument("--phases", default="ncct,ap,pvp,dp", help="comma-separated, NCCT first")
    g.add_argument("--seed", type=int, default=0, help="seed of the first patient")
    g.add_argument("--misalign", type=float, default=0.0, metavar="K",
                   help="random affine I + kU per contrast phase (e.g. 0.01, 0.02, 0.05)")
    g.add_argument("--shift-mm", type=float, default=0.0, help="rigid shift bound per axis, mm")
    g.add_argument("--elastic-mm", type=float, default=0.0,
                   help="peak breathing-like elastic displacement, mm")
    g.add_argument("--size", type=int, nargs=3, default=(256, 256, 64), metavar=("H", "W", "D"))
    g.add_argument("--spacing", type=float, nargs=3, default=(2.5, 1.5, 1.5),
                   metavar=("Z", "Y", "X"), help="voxel spacing, mm (default 2.5 1.5 1.5)")
    g.add_argument("--noise-hu", type=float, default=15.0, help="correlated noise SD, HU")
    g.add_argument("--cupping-hu", type=float, default=0.0, help="beam-hardening cupping, HU")
    g.add_argument("--no-dicom", action="store_true", help="NIfTI only (faster)")
    g.add_argument("--jobs", type=int, default=None, help="worker processes (CPU count)")
    g.add_argument("--overwrite", action="store_true")
    m = sub.add_parser("montage", help="PNG of one phantom in every phase beside a real CT slice")
    m.add_argument("dataset")
    m.add_argument("-o", "--output", required=True, help="PNG file")
    m.add_argument("--patient", help="patient folder name (default: the first)")
    m.add_argument("--real", help="a real CT volume to show beside it")
    v = sub.add_parser("vnc", help="VNC-like (ncct, ap) pairs from the real chest CTA crops")
    v.add_argument("--cta", required=True, help="folder of the totalseg_chest_cta crops + masks")
    v.add_argument("--out", required=True, help="dataset folder to create (user layout)")
    v.add_argument("--overwrite", action="store_true")
    s = sub.add_parser("store", help="register, quality-check and cache paired scans")
    s.add_argument("dataset", help="folder of <patient>/<phase> scans (user or phantom layout)")
    s.add_argument("--out", required=True, help="store folder to create")
    s.add_argument("--phases", default="ap,pvp,dp", help="contrast phases to pair with the NCCT")
    s.add_argument("--registration", choices=("none", "affine", "bspline"), default="affine")
    s.add_argument("--qc-max-px", type=float, default=6.0,
                   help="drop pairs whose residual shift exceeds this (6 px, as in 001)")
    s.add_argument("--overwrite", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "phantoms":
            out = generate(args.out, args.patients, args.phases.split(","), args.seed,
                           args.size, args.spacing, args.noise_hu, args.misalign, args.shift_mm,
                           args.elastic_mm, args.cupping_hu, dicom=not args.no_dicom,
                           jobs=args.jobs, overwrite=args.overwrite)
            print(f"wrote {out} ({args.patients} patients)")
        elif args.command == "store":
            from .store import build_store

            out = build_store(args.dataset, args.out, phases=args.phases.split(","),
                              registration=args.registration, qc_max_px=args.qc_max_px,
                              overwrite=args.overwrite)
            index = json.loads((out / "index.json").read_text(encoding="utf-8"))
            for pair in index["pairs"]:
                line = f"  {pair['patient']} {pair['phase']}: "
                line += "kept" if pair["kept"] else "dropped"
                if pair["residual_max_px"] is not None:
                    line += f", residual {pair['residual_max_px']:.2f} px"
                if pair["reason"]:
                    line += f" ({pair['reason']})"
                print(line)
            print(f"wrote {out}")
        elif args.command == "vnc":
            from .vnc import write_vnc_pairs

            print(f"wrote {write_vnc_pairs(args.cta, args.out, overwrite=args.overwrite)}")
        else:
            print(f"wrote {montage(args.dataset, args.output, args.patient, args.real)}")
    except VcesdkError as exc:
        print(f"vcesdk-data: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
