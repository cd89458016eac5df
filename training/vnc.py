"""VNC-like pairs from real contrast-enhanced CT: the enhanced blood pool inside a vessel or
heart mask is replaced by unenhanced blood with the scan's own texture, giving a
(virtual non-contrast, CECT) pair on real anatomy, as 003_38ca5beaf82dcc38.txt trains
VNC -> CECT.

Only the blood pool is changed (mask voxels above :data:`ENHANCED_MIN_HU`: enhanced lumen and
chambers, not the myocardium or the vessel wall); enhanced organs outside the masks stay as
they are, so these pairs are for validation of vessel enhancement, small but real.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vcesdk.errors import InputError
from vcesdk.io import read_volume, write_volume
from vcesdk.volume import CTVolume, resample_volume

NATIVE_BLOOD_HU = 45.0  # unenhanced whole blood 40-55 HU (New & Aronow, Radiology 1976)
ENHANCED_MIN_HU = 150.0
# the chest CTA crops of ../shared/data/ct/totalseg_chest_cta and their masks
CTA_CASES = {"aorta_report": ("aorta_report_ct_cropped.nii.gz", "aorta_report_aorta_seg.nii.gz"),
             "pulmonary_report": ("pulmonary_report_ct_cropped.nii.gz",
                                  "pulmonary_report_heart_seg.nii.gz")}


def make_vnc(cect: CTVolume, mask: CTVolume, blood_hu: float = NATIVE_BLOOD_HU,
             texture_sigma_mm: float = 1.5) -> tuple[CTVolume, np.ndarray]:
    """Virtual non-contrast CT from an enhanced CT and a blood-pool mask.

    Inside the blood pool (mask > 0.5 and HU > :data:`ENHANCED_MIN_HU`) the HU become
    `blood_hu` plus the scan's own high-pass texture (CECT minus its Gaussian-smoothed copy,
    sigma `texture_sigma_mm`); the edge is blended over one voxel through a smoothed mask so
    that partial volume with the wall looks as in native scans.

    Args:
        cect: enhanced CT, float32 HU (D, H, W).
        mask: vessel or heart mask on any grid (resampled onto `cect`'s grid).
        blood_hu: unenhanced blood HU (40-55; New & Aronow 1976).

    Returns:
        (vnc, blood_pool) with vnc on `cect`'s grid and blood_pool bool (D, H, W).

    Raises:
        InputError: the mask holds no enhanced blood pool.
    """
    from scipy.ndimage import gaussian_filter

    on_grid = resample_volume(mask, (), reference=cect, default_hu=0.0).hu > 0.5
    pool = on_grid & (cect.hu > ENHANCED_MIN_HU)
    if pool.sum() < 100:
        raise InputError(f"mask holds {int(pool.sum())} enhanced voxels (> "
                         f"{ENHANCED_MIN_HU:.0f} HU); not a contrast-enhanced blood pool")
    sigma = [texture_sigma_mm / s for s in cect.spacing_zyx_mm]
    texture = cect.hu - gaussian_filter(cect.hu, sigma)
    weight = np.clip(gaussian_filter(pool.astype(np.float32), 0.7) * 2.0, 0.0, 1.0)
    weight[pool] = 1.0
    weight[weight < 1e-3] = 0.0  # outside the blend the CECT is kept bit for bit
    native = np.float32(blood_hu) + texture
    vnc = cect.hu * (1.0 - weight) + native * weight
    return cect.with_hu(vnc.astype(np.float32)), pool


def write_vnc_pairs(cta_dir: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False
                    ) -> Path:
    """Write the chest CTA crops as VNC pairs in the user layout of
    :mod:`vcesdk.training.store`: ``out/<case>/ncct.nii.gz`` (VNC), ``out/<case>/ap.nii.gz``
    (the real arterial CT), ``out/<case>/blood_pool.nii.gz``.

    Raises:
        VolumeReadError: a CTA file or mask is missing; VolumeWriteError: `out` exists.
    """
    import SimpleITK as sitk

    from vcesdk.io.atomic import atomic_output

    cta_dir = Path(cta_dir)
    with atomic_output(Path(out), is_dir=True, overwrite=overwrite) as tmp:
        for case, (ct_name, mask_name) in CTA_CASES.items():
            cect = read_volume(cta_dir / ct_name)
            vnc, pool = make_vnc(cect, read_volume(cta_dir / mask_name))
            d = tmp / case
            d.mkdir()
            write_volume(vnc, d / "ncct.nii.gz")
            write_volume(cect, d / "ap.nii.gz")
            img = sitk.GetImageFromArray(pool.astype(np.uint8))
            img.CopyInformation(cect.to_sitk())
            sitk.WriteImage(img, str(d / "blood_pool.nii.gz"), useCompression=True)
    return Path(out)
