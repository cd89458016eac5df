"""CT volumes in HU and their geometry (resampling, orientation, obliquity).

Conventions (the "HU in, HU out" contract); every field names its axis order:
    * ``hu`` is float32 with axis order (D, H, W) = (slice, row, column), Hounsfield units.
    * ``spacing_zyx_mm`` is (z, y, x) in millimetres: slice spacing, row spacing, column
      spacing, the order of ``hu``'s axes (``spacing_xyz_mm`` gives it reversed, as ITK).
    * ``origin_xyz_mm`` is the patient-space position (x, y, z) in mm (DICOM LPS) of voxel
      [0, 0, 0], as DICOM's ImagePositionPatient of the first slice and ITK's origin.
    * ``direction`` is a 3 x 3 matrix whose columns are the LPS unit vectors along the column
      index (x), row index (y) and slice index (z), as ITK's direction matrix.
    * ``affine`` (4 x 4) maps an index (column, row, slice, 1) to LPS mm (x, y, z, 1).

Reading and writing files is :mod:`vcesdk.io` (which imports this module, never the reverse).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from .errors import InputError, VolumeReadError


def hu_to_int16(hu: np.ndarray) -> np.ndarray:
    """float HU of any shape rounded half to even and clipped to int16 (the stored values of
    CT files); works in one array the size of `hu`, so callers convert slice by slice where
    a whole-volume copy is not wanted."""
    out = np.rint(hu)
    np.clip(out, -32768, 32767, out=out)
    return out.astype(np.int16)


@dataclasses.dataclass
class CTVolume:
    """A CT volume in Hounsfield units with its patient-space geometry.

    Attributes:
        hu: float32 (D, H, W), HU.
        spacing_zyx_mm: (z, y, x) voxel spacing in mm: the order of `hu`'s axes.
        origin_xyz_mm: (x, y, z) LPS position in mm of voxel [0, 0, 0].
        direction: float64 (3, 3); columns are the LPS directions of the x, y and z index axes.
        source_headers: one pydicom Dataset per slice (pixel data removed), in slice order, when
            the volume came from DICOM; None otherwise.
    """

    hu: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))
    source_headers: list | None = None

    def __post_init__(self) -> None:
        hu = np.asarray(self.hu)
        if hu.ndim != 3 or min(hu.shape) < 1:
            raise InputError(f"CTVolume.hu must be a non-empty 3-D array (D, H, W), got shape "
                             f"{hu.shape}")
        if not (np.issubdtype(hu.dtype, np.floating) or np.issubdtype(hu.dtype, np.integer)):
            raise InputError(f"CTVolume.hu must be numeric, got dtype {hu.dtype}")
        self.hu = hu.astype(np.float32, copy=False)
        spacing = tuple(float(s) for s in self.spacing_zyx_mm)
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise InputError(f"spacing_mm must be three positive numbers (z, y, x), got "
                             f"{self.spacing_zyx_mm!r}")
        self.spacing_zyx_mm = spacing  # type: ignore[assignment]
        origin = tuple(float(o) for o in self.origin_xyz_mm)
        if len(origin) != 3:
            raise InputError(f"origin_xyz_mm must be (x, y, z), got {self.origin_xyz_mm!r}")
        self.origin_xyz_mm = origin  # type: ignore[assignment]
        direction = np.asarray(self.direction, dtype=np.float64)
        if direction.shape != (3, 3):
            raise InputError(f"direction must be a 3 x 3 matrix, got shape {direction.shape}")
        self.direction = direction

    @property
    def shape(self) -> tuple[int, int, int]:
        """(D, H, W) in voxels."""
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def spacing_xyz_mm(self) -> tuple[float, float, float]:
        """(x, y, z) voxel spacing in mm: column, row, slice (ITK's order)."""
        return tuple(reversed(self.spacing_zyx_mm))  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """float64 (4, 4) matrix taking an index (column i, row j, slice k, 1) to the LPS
        position (x, y, z, 1) in mm: ``direction @ diag(spacing_xyz_mm)`` plus the origin."""
        a = np.eye(4)
        a[:3, :3] = self.direction * np.asarray(self.spacing_xyz_mm)[None, :]
        a[:3, 3] = self.origin_xyz_mm
        return a

    def with_hu(self, hu: np.ndarray) -> "CTVolume":
        """A new volume with the same geometry and source headers and different voxel values.

        Raises:
            InputError: `hu` does not have this volume's shape.
        """
        if tuple(np.shape(hu)) != self.shape:
            raise InputError(f"new HU array has shape {np.shape(hu)}, volume has {self.shape}")
        return dataclasses.replace(self, hu=np.asarray(hu, dtype=np.float32))

    def slices(self, k0: int, k1: int, hu: np.ndarray | None = None) -> "CTVolume":
        """Slices k0 .. k1 - 1 as a volume of their own: same spacing and direction, origin at
        slice k0, no source headers.

        Args:
            k0, k1: slice range, 0 <= k0 < k1 <= D.
            hu: float32 (k1 - k0, H, W) values for those slices (default: a view of this
                volume's).

        Raises:
            InputError: an empty or out-of-range slice range, or `hu` of another shape.
        """
        if not 0 <= k0 < k1 <= self.shape[0]:
            raise InputError(f"slices {k0}..{k1 - 1} are not within the volume's "
                             f"{self.shape[0]} slices")
        if hu is None:
            hu = self.hu[k0:k1]
        elif tuple(np.shape(hu)) != (k1 - k0, *self.shape[1:]):
            raise InputError(f"HU array of shape {np.shape(hu)} for {k1 - k0} slices of "
                             f"{self.shape[1]} x {self.shape[2]}")
        origin = self.affine @ np.array([0.0, 0.0, float(k0), 1.0])
        return CTVolume(hu=hu, spacing_zyx_mm=self.spacing_zyx_mm,
                        origin_xyz_mm=tuple(float(v) for v in origin[:3]),
                        direction=self.direction)

    def to_sitk(self, int16: bool = False):
        """This volume as a SimpleITK image (float32 HU, or int16 HU rounded), same geometry."""
        import SimpleITK as sitk

        arr = hu_to_int16(self.hu) if int16 else self.hu
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(self.spacing_xyz_mm)
        img.SetOrigin(self.origin_xyz_mm)
        img.SetDirection(tuple(self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, img) -> "CTVolume":
        """A volume from a 3-D SimpleITK image (voxel values taken as HU).

        Raises:
            VolumeReadError: the image is not 3-D scalar.
        """
        import SimpleITK as sitk

        if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
            raise VolumeReadError(f"expected a 3-D scalar image, got {img.GetDimension()}-D with "
                                  f"{img.GetNumberOfComponentsPerPixel()} components per voxel")
        hu = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)
        return cls(hu=hu, spacing_zyx_mm=tuple(reversed(img.GetSpacing())),
                   origin_xyz_mm=img.GetOrigin(),
                   direction=np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3))


