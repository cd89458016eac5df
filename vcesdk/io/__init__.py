"""Reading and writing CT volumes: DICOM series (:mod:`.dicom`, pydicom), NIfTI / NRRD / MHA
(:mod:`.itk`, SimpleITK) and the atomic writer they share (:mod:`.atomic`).

Imports run one way: :mod:`vcesdk.io` uses :mod:`vcesdk.volume` (``CTVolume`` and geometry),
never the reverse.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError, SeriesSelectionError, VolumeReadError
from ..volume import CTVolume
from .atomic import atomic_output
from .itk import ITK_SUFFIXES, itk_suffix, read_itk, write_itk

# output format name -> suffix ("" = a DICOM series folder); the one table of output formats
FORMATS: dict[str, str] = {"dicom": "", "nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha"}

__all__ = ["FORMATS", "ITK_SUFFIXES", "atomic_output", "output_path", "read_volume",
           "write_volume"]


def read_volume(path: str | os.PathLike, series_uid: str | None = None,
                tilt: str = "refuse") -> CTVolume:
    """Read a CT volume in HU from a DICOM series (a folder or one of its files) or a NIfTI /
    NRRD / MHA file.

    DICOM slices are sorted by their position along the slice normal and RescaleSlope /
    RescaleIntercept are applied; see :func:`vcesdk.io.dicom.read_dicom_series`. Whether
    the voxels look like CT in HU is judged by the runtime (:func:`vcesdk.intensity.check_hu`),
    not here.

    Args:
        path: a folder holding one DICOM series (or several: the largest axial CT series is
            taken, or the one with `series_uid`); a DICOM file (its own series is read, from
            the files beside it: one file alone is a one-slice volume); or an image file.
        series_uid: SeriesInstanceUID to select in a folder holding several series (list them
            with :func:`vcesdk.io.dicom.list_series` or ``vcesdk inspect FOLDER``).
        tilt: DICOM series with gantry tilt: "refuse" or "resample" (see
            :func:`vcesdk.io.dicom.read_dicom_series`).

    Returns:
        The volume, float32 HU (D, H, W), spacing (z, y, x) mm.

    Raises:
        VolumeReadError: missing path, unknown format, or unreadable content; a named DICOM
            file with no plane position and orientation.
        NotCTError: a named DICOM file (or the series read) is not CT.
        SeriesSelectionError: a named DICOM file and a different `series_uid`.
    """
    from .dicom import check_ct_image_file, read_dicom_series

    p = Path(path)
    if not p.exists():
        raise VolumeReadError(f"input not found: {p}")
    if p.is_dir():
        return read_dicom_series(p, series_uid=series_uid, tilt=tilt)
    if itk_suffix(p) is not None:
        return read_itk(p)
    if p.suffix.lower() in (".dcm", ".ima", ""):
        uid = check_ct_image_file(p)  # why the named file itself cannot be used, if it cannot
        if series_uid is not None and series_uid != uid:
            raise SeriesSelectionError(f"{p} belongs to series {uid}, not the requested "
                                       f"{series_uid}; name the folder to choose a series")
        return read_dicom_series(p.parent, series_uid=uid, tilt=tilt)
    raise VolumeReadError(f"unknown volume format for {p}: expected a DICOM folder or file, "
                          f"or a file ending in one of {', '.join(ITK_SUFFIXES)}")


def output_path(directory: str | os.PathLike, stem: str, fmt: str) -> Path:
    """Path of a volume named `stem` in `directory` for format `fmt` (dicom -> a folder).

    Raises:
        InputError: unknown format.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown output format {fmt!r}; valid: {', '.join(FORMATS)}")
    return Path(directory) / f"{stem}{FORMATS[fmt]}"


def write_volume(vol: CTVolume, path: str | os.PathLike, like: CTVolume | None = None,
                 series_description: str = "SYNTHETIC", overwrite: bool = False,
                 float32: bool = False) -> Path:
    """Write a volume as a DICOM series (a folder) or as NIfTI / NRRD / MHA (by extension).

    The output is written to a temporary sibling and renamed into place, so a failure leaves
    nothing behind and an existing path is never half-overwritten.

    Args:
        vol: the volume to write (float32 HU).
        path: a folder for a DICOM series (no image suffix), or a file ending in .nii.gz,
            .nii, .nrrd or .mha.
        like: the volume whose DICOM headers give the study, patient and frame-of-reference
            tags of a DICOM output (defaults to `vol` itself); ignored for other formats.
        series_description: DICOM SeriesDescription; always starts with "SYNTHETIC".
        overwrite: replace an existing output instead of refusing.
        float32: keep float32 voxels in NIfTI / NRRD / MHA; by default HU are rounded to
            int16 as in DICOM (smaller files, what radiology tools expect).

    Returns:
        The path written.

    Raises:
        VolumeWriteError: the path exists (and not `overwrite`) or writing failed.
    """
    p = Path(path)
    if itk_suffix(p) is not None:
        return write_itk(vol, p, overwrite=overwrite, float32=float32)
    from .dicom import write_dicom_series

    with atomic_output(p, is_dir=True, overwrite=overwrite) as tmp:
        write_dicom_series(vol, tmp, like=like, series_description=series_description)
    return p
