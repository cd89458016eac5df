"""The multiphase phantom ([data]): contrast kinetics in labelled ROIs, lesion behaviour,
determinism, known misregistration recovered by SimpleITK registration, and the
``vcesdk-data`` dataset layout read back by vcesdk, SimpleITK and pydicom."""
from __future__ import annotations

import json

import numpy as np
import pytest
from vcesdk.training.datacli import main as data_main
from vcesdk.training.phantom import (
    LABEL_OF,
    PHASES,
    deformation_mm,
    make_phantom,
    misalign,
    random_misalignment,
)

import vcesdk

SHAPE, SPACING = (40, 160, 160), (2.5, 2.0, 2.0)


@pytest.fixture(scope="module")
def abdomen():
    return make_phantom(21, shape=SHAPE, spacing_mm=SPACING, region="abdomen", phases=PHASES,
                        lesions=6, noise_hu=12.0)


def _median(case, phase, tissue):
    mask = case.labels == LABEL_OF[tissue]
    assert mask.sum() > 20, f"{tissue} not in view"
    return float(np.median(case.phases[phase][mask]))


def test_kinetics_in_labelled_rois(abdomen):
    hu = {t: {p: _median(abdomen, p, t) for p in PHASES}
          for t in ("aorta", "liver", "portal_vein", "kidney_cortex", "kidney_medulla",
                    "renal_pelvis", "fat")}
    a = hu["aorta"]
    assert a["ap"] > a["pvp"] > a["dp"] > a["ncct"] and 25 < a["ncct"] < 55 and a["ap"] > 220
    liver = hu["liver"]
    assert liver["pvp"] > liver["ap"] > liver["ncct"] and 35 < liver["pvp"] - liver["ncct"] < 70
    assert hu["portal_vein"]["pvp"] == max(hu["portal_vein"].values())
    # kidney: corticomedullary in AP, nephrographic in PVP, excretion in DP (Yuh & Cohan 1999)
    assert hu["kidney_cortex"]["ap"] - hu["kidney_medulla"]["ap"] > 60
    assert abs(hu["kidney_cortex"]["pvp"] - hu["kidney_medulla"]["pvp"]) < 30
    assert hu["renal_pelvis"]["dp"] > 300 and hu["renal_pelvis"]["pvp"] < 60
    assert max(hu["fat"].values()) - min(hu["fat"].values()) < 6


def test_lesions_behave_by_type():
    cases = [make_phantom(s, shape=SHAPE, spacing_mm=SPACING, region="abdomen", phases=PHASES,
                          lesions=3, lesion_types=[t], noise_hu=12.0)
             for s, t in ((31, "hcc"), (32, "cyst"), (33, "haemangioma"), (34, "metastasis"))]
    hcc, cyst, haem, met = cases
    # HCC: arterial hyperenhancement, washout below liver in PVP (LI-RADS)
    assert _median(hcc, "ap", "hcc") - _median(hcc, "ap", "liver") > 20
    assert _median(hcc, "pvp", "hcc") < _median(hcc, "pvp", "liver") - 10
    # cyst: unchanged within noise in every phase
    values = [_median(cyst, p, "cyst") for p in PHASES]
    assert max(values) - min(values) < 5 and -5 < values[0] < 20
    # haemangioma: fills in from the periphery, AP < PVP < DP filled fraction
    m = haem.labels == LABEL_OF["haemangioma"]
    blood = {p: _median(haem, p, "aorta") for p in PHASES}
    filled = {p: float(np.mean(haem.phases[p][m] > 0.5 * (blood[p] + 40))) for p in PHASES[1:]}
    assert filled["ap"] < filled["pvp"] < filled["dp"] and filled["dp"] > 0.7
    # metastasis: the rim enhances more than the core
    mm = met.labels == LABEL_OF["metastasis"]
    assert mm.sum() > 50 and {r["type"] for r in met.lesions} == {"metastasis"}
    core = _median(met, "ncct", "metastasis")
    assert np.percentile(met.phases["pvp"][mm], 90) - core > 40


def test_determinism_by_seed_and_regions():
    a = make_phantom(5, shape=(16, 96, 96), phases=PHASES)
    b = make_phantom(5, shape=(16, 96, 96), phases=PHASES)
    c = make_phantom(6, shape=(16, 96, 96), phases=PHASES)
    for p in PHASES:
        np.testing.assert_array_equal(a.phases[p], b.phases[p])
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)
    pelvis = make_phantom(7, shape=(24, 128, 128), spacing_mm=(4, 3, 3), region="pelvis",
                          phases=("ncct", "dp"))
    assert (pelvis.labels == LABEL_OF["bladder"]).any()
    bladder = pelvis.labels == LABEL_OF["bladder"]
    assert np.percentile(pelvis.phases["dp"][bladder], 90) > 250  # excreted contrast layer
    chest = make_phantom(8, shape=(24, 128, 128), spacing_mm=(4, 3, 3), region="chest")
    assert (chest.labels == LABEL_OF["lung"]).any() and not (chest.labels == LABEL_OF["liver"]).any()
    with pytest.raises(ValueError, match="unknown phase 'late'"):
        make_phantom(1, phases=("ncct", "late"))


