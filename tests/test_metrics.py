"""Metrics against their reference implementations (scikit-image) and closed forms."""
from __future__ import annotations

import numpy as np
import pytest
from vcesdk.training.metrics import (
    cnr,
    image_metrics,
    mae_hu,
    ms_ssim,
    psnr,
    snu,
    ssim,
    windowed_255,
)
from vcesdk.training.phantom import LABEL_OF, make_phantom


@pytest.fixture(scope="module")
def case():
    return make_phantom(3, shape=(8, 192, 192), spacing_mm=(4, 2, 2), region="abdomen",
                        phases=("ncct", "pvp"), noise_hu=10.0)


def test_window_and_psnr_closed_form(case):
    w = windowed_255(np.array([-1000.0, -170.0, 60.0, 310.0, 2000.0]), 60, 500)
    np.testing.assert_allclose(w, [0.0, 10.2, 127.5, 255.0, 255.0], atol=1e-4)
    a = windowed_255(case.phases["ncct"], 60, 500)
    b = windowed_255(case.phases["pvp"], 60, 500)
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    assert psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / mse), rel=1e-9)
    assert psnr(a, a) == float("inf")


def test_ssim_matches_scikit_image(case):
    from skimage.metrics import structural_similarity

    a = windowed_255(case.phases["ncct"], 60, 500)
    b = windowed_255(case.phases["pvp"], 60, 500)
    ref = np.mean([structural_similarity(a[k], b[k], data_range=255, gaussian_weights=True,
                                         sigma=1.5, use_sample_covariance=False)
                   for k in range(a.shape[0])])
    got = ssim(a, b)
    assert 0.3 < got < 0.99
    assert got == pytest.approx(ref, abs=0.01)  # border handling differs slightly
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_scales_and_bounds(case):
    a = windowed_255(case.phases["ncct"], 60, 500)
    b = windowed_255(case.phases["pvp"], 60, 500)
    full = ms_ssim(a, b)  # 192 px: all 5 scales
    assert 0.3 < full < 1.0 and ms_ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < ms_ssim(a[:, :64, :64], b[:, :64, :64]) <= 1.0  # 3 scales fit in 64 px
    with pytest.raises(ValueError, match="too small"):
        ms_ssim(a[:, :10, :10], b[:, :10, :10])


def test_mae_cnr_snu_on_labelled_phantom(case):
    from scipy.ndimage import binary_erosion

    body = case.labels > 0
    ncct, pvp = case.phases["ncct"], case.phases["pvp"]
    assert mae_hu(ncct, ncct, body) == 0.0
    assert mae_hu(ncct, ncct + 10.0, body) == pytest.approx(10.0, abs=1e-4)
    aorta = binary_erosion(case.labels == LABEL_OF["aorta"], np.ones((1, 3, 3), bool))
    muscle = binary_erosion(case.labels == LABEL_OF["muscle"], np.ones((1, 3, 3), bool))
    liver = case.labels == LABEL_OF["liver"]
    # background: subcutaneous fat away from partial-volume edges, left and right halves
    fat = binary_erosion(case.labels == LABEL_OF["fat"], np.ones((1, 5, 5), bool))
    xx = np.broadcast_to(np.arange(fat.shape[2]), fat.shape)
    left, right = fat & (xx > fat.shape[2] // 2), fat & (xx <= fat.shape[2] // 2)
    # PVP enhancement separates aorta (~160 HU) from muscle (~60 HU); native both ~40-50 HU
    c_ncct, c_pvp = cnr(ncct, aorta, muscle, left, right), cnr(pvp, aorta, muscle, left, right)
    assert c_pvp > 3 * c_ncct and c_pvp > 3.0
    # uniform liver: SNU of the noise only; a gradient across it raises SNU
    flat = snu(ncct, liver)
    ramp = ncct + np.linspace(0, 300, ncct.shape[2])[None, None, :]  # ~1.6 HU per pixel
    assert flat < 0.02 and snu(ramp, liver) > flat + 0.02
    m = image_metrics(pvp, ncct, 60, 500, body)
    assert set(m) == {"psnr", "ssim", "ms_ssim", "mae_hu"} and m["mae_hu"] > 5
