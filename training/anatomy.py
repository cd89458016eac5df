"""Real-anatomy check: does a model enhance, organ by organ, what contrast enhances on real CT?

There is no paired real data here (no patient with both an NCCT and a CECT), so a model's output
on real native CT cannot be scored voxel by voxel. What can be checked is the *median change*
sCECT - NCCT inside each labelled organ against the enhancement the literature gives for the
model's phase: vessels, liver, spleen, kidneys and pancreas should rise by about the reference;
fat, muscle and bone should stay about where they are.

Inputs: a native CT, a TotalSegmentator label map on the same grid with its label JSON, and
optionally TotalSegmentator's tissue masks ``skeletal_muscle.nii.gz`` / ``subcutaneous_fat.nii.gz``
(same grid) in ``masks_dir``. The package ships one such case, :mod:`vcesdk.data`
(``vcesdk/data/sample/``). Each organ group's mask (:data:`ORGAN_GROUPS`) is eroded by one voxel
(6-connected cross, :func:`scipy.ndimage.binary_erosion`) so that partial-volume voxels on the
organ's boundary and small label misplacements do not count; the edge of the volume is not an
organ boundary and erodes nothing. Per group and phase:

* ``native_median_hu``: median NCCT HU over the eroded mask;
* ``predicted_change_hu``: median over the same voxels of (sCECT - NCCT), HU;
* ``reference_change_hu``: TISSUE_HU[row][phase] - TISSUE_HU[row]["ncct"] from the sourced
  table :data:`vcesdk.training.phantom.TISSUE_HU` (sources in that module's docstring: Lamba
  2014, Bae 2010, Yuh & Cohan 1999), averaged over the group's rows;
* ``error_hu`` = predicted - reference; ``voxels`` (after erosion) and ``voxels_before_erosion``.

Per phase, ``mean_abs_error_hu`` is the mean of |error| over the groups compared.

The reference is the population enhancement the project's phantom is built from, not a
measurement on this patient (whose contrast scan does not exist). The phantom itself varies
each patient's enhancement by +/- 15 % (``ENHANCEMENT_JITTER``) plus the tissue's jitter, e.g.
+/- 23 HU for the aorta in PVP, and real patients vary more with cardiac output, dose and
timing (Bae 2010): read errors of that size as agreement, while a model that leaves the aorta
at +5 HU in PVP, or lifts fat by +50 HU, fails the check.

``vcesdk-eval MODEL ... --real-anatomy DIR --out OUT`` runs each model on the CT in DIR and
writes the report to ``OUT/real_anatomy/`` (:func:`real_anatomy_results`,
:func:`write_real_anatomy_report`). DIR holds (accepted
names, first found wins): the CT ``ct.nii.gz`` / ``ct.nii`` / ``ct.nrrd`` / ``ct.mha`` or a DICOM
folder ``ct/``; the label map ``total_seg.nii.gz`` / ``total_seg.nii`` / ``total_seg.nrrd`` /
``total_seg.mha``; the label JSON ``total_seg_labels.json`` or ``labels.json``; optionally
``skeletal_muscle.nii.gz`` and ``subcutaneous_fat.nii.gz``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from vcesdk.errors import InputError
from vcesdk.io.atomic import atomic_output
from vcesdk.io import read_volume
from vcesdk.volume import CTVolume

from .phantom import PHASES as PHANTOM_PHASES
from .phantom import TISSUE_HU

_logger = logging.getLogger(__name__)

VolumeLike = Union[CTVolume, np.ndarray]
PathLike = Union[str, os.PathLike]

#: TotalSegmentator v2 "total" vertebra classes (C1-C7, T1-T12, L1-L5, S1; the sacrum is a
#: separate class and not included).
VERTEBRAE: tuple[str, ...] = tuple(
    [f"vertebrae_C{i}" for i in range(1, 8)] + [f"vertebrae_T{i}" for i in range(1, 13)]
    + [f"vertebrae_L{i}" for i in range(1, 6)] + ["vertebrae_S1"])


@dataclasses.dataclass(frozen=True)
class OrganGroup:
    """One row of the real-anatomy check.

    Attributes:
        name: group name in reports ("aorta", "kidneys", ...).
        short: label under its bars in the chart.
        labels: TotalSegmentator class names whose union is the group's mask (looked up by
            name in the label JSON; names missing from the JSON are ignored).
        reference_rows: rows of :data:`vcesdk.training.phantom.TISSUE_HU` whose enhancement
            (phase - ncct) is averaged into the reference change.
        mask_file: a tissue-mask file in ``masks_dir`` that, when present, is the group's mask
            instead of `labels` (nonzero voxels).
        note: why the reference row was chosen, where it is not obvious.
    """

    name: str
    short: str
    labels: tuple[str, ...]
    reference_rows: tuple[str, ...]
    mask_file: str | None = None
    note: str = ""


#: Organ group -> TotalSegmentator label names (or tissue-mask file) -> TISSUE_HU row(s).
#: Kidneys: TotalSegmentator labels the whole kidney, cortex and medulla together, so the
#: reference is the mean of the kidney_cortex and kidney_medulla rows (both ~170 HU in the
#: nephrographic / PVP phase; in AP the corticomedullary difference makes the mean 40 HU lower
#: than the cortex alone). Skeletal muscle: the ``skeletal_muscle.nii.gz`` tissue mask when
#: present, else the autochthon (paraspinal) and iliopsoas labels. Subcutaneous fat: only the
#: ``subcutaneous_fat.nii.gz`` mask (there is no fat class in "total"); skipped without it.
ORGAN_GROUPS: tuple[OrganGroup, ...] = (
    OrganGroup("aorta", "aorta", ("aorta",), ("aorta",)),
    OrganGroup("inferior_vena_cava", "IVC", ("inferior_vena_cava",), ("vena_cava",)),
    OrganGroup("portal_splenic_vein", "PV/SV", ("portal_vein_and_splenic_vein",),
               ("portal_vein",)),
    OrganGroup("liver", "liver", ("liver",), ("liver",)),
    OrganGroup("spleen", "spleen", ("spleen",), ("spleen",)),
    OrganGroup("kidneys", "kidneys", ("kidney_left", "kidney_right"),
               ("kidney_cortex", "kidney_medulla"),
               note="whole-kidney label: mean of the cortex and medulla rows"),
    OrganGroup("pancreas", "pancreas", ("pancreas",), ("pancreas",)),
    OrganGroup("skeletal_muscle", "muscle",
               ("autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right"),
               ("muscle",), mask_file="skeletal_muscle.nii.gz",
               note="skeletal_muscle.nii.gz if present, else autochthon + iliopsoas labels"),
    OrganGroup("subcutaneous_fat", "fat", (), ("fat",), mask_file="subcutaneous_fat.nii.gz",
               note="subcutaneous_fat.nii.gz only; skipped without it"),
    OrganGroup("vertebrae", "vertebrae", VERTEBRAE, ("trabecular_bone",),
               note="all vertebra labels (with their cortical shell and posterior elements)"),
)

#: Accepted file names in a real-anatomy case folder, first found wins.
CT_NAMES: tuple[str, ...] = ("ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha", "ct")
LABEL_MAP_NAMES: tuple[str, ...] = ("total_seg.nii.gz", "total_seg.nii", "total_seg.nrrd",
                                    "total_seg.mha")
LABEL_JSON_NAMES: tuple[str, ...] = ("total_seg_labels.json", "labels.json")

EROSION = ("one voxel: scipy.ndimage.binary_erosion with the 6-connected 3x3x3 cross, "
           "border_value=1 (the volume edge is not an organ boundary)")


def reference_change(rows: Sequence[str], phase: str) -> float:
    """Reference enhancement, HU, of `phase` over the native scan, averaged over `rows`.

    Args:
        rows: keys of :data:`vcesdk.training.phantom.TISSUE_HU` (e.g. ``("aorta",)``).
        phase: "ap", "pvp" or "dp".

    Returns:
        mean over rows of TISSUE_HU[row][phase] - TISSUE_HU[row]["ncct"], HU
        (e.g. aorta PVP: 160 - 40 = 120).

    Raises:
        InputError: an unknown phase or row.
    """
    if phase not in PHANTOM_PHASES or phase == "ncct":
        raise InputError(f"phase must be one of {', '.join(PHANTOM_PHASES[1:])}, got {phase!r}")
    unknown = [r for r in rows if r not in TISSUE_HU]
    if unknown or not rows:
        raise InputError(f"unknown TISSUE_HU rows {unknown or list(rows)}; known: "
                         f"{', '.join(TISSUE_HU)}")
    k = PHANTOM_PHASES.index(phase)
    return float(np.mean([TISSUE_HU[r][k] - TISSUE_HU[r][0] for r in rows]))


def read_label_names(label_json: PathLike | Mapping) -> dict[str, int]:
    """TotalSegmentator class name -> label value, from its label JSON.

    Accepts both directions: ``{"1": "spleen", "52": "aorta", ...}`` (value -> name, as
    TotalSegmentator writes it and as ``vcesdk/data/sample/total_seg_labels.json`` is) and
    ``{"spleen": 1, ...}`` (name -> value).

    Args:
        label_json: path of the JSON file, or the already-parsed mapping.

    Returns:
        {class name: integer label value}.

    Raises:
        InputError: the file is missing or not JSON, or the mapping is neither direction.
    """
    if isinstance(label_json, Mapping):
        raw, where = dict(label_json), "label mapping"
    else:
        path = Path(label_json)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"label JSON not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"label JSON {path} is not valid JSON: {exc}") from None
        where = str(path)
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{where}: expected a non-empty JSON object, got {type(raw).__name__}")
    try:
        if all(isinstance(v, str) for v in raw.values()):
            return {v: int(k) for k, v in raw.items()}
        return {str(k): int(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise InputError(f"{where}: expected value -> name ({{\"52\": \"aorta\"}}) or name -> "
                         f"value ({{\"aorta\": 52}}) pairs") from None


def _volume(v: PathLike | VolumeLike) -> CTVolume | np.ndarray:
    if isinstance(v, (CTVolume, np.ndarray)):
        return v
    return read_volume(v)


def _array(v: CTVolume | np.ndarray) -> np.ndarray:
    return v.hu if isinstance(v, CTVolume) else np.asarray(v)


def _same_grid(ct: CTVolume | np.ndarray, other: CTVolume | np.ndarray, what: str) -> None:
    a, b = _array(ct), _array(other)
    if a.shape != b.shape:
        raise InputError(f"{what} is {b.shape}, the CT {a.shape} (D, H, W); they must share "
                         f"one grid voxel for voxel")
    if isinstance(ct, CTVolume) and isinstance(other, CTVolume):
        if not np.allclose(ct.spacing_zyx_mm, other.spacing_zyx_mm, atol=1e-3) or not np.allclose(
                ct.origin_xyz_mm, other.origin_xyz_mm, atol=1e-2) or not np.allclose(
                ct.direction, other.direction, atol=1e-4):
            raise InputError(f"{what} has spacing {other.spacing_zyx_mm} mm, origin "
                             f"{tuple(round(o, 2) for o in other.origin_xyz_mm)} mm; the CT "
                             f"{ct.spacing_zyx_mm} mm, "
                             f"{tuple(round(o, 2) for o in ct.origin_xyz_mm)} mm: not one grid")


def _erode(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion, generate_binary_structure

    return binary_erosion(mask, structure=generate_binary_structure(3, 1), iterations=1,
                          border_value=1)


def _group_masks(labels: np.ndarray, names: dict[str, int], masks_dir: Path | None,
                 ct: CTVolume | np.ndarray
                 ) -> tuple[dict[str, tuple[np.ndarray, int, str]], dict[str, str]]:
    """Eroded mask, voxels before erosion and source per group; and why others are skipped."""
    masks: dict[str, tuple[np.ndarray, int, str]] = {}
    skipped: dict[str, str] = {}
    for g in ORGAN_GROUPS:
        mask, source = None, ""
        if g.mask_file and masks_dir is not None and (masks_dir / g.mask_file).is_file():
            vol = read_volume(masks_dir / g.mask_file)
            _same_grid(ct, vol, g.mask_file)
            mask, source = vol.hu > 0.5, g.mask_file
        elif g.labels:
            known = [n for n in g.labels if n in names]
            if not known:
                skipped[g.name] = f"none of {', '.join(g.labels)} in the label JSON"
                continue
            mask = np.isin(labels, [names[n] for n in known])
            in_view = [n for n in known if np.any(labels == names[n])]
            source = "labels: " + ", ".join(in_view or known)
        else:
            skipped[g.name] = (f"no {g.mask_file} (no masks folder given)" if masks_dir is None
                               else f"no {g.mask_file} in {masks_dir}")
            continue
        before = int(mask.sum())
        if before == 0:
            skipped[g.name] = f"not in view (0 voxels; {source})"
            continue
        eroded = _erode(mask)
        if not eroded.any():
            skipped[g.name] = f"0 voxels after erosion ({before} before; {source})"
            continue
        masks[g.name] = (eroded, before, source)
    return masks, skipped


def real_anatomy_check(ct: PathLike | CTVolume, labels: PathLike | VolumeLike,
                       label_json: PathLike | Mapping,
                       predicted: Mapping[str, VolumeLike],
                       masks_dir: PathLike | None = None, model: str | None = None
                       ) -> dict[str, Any]:
    """Median enhancement per organ group of a model's output against the literature.

    See the module docstring for what is computed; :data:`ORGAN_GROUPS` for the groups.

    Args:
        ct: the native CT, a file / DICOM folder or a :class:`~vcesdk.volume.CTVolume`
            (float32 HU (D, H, W)).
        labels: TotalSegmentator label map on the CT's grid: a file, a CTVolume or an integer
            array (D, H, W) of label values (float values are rounded).
        label_json: its label JSON (path or mapping), either direction (see
            :func:`read_label_names`).
        predicted: phase ("ap", "pvp", "dp") -> the model's sCECT of `ct`, a CTVolume or a
            float array (D, H, W), HU, on the CT's grid.
        masks_dir: folder with TotalSegmentator tissue masks ``skeletal_muscle.nii.gz`` /
            ``subcutaneous_fat.nii.gz`` on the same grid (optional; None: no tissue masks, so
            skeletal muscle comes from the labels and subcutaneous fat is skipped).
        model: name recorded in the result (e.g. the bundle name).

    Returns:
        {"model", "ct", "labels", "shape" [D, H, W], "spacing_mm" [z, y, x], "erosion",
        "reference": source of the reference, "groups": {group: {"labels" source,
        "reference_rows", "note", "voxels", "voxels_before_erosion", "native_median_hu"}},
        "skipped": {group: reason}, "phases": {phase: {"organs": {group:
        {"native_median_hu", "predicted_median_hu", "predicted_change_hu",
        "reference_change_hu", "error_hu", "voxels"}}, "mean_abs_error_hu"}}}; all HU
        values are floats, voxel counts ints.

    Raises:
        InputError: no prediction, an unknown phase, grids that differ, a bad label JSON, or
            no organ group with voxels left after erosion.
        VolumeReadError: a file cannot be read.
    """
    return _score(_prepare_case(ct, labels, label_json, masks_dir), predicted, model)


@dataclasses.dataclass
class _Case:
    """A real-anatomy case read and masked once (several models are scored against it)."""

    ct: PathLike | CTVolume
    labels: PathLike | VolumeLike
    ct_vol: CTVolume | np.ndarray
    ct_hu: np.ndarray
    masks: dict[str, tuple[np.ndarray, int, str]]
    skipped: dict[str, str]
    groups: dict[str, dict]


def _prepare_case(ct: PathLike | CTVolume, labels: PathLike | VolumeLike,
                  label_json: PathLike | Mapping, masks_dir: PathLike | None) -> _Case:
    """Read the CT and label map, check their grid, build the eroded group masks and the
    groups' native medians (see :func:`real_anatomy_check` for the errors)."""
    ct_vol = _volume(ct)
    ct_hu = _array(ct_vol).astype(np.float64)
    lab_vol = _volume(labels)
    _same_grid(ct_vol, lab_vol, "the label map")
    lab = _array(lab_vol)
    lab = np.rint(lab).astype(np.int64) if np.issubdtype(lab.dtype, np.floating) \
        else lab.astype(np.int64)
    names = read_label_names(label_json)
    mdir = Path(masks_dir) if masks_dir is not None else None
    if mdir is not None and not mdir.is_dir():
        raise InputError(f"masks folder not found: {mdir}")
    masks, skipped = _group_masks(lab, names, mdir, ct_vol)
    if not masks:
        raise InputError("no organ group has voxels after erosion: "
                         + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    table = {g.name: g for g in ORGAN_GROUPS}
    groups: dict[str, dict] = {}
    for name, (mask, before, source) in masks.items():
        g = table[name]
        groups[name] = {"labels": source, "reference_rows": list(g.reference_rows),
                        "note": g.note, "voxels": int(mask.sum()),
                        "voxels_before_erosion": before,
                        "native_median_hu": float(np.median(ct_hu[mask]))}
    return _Case(ct, labels, ct_vol, ct_hu, masks, skipped, groups)


def _score(case: _Case, predicted: Mapping[str, VolumeLike], model: str | None
           ) -> dict[str, Any]:
    """The result of :func:`real_anatomy_check` for one model's predictions on a case."""
    if not predicted:
        raise InputError("no predicted volume: pass {phase: sCECT volume}")
    bad = [p for p in predicted if p not in PHANTOM_PHASES or p == "ncct"]
    if bad:
        raise InputError(f"predicted phases must be among {', '.join(PHANTOM_PHASES[1:])}, got "
                         f"{', '.join(map(repr, bad))}")
    table = {g.name: g for g in ORGAN_GROUPS}
    ct_hu, groups = case.ct_hu, case.groups
    phases: dict[str, dict] = {}
    for phase, pred in predicted.items():
        _same_grid(case.ct_vol, pred, f"the {phase} prediction")
        pred_hu = _array(pred).astype(np.float64)
        organs = {}
        for name, (mask, _, _) in case.masks.items():
            ref = reference_change(table[name].reference_rows, phase)
            change = float(np.median(pred_hu[mask] - ct_hu[mask]))
            organs[name] = {"native_median_hu": groups[name]["native_median_hu"],
                            "predicted_median_hu": float(np.median(pred_hu[mask])),
                            "predicted_change_hu": change, "reference_change_hu": ref,
                            "error_hu": change - ref, "voxels": groups[name]["voxels"]}
        phases[phase] = {"organs": organs, "mean_abs_error_hu": float(
            np.mean([abs(o["error_hu"]) for o in organs.values()]))}
        _logger.info("real anatomy %s %s: mean |error| %.1f HU over %d groups", model, phase,
                     phases[phase]["mean_abs_error_hu"], len(organs))
    ct, labels = case.ct, case.labels
    return {"model": model,
            "ct": str(ct) if not isinstance(ct, CTVolume) else None,
            "labels": str(labels) if not isinstance(labels, (CTVolume, np.ndarray)) else None,
            "shape": list(ct_hu.shape),
            "spacing_mm": (list(case.ct_vol.spacing_zyx_mm) if isinstance(case.ct_vol, CTVolume)
                           else None),
            "erosion": EROSION,
            "reference": "vcesdk.training.phantom.TISSUE_HU (phase - ncct; Lamba 2014, Bae "
                         "2010, Yuh & Cohan 1999)",
            "groups": groups, "skipped": case.skipped, "phases": phases}


# --- report -----------------------------------------------------------------------------

def _named(results: dict | Sequence[dict]) -> dict[str, dict]:
    items = [results] if isinstance(results, Mapping) else list(results)
    if not items:
        raise InputError("no real-anatomy result to write")
    out: dict[str, dict] = {}
    for i, r in enumerate(items):
        if "phases" not in r or "groups" not in r:
            raise InputError("not a real_anatomy_check result (no 'phases' / 'groups')")
        name = r.get("model") or f"model{i + 1}"
        while name in out:
            name = f"{name}_{i + 1}"
        out[name] = r
    return out


def _markdown(named: dict[str, dict]) -> str:
    first = next(iter(named.values()))
    md = ["# Real-anatomy check", "",
          f"CT {first['ct'] or '(array)'}, labels {first['labels'] or '(array)'}, "
          f"{'x'.join(map(str, first['shape']))} voxels (D x H x W). Masks eroded by "
          f"{EROSION}. Median change sCECT - NCCT per organ group against the reference "
          f"enhancement of the phase ({first['reference']}); error = predicted - reference.",
          ""]
    for model, r in named.items():
        for phase, entry in r["phases"].items():
            md += [f"## {model}, {phase.upper()}", "",
                   "| organ group | voxels | native median (HU) | predicted change (HU) | "
                   "reference change (HU) | error (HU) | reference row(s) |",
                   "| --- | --- | --- | --- | --- | --- | --- |"]
            for name, o in entry["organs"].items():
                rows = " + ".join(r["groups"][name]["reference_rows"])
                md.append(f"| {name} | {o['voxels']} | {o['native_median_hu']:.1f} | "
                          f"{o['predicted_change_hu']:+.1f} | {o['reference_change_hu']:+.1f} "
                          f"| {o['error_hu']:+.1f} | {rows} |")
            md += ["", f"Mean |error| over {len(entry['organs'])} groups: "
                       f"{entry['mean_abs_error_hu']:.1f} HU", ""]
        if r["skipped"]:
            md += ["Skipped: " + "; ".join(f"{k} ({v})" for k, v in r["skipped"].items()), ""]
    md += ["![predicted vs reference change](real_anatomy.png)", ""]
    return "\n".join(md)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed bitmap font
        return ImageFont.load_default()


def _bar_chart(named: dict[str, dict], path: Path) -> None:
    """One panel per (model, phase): predicted (blue) and reference (grey) change per group."""
    from PIL import Image, ImageDraw

    panels = [(m, p, e) for m, r in named.items() for p, e in r["phases"].items()]
    short = {g.name: g.short for g in ORGAN_GROUPS}
    n_groups = max(len(e["organs"]) for _, _, e in panels)
    pw, ph, left, top, bottom = max(420, 64 * n_groups + 80), 300, 60, 34, 40
    values = [v for _, _, e in panels for o in e["organs"].values()
              for v in (o["predicted_change_hu"], o["reference_change_hu"])]
    lo = min(-50.0, 50.0 * np.floor(min(values) / 50.0))
    hi = max(50.0, 50.0 * np.ceil(max(values) / 50.0))
    img = Image.new("RGB", (pw, ph * len(panels)), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(13), _font(11)
    pred_c, ref_c, grid_c = (40, 90, 200), (160, 160, 160), (225, 225, 225)
    for i, (model, phase, entry) in enumerate(panels):
        y0 = i * ph
        plot_h = ph - top - bottom

        def y_of(v: float, y0: int = y0, plot_h: int = plot_h) -> float:
            return y0 + top + (hi - v) / (hi - lo) * plot_h

        step = 50.0 if hi - lo <= 400 else 100.0
        for t in np.arange(lo, hi + 1e-6, step):
            y = y_of(float(t))
            draw.line([(left, y), (pw - 10, y)], fill=grid_c if t else (0, 0, 0), width=1)
            draw.text((4, y - 7), f"{t:+.0f}" if t else "0", fill=(0, 0, 0), font=small)
        draw.text((left, y0 + 6), f"{model}, {phase.upper()}: change sCECT - NCCT, HU "
                                  f"(mean |error| {entry['mean_abs_error_hu']:.1f} HU)",
                  fill=(0, 0, 0), font=font)
        draw.rectangle([pw - 200, y0 + 24, pw - 190, y0 + 32], fill=pred_c)
        draw.text((pw - 186, y0 + 21), "predicted", fill=(0, 0, 0), font=small)
        draw.rectangle([pw - 110, y0 + 24, pw - 100, y0 + 32], fill=ref_c)
        draw.text((pw - 96, y0 + 21), "reference", fill=(0, 0, 0), font=small)
        slot = (pw - 10 - left) / max(1, len(entry["organs"]))
        zero = y_of(0.0)
        for j, (name, o) in enumerate(entry["organs"].items()):
            x = left + j * slot + slot * 0.15
            bw = slot * 0.33
            for k, (v, c) in enumerate(((o["predicted_change_hu"], pred_c),
                                        (o["reference_change_hu"], ref_c))):
                ya, yb = sorted((zero, y_of(v)))
                draw.rectangle([x + k * bw, ya, x + (k + 1) * bw - 1, max(yb, ya + 1)], fill=c)
            draw.text((left + j * slot + 2, y0 + ph - bottom + 6), short.get(name, name)[:10],
                      fill=(0, 0, 0), font=small)
        if i:
            draw.line([(0, y0), (pw, y0)], fill=(120, 120, 120), width=1)
    img.save(path, format="PNG")


def write_real_anatomy_report(result: dict | Sequence[dict], out_dir: PathLike,
                              overwrite: bool = False) -> Path:
    """Write the report of one or several :func:`real_anatomy_check` results (atomically).

    Files: ``report.json`` ({"models": {model name: result}}), ``report.md`` (one table per
    model and phase: organ group, voxels, native median, predicted change, reference change,
    error, and the mean |error|) and ``real_anatomy.png`` (one bar-chart panel per model and
    phase: predicted change in blue, reference in grey, per organ group).

    Args:
        result: a result, or a sequence of results (e.g. one per model).
        out_dir: folder to create.
        overwrite: replace an existing folder.

    Returns:
        `out_dir`.

    Raises:
        InputError: nothing to write, or a dict that is not a result.
        VolumeWriteError: `out_dir` exists and not `overwrite`, or cannot be written.
    """
    named = _named(result)
    out = Path(out_dir)
    with atomic_output(out, is_dir=True, overwrite=overwrite) as tmp:
        (tmp / "report.json").write_text(json.dumps({"models": named}, indent=1),
                                         encoding="utf-8")
        (tmp / "report.md").write_text(_markdown(named), encoding="utf-8")
        _bar_chart(named, tmp / "real_anatomy.png")
    return out


# --- vcesdk-eval --real-anatomy ----------------------------------------------------------

def _first(folder: Path, names: Sequence[str], what: str) -> Path:
    for n in names:
        if (folder / n).exists():
            return folder / n
    raise InputError(f"no {what} in {folder} (expected one of {', '.join(names)})")


def find_case_files(case_dir: PathLike) -> dict[str, Path]:
    """The CT, label map and label JSON of a real-anatomy case folder (names in the module
    docstring).

    Returns:
        {"ct": path, "labels": path, "label_json": path, "masks_dir": the folder}.

    Raises:
        InputError: the folder or one of the three files is missing.
    """
    d = Path(case_dir)
    if not d.is_dir():
        raise InputError(f"real-anatomy folder not found: {d}")
    return {"ct": _first(d, CT_NAMES, "CT"),
            "labels": _first(d, LABEL_MAP_NAMES, "TotalSegmentator label map"),
            "label_json": _first(d, LABEL_JSON_NAMES, "label JSON"), "masks_dir": d}


def real_anatomy_results(models: Sequence[PathLike], case_dir: PathLike) -> list[dict]:
    """Run each model on the CT of `case_dir` and check its output organ by organ.

    Each model (bundle folder, run folder or checkpoint) synthesizes its phase through
    ``vcesdk.Synthesizer(bundle, contrast_guard="off")`` (a checkpoint is first exported to a
    temporary ONNX bundle, parity checked on the case's CT); the output goes to
    :func:`real_anatomy_check` with the case's label map, label JSON and tissue masks.

    Args:
        models: bundle folders, run folders (checkpoint.pt) or checkpoint files.
        case_dir: folder with the CT, label map and label JSON (see :func:`find_case_files`).

    Returns:
        One :func:`real_anatomy_check` result per model, in order, each with "model" = its
        bundle name.

    Raises:
        InputError: a missing case file, a model that is neither a bundle nor a checkpoint,
            two models with one bundle name, or an error of :func:`real_anatomy_check`.
        BundleError: a bundle fails verification.
    """
    from vcesdk.runtime import Synthesizer

    from .trainer import bundle_for

    if not models:
        raise InputError("no model to check")
    files = find_case_files(case_dir)
    case = _prepare_case(files["ct"], files["labels"], files["label_json"], files["masks_dir"])
    ct = case.ct_vol
    with tempfile.TemporaryDirectory(prefix="vcesdk-anatomy-") as scratch:
        syns = [Synthesizer(bundle_for(m, scratch, ct), contrast_guard="off")
                for m in models]
        names = [s.bundle.name for s in syns]
        if len(set(names)) != len(names):
            raise InputError(f"two models share a bundle name ({', '.join(names)})")
        return [_score(case, {syn.bundle.phase: syn.synthesize(ct)}, syn.bundle.name)
                for syn in syns]


def summary_lines(results: Sequence[dict]) -> list[str]:
    """One text line per model, phase and organ group, for a CLI to print."""
    lines = [f"{'model':<22}{'phase':<6}{'organ group':<22}{'voxels':>7}{'native':>9}"
             f"{'pred':>8}{'ref':>8}{'error':>8}"]
    for r in results:
        for phase, e in r["phases"].items():
            for name, o in e["organs"].items():
                lines.append(f"{str(r['model'])[:21]:<22}{phase:<6}{name:<22}{o['voxels']:>7}"
                             f"{o['native_median_hu']:>9.1f}{o['predicted_change_hu']:>+8.1f}"
                             f"{o['reference_change_hu']:>+8.1f}{o['error_hu']:>+8.1f}")
            lines.append(f"{str(r['model'])[:21]:<22}{phase:<6}{'mean |error|':<22}{'':>7}"
                         f"{'':>9}{'':>8}{'':>8}{e['mean_abs_error_hu']:>8.1f}")
    return lines


# --- hand-placed ROIs on the unlabelled real native CT ---------------------------------------

@dataclasses.dataclass(frozen=True)
class HandROI:
    """A hand-placed box on a real native CT, with an HU range that keeps one tissue in it.

    Attributes:
        name: "aorta", "subcutaneous_fat", "bone" or "air".
        box: ((z0, z1), (y0, y1), (x0, x1)) voxel index ranges in the file's (D, H, W) order,
            end exclusive.
        native_hu: keep the box voxels whose NCCT lies in [lo, hi] HU (fat: -150..-50, bone:
            150..2000, air: -1100..-900), None = the whole box.
        reference_rows: TISSUE_HU rows for the reference change (None = no change expected).
        tolerance_hu: the largest |change - reference| that passes ([demo] targets: aorta 25,
            fat 10, air 5, bone 20 HU).
    """

    name: str
    box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    native_hu: tuple[float, float] | None
    reference_rows: tuple[str, ...] | None
    tolerance_hu: float

    def mask(self, ncct: np.ndarray) -> np.ndarray:
        """Boolean (D, H, W) mask of this ROI on `ncct` (float32 HU)."""
        (z0, z1), (y0, y1), (x0, x1) = self.box
        m = np.zeros(ncct.shape, bool)
        m[z0:z1, y0:y1, x0:x1] = True
        if self.native_hu is not None:
            m &= (ncct >= self.native_hu[0]) & (ncct <= self.native_hu[1])
        return m

    @classmethod
    def of(cls, name: str, box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
           ) -> "HandROI":
        """An ROI of a kind in :data:`ROI_KINDS` (its HU range, reference and tolerance).

        Raises:
            InputError: an unknown kind.
        """
        if name not in ROI_KINDS:
            raise InputError(f"unknown ROI kind {name!r}; known: {', '.join(ROI_KINDS)}")
        return cls(name, box, *ROI_KINDS[name])


#: ROI kind -> (native HU range, TISSUE_HU reference rows, tolerance HU): the [demo] targets
#: (aorta within 25 HU of the phase's reference; fat <= 10, bone <= 20, air <= 5 HU of change).
ROI_KINDS: dict[str, tuple[tuple[float, float] | None, tuple[str, ...] | None, float]] = {
    "aorta": (None, ("aorta",), 25.0),
    "subcutaneous_fat": ((-150.0, -50.0), None, 10.0),
    "bone": ((150.0, 2000.0), None, 20.0),
    "air": ((-1100.0, -900.0), None, 5.0),
}

#: Hand-placed ROIs on the two real native scans in ``../shared/data/ct`` (placed on a window
#: L 40 / W 400 view of the middle slice of each box; NCCT medians: lung1 aorta 42, fat -112 /
#: -114, vertebral body 262, air -998 HU; abdomen aorta 42, fat -104 / -106, vertebral body
#: 213, air -1000 HU). The abdomen file is RAS (rows run posterior -> anterior).
REAL_CT_ROIS: dict[str, tuple[HandROI, ...]] = {
    "pyradiomics_lung1/lung1_image.nrrd": (
        HandROI.of("aorta", ((4, 21), (405, 420), (310, 326))),
        HandROI.of("subcutaneous_fat", ((4, 21), (160, 200), (120, 200))),
        HandROI.of("subcutaneous_fat", ((4, 21), (160, 200), (320, 400))),
        HandROI.of("bone", ((4, 21), (400, 430), (240, 275))),
        HandROI.of("air", ((4, 21), (0, 60), (0, 80))),
    ),
    "totalseg_abdomen_native/example_ct.nii.gz": (
        HandROI.of("aorta", ((80, 96), (50, 53), (52, 55))),
        HandROI.of("subcutaneous_fat", ((80, 96), (8, 18), (15, 35))),
        HandROI.of("subcutaneous_fat", ((80, 96), (8, 18), (85, 105))),
        HandROI.of("bone", ((80, 96), (32, 42), (50, 60))),
        HandROI.of("air", ((80, 96), (90, 101), (0, 12))),
    ),
}


def hand_roi_check(ncct: np.ndarray, scect: np.ndarray, rois: Sequence[HandROI],
                   phase: str) -> list[dict]:
    """Median change sCECT - NCCT in each hand-placed ROI against its reference.

    Args:
        ncct, scect: float32 (D, H, W) HU on one grid.
        rois: the case's ROIs (e.g. ``REAL_CT_ROIS["pyradiomics_lung1/lung1_image.nrrd"]``).
        phase: "ap", "pvp" or "dp" (the reference column of TISSUE_HU).

    Returns:
        One dict per ROI: name, voxels, native_hu (median), change_hu (median),
        reference_hu, error_hu, tolerance_hu, passed.

    Raises:
        InputError: shapes differ, an unknown phase, or an ROI with no voxels.
    """
    if np.shape(ncct) != np.shape(scect):
        raise InputError(f"NCCT {np.shape(ncct)} and sCECT {np.shape(scect)} differ in shape")
    rows = []
    for roi in rois:
        m = roi.mask(ncct)
        if not m.any():
            raise InputError(f"ROI {roi.name} {roi.box} holds no voxel in {roi.native_hu} HU")
        change = float(np.median(scect[m] - ncct[m]))
        ref = reference_change(roi.reference_rows, phase) if roi.reference_rows else 0.0
        rows.append({"name": roi.name, "voxels": int(m.sum()),
                     "native_hu": float(np.median(ncct[m])), "change_hu": change,
                     "reference_hu": ref, "error_hu": change - ref,
                     "tolerance_hu": roi.tolerance_hu,
                     "passed": abs(change - ref) <= roi.tolerance_hu})
    return rows
