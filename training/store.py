"""Paired scans from users (or the phantom layout) -> a registered, quality-checked, cached
store, and the 2.5D / 3D window samplers that feed training.

User layout (the phantom layout of :mod:`vcesdk.training.datacli` is one case of it)::

    DIR/<patient>/ncct(.nii.gz | .nii | .nrrd | .mha | /)   NCCT: a volume file or DICOM folder
    DIR/<patient>/<phase>(...)                              ap, pvp, dp: the same, any of them

Building the store, per patient and phase: the phase is resampled onto the NCCT grid by
physical position, which pairs slices by table position as 001_f4ce1725ceedd708.txt does
(slices outside the common z range are cropped from both); registered to the NCCT with
SimpleITK (affine, optionally B-spline; :mod:`vcesdk.training.registration`); checked by
block matching (the residual shift of each body block after registration); pairs whose
largest residual exceeds ``qc_max_px`` in-plane pixels (6 in 001) are dropped and listed in the
index. Volumes are cached as ``.npy`` (float32 HU, (D, H, W)) so epochs never re-read DICOM.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from vcesdk.errors import InputError, VolumeReadError
from vcesdk.io.atomic import atomic_output
from vcesdk.intensity import Window, hu_to_channels, hu_to_output
from vcesdk.io import read_volume
from vcesdk.volume import CTVolume, resample_volume

from .phantom import PHASES
from .registration import register

_logger = logging.getLogger(__name__)
STORE_VERSION = 1
_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
_OUTSIDE = -5000.0  # marks NCCT voxels the phase does not cover


def find_phase(patient_dir: Path, phase: str) -> Path | None:
    """The file or DICOM folder holding `phase` for one patient (NIfTI/NRRD/MHA preferred)."""
    for suffix in _SUFFIXES:
        p = patient_dir / f"{phase}{suffix}"
        if p.is_file():
            return p
    p = patient_dir / phase
    return p if p.is_dir() else None


def residual_shift_mm(fixed: CTVolume, aligned: CTVolume, blocks: Sequence[int] = (2, 3, 3),
                      min_body_fraction: float = 0.3) -> np.ndarray:
    """Residual misalignment after registration, by block matching.

    The volume is cut into ``blocks`` (z, y, x); each block holding at least
    `min_body_fraction` of body voxels (> -500 HU) is registered again with a translation only
    (Mattes MI); the translations are the residual shifts.

    Returns:
        float64 (n_blocks, 3) residual shifts, mm, (x, y, z) LPS; empty when no block qualifies.
    """
    import SimpleITK as sitk

    shifts = []
    D, H, W = fixed.shape
    edges = [np.linspace(0, n, b + 1).astype(int) for n, b in zip((D, H, W), blocks)]
    f_img = fixed.to_sitk()
    mb = sitk.Clamp(aligned.to_sitk(), sitk.sitkFloat32, -1000.0, 1500.0)
    for z0, z1 in zip(edges[0][:-1], edges[0][1:]):
        for y0, y1 in zip(edges[1][:-1], edges[1][1:]):
            for x0, x1 in zip(edges[2][:-1], edges[2][1:]):
                if min(z1 - z0, y1 - y0, x1 - x0) < 4:
                    continue
                if np.mean(fixed.hu[z0:z1, y0:y1, x0:x1] > -500) < min_body_fraction:
                    continue
                fb = sitk.Clamp(f_img[int(x0):int(x1), int(y0):int(y1), int(z0):int(z1)],
                                sitk.sitkFloat32, -1000.0, 1500.0)
                r = sitk.ImageRegistrationMethod()
                r.SetMetricAsMattesMutualInformation(32)
                r.SetMetricSamplingStrategy(r.RANDOM)
                r.SetMetricSamplingPercentage(0.3, 1)
                r.SetInterpolator(sitk.sitkLinear)
                r.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, 100, relaxationFactor=0.6)
                r.SetOptimizerScalesFromPhysicalShift()
                r.SetInitialTransform(sitk.TranslationTransform(3), inPlace=False)
                tx = r.Execute(fb, mb)
                shifts.append(np.asarray(tx.GetNthTransform(0).GetParameters()
                                         if hasattr(tx, "GetNthTransform") else tx.GetParameters()))
    return np.asarray(shifts, dtype=np.float64).reshape(-1, 3)


@dataclasses.dataclass
class PairRecord:
    """One (NCCT, phase) pair in the store index."""

    patient: str
    phase: str
    kept: bool
    residual_max_px: float | None
    residual_rms_mm: float | None
    z_range: tuple[int, int]
    reason: str = ""


def build_store(src: str | os.PathLike, dst: str | os.PathLike,
                phases: Sequence[str] = ("ap", "pvp", "dp"), registration: str = "affine",
                qc_max_px: float = 6.0, overwrite: bool = False) -> Path:
    """Register, check and cache a paired dataset (layout in the module docstring).

    Args:
        src: dataset folder (one folder per patient).
        dst: store folder to create: ``index.json`` and ``<patient>/<phase>.npy``.
        phases: contrast phases to pair with each patient's NCCT (missing ones are skipped).
        registration: "none", "affine" or "bspline" (affine then B-spline).
        qc_max_px: drop a pair whose largest residual block shift exceeds this many in-plane
            pixels (6 in 001_f4ce1725ceedd708.txt).

    Returns:
        The store folder.

    Raises:
        InputError: unknown option, no patient with an NCCT; VolumeReadError: unreadable scans.
    """
    if registration not in ("none", "affine", "bspline"):
        raise InputError(f"registration must be none, affine or bspline, got {registration!r}")
    bad = [p for p in phases if p not in PHASES[1:]]
    if bad:
        raise InputError(f"unknown phase(s) {', '.join(bad)}; valid: {', '.join(PHASES[1:])}")
    src = Path(src)
    patients = sorted(p for p in src.iterdir() if p.is_dir() and find_phase(p, "ncct"))
    if not patients:
        raise InputError(f"no <patient>/ncct scan under {src}")
    records: list[PairRecord] = []
    with atomic_output(Path(dst), is_dir=True, overwrite=overwrite) as tmp:
        meta_patients = {}
        for pdir in patients:
            ncct = read_volume(find_phase(pdir, "ncct"))
            out = tmp / pdir.name
            out.mkdir()
            kept_any = False
            zr_all = (0, ncct.shape[0])
            pairs = {}
            for phase in phases:
                path = find_phase(pdir, phase)
                if path is None:
                    continue
                moving = read_volume(path)
                # pair by table position: the phase on the NCCT grid (resampled by physical
                # position, then registered); NCCT slices it does not cover are cropped
                if registration == "none":
                    aligned = resample_volume(moving, (), reference=ncct, default_hu=_OUTSIDE)
                else:
                    aligned = register(ncct, moving, bspline=registration == "bspline",
                                       default_hu=_OUTSIDE).aligned
                covered = np.where((aligned.hu > _OUTSIDE / 2).mean(axis=(1, 2)) > 0.99)[0]
                if len(covered) < 4:
                    records.append(PairRecord(pdir.name, phase, False, None, None, (0, 0),
                                              "less than 4 slices overlap the NCCT"))
                    continue
                zr = (int(covered[0]), int(covered[-1]) + 1)
                aligned = aligned.with_hu(np.maximum(aligned.hu, -1024.0))
                sub = slice(*zr)
                f_sub = CTVolume(hu=ncct.hu[sub], spacing_zyx_mm=ncct.spacing_zyx_mm,
                                 origin_xyz_mm=ncct.origin_xyz_mm, direction=ncct.direction)
                a_sub = f_sub.with_hu(aligned.hu[sub])
                shifts = residual_shift_mm(f_sub, a_sub)
                pixel = min(ncct.spacing_zyx_mm[1:])
                worst = float(np.abs(shifts[:, :2]).max() / pixel) if len(shifts) else None
                rms = float(np.sqrt((shifts ** 2).sum(1).mean())) if len(shifts) else None
                keep = worst is not None and worst <= qc_max_px
                records.append(PairRecord(pdir.name, phase, keep, worst, rms, zr,
                                          "" if keep else (f"residual {worst:.1f} px > "
                                                           f"{qc_max_px} px" if worst is not None
                                                           else "no body block to check")))
                if keep:
                    pairs[phase] = (aligned.hu, zr)
                    kept_any = True
            if kept_any:
                lo = max(z[0] for _, z in pairs.values())
                hi = min(z[1] for _, z in pairs.values())
                zr_all = (lo, hi)
                np.save(out / "ncct.npy", ncct.hu[lo:hi].astype(np.float32))
                for phase, (hu, _) in pairs.items():
                    np.save(out / f"{phase}.npy", hu[lo:hi].astype(np.float32))
                meta_patients[pdir.name] = {"spacing_mm": list(ncct.spacing_zyx_mm),
                                            "shape": [hi - lo, *ncct.shape[1:]],
                                            "z_range": list(zr_all), "phases": sorted(pairs)}
            else:
                out.rmdir()
        index = {"version": STORE_VERSION, "source": str(src), "registration": registration,
                 "qc_max_px": qc_max_px, "patients": meta_patients,
                 "pairs": [dataclasses.asdict(r) for r in records]}
        (tmp / "index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
    kept = sum(r.kept for r in records)
    _logger.info("store %s: %d of %d pairs kept", dst, kept, len(records))
    return Path(dst)


class PairedStore:
    """A built store: volumes memory-mapped from ``.npy``.

    Raises:
        VolumeReadError: not a store (no index.json) or a missing file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        index = self.path / "index.json"
        if not index.is_file():
            raise VolumeReadError(f"{self.path} is not a store (no index.json); build one with "
                                  f"vcesdk.training.store.build_store")
        self.index = json.loads(index.read_text(encoding="utf-8"))
        self.patients = sorted(self.index["patients"])

    def volume(self, patient: str, phase: str) -> np.ndarray:
        """float32 HU (D, H, W), memory-mapped (read-only)."""
        p = self.path / patient / f"{phase}.npy"
        if not p.is_file():
            raise VolumeReadError(f"store has no {phase} for {patient}")
        return np.load(p, mmap_mode="r")

    def patients_with(self, phase: str) -> list[str]:
        return [p for p in self.patients if phase in self.index["patients"][p]["phases"]]


