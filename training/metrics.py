"""Image-quality metrics of the papers, on HU volumes and in the paper's display window.

SSIM and MS-SSIM come from torchmetrics (not written here); PSNR, MAE, CNR and SNU are
one-line formulas stated below. Volumes are float32 HU (D, H, W); 2D metrics are computed per
axial slice and averaged over slices.

* Windowed image: HU in [level - width/2, level + width/2] mapped linearly to [0, 255] and
  clipped (000_dfb6c11774226ce2.txt computes PSNR on this 0-255 image, L 60 / W 500).
* PSNR = 10 log10(data_range^2 / MSE): data_range 255 on the windowed image.
* SSIM (Gaussian 11 x 11, sigma 1.5, K1 0.01, K2 0.03) and MS-SSIM (5 scales, weights of
  Wang 2003; fewer scales, weights renormalised, when the image is too small for 5) on the
  windowed image with data_range 255.
* MAE in HU over a mask (the body by default).
* CNR (003_38ca5beaf82dcc38.txt): |mean(A) - mean(B)| / sqrt((SD_1^2 + SD_2^2) / 2), with A an
  enhancing structure (aorta), B the lesion, SD_1, SD_2 two background regions (fat).
* Noise decomposition (phantoms, which know the noise-free images): the error against the
  noise-free truth, e = prediction - truth_clean over the body, regressed on the NCCT's own
  noise n = NCCT - NCCT_clean: ``ncct_noise_kept`` = <e, n> / <n, n> (1: the input's noise
  passes through, as the identity and an exact enhancer; 0: removed), ``error_rms_hu`` = RMS(e)
  and ``other_error_rms_hu`` = RMS(e - kept x n), the error the input noise does not explain.
* SNU (spatial non-uniformity, used by 001_f4ce1725ceedd708.txt without its formula): the
  usual CT-uniformity definition, (max - min) of ROI mean HU over ROIs in one homogeneous
  tissue, divided by 1000 HU (a fraction; x100 for %).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003
SSIM_KERNEL = 11


def windowed_255(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """HU -> [0, 255] float32 through the window (level, width), clipped."""
    lo = level - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) * (255.0 / width), 0.0,
                   255.0).astype(np.float32)


def _slices(x: np.ndarray):
    import torch

    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    return torch.from_numpy(np.ascontiguousarray(a))[:, None]  # (D, 1, H, W)


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB of two images or volumes already on a common scale (e.g. windowed 0-255).

    Returns:
        10 log10(data_range^2 / MSE) over all voxels; inf for identical inputs.
    """
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(data_range ** 2 / mse))


def ssim(pred: np.ndarray, target: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM over axial slices (torchmetrics), inputs (D, H, W) or (H, W)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(
        _slices(pred), _slices(target), data_range=data_range, kernel_size=SSIM_KERNEL))


def ms_ssim(pred: np.ndarray, target: np.ndarray, data_range: float = 255.0) -> float:
    """Mean MS-SSIM over axial slices (torchmetrics). Images smaller than the 5-scale minimum
    ((11 - 1) x 2^4 + 1 = 161 px) use as many scales as fit, weights renormalised.

    Raises:
        ValueError: images smaller than 11 px (not even one scale fits).
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    side = min(np.shape(pred)[-2:])
    scales = 0
    # torchmetrics also needs side // max(1, n_scales - 1) ** 2 > kernel - 1
    while (scales < len(MS_SSIM_BETAS) and side > (SSIM_KERNEL - 1) * 2 ** scales
           and side // max(1, scales) ** 2 > SSIM_KERNEL - 1):
        scales += 1
    if scales == 0:
        raise ValueError(f"image of {side} px is too small for MS-SSIM (needs > 10 px)")
    betas = np.asarray(MS_SSIM_BETAS[:scales])
    betas = tuple(float(b) for b in betas / betas.sum())
    return float(multiscale_structural_similarity_index_measure(
        _slices(pred), _slices(target), data_range=data_range, kernel_size=SSIM_KERNEL,
        betas=betas))


def mae_hu(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute difference in HU over `mask` (all voxels when None)."""
    d = np.abs(np.asarray(pred, np.float64) - np.asarray(target, np.float64))
    return float(d[mask].mean() if mask is not None else d.mean())


