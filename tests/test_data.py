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
    return vcesdk.CTVolume(hu=hu, spacing_zyx_mm=spacing, origin_xyz_mm=origin)


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
                            "labels.nii.gz", "ncct", "ap", "pvp", "dp",
                            *(f"{p}_clean.nii.gz" for p in PHASES)])
    # NIfTI without vcesdk: SimpleITK; the phases equal a fresh phantom after int16 rounding
    case = make_phantom(40, shape=(12, 64, 64), spacing_mm=(4, 4, 4), phases=PHASES)
    ncct = sitk.GetArrayFromImage(sitk.ReadImage(str(pdir / "ncct.nii.gz")))
    np.testing.assert_array_equal(ncct, np.rint(case.phases["ncct"]))
    # the noise-free truth beside each phase (vcesdk-eval's oracle), on the NCCT grid
    clean = sitk.GetArrayFromImage(sitk.ReadImage(str(pdir / "pvp_clean.nii.gz")))
    np.testing.assert_array_equal(clean, np.rint(case.clean["pvp"]))
    assert 10.0 < float(np.std(np.rint(case.phases["pvp"]) - clean)) < 20.0   # the 15 HU noise
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


# --- user layout -> registered, checked, cached store -> samplers --------------------------

@pytest.fixture(scope="module")
def shifted_dataset(tmp_path_factory):
    """Two phantom patients whose PVP is shifted up to 30 mm per axis (7-10 px at 3 mm)."""
    from vcesdk.training.datacli import generate

    out = tmp_path_factory.mktemp("shifted") / "ds"
    generate(out, 2, ["ncct", "pvp"], seed=50, size_hwd=(96, 96, 24), spacing_mm=(4, 3, 3),
             shift_mm=30.0, dicom=False, jobs=1, progress=False)
    return out


def test_store_registers_checks_and_caches(shifted_dataset, tmp_path, capsys):
    from vcesdk.training.store import PairedStore, build_store

    raw = tmp_path / "raw"
    assert data_main(["store", str(shifted_dataset), "--out", str(raw), "--phases", "pvp",
                      "--registration", "none"]) == 0
    assert capsys.readouterr().out.count("pvp: dropped, residual") == 2
    pairs = json.loads((raw / "index.json").read_text())["pairs"]
    # unregistered: the 001 rule (> 6 px residual) drops both pairs, with the reason
    assert [p["kept"] for p in pairs] == [False, False]
    assert all(p["residual_max_px"] > 6 and "px > 6.0 px" in p["reason"] for p in pairs)
    reg = build_store(shifted_dataset, tmp_path / "reg", phases=["pvp"], registration="affine")
    pairs = json.loads((reg / "index.json").read_text())["pairs"]
    assert [p["kept"] for p in pairs] == [True, True]
    assert all(p["residual_max_px"] < 2.0 for p in pairs)
    store = PairedStore(reg)
    assert store.patients_with("pvp") == ["P00050", "P00051"]
    ncct, pvp = store.volume("P00050", "ncct"), store.volume("P00050", "pvp")
    assert ncct.shape == pvp.shape and ncct.dtype == np.float32
    assert isinstance(ncct, np.memmap)  # epochs read the cache, not the scans
    # registered PVP matches the aligned truth on the NCCT grid far better than the raw scan
    truth = vcesdk.read_volume(shifted_dataset / "P00050" / "pvp_aligned.nii.gz").hu
    raw_pvp = vcesdk.read_volume(shifted_dataset / "P00050" / "pvp.nii.gz").hu
    z0, z1 = json.loads((reg / "index.json").read_text())["patients"]["P00050"]["z_range"]
    body = truth[z0:z1] > -500
    err_reg = np.median(np.abs(pvp - truth[z0:z1])[body])  # 30 HU measured
    err_raw = np.median(np.abs(raw_pvp[z0:z1] - truth[z0:z1])[body])  # 196 HU
    assert err_reg < 0.3 * err_raw
    with pytest.raises(vcesdk.errors.InputError, match="registration must be"):
        build_store(shifted_dataset, tmp_path / "x", registration="rigid")
    assert not (tmp_path / "x").exists()


def test_window_samplers_2p5d_and_3d(shifted_dataset, tmp_path):
    from vcesdk.training.store import PairedStore, WindowSampler, build_store

    from vcesdk.intensity import Window

    store = PairedStore(build_store(shifted_dataset, tmp_path / "st", phases=["pvp"],
                                    registration="none", qc_max_px=100.0))
    wins = [Window("soft", 50, 400), Window("wide", 0, 2000)]
    s25 = WindowSampler(store, "pvp", wins, (-1000, 1000), mode="2.5d", size=(64, 64), seed=3)
    x, y, samples = s25.batch(4)
    assert tuple(x.shape) == (4, 6, 64, 64) and tuple(y.shape) == (4, 1, 64, 64)
    assert {s.phase for s in samples} == {"pvp"} and float(x.abs().max()) <= 1.0
    # the target is the middle of the 3 input slices: same anatomy, same shift
    s = samples[0]
    vol = store.volume(s.patient, "ncct")
    assert s.z + 2 < vol.shape[0]
    s3 = WindowSampler(store, "pvp", wins, (-1000, 1000), mode="3d", size=(8, 48, 48), seed=3)
    x, y, _ = s3.batch(2)
    assert tuple(x.shape) == (2, 2, 8, 48, 48) and tuple(y.shape) == (2, 1, 8, 48, 48)
    again = WindowSampler(store, "pvp", wins, (-1000, 1000), mode="3d", size=(8, 48, 48),
                          seed=3).batch(2)[0]
    assert bool((again == x).all())  # deterministic by seed
    # shifts up to 50 px (003): some windows carry shifted-in air at an edge
    edges = [float(WindowSampler(store, "pvp", wins, (-1000, 1000), mode="3d",
                                 size=(8, 48, 48), seed=k).sample().ncct[0, :, :, 0].min())
             for k in range(12)]
    assert min(edges) == -1.0
    with pytest.raises(vcesdk.errors.InputError, match="no dp pairs"):
        WindowSampler(store, "dp", wins, (-1000, 1000))


