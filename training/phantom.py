"""A procedural multiphase digital phantom: aligned NCCT, arterial (AP), portal venous (PVP) and
delayed (DP) volumes of a chest, abdomen or pelvis, with tissue and lesion labels.

Anatomy (randomised per "patient" from its seed: body habitus, organ size, position and shape,
vessel calibre): skin, fat, muscle (wall and paraspinal), cortical and trabecular bone (spine,
ribs, pelvic ring), lungs, heart chambers and myocardium, aorta, vena cava, portal and hepatic
veins, liver, spleen, pancreas, kidney cortex and medulla, renal pelvis and ureters, bladder,
bowel with gas; liver lesions: HCC, haemangioma, cyst, hypovascular metastasis.

Axis order (D, H, W) = (z, y, x), LPS as in :mod:`vcesdk.volume`: x grows towards the patient's
left, y towards the back, z towards the head.

HU per tissue and phase (:data:`TISSUE_HU`; each patient draws each tissue within +/- jitter and
scales all enhancement by 1 +/- :data:`ENHANCEMENT_JITTER` for cardiac output and dose):
    * Unenhanced: fat -100, muscle 50, liver 60, spleen 48, pancreas 45, kidney 32, blood 40,
      urine 5, lung -850, cortical bone 900, trabecular bone 250: Lamba R et al., "CT Hounsfield
      numbers of soft tissues on unenhanced abdominal CT scans", Abdom Imaging 39:869-875 (2014).
    * Vessels, heart, liver, spleen, pancreas by phase (AP ~35-40 s, PVP ~65-70 s, DP ~3-5 min):
      aorta 300 / 160 / 110, portal vein 120 / 170 / 120, liver 75 / 110 / 95, pancreas 120 /
      100 / 80 (pancreatic-phase peak): Bae KT, "Intravenous contrast medium administration and
      scan timing at CT", Radiology 256:32-61 (2010), Figs. 3-8. Measured on the real PVP case in
      ../shared/data (HCC-TACE-Seg HCC_048): aorta ~228, liver ~110, spleen ~146.
    * Kidney: corticomedullary in AP (cortex 180, medulla 70), nephrographic in PVP (both ~170),
      excretion into the collecting system in DP (renal pelvis, ureters, dependent bladder urine
      400-600): Yuh BI, Cohan RH, "Different phases of renal enhancement: role in detecting and
      characterizing renal masses during helical CT", AJR 173:747-755 (1999).
    * Lesions (LI-RADS v2018, Chernyak V et al., Radiology 289:816-830 (2018), for HCC arterial
      phase hyperenhancement and washout; Vilgrain V et al., Radiographics 20:379-397 (2000) for
      haemangioma peripheral nodular enhancement with centripetal fill-in at blood-pool HU;
      cysts 0-20 HU, no enhancement; Sica GT et al., "CT and MR imaging of hepatic
      metastases", AJR 174:691-698 (2000) for hypovascular metastases with rim enhancement).

Image formation: partial-volume blur, spatially correlated noise (white noise through a
Gaussian, not white), optional beam-hardening-like cupping (the centre of the body darker).
Misregistration between phases (:func:`misalign`): rigid shift, random affine I + kU with k as in
004_f128e01a994d2141.txt, and smooth elastic (breathing-like) deformation, with the aligned
target kept for evaluation.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

PHASES: tuple[str, ...] = ("ncct", "ap", "pvp", "dp")
REGIONS: tuple[str, ...] = ("chest", "abdomen", "junction", "pelvis")

LABELS: dict[int, str] = {
    0: "air", 1: "fat", 2: "muscle", 3: "cortical_bone", 4: "trabecular_bone", 5: "lung",
    6: "heart_chamber", 7: "myocardium", 8: "aorta", 9: "vena_cava", 10: "liver", 11: "spleen",
    12: "kidney_cortex", 13: "portal_vein", 14: "skin", 15: "bowel", 16: "bowel_gas",
    17: "kidney_medulla", 18: "renal_pelvis", 19: "ureter", 20: "bladder", 21: "pancreas",
    22: "hepatic_vein", 23: "hcc", 24: "haemangioma", 25: "cyst", 26: "metastasis",
    27: "intervertebral_disc",
}
LABEL_OF: dict[str, int] = {v: k for k, v in LABELS.items()}
LESIONS: tuple[str, ...] = ("hcc", "haemangioma", "cyst", "metastasis")

# name -> (NCCT, AP, PVP, DP mean HU, per-patient jitter HU); sources in the module docstring.
# Lesions with spatial patterns (haemangioma fill-in, metastasis rim, bladder layering) are
# rendered from these plus the pattern constants below.
TISSUE_HU: dict[str, tuple[float, float, float, float, float]] = {
    "air": (-1000.0, -1000.0, -1000.0, -1000.0, 0.0),
    "fat": (-100.0, -100.0, -100.0, -100.0, 10.0),
    "skin": (30.0, 40.0, 40.0, 38.0, 5.0),
    "muscle": (50.0, 55.0, 60.0, 58.0, 5.0),
    "cortical_bone": (900.0, 900.0, 900.0, 900.0, 100.0),
    "trabecular_bone": (250.0, 250.0, 250.0, 250.0, 50.0),
    "lung": (-850.0, -840.0, -840.0, -845.0, 30.0),
    "heart_chamber": (40.0, 300.0, 150.0, 110.0, 5.0),
    "myocardium": (45.0, 110.0, 100.0, 80.0, 5.0),
    "aorta": (40.0, 300.0, 160.0, 110.0, 5.0),
    "vena_cava": (40.0, 80.0, 130.0, 110.0, 5.0),
    "portal_vein": (40.0, 120.0, 170.0, 120.0, 5.0),
    "hepatic_vein": (40.0, 60.0, 150.0, 110.0, 5.0),
    "liver": (60.0, 75.0, 110.0, 95.0, 6.0),
    "spleen": (48.0, 120.0, 120.0, 100.0, 5.0),
    "pancreas": (45.0, 120.0, 100.0, 80.0, 5.0),
    "kidney_cortex": (32.0, 180.0, 170.0, 130.0, 5.0),
    "kidney_medulla": (30.0, 70.0, 170.0, 140.0, 5.0),
    "renal_pelvis": (5.0, 5.0, 10.0, 500.0, 4.0),
    "ureter": (5.0, 5.0, 10.0, 400.0, 4.0),
    "bladder": (5.0, 5.0, 8.0, 20.0, 4.0),  # DP: dependent layer, see BLADDER_LAYER_HU
    "bowel": (35.0, 60.0, 70.0, 60.0, 8.0),
    "bowel_gas": (-950.0, -950.0, -950.0, -950.0, 30.0),
    "intervertebral_disc": (80.0, 82.0, 85.0, 85.0, 8.0),
    "hcc": (45.0, 110.0, 85.0, 75.0, 6.0),  # APHE, washout below liver in PVP/DP
    "haemangioma": (40.0, 40.0, 40.0, 40.0, 5.0),  # unfilled part; filled part = aorta HU
    "cyst": (5.0, 5.0, 5.0, 5.0, 4.0),
    "metastasis": (35.0, 45.0, 55.0, 55.0, 5.0),  # core; rim adds METASTASIS_RIM_HU
}
ENHANCEMENT_JITTER = 0.15
HAEMANGIOMA_FILL = {"ncct": 0.0, "ap": 0.3, "pvp": 0.65, "dp": 1.01}  # filled depth fraction
METASTASIS_RIM = 0.3  # outer fraction of the radius that enhances as a rim
METASTASIS_RIM_HU = {"ncct": 0.0, "ap": 40.0, "pvp": 50.0, "dp": 30.0}
BLADDER_LAYER_HU = 450.0  # DP excreted contrast settling in the dependent (posterior) half


@dataclasses.dataclass(frozen=True)
class PhantomCase:
    """One phantom patient.

    Attributes:
        phases: phase name -> float32 (D, H, W) HU, aligned voxel for voxel with the NCCT.
        labels: uint8 (D, H, W) tissue labels (see :data:`LABELS`), aligned with the NCCT.
        spacing_mm: (z, y, x) mm.
        region: "chest", "abdomen", "junction" or "pelvis".
        lesions: one dict per lesion: type, centre_mm (z, y, x, from the volume centre),
            radius_mm.
        clean: phase name -> the same image without noise (same anatomy, enhancement, blur
            and cupping): the best any model can predict from the NCCT, the evaluation's
            "oracle".
    """

    phases: dict[str, np.ndarray]
    labels: np.ndarray
    spacing_mm: tuple[float, float, float]
    region: str = "abdomen"
    lesions: tuple = ()
    clean: dict = dataclasses.field(default_factory=dict)


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


@dataclasses.dataclass
class _Anatomy:
    """Patient-level anatomy parameters, mm (drawn once per seed)."""

    rng: np.random.Generator
    fov: float
    extent_z: float
    region: str

    def __post_init__(self) -> None:
        r, fov = self.rng, self.fov
        self.body_rx = r.uniform(0.36, 0.46) * fov
        self.body_ry = self.body_rx * r.uniform(0.62, 0.78)
        self.body_cy = r.uniform(-0.03, 0.05) * fov
        self.body_cx = r.uniform(-0.03, 0.03) * fov
        self.fat = r.uniform(6.0, 25.0)
        self.muscle = r.uniform(6.0, 14.0)
        self.spine_r = r.uniform(15.0, 21.0)
        self.spine_cy = (self.body_cy + self.body_ry - self.fat - self.muscle - self.spine_r
                         - r.uniform(15, 30))
        self.spine_cx = self.body_cx + r.uniform(-4, 4)
        self.aorta_r = r.uniform(9.0, 15.0)
        self.ivc_r = r.uniform(9.0, 13.0)
        self.lung_ry = r.uniform(0.6, 0.75) * self.body_ry
        self.heart_r = r.uniform(45.0, 60.0)
        self.liver_r = r.uniform(0.45, 0.6) * self.body_rx
        self.kidney_r = r.uniform(22.0, 30.0)
        self.spleen_r = r.uniform(25.0, 38.0)
        self.pancreas_r = r.uniform(9.0, 14.0)
        self.bladder_r = r.uniform(30.0, 50.0)
        ez = self.extent_z
        # diaphragm height (chest above) and kidney lower pole (pelvis below), z mm
        # abdomen: the diaphragm just above the top slice (hepatic veins, pancreas in view)
        self.z_diaphragm = {"chest": -ez, "abdomen": 0.5 * ez + 15.0, "pelvis": ez,
                            "junction": float(r.uniform(-0.3, 0.3) * ez)}[self.region]
        self.z_pelvis = -ez if self.region != "pelvis" else ez
        # along z: vertebra period and phase, rib phases, organ centres and half-lengths (mm)
        self.vertebra_mm = r.uniform(26.0, 34.0)
        self.vertebra_phase = r.uniform(0.0, 1.0)
        self.rib_phase = r.uniform(0.0, 2 * np.pi, 7)
        zd = self.z_diaphragm
        self.heart_z = (zd + r.uniform(45.0, 70.0) if self.region == "junction"
                        else r.uniform(-0.2, 0.2) * ez)
        self.heart_hl = r.uniform(50.0, 65.0)
        self.liver_hl = r.uniform(130.0, 170.0)
        self.spleen_z, self.spleen_hl = zd - r.uniform(40.0, 70.0), r.uniform(45.0, 65.0)
        self.kidney_z = [zd - r.uniform(70.0, 100.0) for _ in range(2)]
        self.kidney_hl = r.uniform(45.0, 60.0)
        self.pancreas_z = zd - r.uniform(50.0, 80.0)
        self.bladder_z = (r.uniform(-0.2, 0.2) * ez if self.region == "pelvis" else -10 * ez)
        self.body_wave = (r.uniform(0.02, 0.06), r.uniform(60.0, 140.0), r.uniform(0, 2 * np.pi))
        self.bowel = [(r.uniform(-0.7, 0.1), r.uniform(-0.6, 0.6), r.uniform(8.0, 18.0),
                       r.uniform(0.0, np.pi), r.uniform() < 0.35)
                      for _ in range(int(r.integers(3, 10)))]


def _profile(z: float, centre: float, half_length: float) -> float:
    """Radius factor of an ellipsoidal organ along z: 1 at its centre, 0 beyond its ends."""
    t = (z - centre) / half_length
    return float(np.sqrt(max(0.0, 1.0 - t * t)))


def _slice_labels(a: _Anatomy, z: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Labels of one axial slice at height z (mm)."""
    L = LABEL_OF
    sl = np.zeros(yy.shape, dtype=np.uint8)
    drift = 0.02 * z
    amp, period, ph = a.body_wave
    g = 1.0 + amp * np.sin(2 * np.pi * z / period + ph)  # habitus changes along z
    brx, bry = a.body_rx * g, a.body_ry * g
    body = _ellipse(yy, xx, a.body_cy, a.body_cx, bry, brx)
    sl[body] = L["fat"]
    sl[body & ~_ellipse(yy, xx, a.body_cy, a.body_cx, bry - 2.0, brx - 2.0)] = \
        L["skin"]
    iry, irx = bry - a.fat, brx - a.fat
    muscle = _ellipse(yy, xx, a.body_cy, a.body_cx, iry, irx)
    cavity = _ellipse(yy, xx, a.body_cy, a.body_cx, iry - a.muscle, irx - a.muscle)
    sl[muscle & ~cavity] = L["muscle"]
    chest = z > a.z_diaphragm
    pelvis = z < a.z_pelvis
    for side in (-1, 1):  # paraspinal muscles (psoas in the pelvis)
        para = _ellipse(yy, xx, a.spine_cy + a.spine_r * 1.4, a.spine_cx + side * a.spine_r * 1.6,
                        a.spine_r, a.spine_r * 1.1)
        sl[para & cavity] = L["muscle"]
    if chest:
        for side in (-1, 1):
            lung = _ellipse(yy, xx, a.body_cy + 0.05 * bry, a.body_cx + side * 0.5 * irx,
                            a.lung_ry, 0.42 * irx, angle=side * 0.15)
            sl[lung & cavity] = L["lung"]
        hy, hx = a.body_cy - 0.35 * bry + drift, a.body_cx + 0.12 * brx
        hr = a.heart_r * _profile(z, a.heart_z, a.heart_hl)
        if hr > 8.0:
            sl[_ellipse(yy, xx, hy, hx, hr * 0.8, hr, angle=0.5) & cavity] = L["myocardium"]
        if hr > 20.0:
            sl[_ellipse(yy, xx, hy, hx, hr * 0.8 - 10.0, hr - 10.0, angle=0.5) & cavity] = \
                L["heart_chamber"]
        for i, t in enumerate(np.linspace(0.15, np.pi - 0.15, 7)):  # ribs, in bands along z
            if np.sin(2 * np.pi * z / 35.0 + a.rib_phase[i]) < 0.2:
                continue
            for side in (-1, 1):
                ry_, rx_ = iry - a.muscle * 0.5, irx - a.muscle * 0.5
                rib = _ellipse(yy, xx, a.body_cy + ry_ * np.cos(t),
                               a.body_cx + side * rx_ * np.sin(t), 4.5, 6.0)
                sl[rib & body] = L["cortical_bone"]
    elif pelvis:
        for fy, fx, r, ang, gas in a.bowel[: max(1, len(a.bowel) // 2)]:
            cy_, cx_ = a.body_cy + fy * iry + drift, a.body_cx + fx * irx
            sl[_ellipse(yy, xx, cy_, cx_, r * 0.7, r, angle=ang) & cavity] = L["bowel"]
            if gas:
                sl[_ellipse(yy, xx, cy_, cx_, r * 0.7 - 3.0, r - 3.0, angle=ang) & cavity] = \
                    L["bowel_gas"]
        by = a.body_cy - 0.25 * bry
        br = a.bladder_r * _profile(z, a.bladder_z, 0.8 * a.bladder_r)
        if br > 3.0:
            sl[_ellipse(yy, xx, by, a.body_cx, br * 0.8, br) & cavity] = L["bladder"]
        for side in (-1, 1):  # pelvic ring (iliac wings) and ureters towards the bladder
            ring = _ellipse(yy, xx, a.spine_cy - 10.0, a.spine_cx + side * 0.55 * irx, 14.0, 30.0,
                            angle=side * 0.9)
            sl[ring & muscle] = L["cortical_bone"]
            sl[_ellipse(yy, xx, a.spine_cy - 10.0, a.spine_cx + side * 0.55 * irx, 9.0, 24.0,
                        angle=side * 0.9) & muscle] = L["trabecular_bone"]
            sl[_ellipse(yy, xx, a.spine_cy - a.spine_r - 8.0, a.spine_cx + side * 45.0, 2.5, 2.5)
               & cavity] = L["ureter"]
    else:
        liver_cy, liver_cx = a.body_cy - 0.1 * bry, a.body_cx - 0.35 * irx
        lr = a.liver_r * max(0.0, min(1.0, 1.4 * _profile(z, a.z_diaphragm - 10.0, a.liver_hl)))
        liver = _ellipse(yy, xx, liver_cy, liver_cx, lr * 0.85, max(lr, 1e-3), angle=0.3)
        sl[liver & cavity] = L["liver"]
        if z > a.z_diaphragm - 40.0:  # hepatic veins converge near the dome
            for ang in (-0.5, 0.2, 0.9):
                hv = _ellipse(yy, xx, liver_cy - 0.4 * a.liver_r * np.cos(ang),
                              liver_cx + 0.4 * a.liver_r * np.sin(ang), 4.0, 4.0)
                sl[hv & liver & cavity] = L["hepatic_vein"]
        sl[_ellipse(yy, xx, a.body_cy - 0.05 * bry, a.body_cx - 0.2 * irx, 7.0, 9.0)
           & cavity] = L["portal_vein"]
        for fy, fx, r, ang, gas in a.bowel:
            cy_, cx_ = a.body_cy + fy * iry + drift, a.body_cx + fx * irx
            sl[_ellipse(yy, xx, cy_, cx_, r * 0.7, r, angle=ang) & cavity] = L["bowel"]
            if gas:
                sl[_ellipse(yy, xx, cy_, cx_, r * 0.7 - 3.0, r - 3.0, angle=ang) & cavity] = \
                    L["bowel_gas"]
        sr = a.spleen_r * _profile(z, a.spleen_z, a.spleen_hl)
        if sr > 3.0:
            sl[_ellipse(yy, xx, a.spine_cy - 0.6 * a.spleen_r, a.body_cx + 0.6 * irx,
                        sr * 0.7, sr, angle=-0.6) & cavity] = L["spleen"]
        if abs(z - a.pancreas_z) < 25.0:  # pancreas across the spine
            sl[_ellipse(yy, xx, a.spine_cy - a.spine_r - 2 * a.aorta_r - 14.0,
                        a.spine_cx + 0.25 * irx, a.pancreas_r, 0.45 * irx, angle=-0.25)
               & cavity & (sl == L["fat"])] = L["pancreas"]
        for side, kz in zip((-1, 1), a.kidney_z):
            kr = a.kidney_r * _profile(z, kz, a.kidney_hl)
            if kr > 8.0:
                ky, kx = a.spine_cy - 5.0, a.spine_cx + side * (a.spine_r + 40.0)
                ang = side * 0.5
                sl[_ellipse(yy, xx, ky, kx, kr * 0.75, kr * 0.55, angle=ang) & cavity] = \
                    L["kidney_cortex"]
                if kr * 0.55 > 8.0:
                    sl[_ellipse(yy, xx, ky, kx, kr * 0.75 - 6.0, kr * 0.55 - 5.0, angle=ang)
                       & cavity] = L["kidney_medulla"]
                if kr > 0.7 * a.kidney_r:  # renal pelvis at the medial hilum
                    sl[_ellipse(yy, xx, ky - 2.0, kx - side * kr * 0.25, 5.0, 6.0)
                       & cavity] = L["renal_pelvis"]
    # spine: vertebral body with cortical rim, posterior element
    sl[_ellipse(yy, xx, a.spine_cy, a.spine_cx, a.spine_r, a.spine_r * 1.1)] = L["cortical_bone"]
    inner = _ellipse(yy, xx, a.spine_cy, a.spine_cx, a.spine_r - 3.0, a.spine_r * 1.1 - 3.0)
    level = (z / a.vertebra_mm + a.vertebra_phase) % 1.0
    if level < 0.22:  # intervertebral disc between vertebral bodies
        sl[_ellipse(yy, xx, a.spine_cy, a.spine_cx, a.spine_r, a.spine_r * 1.1)] = \
            L["intervertebral_disc"]
    elif 0.3 <= level <= 0.94:  # otherwise a cortical endplate (the solid ellipse above)
        sl[inner] = L["trabecular_bone"]
    sl[_ellipse(yy, xx, a.spine_cy + a.spine_r + 14.0, a.spine_cx, 8.0, 5.0)] = L["cortical_bone"]
    # great vessels in a thin fat ring
    if chest:  # descending aorta left of the vertebral body
        ay, ax = a.spine_cy - 0.3 * a.spine_r, a.spine_cx + a.spine_r + a.aorta_r + 4.0 + drift
    else:  # abdominal aorta anterior-left of the vertebral body
        ay, ax = a.spine_cy - a.spine_r - a.aorta_r - 3.0, a.spine_cx + 0.6 * a.spine_r + drift
    vy, vx = a.spine_cy - a.spine_r - a.ivc_r - 6.0, a.spine_cx - 1.4 * a.spine_r
    sl[_ellipse(yy, xx, ay, ax, a.aorta_r + 3.0, a.aorta_r + 3.0) & cavity
       & (sl != L["lung"])] = L["fat"]
    sl[_ellipse(yy, xx, ay, ax, a.aorta_r, a.aorta_r)] = L["aorta"]
    if not chest:
        sl[_ellipse(yy, xx, vy, vx, a.ivc_r * 0.8, a.ivc_r)] = L["vena_cava"]
    return sl


def _place_lesions(rng: np.random.Generator, labels: np.ndarray, spacing: Sequence[float],
                   n_lesions: int, lesion_types: Sequence[str]) -> tuple[list[dict], np.ndarray,
                                                                          np.ndarray]:
    """Spherical liver lesions; returns their records, a depth map (0 at the lesion edge, 1 at
    its centre) and an angle map (for nodular patterns), both float32 (D, H, W)."""
    D, H, W = labels.shape
    dz, dy, dx = spacing
    depth = np.zeros(labels.shape, dtype=np.float32)
    angle = np.zeros(labels.shape, dtype=np.float32)
    liver = np.argwhere(labels == LABEL_OF["liver"])
    records: list[dict] = []
    if len(liver) == 0 or n_lesions <= 0:
        return records, depth, angle
    for _ in range(n_lesions):
        kind = str(lesion_types[int(rng.integers(len(lesion_types)))])
        radius = float(rng.uniform(8.0, 20.0))
        c = liver[int(rng.integers(len(liver)))]
        r_vox = np.ceil(radius / np.asarray(spacing)).astype(int)
        lo = np.maximum(c - r_vox, 0)
        hi = np.minimum(c + r_vox + 1, labels.shape)
        zz, yy, xx = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
        dist = np.sqrt(((zz - c[0]) * dz) ** 2 + ((yy - c[1]) * dy) ** 2 + ((xx - c[2]) * dx) ** 2)
        inside = (dist <= radius) & (labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
                                     == LABEL_OF["liver"])
        if not inside.any():
            continue
        box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        labels[box][inside] = LABEL_OF[kind]
        depth[box][inside] = (1.0 - dist / radius)[inside]
        angle[box][inside] = np.arctan2((yy - c[1]) * dy, (xx - c[2]) * dx)[inside]
        records.append({"type": kind, "centre_mm": [float((c[i] - (labels.shape[i] - 1) / 2.0)
                                                          * spacing[i]) for i in range(3)],
                        "radius_mm": radius, "voxels": int(inside.sum())})
    return records, depth, angle


def make_phantom(seed: int, shape: Sequence[int] = (24, 160, 160),
                 spacing_mm: Sequence[float] = (4.0, 2.0, 2.0), region: str | None = None,
                 noise_hu: float = 15.0, phases: Sequence[str] = ("ncct", "pvp"),
                 lesions: int | None = None, lesion_types: Sequence[str] = LESIONS,
                 cupping_hu: float = 0.0) -> PhantomCase:
    """Generate one phantom patient, deterministic in `seed`.

    Args:
        seed: random seed; the same seed (and arguments) gives the same patient, voxel for voxel.
        shape: (D, H, W) voxels (up to 512 x 512 in-plane).
        spacing_mm: (z, y, x) voxel spacing, mm.
        region: one of :data:`REGIONS` or None (random among chest, abdomen, junction, pelvis).
        noise_hu: standard deviation of the correlated image noise, HU (air gets 0.6 x).
        phases: phases to render, from :data:`PHASES`.
        lesions: liver lesions to place (None: 0-3 at random; only where liver is in view).
        lesion_types: lesion kinds to draw from (:data:`LESIONS`).
        cupping_hu: beam-hardening-like cupping: the body centre is this many HU darker than
            its edge (quadratic in the normalised radius); 0 for none.

    Returns:
        The :class:`PhantomCase` (phases aligned with the NCCT).

    Raises:
        ValueError: unknown region, phase or lesion type, or a non-positive size.
    """
    from scipy.ndimage import gaussian_filter

    for p in phases:
        if p not in PHASES:
            raise ValueError(f"unknown phase {p!r}; valid: {', '.join(PHASES)}")
    for t in lesion_types:
        if t not in LESIONS:
            raise ValueError(f"unknown lesion type {t!r}; valid: {', '.join(LESIONS)}")
    D, H, W = (int(v) for v in shape)
    if min(D, H, W) < 1:
        raise ValueError(f"shape must be positive, got {shape}")
    dz, dy, dx = (float(v) for v in spacing_mm)
    rng = np.random.default_rng(seed)
    if region is None:
        region = REGIONS[int(rng.integers(len(REGIONS)))]
    if region not in REGIONS:
        raise ValueError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")

    y = (np.arange(H) - (H - 1) / 2.0) * dy
    x = (np.arange(W) - (W - 1) / 2.0) * dx
    yy, xx = np.meshgrid(y, x, indexing="ij")
    z_mm = (np.arange(D) - (D - 1) / 2.0) * dz
    anatomy = _Anatomy(rng, min(H * dy, W * dx), D * dz, region)
    labels = np.stack([_slice_labels(anatomy, float(z), yy, xx) for z in z_mm])
    n_lesions = int(rng.integers(0, 4)) if lesions is None else int(lesions)
    records, depth, angle = _place_lesions(rng, labels, (dz, dy, dx), n_lesions, lesion_types)

    smooth_sigma = (0.4, 0.6, 0.6)  # partial-volume blur, voxels (z, y, x)
    body = labels > 0
    draws = {name: rng.uniform(-1, 1) for name in TISSUE_HU}
    gain = 1.0 + ENHANCEMENT_JITTER * rng.uniform(-1, 1)
    noises = {p: _smooth_noise(rng, (D, H, W), 0.7) * noise_hu for p in PHASES}
    cup = None
    if cupping_hu:
        r2 = ((yy - anatomy.body_cy) / anatomy.body_ry) ** 2 + \
             ((xx - anatomy.body_cx) / anatomy.body_rx) ** 2
        cup = (-cupping_hu * np.clip(1.0 - r2, 0.0, 1.0)).astype(np.float32)
    values: dict[str, np.ndarray] = {}
    clean: dict[str, np.ndarray] = {}
    for phase in phases:
        pi = PHASES.index(phase)

        def hu_of(name: str) -> float:
            table = TISSUE_HU[name]
            base = table[0] + table[4] * draws[name]
            return base + gain * (table[pi] - table[0])

        vol = np.full((D, H, W), -1000.0, dtype=np.float32)
        for name in TISSUE_HU:
            mask = labels == LABEL_OF[name]
            if mask.any():
                vol[mask] = hu_of(name)
        blood = hu_of("aorta")
        m = labels == LABEL_OF["haemangioma"]
        if m.any():  # peripheral nodular enhancement, centripetal fill-in
            nodular = 0.75 + 0.25 * np.cos(6.0 * angle[m])
            filled = (1.0 - depth[m]) > 1.0 - HAEMANGIOMA_FILL[phase] * nodular
            vol[m] = np.where(filled, blood, vol[m])
        m = labels == LABEL_OF["metastasis"]
        if m.any():  # rim enhancement
            vol[m] += np.where(depth[m] < METASTASIS_RIM, gain * METASTASIS_RIM_HU[phase], 0.0)
        m = labels == LABEL_OF["bladder"]
        if m.any() and phase == "dp":  # excreted contrast layers in the dependent half
            ys = np.broadcast_to(yy, labels.shape)[m]
            vol[m] = np.where(ys > np.median(ys), gain * BLADDER_LAYER_HU, vol[m])
        vol = gaussian_filter(vol, smooth_sigma)
        if cup is not None:
            vol = vol + cup[None] * body
        clean[phase] = np.clip(vol, -1024.0, 3071.0).astype(np.float32)
        vol = vol + noises[phase] * np.where(body, 1.0, 0.6)
        values[phase] = np.clip(vol, -1024.0, 3071.0).astype(np.float32)
    return PhantomCase(phases=values, labels=labels, spacing_mm=(dz, dy, dx), region=region,
                       lesions=tuple(records), clean=clean)


# --- misregistration between phases ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Misalignment:
    """A known deformation of a phase relative to the NCCT.

    A voxel at physical position p (mm, (z, y, x) from the volume centre) of the misaligned
    volume shows what the aligned volume has at ``matrix @ p + shift_mm + elastic(p)``.

    Attributes:
        matrix: (3, 3) affine part, I + kU with U uniform in [-1, 1] (004_f128e01a994d2141.txt).
        shift_mm: (3,) rigid shift, mm (z, y, x).
        elastic_mm: peak amplitude of the smooth breathing-like displacement, mm.
        seed: seed of the elastic field.
    """

    matrix: np.ndarray
    shift_mm: np.ndarray
    elastic_mm: float
    seed: int

    def to_json(self) -> dict:
        return {"matrix": self.matrix.tolist(), "shift_mm": self.shift_mm.tolist(),
                "elastic_mm": self.elastic_mm, "seed": self.seed}


def random_misalignment(seed: int, k: float = 0.0, shift_mm: float = 0.0,
                        elastic_mm: float = 0.0) -> Misalignment:
    """Draw a :class:`Misalignment`: affine I + kU (U ~ uniform[-1, 1]^(3x3), k in {0.01, 0.02,
    0.05} in 004_f128e01a994d2141.txt), a shift of up to `shift_mm` per axis, and an elastic
    field of peak `elastic_mm`."""
    rng = np.random.default_rng([int(seed), 4])
    matrix = np.eye(3) + k * rng.uniform(-1.0, 1.0, (3, 3))
    shift = rng.uniform(-1.0, 1.0, 3) * shift_mm
    return Misalignment(matrix=matrix, shift_mm=shift, elastic_mm=float(elastic_mm),
                        seed=int(seed))


def _elastic_field(shape: Sequence[int], spacing: Sequence[float], amplitude: float, seed: int
                   ) -> np.ndarray:
    """Smooth displacement (3, D, H, W) mm: mostly cranio-caudal and antero-posterior, largest
    anteriorly and at the bottom of the volume (a breathing diaphragm), peak `amplitude`."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng([seed, 5])
    D, H, W = shape
    field = np.empty((3, D, H, W), dtype=np.float32)
    weights = (1.0, 0.6, 0.25)  # z, y, x
    sig = [max(1.0, 40.0 / s) for s in spacing]  # ~40 mm correlation length
    for i in range(3):
        f = gaussian_filter(rng.standard_normal((D, H, W)).astype(np.float32), sig)
        f /= max(float(np.abs(f).max()), 1e-6)
        field[i] = f * weights[i]
    zz = np.linspace(1.0, 0.4, D)[:, None, None]  # bottom (caudal) moves more
    yy = np.linspace(1.0, 0.5, H)[None, :, None]  # anterior moves more
    field *= (zz * yy)[None]
    peak = float(np.sqrt((field ** 2).sum(0)).max())
    return field * (amplitude / max(peak, 1e-6))


def deformation_mm(mis: Misalignment, shape: Sequence[int], spacing: Sequence[float]
                   ) -> np.ndarray:
    """Where each voxel of the misaligned grid samples the aligned volume, minus the voxel's own
    position: displacement (3, D, H, W) mm, (z, y, x)."""
    centre = (np.asarray(shape) - 1) / 2.0
    grid = np.stack(np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in
                                  zip(shape, centre, spacing)], indexing="ij")).astype(np.float32)
    moved = np.einsum("ij,jdhw->idhw", mis.matrix.astype(np.float32), grid)
    moved += mis.shift_mm.astype(np.float32)[:, None, None, None]
    if mis.elastic_mm:
        moved += _elastic_field(shape, spacing, mis.elastic_mm, mis.seed)
    return moved - grid


def misalign(volume: np.ndarray, spacing_mm: Sequence[float], mis: Misalignment,
             order: int = 1) -> np.ndarray:
    """Resample `volume` through a :class:`Misalignment` (linear by default; labels: order 0).

    Points that fall outside the volume take the nearest edge value: anatomy continues past
    the first and last slice, as a scanner covering a slightly different range would record
    it (in-plane edges are air already); a constant fill would put false air slabs at the
    volume ends that registration then tries to match.

    Args:
        volume: (D, H, W) array, e.g. a phase in HU.
        spacing_mm: (z, y, x) mm.
        mis: the deformation.
        order: spline order for scipy.ndimage.map_coordinates (1 linear, 0 nearest).

    Returns:
        The misaligned volume, same shape and dtype.
    """
    from scipy.ndimage import map_coordinates

    shape = volume.shape
    disp = deformation_mm(mis, shape, spacing_mm)
    coords = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape],
                                  indexing="ij"))
    coords += disp / np.asarray(spacing_mm, dtype=np.float32)[:, None, None, None]
    out = map_coordinates(volume, coords, order=order, mode="nearest")
    return out.astype(volume.dtype, copy=False)
