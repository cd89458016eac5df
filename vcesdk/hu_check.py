"""Does an input look like CT in Hounsfield units?

Files without a Modality tag (NIfTI, NRRD, MHA) and DICOM CT written without a usable
RescaleSlope / RescaleIntercept carry no promise that their voxels are HU. An MR volume
(0..3000 arbitrary units), a PET volume (SUV >= 0) or an unsigned export of a CT (HU + 1024)
would otherwise be "synthesized" without a word.

Rules: (1) a body CT in HU holds air, outside the body or in the lungs and bowel, at -1000 HU
(fields of view padded with -2048 / -3024 read even lower). The input is refused when its
1st percentile lies above :data:`MAX_P01_HU` (-500 HU): no voxels near air at all. (2) A volume
read from single-frame DICOM CT must carry RescaleIntercept and a finite, non-zero RescaleSlope
in every slice (Type 1 in the CT Image IOD, DICOM PS3.3 C.8.2.1): without them stored values
are not HU, and a series padded outside its field of view can still pass rule 1 on its padding.

Calibration (``vcesdk inspect``, 1st percentile): every real CT in ``../shared/data/ct`` lies
at -1013 to -932 HU, including the 1.5 mm chest CTA crops with the least air (-994 and
-932 HU); the project's phantoms at -1000 +- noise; pydicom's ``MR_small.dcm`` at +154 and a
CT re-scaled to unsigned (HU + 1024) at about +11. A tight crop of soft tissue only (no air, fat
at -100 HU) is refused too: pass ``hu_check="off"`` (``--hu-check off``) to run it anyway.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np

from .errors import InputError, NotCTError
from .io.dicom import CT_IMAGE_STORAGE
from .volume import CTVolume

_logger = logging.getLogger(__name__)

HU_CHECK_MODES = ("refuse", "warn", "off")
MAX_P01_HU = -500.0
_SAMPLE = 1 << 20  # voxels sampled (evenly strided) for the percentiles


@dataclasses.dataclass(frozen=True)
class HUStats:
    """Intensity statistics of an input, in its own units (HU if it is CT).

    Attributes:
        plausible: True when the volume looks like CT in HU (see the module docstring).
        min, p01, p50, p99, max: minimum, 1st / 50th / 99th percentile and maximum.
        rescale_problem: what is wrong with the DICOM rescale, "" when nothing (or not DICOM).
    """

    plausible: bool
    min: float
    p01: float
    p50: float
    p99: float
    max: float
    rescale_problem: str = ""

    def line(self) -> str:
        """One line: what was found, and what CT in HU would show."""
        found = (f"values min {self.min:.0f}, 1st percentile {self.p01:.0f}, median "
                 f"{self.p50:.0f}, 99th percentile {self.p99:.0f}, max {self.max:.0f}")
        if self.rescale_problem:
            return f"{self.rescale_problem}; stored {found}"
        return f"{found}; CT in HU has air near -1000 (1st percentile <= {MAX_P01_HU:.0f})"


def _rescale_problem(headers: list | None) -> str:
    """What is wrong with the rescale of single-frame DICOM CT headers ("" when nothing)."""
    for k, ds in enumerate(headers or []):
        if str(ds.get("SOPClassUID", "")) != CT_IMAGE_STORAGE:
            continue  # enhanced CT carries its rescale in functional groups
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if slope is None or intercept is None or str(slope).strip() == "" \
                or str(intercept).strip() == "":
            return (f"DICOM CT slice {k} has no "
                    f"{'RescaleSlope' if slope is None or not str(slope).strip() else 'RescaleIntercept'}"
                    f" (required for CT: stored values are not HU without it)")
        try:
            ok = np.isfinite(float(slope)) and float(slope) != 0.0 and np.isfinite(
                float(intercept))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            return f"DICOM CT slice {k} has an unusable rescale (slope {slope}, intercept " \
                   f"{intercept})"
    return ""


def hu_stats(vol: CTVolume) -> HUStats:
    """Percentiles of `vol` (about 1 M voxels sampled evenly) and the plausibility verdict.

    Args:
        vol: the input volume, float32 (D, H, W); NaN / inf are ignored here; its
            ``source_headers`` (DICOM) are checked for a usable rescale.

    Returns:
        :class:`HUStats`.
    """
    flat = vol.hu.reshape(-1)
    flat = flat[::max(1, flat.size // _SAMPLE)]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return HUStats(False, *(float("nan"),) * 5, rescale_problem="no finite voxels")
    p01, p50, p99 = (float(v) for v in np.percentile(flat, [1, 50, 99]))
    problem = _rescale_problem(vol.source_headers)
    return HUStats(plausible=p01 <= MAX_P01_HU and not problem, min=float(flat.min()), p01=p01,
                   p50=p50, p99=p99, max=float(flat.max()), rescale_problem=problem)


def check_hu(vol: CTVolume, mode: str = "refuse") -> HUStats | None:
    """Refuse (or warn about) an input that does not look like CT in Hounsfield units.

    Args:
        vol: the input, float32 (D, H, W), HU expected.
        mode: "refuse" (default: raise), "warn" (:func:`warnings.warn`), "off" (skip).

    Returns:
        The statistics, or None for mode "off".

    Raises:
        NotCTError: mode "refuse" and the volume does not look like CT in HU.
        InputError: an unknown mode.
    """
    if mode not in HU_CHECK_MODES:
        raise InputError(f"hu_check must be one of {', '.join(HU_CHECK_MODES)}, got {mode!r}")
    if mode == "off":
        return None
    stats = hu_stats(vol)
    if not stats.plausible:
        msg = (f"input does not look like CT in Hounsfield units ({stats.line()}): MR, PET, "
               f"an unsigned export or a DICOM CT without a usable rescale")
        if mode == "refuse":
            raise NotCTError(f"{msg}; pass --hu-check off (hu_check='off') if it is CT in HU")
        _logger.warning(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    return stats
