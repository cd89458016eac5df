"""A procedural digital phantom: aligned NCCT and contrast-phase volumes of a trunk.

First cut (grown in the [data] issue): a body of fat and muscle with skin, spine (cortical and
trabecular bone), ribs, and, by z range, lungs and heart (chest) or liver, spleen, kidneys and
portal vein (abdomen); the aorta and the inferior vena cava run the whole length. Each tissue
has a literature mean HU per phase; the anatomy is randomised per "patient" (seed); image
formation adds partial-volume blur and spatially correlated noise.

Axis order (D, H, W) = (z, y, x) with LPS orientation as in :mod:`vcesdk.volume`: x grows
towards the patient's left, y towards the back, z towards the head.

HU sources (mean values; each patient draws a value within +/- the jitter):
    * Unenhanced tissue: fat -100, muscle 50, liver 60, spleen 48, kidney 32, blood 40, lung
      -850, cortical bone 900, trabecular bone 250: Lamba R. et al., "CT Hounsfield numbers of
      soft tissues on unenhanced abdominal CT scans", Abdom Imaging 39:869-875 (2014);
      Brooks RA, "A quantitative theory of the Hounsfield unit", J Comput Assist Tomogr 1:487
      (1977) for fat/lung/bone ranges.
    * Portal venous phase (~60-70 s): aorta ~160 HU, portal vein ~170 HU, liver ~110 HU (+50),
      spleen ~120 HU, kidney (nephrographic) ~170 HU, IVC ~130 HU, muscle ~+10 HU, heart
      chambers ~150 HU, myocardium ~100 HU: Bae KT, "Intravenous contrast medium
      administration and scan timing at CT", Radiology 256:32-61 (2010), Figs. 3-5 and
      Table 1; liver +50 HU is the usual adequacy threshold quoted there. Measured on the real
      PVP case in ../shared/data (HCC-TACE-Seg HCC_048): aorta ~228, liver ~110, spleen ~146.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

# label values of the first-cut phantom
LABELS: dict[int, str] = {
    0: "air", 1: "fat", 2: "muscle", 3: "cortical_bone", 4: "trabecular_bone", 5: "lung",
    6: "heart_chamber", 7: "myocardium", 8: "aorta", 9: "vena_cava", 10: "liver", 11: "spleen",
    12: "kidney", 13: "portal_vein", 14: "skin", 15: "bowel", 16: "bowel_gas",
}
_NAME_TO_LABEL = {v: k for k, v in LABELS.items()}

# (NCCT mean HU, PVP mean HU, jitter HU); sources in the module docstring.
TISSUE_HU: dict[str, tuple[float, float, float]] = {
    "air": (-1000.0, -1000.0, 0.0),
    "fat": (-100.0, -100.0, 10.0),
    "skin": (30.0, 40.0, 5.0),
    "muscle": (50.0, 60.0, 5.0),
    "cortical_bone": (900.0, 900.0, 100.0),
    "trabecular_bone": (250.0, 250.0, 50.0),
    "lung": (-850.0, -840.0, 30.0),
    "heart_chamber": (40.0, 150.0, 5.0),
    "myocardium": (45.0, 100.0, 5.0),
    "aorta": (40.0, 160.0, 5.0),
    "vena_cava": (40.0, 130.0, 5.0),
    "liver": (60.0, 110.0, 6.0),
    "spleen": (48.0, 120.0, 5.0),
    "kidney": (32.0, 170.0, 5.0),
    "portal_vein": (40.0, 170.0, 5.0),
    "bowel": (25.0, 40.0, 8.0),
    "bowel_gas": (-950.0, -950.0, 30.0),
}
PHASES: tuple[str, ...] = ("ncct", "pvp")
ENHANCEMENT_JITTER = 0.15  # relative spread of each patient's contrast enhancement


@dataclasses.dataclass(frozen=True)
class PhantomCase:
    """One phantom patient.

    Attributes:
        phases: phase name -> float32 (D, H, W) HU, aligned voxel for voxel.
        labels: uint8 (D, H, W) tissue labels (see :data:`LABELS`).
        spacing_mm: (z, y, x) mm.
    """

    phases: dict[str, np.ndarray]
    labels: np.ndarray
    spacing_mm: tuple[float, float, float]


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float,
             angle: float = 0.0) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (c * dx + s * dy) / rx
    v = (-s * dx + c * dy) / ry
    return u * u + v * v <= 1.0


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_vox: float
                  ) -> np.ndarray:
    """Unit-variance spatially correlated noise (white noise through a Gaussian filter)."""
    from scipy.ndimage import gaussian_filter

    n = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return n / max(float(n.std()), 1e-6)


def make_phantom(seed: int, shape: Sequence[int] = (24, 160, 160),
                 spacing_mm: Sequence[float] = (4.0, 2.0, 2.0), region: str | None = None,
                 noise_hu: float = 15.0, phases: Sequence[str] = PHASES) -> PhantomCase:
    """Generate one phantom patient, deterministic in `seed`.

    Args:
        seed: random seed; the same seed gives the same patient.
        shape: (D, H, W) voxels.
        spacing_mm: (z, y, x) voxel spacing, mm.
        region: "chest", "abdomen", "junction" (both, diaphragm inside) or None (random).
        noise_hu: standard deviation of the correlated image noise, HU.
        phases: phases to render, from :data:`PHASES`.

    Returns:
        The :class:`PhantomCase`.

    Raises:
        ValueError: unknown region or phase, or a non-positive size.
    """
    from scipy.ndimage import gaussian_filter

    for p in phases:
        if p not in PHASES:
            raise ValueError(f"unknown phase {p!r}; valid: {PHASES}")
    D, H, W = (int(v) for v in shape)
    if min(D, H, W) < 1:
        raise ValueError(f"shape must be positive, got {shape}")
    dz, dy, dx = (float(v) for v in spacing_mm)
    rng = np.random.default_rng(seed)
    if region is None:
        region = ("chest", "abdomen", "junction")[int(rng.integers(3))]
    if region not in ("chest", "abdomen", "junction"):
        raise ValueError(f"region must be chest, abdomen or junction, got {region!r}")

    # physical coordinates (mm) of voxel centres, centred in the field of view
    y = (np.arange(H) - (H - 1) / 2.0) * dy
    x = (np.arange(W) - (W - 1) / 2.0) * dx
    yy, xx = np.meshgrid(y, x, indexing="ij")
    z_mm = (np.arange(D) - (D - 1) / 2.0) * dz
    # diaphragm height along z: chest above, abdomen below
    extent = D * dz
    if region == "chest":
        z_diaphragm = -extent
    elif region == "abdomen":
        z_diaphragm = extent
    else:
        z_diaphragm = float(rng.uniform(-0.3, 0.3) * extent)

    # patient-level anatomy (mm)
    fov = min(H * dy, W * dx)
    body_rx = rng.uniform(0.36, 0.46) * fov
    body_ry = body_rx * rng.uniform(0.62, 0.78)
    body_cy = rng.uniform(-0.03, 0.05) * fov
    body_cx = rng.uniform(-0.03, 0.03) * fov
    fat_thick = rng.uniform(6.0, 25.0)
    muscle_thick = rng.uniform(6.0, 14.0)
    spine_r = rng.uniform(15.0, 21.0)
    spine_cy = body_cy + body_ry - fat_thick - muscle_thick - spine_r - rng.uniform(15, 30)
    spine_cx = body_cx + rng.uniform(-4, 4)
    aorta_r = rng.uniform(9.0, 15.0)
    ivc_r = rng.uniform(9.0, 13.0)
    lung_ry = rng.uniform(0.6, 0.75) * body_ry
    heart_r = rng.uniform(45.0, 60.0)
    liver_r = rng.uniform(0.45, 0.6) * body_rx
    kidney_r = rng.uniform(22.0, 30.0)
    spleen_r = rng.uniform(25.0, 38.0)
    # bowel loops: wall/content of soft tissue, about a third holding gas inside the wall
    bowel_loops = [(rng.uniform(-0.7, 0.1), rng.uniform(-0.6, 0.6), rng.uniform(8.0, 18.0),
                    rng.uniform(0.0, np.pi), rng.uniform() < 0.35)
                   for _ in range(int(rng.integers(3, 10)))]

    labels = np.zeros((D, H, W), dtype=np.uint8)
    for k in range(D):
        z = z_mm[k]
        drift = 0.02 * z  # structures drift slightly with z so slices differ
        sl = np.zeros((H, W), dtype=np.uint8)
        body = _ellipse(yy, xx, body_cy, body_cx, body_ry, body_rx)
        sl[body] = _NAME_TO_LABEL["fat"]
        skin_in = _ellipse(yy, xx, body_cy, body_cx, body_ry - 2.0, body_rx - 2.0)
        sl[body & ~skin_in] = _NAME_TO_LABEL["skin"]
        inner_ry, inner_rx = body_ry - fat_thick, body_rx - fat_thick
        muscle = _ellipse(yy, xx, body_cy, body_cx, inner_ry, inner_rx)
        cavity = _ellipse(yy, xx, body_cy, body_cx, inner_ry - muscle_thick,
                          inner_rx - muscle_thick)
        sl[muscle & ~cavity] = _NAME_TO_LABEL["muscle"]
        chest = z > z_diaphragm
        # paraspinal muscles
        for side in (-1, 1):
            para = _ellipse(yy, xx, spine_cy + spine_r * 1.4, spine_cx + side * spine_r * 1.6,
                            spine_r * 1.0, spine_r * 1.1)
            sl[para & cavity] = _NAME_TO_LABEL["muscle"]
        if chest:
            for side in (-1, 1):
                lung = _ellipse(yy, xx, body_cy + 0.05 * body_ry,
                                body_cx + side * 0.5 * inner_rx, lung_ry,
                                0.42 * inner_rx, angle=side * 0.15)
                sl[lung & cavity] = _NAME_TO_LABEL["lung"]
            hy, hx = body_cy - 0.35 * body_ry + drift, body_cx + 0.12 * body_rx
            heart = _ellipse(yy, xx, hy, hx, heart_r * 0.8, heart_r, angle=0.5)
            sl[heart & cavity] = _NAME_TO_LABEL["myocardium"]
            chamber = _ellipse(yy, xx, hy, hx, heart_r * 0.8 - 10.0, heart_r - 10.0, angle=0.5)
            sl[chamber & cavity] = _NAME_TO_LABEL["heart_chamber"]
            # ribs: small bone ellipses around the wall
            for t in np.linspace(0.15, np.pi - 0.15, 7):
                for side in (-1, 1):
                    ry_, rx_ = inner_ry - muscle_thick * 0.5, inner_rx - muscle_thick * 0.5
                    cy_ = body_cy + ry_ * np.cos(t)
                    cx_ = body_cx + side * rx_ * np.sin(t)
                    rib = _ellipse(yy, xx, cy_, cx_, 4.5, 6.0)
                    sl[rib & body] = _NAME_TO_LABEL["cortical_bone"]
        else:
            liver = _ellipse(yy, xx, body_cy - 0.1 * body_ry, body_cx - 0.35 * inner_rx,
                             liver_r * 0.85, liver_r, angle=0.3)
            sl[liver & cavity] = _NAME_TO_LABEL["liver"]
            pv = _ellipse(yy, xx, body_cy - 0.05 * body_ry, body_cx - 0.2 * inner_rx, 7.0, 9.0)
            sl[pv & cavity] = _NAME_TO_LABEL["portal_vein"]
            for fy, fx, r, ang, gas in bowel_loops:
                cy_, cx_ = body_cy + fy * inner_ry + drift, body_cx + fx * inner_rx
                loop = _ellipse(yy, xx, cy_, cx_, r * 0.7, r, angle=ang)
                sl[loop & cavity] = _NAME_TO_LABEL["bowel"]
                if gas:
                    lumen = _ellipse(yy, xx, cy_, cx_, r * 0.7 - 3.0, r - 3.0, angle=ang)
                    sl[lumen & cavity] = _NAME_TO_LABEL["bowel_gas"]
            spleen = _ellipse(yy, xx, spine_cy - 0.6 * spleen_r, body_cx + 0.6 * inner_rx,
                              spleen_r * 0.7, spleen_r, angle=-0.6)
            sl[spleen & cavity] = _NAME_TO_LABEL["spleen"]
            if z < z_diaphragm - 20.0:
                for side in (-1, 1):
                    kid = _ellipse(yy, xx, spine_cy - 5.0, spine_cx + side * (spine_r + 40.0),
                                   kidney_r * 0.75, kidney_r * 0.55, angle=side * 0.5)
                    sl[kid & cavity] = _NAME_TO_LABEL["kidney"]
        # spine: vertebral body, cortical rim, posterior element
        vb = _ellipse(yy, xx, spine_cy, spine_cx, spine_r, spine_r * 1.1)
        sl[vb] = _NAME_TO_LABEL["cortical_bone"]
        vb_in = _ellipse(yy, xx, spine_cy, spine_cx, spine_r - 3.0, spine_r * 1.1 - 3.0)
        sl[vb_in] = _NAME_TO_LABEL["trabecular_bone"]
        post = _ellipse(yy, xx, spine_cy + spine_r + 14.0, spine_cx, 8.0, 5.0)
        sl[post] = _NAME_TO_LABEL["cortical_bone"]
        # great vessels, surrounded by a thin fat ring
        if chest:  # descending aorta: left of the vertebral body, in the posterior mediastinum
            ay, ax = spine_cy - 0.3 * spine_r, spine_cx + spine_r + aorta_r + 4.0 + drift
        else:  # abdominal aorta: anterior-left of the vertebral body
            ay, ax = spine_cy - spine_r - aorta_r - 3.0, spine_cx + 0.6 * spine_r + drift
        vy, vx = spine_cy - spine_r - ivc_r - 6.0, spine_cx - 1.4 * spine_r
        sl[_ellipse(yy, xx, ay, ax, aorta_r + 3.0, aorta_r + 3.0) & cavity
           & (sl != _NAME_TO_LABEL["lung"])] = _NAME_TO_LABEL["fat"]
        sl[_ellipse(yy, xx, ay, ax, aorta_r, aorta_r)] = _NAME_TO_LABEL["aorta"]
        if not chest:
            sl[_ellipse(yy, xx, vy, vx, ivc_r * 0.8, ivc_r)] = _NAME_TO_LABEL["vena_cava"]
        labels[k] = sl

    smooth_sigma = (0.4, 0.6, 0.6)  # partial-volume blur, voxels (z, y, x)
    noise = _smooth_noise(rng, (D, H, W), 0.7) * noise_hu
    body_mask = labels > 0
    values: dict[str, np.ndarray] = {}
    draws = {name: (rng.uniform(-1, 1), rng.uniform(-1, 1)) for name in TISSUE_HU}
    for phase in phases:
        vol = np.full((D, H, W), -1000.0, dtype=np.float32)
        for name, (base, enhanced, jitter) in TISSUE_HU.items():
            mask = labels == _NAME_TO_LABEL[name]
            if not mask.any():
                continue
            u_base, u_enh = draws[name]
            hu = base + jitter * u_base
            if phase != "ncct":
                hu += (enhanced - base) * (1.0 + ENHANCEMENT_JITTER * u_enh)
            vol[mask] = hu
        vol = gaussian_filter(vol, smooth_sigma)
        # same noise realisation in every phase would be unrealistic: scanner noise differs
        phase_noise = noise if phase == "ncct" else _smooth_noise(rng, (D, H, W), 0.7) * noise_hu
        vol = vol + phase_noise * np.where(body_mask, 1.0, 0.6)
        values[phase] = np.clip(vol, -1024.0, 3071.0).astype(np.float32)
    return PhantomCase(phases=values, labels=labels, spacing_mm=(dz, dy, dx))