def test_vnc_pairs_from_real_chest_cta(tmp_path):
    from conftest import CHEST_CTA, shared
    from vcesdk.training.store import PairedStore, build_store

    cta = shared(CHEST_CTA)
    out = tmp_path / "vnc"
    assert data_main(["vnc", "--cta", str(cta), "--out", str(out)]) == 0
    for case in ("aorta_report", "pulmonary_report"):
        ap = vcesdk.read_volume(out / case / "ap.nii.gz").hu
        ncct = vcesdk.read_volume(out / case / "ncct.nii.gz").hu
        pool = vcesdk.read_volume(out / case / "blood_pool.nii.gz").hu > 0.5
        assert np.median(ap[pool]) > 350  # arterial blood pool (data README: ~354 / ~466 HU)
        assert 35 < np.median(ncct[pool]) < 75  # unenhanced blood 40-55 HU + texture
        far = ~pool
        from scipy.ndimage import binary_dilation

        far &= ~binary_dilation(pool, iterations=6)
        np.testing.assert_array_equal(ncct[far], ap[far])  # nothing else changes
    # the pairs are in the user layout: the store takes them as they are (already aligned)
    store = PairedStore(build_store(out, tmp_path / "store", phases=["ap"], registration="none"))
    assert store.patients_with("ap") == ["aorta_report", "pulmonary_report"]


def test_trainer_reads_a_dataset_folder(tmp_path):
    from helpers import tiny_recipe
    from vcesdk.training.datacli import generate
    from vcesdk.training.trainer import Trainer

    ds = generate(tmp_path / "ds", 3, ["ncct", "pvp"], seed=700, size_hwd=(64, 64, 8),
                  spacing_mm=(4, 5, 5), misalign_k=0.02, dicom=False, jobs=1, progress=False)
    trainer = Trainer(tiny_recipe(4), tmp_path / "run", progress=False, data=ds)
    assert [c.name for c in trainer.train_data.cases] == ["P00700"]
    assert [c.name for c in trainer.val_data.cases] == ["P00701", "P00702"]
    # the target is the aligned truth, not the misaligned scan
    truth = vcesdk.read_volume(ds / "P00701" / "pvp_aligned.nii.gz").hu
    np.testing.assert_array_equal(trainer.val_data.cases[0].phases["pvp"], truth)
    history = trainer.fit()
    val = [h for h in history if "val_mae_hu" in h][-1]
    assert np.isfinite(val["val_mae_hu"]) and val["val_mae_hu_ncct"] > 5
    one = tmp_path / "one"
    generate(one, 1, ["ncct", "pvp"], seed=800, size_hwd=(64, 64, 8), spacing_mm=(4, 5, 5),
             dicom=False, jobs=1, progress=False)
    with pytest.raises(ValueError, match="training needs 2 or more"):
        Trainer(tiny_recipe(1), tmp_path / "run2", progress=False, data=one)


def test_noise_free_target_trains_against_the_clean_phase(tmp_path):
    """data.noise_free_target: the training target comes from the phase's noise-free image
    (generated phantoms and <phase>_clean.nii.gz of a dataset folder); the input NCCT and the
    validation target keep their noise."""
    import dataclasses

    from helpers import tiny_recipe
    from vcesdk.training.datacli import generate
    from vcesdk.training.trainer import Trainer
    from vcesdk.intensity import channels_to_hu

    ds = generate(tmp_path / "ds", 3, ["ncct", "pvp"], seed=700, size_hwd=(64, 64, 8),
                  spacing_mm=(4, 5, 5), dicom=False, jobs=1, progress=False)
    base = tiny_recipe(2)
    recipe = dataclasses.replace(base, data={**base.data, "noise_free_target": True})
    lo, hi = recipe.model_io["hu_range"]
    for data in (ds, None):   # a dataset folder, then generated phantoms
        trainer = Trainer(recipe, tmp_path / f"run{data is None}", progress=False, data=data)
        train = trainer.train_data
        case = train.cases[0]
        clean = (vcesdk.read_volume(ds / case.name / "pvp_clean.nii.gz").hu if data
                 else case.clean["pvp"])
        # the recipe's residual target, sCECT - NCCT, from the noise-free phase
        target = np.clip(clean - case.phases["ncct"], lo, hi)
        np.testing.assert_allclose(channels_to_hu(train.y[0][0], (lo, hi)), target, atol=0.05)
        # the noisy phase differs from the noise-free one by its noise (7.5-22.5 HU SD)
        assert 5 < np.std(case.phases["pvp"] - clean) < 30
        # the input NCCT keeps its noise, validation keeps the noisy phase (as vcesdk-eval)
        val = trainer.val_data.cases[0]
        np.testing.assert_allclose(channels_to_hu(trainer.val_data.y[0][0], (lo, hi)),
                                   np.clip(val.phases["pvp"] - val.phases["ncct"], lo, hi),
                                   atol=0.05)
    (ds / "P00700" / "pvp_clean.nii.gz").unlink()
    with pytest.raises(vcesdk.errors.InputError, match="pvp_clean.nii.gz"):
        Trainer(recipe, tmp_path / "run3", progress=False, data=ds)
