"""DICOM CT series reading and synthetic-series writing (pydicom).

Reading sorts slices by their position along the slice normal (the cross product of the two
ImageOrientationPatient direction cosines), not by InstanceNumber or file name, and applies
RescaleSlope / RescaleIntercept to give float32 HU.

Writing produces a derived CT Image Storage series: new SeriesInstanceUID and SOPInstanceUIDs,
the source's study, patient and frame-of-reference tags, per-slice ImagePositionPatient,
ImageType DERIVED\\SECONDARY, and a SeriesDescription that starts with "SYNTHETIC".
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import (
    DuplicateSliceError,
    GantryTiltError,
    InputError,
    MissingSlicesError,
    NotCTError,
    SeriesSelectionError,
    SliceGeometryError,
    UnsupportedPixelDataError,
    VolumeReadError,
    VolumeWriteError,
)
from ..volume import CTVolume, hu_to_int16

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
# what pydicom raises when a (lazily parsed) header element is malformed
_HEADER_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError,
                  NotImplementedError)
# header elements the reader uses: parsed up front so a malformed one skips its file
_USED_TAGS = ("Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Rows",
              "Columns", "SliceThickness", "GantryDetectorTilt")


ENHANCED_CT_STORAGE = ("1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
                       "1.2.840.10008.5.1.4.1.1.2.2")  # Legacy Converted Enhanced CT
TILT_MODES = ("refuse", "resample")


@dataclasses.dataclass
class _Frame:
    """One image plane: a single-frame file or one frame of a multi-frame file."""

    path: Path
    ds: object  # the file's dataset, without pixel data
    index: int | None  # frame index in a multi-frame file, None for single-frame
    ipp: np.ndarray
    iop: np.ndarray
    pixel_mm: tuple[float, float]  # (row spacing, column spacing)
    slope: float
    intercept: float

    @property
    def name(self) -> str:
        return self.path.name if self.index is None else f"{self.path.name}[frame {self.index + 1}]"


def _group_item(ds, frame_item, sequence: str):
    """First item of a functional group sequence, per-frame first, then shared."""
    for holder in (frame_item, _first(ds, "SharedFunctionalGroupsSequence")):
        seq = holder.get(sequence, None) if holder is not None else None
        if seq:
            return seq[0]
    return None


def _first(ds, keyword: str):
    seq = ds.get(keyword, None)
    return seq[0] if seq else None


def _frames_of(path: Path, ds) -> list[_Frame]:
    """The image planes of one DICOM file (enhanced multi-frame CT expanded per frame)."""
    if int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        frames = []
        for i, item in enumerate(ds.get("PerFrameFunctionalGroupsSequence", [])):
            pos = _group_item(ds, item, "PlanePositionSequence")
            ori = _group_item(ds, item, "PlaneOrientationSequence")
            meas = _group_item(ds, item, "PixelMeasuresSequence")
            rescale = _group_item(ds, item, "PixelValueTransformationSequence")
            if pos is None or ori is None or meas is None:
                raise SliceGeometryError(f"{path.name} frame {i + 1} lacks plane position, "
                                         f"orientation or pixel measures")
            frames.append(_Frame(
                path, ds, i, np.asarray([float(v) for v in pos.ImagePositionPatient]),
                np.asarray([float(v) for v in ori.ImageOrientationPatient]),
                tuple(float(v) for v in meas.PixelSpacing),
                float((rescale or {}).get("RescaleSlope", 1.0) or 1.0),
                float((rescale or {}).get("RescaleIntercept", 0.0) or 0.0)))
        return frames
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        return []
    return [_Frame(path, ds, None, np.asarray([float(v) for v in ds.ImagePositionPatient]),
                   np.asarray([float(v) for v in ds.ImageOrientationPatient]),
                   tuple(float(v) for v in ds.PixelSpacing),
                   float(ds.get("RescaleSlope", 1.0) or 1.0),
                   float(ds.get("RescaleIntercept", 0.0) or 0.0))]


def _read_headers(folder: Path) -> list[_Frame]:
    import pydicom

    frames = []
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001  pydicom raises many types for bad bytes
            _logger.info("skipping %s: not a readable DICOM file (%s)", f.name, exc)
            continue
        try:
            for keyword in _USED_TAGS:
                str(ds.get(keyword, ""))
            frames.extend(_frames_of(f, ds))
        except _HEADER_ERRORS as exc:
            _logger.info("skipping %s: malformed header (%s)", f.name, exc)
            continue
    return frames


def check_ct_image_file(path: str | os.PathLike) -> str:
    """Check that one DICOM file is a CT image that can be placed in a volume (header only).

    A named file's own series is read from the folder beside it, where files that are not
    placeable CT images are skipped; this check says why the named file itself cannot be
    used, instead of a folder-level "no images" or "series not found".

    Returns:
        The file's SeriesInstanceUID (the series a named file stands for).

    Raises:
        VolumeReadError: not a readable DICOM file, a malformed header, no SeriesInstanceUID,
            or an image with no plane position and orientation (ImagePositionPatient,
            ImageOrientationPatient).
        NotCTError: the file is not CT (another Modality, or none: e.g. a DICOMDIR, a
            structured report, secondary capture).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID

    p = Path(path)
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, *_HEADER_ERRORS) as exc:
        raise VolumeReadError(f"cannot read {p} as DICOM: {type(exc).__name__}: {exc}"
                              ) from None
    try:
        for keyword in _USED_TAGS:
            str(ds.get(keyword, ""))
        modality = str(ds.get("Modality", "") or "")
        if modality != "CT":
            sop = ds.get("SOPClassUID", None) or getattr(
                getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
            kind = UID(str(sop)).name if sop else "no SOP class"
            raise NotCTError(f"{p} has Modality {modality or '(absent)'} ({kind}), not CT; "
                             f"vcesdk needs CT")
        frames = _frames_of(p, ds)
    except _HEADER_ERRORS as exc:
        raise VolumeReadError(f"malformed DICOM header in {p}: {type(exc).__name__}: {exc}"
                              ) from None
    if not frames:
        raise VolumeReadError(f"{p} has no ImagePositionPatient / ImageOrientationPatient; "
                              f"its slice cannot be placed in a volume")
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    if not uid:
        raise VolumeReadError(f"{p} has no SeriesInstanceUID; cannot tell which series it "
                              f"belongs to")
    return uid


def _normal(iop: np.ndarray) -> np.ndarray:
    return np.cross(iop[:3], iop[3:])


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    """One image series found in a folder (see :func:`list_series`).

    Attributes:
        uid: SeriesInstanceUID.
        number: SeriesNumber (None when absent).
        modality: Modality, e.g. "CT".
        description: SeriesDescription.
        images: image planes (frames of multi-frame files counted one by one).
        files: files holding them.
        rows, columns: matrix size of the first image.
        plane: "axial", "coronal", "sagittal" or "oblique" (slice normal within 10 degrees of
            a patient axis, else oblique).
        multiframe: the series is held in multi-frame (enhanced) files.
        default: the series :func:`read_dicom_series` reads when no UID is given.
    """

    uid: str
    number: int | None
    modality: str
    description: str
    images: int
    files: int
    rows: int
    columns: int
    plane: str
    multiframe: bool
    default: bool = False


def _plane(iop: np.ndarray) -> str:
    n = np.abs(_normal(iop))
    axis = int(np.argmax(n))
    if n[axis] < np.cos(np.radians(10.0)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _by_series(frames: list[_Frame]) -> dict[str, list[_Frame]]:
    series: dict[str, list[_Frame]] = defaultdict(list)
    for fr in frames:
        series[str(fr.ds.get("SeriesInstanceUID", ""))].append(fr)
    return series


def _default_series(series: dict[str, list[_Frame]]) -> str | None:
    """The largest CT series, axial ones first; None when there is no CT series."""
    ct = [uid for uid, items in series.items()
          if all(str(fr.ds.get("Modality", "")) == "CT" for fr in items)]
    if not ct:
        return None
    return max(ct, key=lambda u: (_plane(series[u][0].iop) == "axial", len(series[u])))


def list_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """The image series in a folder of DICOM files, largest first (headers only).

    Args:
        folder: a folder of DICOM files (single- or multi-frame); unreadable files skipped.

    Returns:
        One :class:`SeriesInfo` per SeriesInstanceUID; ``default`` marks the one read when no
        series is chosen (the largest axial CT series).

    Raises:
        VolumeReadError: the folder is missing or holds no DICOM images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeReadError(f"not a folder: {folder}")
    series = _by_series(_read_headers(folder))
    if not series:
        raise VolumeReadError(f"no DICOM images in {folder}")
    chosen = _default_series(series)
    out = []
    for uid, items in series.items():
        ds = items[0].ds
        try:
            number = int(ds.get("SeriesNumber", None))
        except _HEADER_ERRORS:
            number = None
        out.append(SeriesInfo(
            uid=uid, number=number,
            modality=str(ds.get("Modality", "")), description=str(ds.get("SeriesDescription", "")),
            images=len(items), files=len({fr.path for fr in items}),
            rows=int(ds.get("Rows", 0) or 0), columns=int(ds.get("Columns", 0) or 0),
            plane=_plane(items[0].iop), multiframe=any(fr.index is not None for fr in items),
            default=uid == chosen))
    return sorted(out, key=lambda s: (not s.default, -s.images))


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None,
                      tilt: str = "refuse") -> CTVolume:
    """Read one CT series from a folder of DICOM files into a :class:`CTVolume`.

    Args:
        folder: a folder of DICOM image files: single-frame CT Image Storage, or enhanced /
            legacy-converted enhanced multi-frame CT (frames placed by their per-frame plane
            position); compressed transfer syntaxes are decoded by pylibjpeg / pyjpegls.
        series_uid: SeriesInstanceUID to read; by default the largest axial CT series (see
            :func:`list_series`).
        tilt: slices acquired with gantry tilt (stacked obliquely to their plane): "refuse"
            (raise :class:`GantryTiltError`) or "resample" (shift each slice in its plane onto
            an orthogonal grid, linear interpolation, air outside, as dcm2niix does).

    Returns:
        float32 HU (D, H, W), slices ordered by position along the slice normal; spacing (z, y,
        x) with z from the slice positions; the per-slice headers in ``source_headers``.

    Raises:
        VolumeReadError: no DICOM images; NotCTError: a non-CT series; SeriesSelectionError: an
            unknown UID; SliceGeometryError (MissingSlicesError, DuplicateSliceError,
            GantryTiltError): mixed geometry, missing, duplicate or tilted slices;
            UnsupportedPixelDataError: pixel data that cannot be decoded.
        InputError: an unknown `tilt` mode.
    """
    if tilt not in TILT_MODES:
        raise InputError(f"tilt must be one of {', '.join(TILT_MODES)}, got {tilt!r}")
    folder = Path(folder)
    try:
        return _read_series(folder, series_uid, tilt)
    except _HEADER_ERRORS as exc:  # malformed values in headers of otherwise readable files
        raise VolumeReadError(f"malformed DICOM header in {folder}: {type(exc).__name__}: "
                              f"{exc}") from None


def _select(folder: Path, series_uid: str | None) -> list[_Frame]:
    found = _read_headers(folder)
    if not found:
        raise VolumeReadError(f"no DICOM images in {folder}")
    series = _by_series(found)
    if series_uid is not None:
        if series_uid not in series:
            raise SeriesSelectionError(f"series {series_uid} not in {folder}; found: "
                                       f"{', '.join(sorted(series))} (list them with "
                                       f"'vcesdk inspect {folder}')")
        chosen = series[series_uid]
    else:
        uid = _default_series(series)
        if uid is None:
            modalities = sorted({str(fr.ds.get("Modality", "?")) for fr in found})
            raise NotCTError(f"no CT series in {folder} (modalities: "
                             f"{', '.join(modalities)}); vcesdk needs CT")
        if len(series) > 1:
            _logger.info("%s holds %d series; reading the largest axial CT series %s (%d "
                         "images)", folder, len(series), uid, len(series[uid]))
        chosen = series[uid]
    modality = {str(fr.ds.get("Modality", "")) for fr in chosen}
    if modality != {"CT"}:
        raise NotCTError(f"series is {'/'.join(sorted(modality))}, not CT; vcesdk needs CT")
    return chosen


def _pixels(frame: _Frame, cache: dict) -> np.ndarray:
    """Stored pixel values of one frame, (rows, cols)."""
    import pydicom

    if frame.path not in cache:
        cache.clear()  # multi-frame files are read once; keep only the current one
        try:
            ds = pydicom.dcmread(frame.path)
        except Exception as exc:  # noqa: BLE001  (truncated or corrupt file)
            raise VolumeReadError(f"cannot read {frame.path.name}: {exc}") from None
        try:
            cache[frame.path] = ds.pixel_array
        except Exception as exc:  # noqa: BLE001  pydicom raises many types for pixel data
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(ts, "name", str(ts)) if ts else "unknown transfer syntax"
            raise UnsupportedPixelDataError(
                f"cannot decode pixel data of {frame.path.name} ({name}): {exc}; compressed "
                f"series need pylibjpeg, pylibjpeg-openjpeg and pyjpegls (installed with "
                f"vcesdk) or GDCM") from None
    pixels = cache[frame.path]
    if frame.index is not None:
        if pixels.ndim != 3 or frame.index >= pixels.shape[0]:
            raise UnsupportedPixelDataError(f"{frame.name}: the file holds {pixels.shape} "
                                            f"pixels, not one grayscale frame per plane")
        return pixels[frame.index]
    if pixels.ndim != 2:
        raise UnsupportedPixelDataError(f"{frame.name} holds {pixels.shape} pixels, not one "
                                        f"grayscale frame (multi-frame or colour)")
    return pixels


def _untilt(hu: np.ndarray, positions: np.ndarray, along: np.ndarray, iop: np.ndarray,
            pixel_mm: tuple[float, float]) -> np.ndarray:
    """Shift each slice in its plane so the stack becomes orthogonal (gantry-tilt correction).

    Slice k's in-plane offset from slice 0 (its position minus the part along the normal) is
    undone with a linear-interpolated translation; pixels shifted in from outside are air.
    """
    import SimpleITK as sitk

    normal = _normal(iop)
    row_mm, col_mm = pixel_mm
    out = np.empty_like(hu)
    for k in range(hu.shape[0]):
        d = positions[k] - positions[0] - (along[k] - along[0]) * normal
        img = sitk.GetImageFromArray(hu[k])
        img.SetSpacing((col_mm, row_mm))
        # output (c, r) samples input (c - dc, r - dr): the offset maps output to input points
        shift = sitk.TranslationTransform(2, (-float(np.dot(d, iop[:3])),
                                              -float(np.dot(d, iop[3:]))))
        out[k] = sitk.GetArrayFromImage(sitk.Resample(img, img, shift, sitk.sitkLinear, -1024.0))
    return out


def _read_series(folder: Path, series_uid: str | None, tilt: str) -> CTVolume:
    chosen = _select(folder, series_uid)
    first_iop = chosen[0].iop
    normal = _normal(first_iop)
    for fr in chosen:
        if not np.allclose(fr.iop, first_iop, atol=1e-4):
            raise SliceGeometryError(f"{fr.name} has a different ImageOrientationPatient than "
                                     f"the rest of the series")
    chosen.sort(key=lambda fr: float(np.dot(normal, fr.ipp)))
    positions = np.array([fr.ipp for fr in chosen])
    along = positions @ normal
    tilted = False
    if len(chosen) > 1:
        gaps = np.diff(along)
        if np.any(gaps < 1e-3):
            i = int(np.argmin(gaps))
            raise DuplicateSliceError(f"duplicate slice position {along[i]:.3f} mm in "
                                      f"{chosen[i].name} and {chosen[i + 1].name}; "
                                      f"remove the duplicate files or pick one series")
        dz = float(np.median(gaps))
        worst = float(np.max(np.abs(gaps - dz)))
        if worst > _MAX_SPACING_DEVIATION * dz:
            i = int(np.argmax(np.abs(gaps - dz)))
            if gaps[i] > dz:
                missing = int(round(gaps[i] / dz)) - 1
                raise MissingSlicesError(
                    f"{missing} slice(s) missing between {chosen[i].name} and "
                    f"{chosen[i + 1].name} (gap {gaps[i]:.3f} mm, spacing {dz:.3f} mm); "
                    f"re-export the complete series")
            raise SliceGeometryError(f"uneven slice spacing: gaps from {gaps.min():.3f} to "
                                     f"{gaps.max():.3f} mm (median {dz:.3f}); resample the "
                                     f"series to even spacing first")
        step = positions[-1] - positions[0]
        cos = abs(float(np.dot(step, normal))) / max(float(np.linalg.norm(step)), 1e-9)
        angle = float(np.degrees(np.arccos(min(1.0, cos))))
        if angle > _MAX_TILT_DEG:
            if tilt == "refuse":
                raise GantryTiltError(
                    f"gantry tilt of {angle:.1f} degrees (slices stacked obliquely to their "
                    f"plane; GantryDetectorTilt "
                    f"{chosen[0].ds.get('GantryDetectorTilt', 'absent')}); pass --tilt "
                    f"resample (tilt='resample') to shift the slices onto an orthogonal grid")
            tilted = True
            _logger.info("correcting %.1f degrees of gantry tilt", angle)
    else:
        dz = float(chosen[0].ds.get("SliceThickness", 1.0) or 1.0)

    first = chosen[0]
    rows, cols = int(first.ds.Rows), int(first.ds.Columns)
    hu = np.empty((len(chosen), rows, cols), dtype=np.float32)
    headers = []
    cache: dict = {}
    for i, fr in enumerate(chosen):
        if tuple(fr.pixel_mm) != tuple(first.pixel_mm):
            raise SliceGeometryError(f"{fr.name} has pixel spacing {fr.pixel_mm}, the series "
                                     f"{first.pixel_mm}")
        pixels = _pixels(fr, cache)
        if pixels.shape != (rows, cols):
            raise SliceGeometryError(f"{fr.name} is {pixels.shape[0]} x {pixels.shape[1]}, the "
                                     f"series is {rows} x {cols}")
        hu[i] = pixels.astype(np.float32) * np.float32(fr.slope) + np.float32(fr.intercept)
        headers.append(fr.ds)
    if tilted:
        hu = _untilt(hu, positions, along, first_iop, first.pixel_mm)
    direction = np.column_stack([first_iop[:3], first_iop[3:], normal])
    return CTVolume(hu=hu, spacing_zyx_mm=(dz, *first.pixel_mm), origin_xyz_mm=tuple(positions[0]),
                    direction=direction, source_headers=headers)


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


class DicomSeriesWriter:
    """Writes a derived CT series slice by slice, into an existing empty folder: the geometry
    and the series-level tags are fixed when it is made, so slices can be written in any order
    as they become final (the streaming main job writes them from a thread while later windows
    still run). :func:`write_dicom_series` is the whole-volume use.

    HU are rounded to int16 (RescaleSlope 1, RescaleIntercept 0, values clipped to the int16
    range). Study, patient and frame-of-reference tags come from `like` (or `grid`) when it
    has DICOM headers; otherwise a new study is created with an anonymous patient.

    Args:
        grid: the output's grid (shape, spacing, origin, direction; its voxels are not read).
        folder: destination folder (must exist).
        like: volume whose source headers give patient and study tags.
        series_description: SeriesDescription; "SYNTHETIC " is prefixed when missing.
        series_number: SeriesNumber; by default the source's + 1000 (or 1000).

    Raises:
        VolumeWriteError: the folder is missing.
    """

    def __init__(self, grid: CTVolume, folder: str | os.PathLike, like: CTVolume | None = None,
                 series_description: str = "SYNTHETIC", series_number: int | None = None
                 ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise VolumeWriteError(f"output folder does not exist: {self.folder}")
        if not series_description.upper().startswith("SYNTHETIC"):
            series_description = f"SYNTHETIC {series_description}"
        self.grid = grid
        self.series_description = series_description
        self.src_headers = (like.source_headers if like is not None else None) or \
            grid.source_headers
        self.src = self.src_headers[0] if self.src_headers else None
        self.now = _dt.datetime.now()
        self.series_uid = _new_uid()
        self.study_uid = _new_uid()
        self.frame_uid = _new_uid()
        if series_number is None:
            series_number = (int(self.src.get("SeriesNumber", 0) or 0) + 1000
                             if self.src is not None else 1000)
        self.series_number = series_number

    def write(self, k0: int, hu: np.ndarray) -> list[Path]:
        """Write slices k0 .. k0 + n - 1 of the series.

        Args:
            k0: index of the first slice in the output grid.
            hu: float32 (n, H, W) HU of those slices.

        Returns:
            The files written, in slice order.

        Raises:
            VolumeWriteError: a slice outside the grid, a plane of another size, or a file
                that cannot be written.
        """
        D, H, W = self.grid.shape
        if hu.ndim != 3 or tuple(hu.shape[1:]) != (H, W) or not 0 <= k0 <= k0 + len(hu) <= D:
            raise VolumeWriteError(f"slices {k0}..{k0 + len(hu) - 1} of shape "
                                   f"{tuple(hu.shape[1:])} do not fit the {D} x {H} x {W} "
                                   f"series")
        return [self._write_slice(k0 + i, hu[i]) for i in range(len(hu))]

    def _write_slice(self, k: int, hu: np.ndarray) -> Path:
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

        vol, src, src_headers, now = self.grid, self.src, self.src_headers, self.now
        direction = vol.direction
        row_dir, col_dir, normal = direction[:, 0], direction[:, 1], direction[:, 2]
        origin = np.asarray(vol.origin_xyz_mm, dtype=np.float64)
        dz, dy, dx = vol.spacing_zyx_mm
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
            ds.StudyInstanceUID = self.study_uid
            ds.StudyDate = now.strftime("%Y%m%d")
            ds.StudyTime = now.strftime("%H%M%S")
            ds.StudyID = ""
            ds.AccessionNumber = ""
            ds.ReferringPhysicianName = ""
            ds.FrameOfReferenceUID = self.frame_uid
            ds.PositionReferenceIndicator = ""
        if "StudyInstanceUID" not in ds:
            ds.StudyInstanceUID = self.study_uid
        if "FrameOfReferenceUID" not in ds:
            ds.FrameOfReferenceUID = self.frame_uid
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
        ds.SeriesInstanceUID = self.series_uid
        ds.SeriesNumber = self.series_number
        ds.SeriesDescription = self.series_description[:64]
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
        ds.PixelData = hu_to_int16(hu).tobytes()  # slice by slice: no volume copy
        path = self.folder / f"IM{k + 1:05d}.dcm"
        try:
            ds.save_as(path, enforce_file_format=True)
        except OSError as exc:
            raise VolumeWriteError(f"cannot write {path}: {exc.strerror}") from None
        return path


def write_dicom_series(vol: CTVolume, folder: str | os.PathLike, like: CTVolume | None = None,
                       series_description: str = "SYNTHETIC",
                       series_number: int | None = None) -> list[Path]:
    """Write `vol` as a derived CT series, one file per slice, into an existing empty folder
    (:class:`DicomSeriesWriter` with every slice at once).

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
    writer = DicomSeriesWriter(vol, folder, like=like, series_description=series_description,
                               series_number=series_number)
    return writer.write(0, vol.hu)