@dataclasses.dataclass
class Sample:
    """One training window. ``ncct``: float32 tensor (C, h, w) for 2.5D (C = 3 slices x
    windows) or (C, d, h, w) for 3D, in [-1, 1]; ``target``: (1, h, w) / (1, d, h, w) in [-1, 1];
    ``phase``: the target's phase; ``patient``: its patient; ``z``: first slice index."""

    ncct: object
    target: object
    phase: str
    patient: str
    z: int


class WindowSampler:
    """Random 2.5D or 3D windows over a :class:`PairedStore`, with the papers' augmentation.

    Args:
        store: the store.
        phase: target phase.
        windows: input HU windows (model channels).
        output_hu: (lo, hi) HU mapped to the target range [-1, 1].
        mode: "2.5d" (3 consecutive slices as channels, target = the middle slice; 001, 003's
            2.5D baseline) or "3d" (a (d, h, w) block).
        size: (h, w) for 2.5D, (d, h, w) for 3D, voxels.
        max_shift_px: random in-plane translation of input and target together, up to this many
            pixels (50 in 003_38ca5beaf82dcc38.txt); shifted-in pixels are air.
        seed: sampler seed (same seed -> same windows).
    """

    def __init__(self, store: PairedStore, phase: str, windows: Sequence[Window],
                 output_hu: Sequence[float], mode: str = "3d",
                 size: Sequence[int] = (16, 128, 128), max_shift_px: int = 50, seed: int = 0):
        if mode not in ("2.5d", "3d"):
            raise InputError(f"mode must be '2.5d' or '3d', got {mode!r}")
        if len(size) != (2 if mode == "2.5d" else 3):
            raise InputError(f"size for {mode} is {'(h, w)' if mode == '2.5d' else '(d, h, w)'}"
                             f", got {tuple(size)}")
        self.patients = store.patients_with(phase)
        if not self.patients:
            raise InputError(f"the store has no {phase} pairs")
        self.store, self.phase, self.windows = store, phase, list(windows)
        self.output_hu, self.mode, self.size = tuple(output_hu), mode, tuple(int(s) for s in size)
        self.max_shift_px = int(max_shift_px)
        self.rng = np.random.default_rng(seed)

    def _crop(self, vol: np.ndarray, z0: int, d: int, y0: int, x0: int, h: int, w: int,
              dy: int, dx: int) -> np.ndarray:
        """vol[z0:z0+d, y0-dy:y0-dy+h, x0-dx:x0-dx+w] with air outside the volume."""
        out = np.full((d, h, w), -1024.0, dtype=np.float32)
        ys, xs = y0 - dy, x0 - dx
        sy0, sx0 = max(ys, 0), max(xs, 0)
        sy1, sx1 = min(ys + h, vol.shape[1]), min(xs + w, vol.shape[2])
        if sy1 > sy0 and sx1 > sx0:
            out[:, sy0 - ys:sy1 - ys, sx0 - xs:sx1 - xs] = vol[z0:z0 + d, sy0:sy1, sx0:sx1]
        return out

    def sample(self) -> Sample:
        """One random window (torch tensors)."""
        import torch

        r = self.rng
        patient = self.patients[int(r.integers(len(self.patients)))]
        ncct = self.store.volume(patient, "ncct")
        target = self.store.volume(patient, self.phase)
        d = 3 if self.mode == "2.5d" else self.size[0]
        h, w = self.size[-2:]
        D, H, W = ncct.shape
        if D < d:
            raise InputError(f"{patient} has {D} slices, fewer than the window's {d}")
        z0 = int(r.integers(D - d + 1))
        y0 = int(r.integers(max(1, H - h + 1)))
        x0 = int(r.integers(max(1, W - w + 1)))
        dy, dx = (int(v) for v in r.integers(-self.max_shift_px, self.max_shift_px + 1, 2))
        x = self._crop(ncct, z0, d, y0, x0, h, w, dy, dx)
        y = self._crop(target, z0, d, y0, x0, h, w, dy, dx)
        xc = hu_to_channels(x, self.windows)  # (C, d, h, w)
        yc = hu_to_output(y, self.output_hu)[None]
        if self.mode == "2.5d":
            xc = xc.transpose(1, 0, 2, 3).reshape(-1, h, w)  # slices x windows as channels
            yc = yc[:, 1]
        return Sample(ncct=torch.from_numpy(np.ascontiguousarray(xc)),
                      target=torch.from_numpy(np.ascontiguousarray(yc)), phase=self.phase,
                      patient=patient, z=z0)

    def batch(self, n: int) -> tuple[object, object, list[Sample]]:
        """n samples stacked: (ncct (n, ...), target (n, ...), the samples)."""
        import torch

        samples = [self.sample() for _ in range(n)]
        return (torch.stack([s.ncct for s in samples]),
                torch.stack([s.target for s in samples]), samples)
