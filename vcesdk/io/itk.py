"""NIfTI, NRRD and MHA/MHD volumes (SimpleITK; nibabel for NaN/inf in float NIfTI)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InvalidVoxelValuesError, VolumeReadError, VolumeWriteError
from ..volume import CTVolume
from .atomic import atomic_output

ITK_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def itk_suffix(path: str | os.PathLike) -> str | None:
    """The ITK image suffix `path` ends with (lower case, e.g. ".nii.gz"), or None."""
    name = Path(path).name.lower()
    for suffix in ITK_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def _nifti_nonfinite(path: Path) -> int:
    """NaN/inf voxels of a floating-point NIfTI file, counted with nibabel (ITK's NIfTI reader
    turns them into 0, which would read as water)."""
    import nibabel

    img = nibabel.load(str(path))
    if img.header.get_data_dtype().kind != "f":
        return 0
    return int(np.count_nonzero(~np.isfinite(np.asanyarray(img.dataobj))))


def read_itk(path: str | os.PathLike) -> CTVolume:
    """Read a NIfTI / NRRD / MHA file; voxel values are taken as HU (no HU check here).

    Raises:
        VolumeReadError: unreadable or not a 3-D scalar image.
        InvalidVoxelValuesError: NaN or infinite voxels.
    """
    import SimpleITK as sitk

    p = Path(path)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise VolumeReadError(f"cannot read {p}: {msg}") from None
    vol = CTVolume.from_sitk(img)
    bad = int(np.count_nonzero(~np.isfinite(vol.hu)))
    if itk_suffix(p) in (".nii", ".nii.gz"):
        bad = max(bad, _nifti_nonfinite(p))
    if bad:
        raise InvalidVoxelValuesError(f"{p} holds {bad} NaN or infinite voxel(s); replace "
                                      f"them (e.g. with -1024 HU outside the body) first")
    return vol


def write_itk(vol: CTVolume, path: str | os.PathLike, overwrite: bool = False,
              float32: bool = False) -> Path:
    """Write `vol` as NIfTI / NRRD / MHA (by the suffix of `path`), atomically.

    Args:
        vol: the volume (float32 HU).
        path: a file ending in one of :data:`ITK_SUFFIXES`.
        overwrite: replace an existing file.
        float32: keep float32 voxels; by default HU are rounded to int16.

    Raises:
        VolumeWriteError: the path exists (and not `overwrite`), has no ITK suffix, or writing
            failed.
    """
    import SimpleITK as sitk

    p = Path(path)
    suffix = itk_suffix(p)
    if suffix is None:
        raise VolumeWriteError(f"{p}: not a NIfTI / NRRD / MHA path ({', '.join(ITK_SUFFIXES)})")
    with atomic_output(p, is_dir=False, overwrite=overwrite, suffix=suffix) as tmp:
        try:
            sitk.WriteImage(vol.to_sitk(int16=not float32), str(tmp),
                            useCompression=suffix != ".nii")
        except RuntimeError as exc:
            raise VolumeWriteError(f"cannot write {p}: {str(exc).strip().splitlines()[-1]}"
                                   ) from None
    return p