def resample_volume(vol: CTVolume, spacing_mm: Sequence[float], size: Sequence[int] | None = None,
                    reference: CTVolume | None = None, default_hu: float = -1024.0) -> CTVolume:
    """Resample a volume (linear interpolation, SimpleITK) to a new grid.

    Args:
        vol: volume to resample.
        spacing_mm: (z, y, x) target spacing in mm (ignored when `reference` is given).
        size: (D, H, W) target size; by default the extent of `vol` is kept.
        reference: a volume whose grid (size, spacing, origin, direction) is the target.
        default_hu: value outside the input's extent.

    Returns:
        The resampled volume (no source headers).
    """
    import SimpleITK as sitk

    img = vol.to_sitk()
    f = sitk.ResampleImageFilter()
    f.SetInterpolator(sitk.sitkLinear)
    f.SetDefaultPixelValue(float(default_hu))
    f.SetOutputPixelType(sitk.sitkFloat32)
    if reference is not None:
        # the reference's grid only: its voxels are never copied into an image
        f.SetSize([int(n) for n in reversed(reference.shape)])
        f.SetOutputSpacing(tuple(float(v) for v in reference.spacing_xyz_mm))
        f.SetOutputOrigin(tuple(float(v) for v in reference.origin_xyz_mm))
        f.SetOutputDirection(tuple(float(v) for v in reference.direction.ravel()))
    else:
        new_spacing = tuple(float(s) for s in spacing_mm)
        if size is None:
            size = tuple(max(1, int(round(n * s / t)))
                         for n, s, t in zip(vol.shape, vol.spacing_zyx_mm, new_spacing))
        f.SetOutputSpacing(tuple(reversed(new_spacing)))
        f.SetSize([int(s) for s in reversed(tuple(size))])
        f.SetOutputOrigin(vol.origin_xyz_mm)
        f.SetOutputDirection(tuple(vol.direction.ravel()))
    out = CTVolume.from_sitk(f.Execute(img))
    return out


