"""The real CT shipped with vcesdk: one small native (non-contrast) abdominal CT with organ labels.

In the manner of ``skimage.data`` and pydicom's ``get_testdata_file``: the files are package
data, these functions return their paths, and nothing is downloaded::

    import vcesdk
    from vcesdk.data import sample_ct, sample_labels, sample_label_names

    ncct = vcesdk.read_volume(sample_ct())     # CTVolume: float32 HU (30, 101, 122), 3 mm
    names = sample_label_names()               # {52: "aorta", 5: "liver", ...}

The sample (folder ``vcesdk/data/sample/``, see its ``ATTRIBUTION.md`` and ``LICENSE``) is
TotalSegmentator's test file ``tests/reference_files/example_ct_sm.nii.gz`` (slices 82-111 of
the repository's ``example_ct.nii.gz``; Wasserthal et al., Radiology: Artificial Intelligence
2023; https://github.com/wasserth/TotalSegmentator; Apache-2.0), with its reference
segmentation:

* ``ct.nii.gz``: int16 HU, 122 x 101 x 30 voxels (x, y, z on disk; (D, H, W) = (30, 101, 122)
  once read), 3.0 mm isotropic, native (aorta median ~43 HU).
* ``total_seg.nii.gz``: uint8 label map on the same grid, TotalSegmentator v2 "total" classes;
  ``total_seg_labels.json`` maps each value (a string key) to its class name.
* ``skeletal_muscle.nii.gz``, ``subcutaneous_fat.nii.gz``: uint8 0/1 tissue masks on the same
  grid (TotalSegmentator "tissue_types" task).

No model that is judged on this sample may have been trained on it, nor on the full
``example_ct`` it is cut from (same patient, same voxels).
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["SAMPLE_FILES", "sample_ct", "sample_dir", "sample_label_names", "sample_labels"]

#: Every file the sample folder must hold (the tissue masks included).
SAMPLE_FILES: tuple[str, ...] = (
    "ct.nii.gz", "total_seg.nii.gz", "total_seg_labels.json", "skeletal_muscle.nii.gz",
    "subcutaneous_fat.nii.gz", "LICENSE", "ATTRIBUTION.md",
)

_SAMPLE = Path(__file__).resolve().parent / "sample"


def _missing(what: str, path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"the embedded sample {what} is missing from this vcesdk install: {path} does not "
        f"exist (reinstall vcesdk; the sample ships as package data in vcesdk/data/sample/)")


def sample_dir() -> Path:
    """The folder holding the sample CT, its label map, label names and tissue masks.

    Returns:
        Absolute path of ``vcesdk/data/sample`` in the installed package.

    Raises:
        FileNotFoundError: the folder, or one of :data:`SAMPLE_FILES` in it, is missing from
            the install (the message names the path).
    """
    if not _SAMPLE.is_dir():
        raise _missing("folder", _SAMPLE)
    for name in SAMPLE_FILES:
        if not (_SAMPLE / name).is_file():
            raise _missing(f"file {name}", _SAMPLE / name)
    return _SAMPLE


def sample_ct() -> Path:
    """The sample native CT, a NIfTI file to pass to :func:`vcesdk.read_volume`.

    Read, it is a float32 HU volume (D, H, W) = (30, 101, 122) with spacing (3, 3, 3) mm
    (z, y, x): the upper abdomen from the lung bases to L2 (liver, spleen, kidneys,
    pancreas, aorta, vena cava), no contrast agent.

    Returns:
        Absolute path of ``ct.nii.gz``.

    Raises:
        FileNotFoundError: the file is missing from the install.
    """
    return sample_dir() / "ct.nii.gz"


def sample_labels() -> Path:
    """The TotalSegmentator label map of :func:`sample_ct` (same grid, voxel for voxel).

    Read with :func:`vcesdk.read_volume`, the values are the integer class ids of
    :func:`sample_label_names` (0 = background), as float32 (D, H, W); cast to an integer
    type before comparing.

    Returns:
        Absolute path of ``total_seg.nii.gz``.

    Raises:
        FileNotFoundError: the file is missing from the install.
    """
    return sample_dir() / "total_seg.nii.gz"


def sample_label_names() -> dict[int, str]:
    """Class id -> TotalSegmentator class name of the sample label map.

    Returns:
        e.g. ``{1: "spleen", 5: "liver", 52: "aorta", 63: "inferior_vena_cava", ...}``
        (117 classes; background 0 is not listed).

    Raises:
        FileNotFoundError: the JSON file is missing from the install.
        ValueError: the JSON is not an object of integer keys to names.
    """
    path = sample_dir() / "total_seg_labels.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except (AttributeError, ValueError) as exc:
        raise ValueError(f"{path}: expected an object of integer ids -> class names "
                         f"({exc})") from None