def _centred(hu, spacing):
    origin = tuple(-(np.asarray(hu.shape[::-1]) - 1) / 2 * np.asarray(spacing[::-1]))
    return vcesdk.CTVolume(hu=hu, spacing_mm=spacing, origin_mm=origin)


@pytest.mark.parametrize("k", [0.02, 0.05])  # 004_f128e01a994d2141.txt's k values
def test_registration_recovers_known_affine_within_1mm(abdomen, k):
    from vcesdk.training.registration import register

    mis = random_misalignment(21, k=k)
    moving = misalign(abdomen.phases["pvp"], SPACING, mis)
    body = abdomen.labels > 0
    before = np.sqrt((deformation_mm(mis, SHAPE, SPACING) ** 2).sum(0))[body]
    reg = register(_centred(abdomen.phases["ncct"], SPACING), _centred(moving, SPACING),
                   iterations=100)
    # fixed point x -> T(x); the misalignment maps it back: A(T(x)) should be x
    grid = np.stack(np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s
                                  for n, s in zip(SHAPE, SPACING)], indexing="ij"))
    t = grid + reg.displacement_mm(_centred(abdomen.phases["ncct"], SPACING))[::-1]
    back = np.einsum("ij,jdhw->idhw", mis.matrix, t) + mis.shift_mm[:, None, None, None]
    rms = float(np.sqrt((((back - grid) ** 2).sum(0))[body].mean()))
    assert float(np.sqrt((before ** 2).mean())) > 1.0  # the misregistration was real
    assert rms < 1.0, f"residual {rms:.2f} mm RMS over the body"


def test_elastic_misalignment_is_smooth_and_bounded():
    mis = random_misalignment(3, elastic_mm=6.0)
    disp = deformation_mm(mis, (16, 64, 64), (4.0, 3.0, 3.0))
    mag = np.sqrt((disp ** 2).sum(0))
    assert mag.max() == pytest.approx(6.0, rel=1e-3)
    assert np.abs(np.diff(disp, axis=3)).max() < 0.5  # smooth: < 0.5 mm per 3 mm voxel


def test_vcesdk_data_layout(tmp_path):
    import pydicom
    import SimpleITK as sitk

    out = tmp_path / "ds"
    rc = data_main(["phantoms", "--out", str(out), "--patients", "2", "--phases",
                    "ncct,ap,pvp,dp", "--seed", "40", "--misalign", "0.02",
                    "--size", "64", "64", "12", "--spacing", "4", "4", "4", "--jobs", "1"])
    assert rc == 0
    labels = json.loads((out / "labels.json").read_text())
    assert labels["8"] == "aorta" and labels["23"] == "hcc"
    meta = json.loads((out / "dataset.json").read_text())
    assert [p["patient"] for p in meta["patients"]] == ["P00040", "P00041"]
    assert set(meta["patients"][0]["misalignment"]) == {"ap", "pvp", "dp"}
    pdir = out / "P00040"
    names = sorted(p.name for p in pdir.iterdir())
    assert names == sorted(["ncct.nii.gz", "ap.nii.gz", "pvp.nii.gz", "dp.nii.gz",
                            "ap_aligned.nii.gz", "pvp_aligned.nii.gz", "dp_aligned.nii.gz",
                            "labels.nii.gz", "ncct", "ap", "pvp", "dp"])
    # NIfTI without vcesdk: SimpleITK; the phases equal a fresh phantom after int16 rounding
    case = make_phantom(40, shape=(12, 64, 64), spacing_mm=(4, 4, 4), phases=PHASES)
    ncct = sitk.GetArrayFromImage(sitk.ReadImage(str(pdir / "ncct.nii.gz")))
    np.testing.assert_array_equal(ncct, np.rint(case.phases["ncct"]))
    aligned = sitk.GetArrayFromImage(sitk.ReadImage(str(pdir / "pvp_aligned.nii.gz")))
    np.testing.assert_array_equal(aligned, np.rint(case.phases["pvp"]))
    moved = sitk.GetArrayFromImage(sitk.ReadImage(str(pdir / "pvp.nii.gz")))
    assert np.abs(moved.astype(float) - aligned).mean() > 1.0
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(pdir / "labels.nii.gz")))
    np.testing.assert_array_equal(lab, case.labels)
    # DICOM: one study per patient, one series per phase, same HU as the NIfTI
    series = {}
    for phase in ("ncct", "ap", "pvp", "dp"):
        files = sorted((pdir / phase).glob("*.dcm"))
        assert len(files) == 12
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        series[phase] = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID)
        np.testing.assert_array_equal(vcesdk.read_volume(pdir / phase).hu,
                                      vcesdk.read_volume(pdir / f"{phase}.nii.gz").hu)
    assert len({s[0] for s in series.values()}) == 1 and len({s[1] for s in series.values()}) == 4
    assert {s[2] for s in series.values()} == {"P00040"}
    # bad arguments: one line, nothing written
    assert data_main(["phantoms", "--out", str(tmp_path / "bad"), "--patients", "1",
                      "--phases", "ap,pvp"]) == 1
    assert not (tmp_path / "bad").exists()
    assert data_main(["phantoms", "--out", str(out), "--patients", "1"]) == 1  # exists