def noise_decomposition(pred: np.ndarray, truth_clean: np.ndarray, ncct: np.ndarray,
                        ncct_clean: np.ndarray, mask: np.ndarray | None = None
                        ) -> dict[str, float]:
    """A prediction's error against the noise-free truth, split into the part that is the
    NCCT's own noise passed through and the rest (see the module docstring).

    Args:
        pred, truth_clean, ncct, ncct_clean: HU volumes of one shape (D, H, W); the clean ones
            are the phantom's noise-free images (``<phase>_clean.nii.gz``).
        mask: voxels to use (the body); all when None.

    Returns:
        {"ncct_noise_kept": fraction, "error_rms_hu": HU, "other_error_rms_hu": HU}.

    Raises:
        ValueError: shapes differ, or the NCCT equals its noise-free image in the mask.
    """
    arrays = [np.asarray(a, np.float64) for a in (pred, truth_clean, ncct, ncct_clean)]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"shapes differ: {[a.shape for a in arrays]}")
    p, t, x, xc = (a[mask] if mask is not None else a.ravel() for a in arrays)
    e, n = p - t, x - xc
    nn = float(n @ n)
    if nn == 0.0:
        raise ValueError("the NCCT equals its noise-free image in the mask: nothing to regress")
    kept = float(e @ n) / nn
    return {"ncct_noise_kept": kept, "error_rms_hu": float(np.sqrt(np.mean(e * e))),
            "other_error_rms_hu": float(np.sqrt(np.mean((e - kept * n) ** 2)))}


def cnr(image: np.ndarray, a: np.ndarray, b: np.ndarray, background_1: np.ndarray,
        background_2: np.ndarray) -> float:
    """Contrast-to-noise ratio of 003: |mean(a) - mean(b)| / sqrt((SD_bg1^2 + SD_bg2^2) / 2).

    Args:
        image: HU volume.
        a, b: boolean masks of the two structures (e.g. aorta, lesion).
        background_1, background_2: boolean masks of the two noise regions (e.g. left and right
            subcutaneous fat).
    """
    noise = np.sqrt((np.var(image[background_1]) + np.var(image[background_2])) / 2.0)
    return float(abs(image[a].mean() - image[b].mean()) / max(noise, 1e-6))


def snu(image: np.ndarray, tissue: np.ndarray, roi_vox: Sequence[int] = (2, 6, 6),
        rois: int = 5, seed: int = 0) -> float:
    """Spatial non-uniformity: (max - min) of ROI mean HU / 1000 over `rois` cubic ROIs placed
    at random (seeded) wholly inside the boolean `tissue` mask.

    Raises:
        ValueError: the tissue holds fewer than two ROI positions.
    """
    from scipy.ndimage import binary_erosion

    core = binary_erosion(tissue, np.ones(roi_vox, bool))
    centres = np.argwhere(core)
    if len(centres) < 2:
        raise ValueError("tissue too small for two SNU ROIs")
    rng = np.random.default_rng(seed)
    picks = centres[rng.choice(len(centres), size=min(rois, len(centres)), replace=False)]
    half = [r // 2 for r in roi_vox]
    means = [float(image[c[0] - half[0]:c[0] - half[0] + roi_vox[0],
                         c[1] - half[1]:c[1] - half[1] + roi_vox[1],
                         c[2] - half[2]:c[2] - half[2] + roi_vox[2]].mean()) for c in picks]
    return (max(means) - min(means)) / 1000.0


def image_metrics(pred_hu: np.ndarray, target_hu: np.ndarray, level: float, width: float,
                  body: np.ndarray | None = None) -> dict[str, float]:
    """PSNR, SSIM, MS-SSIM on the (level, width) window and MAE in HU over `body`.

    Returns:
        {"psnr": dB, "ssim": .., "ms_ssim": .., "mae_hu": HU}.
    """
    p, t = windowed_255(pred_hu, level, width), windowed_255(target_hu, level, width)
    return {"psnr": psnr(p, t), "ssim": ssim(p, t), "ms_ssim": ms_ssim(p, t),
            "mae_hu": mae_hu(pred_hu, target_hu, body)}