def orientation_code(vol: CTVolume) -> str:
    """Three-letter DICOM orientation code of the index axes (x, y, z), e.g. "LPS" when the
    column index runs to the patient's Left, the row index to Posterior, slices to Superior."""
    import SimpleITK as sitk

    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        tuple(float(v) for v in vol.direction.ravel()))


def is_orientation_code(code: object) -> bool:
    """True for a three-letter orientation code naming each of the axes L/R, P/A, S/I once."""
    return isinstance(code, str) and len(code) == 3 and sorted(
        code.upper().replace("R", "L").replace("A", "P").replace("I", "S")) == ["L", "P", "S"]


def orient_volume(vol: CTVolume, code: str = "LPS") -> CTVolume:
    """The same voxels with axes permuted and flipped to the orientation `code` (exact: no
    interpolation). Source headers are dropped (slice order may change).

    Raises:
        InputError: `code` is not a valid three-letter orientation.
    """
    import SimpleITK as sitk

    code = code.upper()
    if not is_orientation_code(code):
        raise InputError(f"orientation must be three letters like 'LPS' or 'RAS', got {code!r}")
    if orientation_code(vol) == code:
        return vol
    return CTVolume.from_sitk(sitk.DICOMOrient(vol.to_sitk(), code))


def obliquity_deg(vol: CTVolume) -> float:
    """Largest angle, in degrees, between an index axis of `vol` and its nearest patient axis
    (0 for axial, coronal or sagittal grids; e.g. 20 for a reformat rotated by 20 degrees)."""
    cosines = np.max(np.abs(vol.direction), axis=0)
    return float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))


def axis_aligned_grid(vol: CTVolume) -> CTVolume:
    """An empty (air) volume on an axis-aligned grid covering `vol`: each index axis snapped to
    its nearest patient axis (same spacing), extent the bounding box of `vol`'s corners.

    Returns:
        A CTVolume of -1024 HU (the grid to resample an oblique volume onto).
    """
    direction = np.zeros((3, 3))
    for j in range(3):
        i = int(np.argmax(np.abs(vol.direction[:, j])))
        direction[i, j] = np.sign(vol.direction[i, j])
    spacing_xyz = np.asarray(vol.spacing_xyz_mm, dtype=np.float64)
    size_xyz = np.asarray(vol.shape[::-1])
    corners = np.array([[a, b, c] for a in (0, size_xyz[0] - 1) for b in (0, size_xyz[1] - 1)
                        for c in (0, size_xyz[2] - 1)], dtype=np.float64)
    physical = np.asarray(vol.origin_xyz_mm) + (corners * spacing_xyz) @ vol.direction.T
    local = physical @ direction  # coordinates along the new index axes
    lo, hi = local.min(axis=0), local.max(axis=0)
    size = np.floor((hi - lo) / spacing_xyz + 1e-6).astype(int) + 1
    origin = direction @ lo
    return CTVolume(hu=np.full(tuple(size[::-1]), -1024.0, dtype=np.float32),
                    spacing_zyx_mm=tuple(vol.spacing_zyx_mm), origin_xyz_mm=tuple(origin),
                    direction=direction)
