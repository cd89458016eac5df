"""DICOM CT series reading and synthetic-series writing (pydicom).

Reading sorts slices by their position along the slice normal (the cross product of the two
ImageOrientationPatient direction cosines), not by InstanceNumber or file name, and applies
RescaleSlope / RescaleIntercept to give float32 HU.

Writing produces a derived CT Image Storage series: new SeriesInstanceUID and SOPInstanceUIDs,
the source's study, patient and frame-of-reference tags, per-slice ImagePositionPatient,
ImageType DERIVED\\SECONDARY, and a SeriesDescription that starts with "SYNTHETIC".
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from .errors import (
    DuplicateSliceError,
    GantryTiltError,
    MissingSlicesError,
    NotCTError,
    SeriesSelectionError,
    SliceGeometryError,
    UnsupportedPixelDataError,
    VolumeReadError,
    VolumeWriteError,
)
from .volume import CTVolume

_logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# Tags copied from the source so the synthetic series files under the same patient and study.
PATIENT_STUDY_TAGS: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
    "AccessionNumber", "ReferringPhysicianName", "StudyDescription", "FrameOfReferenceUID",
    "PositionReferenceIndicator", "BodyPartExamined", "PatientPosition", "KVP",
    "Manufacturer", "SpecificCharacterSet",
)
SLICE_TAGS: tuple[str, ...] = ("AcquisitionNumber",)
_MAX_SPACING_DEVIATION = 0.1  # fraction of the median slice spacing tolerated between slices
_MAX_TILT_DEG = 0.5  # stacking direction vs slice normal; above this the series is tilted
_HEADER_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError)


def _read_headers(folder: Path) -> list:
    import pydicom

    datasets = []
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001  pydicom raises many types for bad bytes
            _logger.info("skipping %s: not a readable DICOM file (%s)", f.name, exc)
            continue
        try:
            if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
                continue
        except _HEADER_ERRORS:
            continue
        datasets.append((f, ds))
    return datasets


def _normal(ds) -> np.ndarray:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    return np.cross(iop[:3], iop[3:])


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> CTVolume:
    """Read one CT series from a folder of DICOM files into a :class:`CTVolume`.

    Args:
        folder: a folder of single-frame DICOM image files.
        series_uid: SeriesInstanceUID to read; by default the CT series with the most slices.

    Returns:
        float32 HU (D, H, W), slices ordered by position along the slice normal; spacing (z, y,
        x) with z from the slice positions; the per-slice headers in ``source_headers``.

    Raises:
        VolumeReadError: no DICOM images, a non-CT series, mixed slice geometry, duplicate or
            unevenly spaced slice positions.
    """
    folder = Path(folder)
    try:
        return _read_series(folder, series_uid)
    except _HEADER_ERRORS as exc:  # malformed values in headers of otherwise readable files
        raise VolumeReadError(f"malformed DICOM header in {folder}: {type(exc).__name__}: "
                              f"{exc}") from None


def _read_series(folder: Path, series_uid: str | None) -> CTVolume:
    import pydicom

    found = _read_headers(folder)
    if not found:
        raise VolumeReadError(f"no DICOM images in {folder}")
    series: dict[str, list] = defaultdict(list)
    for f, ds in found:
        series[str(ds.get("SeriesInstanceUID", ""))].append((f, ds))
    if series_uid is not None:
        if series_uid not in series:
            raise SeriesSelectionError(f"series {series_uid} not in {folder}; found: "
                                       f"{', '.join(sorted(series))}")
        chosen = series[series_uid]
    else:
        ct = {uid: items for uid, items in series.items()
              if all(str(ds.get("Modality", "")) == "CT" for _, ds in items)}
        if not ct:
            modalities = sorted({str(ds.get("Modality", "?")) for _, ds in found})
            raise NotCTError(f"no CT series in {folder} (modalities: "
                             f"{', '.join(modalities)}); vcesdk needs CT")
        uid = max(ct, key=lambda u: len(ct[u]))
        if len(series) > 1:
            _logger.info("%s holds %d series; reading the largest CT series %s (%d slices)",
                         folder, len(series), uid, len(ct[uid]))
        chosen = ct[uid]
    modality = {str(ds.get("Modality", "")) for _, ds in chosen}
    if modality != {"CT"}:
        raise NotCTError(f"series is {'/'.join(sorted(modality))}, not CT; vcesdk needs CT")

    normal = _normal(chosen[0][1])
    first_iop = np.asarray([float(v) for v in chosen[0][1].ImageOrientationPatient])
    for f, ds in chosen:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if not np.allclose(iop, first_iop, atol=1e-4):
            raise SliceGeometryError(f"{f.name} has a different ImageOrientationPatient than "
                                     f"the rest of the series")
    chosen.sort(key=lambda item: float(np.dot(normal, [float(v) for v in
                                                        item[1].ImagePositionPatient])))
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in chosen])
    along = positions @ normal
    if len(chosen) > 1:
        gaps = np.diff(along)
        if np.any(gaps < 1e-3):
            i = int(np.argmin(gaps))
            raise DuplicateSliceError(f"duplicate slice position {along[i]:.3f} mm in "
                                      f"{chosen[i][0].name} and {chosen[i + 1][0].name}; "
                                      f"remove the duplicate files or pick one series")
        dz = float(np.median(gaps))
        worst = float(np.max(np.abs(gaps - dz)))
        if worst > _MAX_SPACING_DEVIATION * dz:
            i = int(np.argmax(np.abs(gaps - dz)))
            if gaps[i] > dz:
                missing = int(round(gaps[i] / dz)) - 1
                raise MissingSlicesError(
                    f"{missing} slice(s) missing between {chosen[i][0].name} and "
                    f"{chosen[i + 1][0].name} (gap {gaps[i]:.3f} mm, spacing {dz:.3f} mm); "
                    f"re-export the complete series")
            raise SliceGeometryError(f"uneven slice spacing: gaps from {gaps.min():.3f} to "
                                     f"{gaps.max():.3f} mm (median {dz:.3f}); resample the "
                                     f"series to even spacing first")
        step = positions[-1] - positions[0]
        cos = abs(float(np.dot(step, normal))) / max(float(np.linalg.norm(step)), 1e-9)
        tilt = float(np.degrees(np.arccos(min(1.0, cos))))
        if tilt > _MAX_TILT_DEG:
            raise GantryTiltError(f"gantry tilt of {tilt:.1f} degrees (slices stacked "
                                  f"obliquely to their plane; GantryDetectorTilt "
                                  f"{chosen[0][1].get('GantryDetectorTilt', 'absent')}); "
                                  f"resample to an orthogonal grid first (e.g. dcm2niix)")
    else:
        dz = float(chosen[0][1].get("SliceThickness", 1.0) or 1.0)

    first = chosen[0][1]
    rows, cols = int(first.Rows), int(first.Columns)
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)  # (row spacing, column spacing)
    hu = np.empty((len(chosen), rows, cols), dtype=np.float32)
    headers = []
    for i, (f, _) in enumerate(chosen):
        try:
            ds = pydicom.dcmread(f)
        except Exception as exc:  # noqa: BLE001  (truncated or corrupt file)
            raise VolumeReadError(f"cannot read {f.name}: {exc}") from None
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # noqa: BLE001  pydicom raises many types for pixel data
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(ts, "name", str(ts)) if ts else "unknown transfer syntax"
            raise UnsupportedPixelDataError(
                f"cannot decode pixel data of {f.name} ({name}): {exc}; compressed series need "
                f"pylibjpeg, pylibjpeg-openjpeg and pyjpegls (installed with vcesdk) or "
                f"GDCM") from None
        if pixels.ndim != 2:
            raise UnsupportedPixelDataError(f"{f.name} holds {pixels.shape} pixels, not one "
                                            f"grayscale frame (multi-frame or colour)")
        if pixels.shape != (rows, cols):
            raise SliceGeometryError(f"{f.name} is {pixels.shape[0]} x {pixels.shape[1]}, the series "
                                  f"is {rows} x {cols}")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        hu[i] = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        del ds.PixelData
        headers.append(ds)
    direction = np.column_stack([first_iop[:3], first_iop[3:], normal])
    return CTVolume(hu=hu, spacing_mm=(dz, row_mm, col_mm), origin_mm=tuple(positions[0]),
                    direction=direction, source_headers=headers)


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


def write_dicom_series(vol: CTVolume, folder: str | os.PathLike, like: CTVolume | None = None,
                       series_description: str = "SYNTHETIC",
                       series_number: int | None = None) -> list[Path]:
    """Write `vol` as a derived CT series, one file per slice, into an existing empty folder.

    HU are rounded to int16 (RescaleSlope 1, RescaleIntercept 0, values clipped to the int16
    range). Study, patient and frame-of-reference tags come from `like` (or `vol`) when it has
    DICOM headers; otherwise a new study is created with an anonymous patient.

    Args:
        vol: volume to write (float32 HU, (D, H, W)).
        folder: destination folder (must exist).
        like: volume whose source headers give patient and study tags.
        series_description: SeriesDescription; "SYNTHETIC " is prefixed when missing.
        series_number: SeriesNumber; by default the source's + 1000 (or 1000).

    Returns:
        The written file paths, in slice order.

    Raises:
        VolumeWriteError: the folder is missing or a file cannot be written.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeWriteError(f"output folder does not exist: {folder}")
    if not series_description.upper().startswith("SYNTHETIC"):
        series_description = f"SYNTHETIC {series_description}"
    src_headers = (like.source_headers if like is not None else None) or vol.source_headers
    src = src_headers[0] if src_headers else None
    now = _dt.datetime.now()
    series_uid = _new_uid()
    study_uid = _new_uid()
    frame_uid = _new_uid()
    if series_number is None:
        series_number = int(src.get("SeriesNumber", 0) or 0) + 1000 if src is not None else 1000

    direction = vol.direction
    row_dir, col_dir, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    origin = np.asarray(vol.origin_mm, dtype=np.float64)
    dz, dy, dx = vol.spacing_mm
    pixels = np.clip(np.rint(vol.hu), -32768, 32767).astype(np.int16)
    paths = []
    for k in range(vol.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        sop_uid = _new_uid()
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        if src is not None:
            for tag in PATIENT_STUDY_TAGS:
                if tag in src:
                    ds[tag] = src[tag]
        else:
            ds.PatientName = "ANONYMOUS"
            ds.PatientID = "VCESDK"
            ds.PatientBirthDate = ""
            ds.PatientSex = ""
            ds.StudyInstanceUID = study_uid
            ds.StudyDate = now.strftime("%Y%m%d")
            ds.StudyTime = now.strftime("%H%M%S")
            ds.StudyID = ""
            ds.AccessionNumber = ""
            ds.ReferringPhysicianName = ""
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ""
        if "StudyInstanceUID" not in ds:
            ds.StudyInstanceUID = study_uid
        if "FrameOfReferenceUID" not in ds:
            ds.FrameOfReferenceUID = frame_uid
        for tag, default in (("KVP", ""), ("Manufacturer", ""), ("PositionReferenceIndicator", ""),
                             ("PatientBirthDate", ""), ("PatientSex", ""), ("StudyID", ""),
                             ("AccessionNumber", ""), ("ReferringPhysicianName", ""),
                             ("StudyDate", now.strftime("%Y%m%d")),
                             ("StudyTime", now.strftime("%H%M%S"))):
            if tag not in ds:
                setattr(ds, tag, default)
        if src_headers and k < len(src_headers) and len(src_headers) == vol.shape[0]:
            for tag in SLICE_TAGS:
                if tag in src_headers[k]:
                    ds[tag] = src_headers[k][tag]
        if "AcquisitionNumber" not in ds:
            ds.AcquisitionNumber = ""
        # Type 2C attributes of the General Series module: PatientPosition (CT) empty when
        # unknown; Laterality only when no BodyPartExamined says the part is unpaired
        if "PatientPosition" not in ds:
            ds.PatientPosition = ""
        if "BodyPartExamined" not in ds:
            ds.Laterality = ""
        if str(ds.get("PatientIdentityRemoved", "")).upper() == "YES" and not (
                "DeidentificationMethod" in ds or "DeidentificationMethodCodeSequence" in ds):
            ds.DeidentificationMethod = "source series marked de-identified; method not recorded"
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "CT"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description[:64]
        ds.SeriesDate = now.strftime("%Y%m%d")
        ds.SeriesTime = now.strftime("%H%M%S")
        ds.ContentDate = now.strftime("%Y%m%d")
        ds.ContentTime = now.strftime("%H%M%S")
        ds.DerivationDescription = ("Synthetic contrast-enhanced CT generated by vcesdk from a "
                                    "non-contrast CT; not acquired with contrast")[:1024]
        ds.BurnedInAnnotation = "NO"
        ds.InstanceNumber = k + 1
        pos = origin + k * dz * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.SliceLocation = f"{float(np.dot(pos, normal)):.6f}"
        ds.SliceThickness = f"{dz:.6f}"
        ds.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(vol.shape[1]), int(vol.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "50"
        ds.WindowWidth = "400"
        ds.PixelData = pixels[k].tobytes()
        path = folder / f"IM{k + 1:05d}.dcm"
        try:
            ds.save_as(path, enforce_file_format=True)
        except OSError as exc:
            raise VolumeWriteError(f"cannot write {path}: {exc.strerror}") from None
        paths.append(path)
    return paths
