"""The real-anatomy check (vcesdk.training.anatomy): a synthetic case with known answers, then
the demo bundle on the shipped sample, through the function and through vcesdk-eval."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

import vcesdk
from vcesdk.data import sample_ct, sample_dir, sample_label_names, sample_labels
from vcesdk.errors import InputError, VolumeWriteError
from vcesdk.training.anatomy import (ORGAN_GROUPS, read_label_names, real_anatomy_check,
                                     reference_change, write_real_anatomy_report)
from vcesdk.training.evaluate import main as eval_main

SHAPE = (14, 40, 40)  # (D, H, W)
SPACING = (3.0, 2.0, 2.0)  # (z, y, x) mm
RIM_HU, RIM_DELTA = 500.0, 1000.0  # the one-voxel shell of every box: erosion must drop it

# TotalSegmentator class -> (label value, box corner (z0, y0, x0), native core HU, predicted
# change HU). Boxes are 6 x 6 x 6 voxels: 216 voxels, 64 after a one-voxel erosion, so the rim
# (152 voxels) would own the median without erosion.
BOXES = {
    "aorta": (52, (2, 2, 2), 40.0, 120.0),
    "liver": (5, (2, 2, 10), 60.0, 50.0),
    "kidney_left": (3, (2, 2, 18), 30.0, 100.0),
    "kidney_right": (2, (2, 10, 2), 34.0, 100.0),
    "vertebrae_L1": (31, (2, 10, 10), 250.0, 10.0),
    "autochthon_left": (86, (2, 10, 18), 50.0, 20.0),
}
LABEL_JSON = {"1": "spleen", "2": "kidney_right", "3": "kidney_left", "5": "liver",
              "31": "vertebrae_L1", "52": "aorta", "86": "autochthon_left"}
FAT_BOX, FAT_HU, FAT_DELTA = (2, 18, 2), -100.0, 5.0  # subcutaneous_fat.nii.gz only
KIDNEY_REF_PVP = ((170.0 - 32.0) + (170.0 - 30.0)) / 2  # mean of cortex and medulla rows


def _box(z0: int, y0: int, x0: int, n: int = 6) -> tuple[slice, slice, slice]:
    return slice(z0, z0 + n), slice(y0, y0 + n), slice(x0, x0 + n)


def _core(z0: int, y0: int, x0: int, n: int = 6) -> tuple[slice, slice, slice]:
    return slice(z0 + 1, z0 + n - 1), slice(y0 + 1, y0 + n - 1), slice(x0 + 1, x0 + n - 1)


def _save(arr: np.ndarray, path) -> None:
    """Written with SimpleITK directly (not vcesdk), on the grid of the CTVolumes below."""
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING[::-1])
    sitk.WriteImage(img, str(path))


@pytest.fixture
def case(tmp_path):
    ct = np.full(SHAPE, -1000.0, np.float32)
    pred = ct.copy()
    lab = np.zeros(SHAPE, np.uint8)
    for value, corner, native, delta in BOXES.values():
        box, core = _box(*corner), _core(*corner)
        lab[box] = value
        ct[box], pred[box] = RIM_HU, RIM_HU + RIM_DELTA
        ct[core], pred[core] = native, native + delta
    fat = np.zeros(SHAPE, np.uint8)
    fat[_box(*FAT_BOX)] = 1
    ct[_box(*FAT_BOX)], pred[_box(*FAT_BOX)] = RIM_HU, RIM_HU + RIM_DELTA
    ct[_core(*FAT_BOX)], pred[_core(*FAT_BOX)] = FAT_HU, FAT_HU + FAT_DELTA
    masks = tmp_path / "masks"
    masks.mkdir()
    _save(fat, masks / "subcutaneous_fat.nii.gz")
    (tmp_path / "labels.json").write_text(json.dumps(LABEL_JSON))
    _save(ct, tmp_path / "ct.nii.gz")
    _save(lab, tmp_path / "total_seg.nii.gz")
    vol = lambda a: vcesdk.CTVolume(hu=a, spacing_zyx_mm=SPACING)  # noqa: E731
    return {"ct": vol(ct), "pred": vol(pred), "labels": lab, "dir": tmp_path, "masks": masks}


def test_reference_change_is_tissue_hu_phase_minus_ncct():
    assert reference_change(("aorta",), "pvp") == 120.0
    assert reference_change(("aorta",), "ap") == 260.0
    assert reference_change(("kidney_cortex", "kidney_medulla"), "pvp") == KIDNEY_REF_PVP
    assert reference_change(("kidney_cortex", "kidney_medulla"), "ap") == (148.0 + 40.0) / 2
    assert reference_change(("fat",), "dp") == 0.0
    with pytest.raises(InputError, match="phase must be one of ap, pvp, dp, got 'ncct'"):
        reference_change(("aorta",), "ncct")
    with pytest.raises(InputError, match=r"unknown TISSUE_HU rows \['kidney'\]"):
        reference_change(("kidney",), "pvp")


def test_organ_table_maps_to_existing_tissue_rows():
    from vcesdk.training.phantom import TISSUE_HU

    assert [g.name for g in ORGAN_GROUPS] == [
        "aorta", "inferior_vena_cava", "portal_splenic_vein", "liver", "spleen", "kidneys",
        "pancreas", "skeletal_muscle", "subcutaneous_fat", "vertebrae"]
    for g in ORGAN_GROUPS:
        assert g.reference_rows and all(r in TISSUE_HU for r in g.reference_rows), g.name
    names = set(sample_label_names().values())
    for g in ORGAN_GROUPS:  # every label name is a real TotalSegmentator class
        assert set(g.labels) <= names, set(g.labels) - names


def test_label_json_read_in_both_directions(tmp_path):
    assert read_label_names({"52": "aorta", "5": "liver"}) == {"aorta": 52, "liver": 5}
    assert read_label_names({"aorta": 52, "liver": 5}) == {"aorta": 52, "liver": 5}
    assert read_label_names(sample_dir() / "total_seg_labels.json")["aorta"] == 52
    with pytest.raises(InputError, match="label JSON not found"):
        read_label_names(tmp_path / "missing.json")
    with pytest.raises(InputError, match="value -> name"):
        read_label_names({"aorta": "x"} | {"liver": 5})


def test_known_answers_on_a_synthetic_case(case):
    r = real_anatomy_check(case["ct"], case["labels"], LABEL_JSON, {"pvp": case["pred"]},
                           masks_dir=case["masks"], model="toy")
    organs = r["phases"]["pvp"]["organs"]
    assert list(organs) == ["aorta", "liver", "kidneys", "skeletal_muscle", "subcutaneous_fat",
                            "vertebrae"]
    expected = {  # group: (native median, predicted change, reference change, voxels)
        "aorta": (40.0, 120.0, 120.0, 64),
        "liver": (60.0, 50.0, 50.0, 64),
        "kidneys": (32.0, 100.0, KIDNEY_REF_PVP, 128),  # two boxes at 30 and 34 HU
        "skeletal_muscle": (50.0, 20.0, 10.0, 64),  # autochthon label: no muscle mask file
        "subcutaneous_fat": (-100.0, 5.0, 0.0, 64),  # from subcutaneous_fat.nii.gz
        "vertebrae": (250.0, 10.0, 0.0, 64),
    }
    errors = []
    for name, (native, change, ref, voxels) in expected.items():
        o = organs[name]
        assert o["native_median_hu"] == pytest.approx(native, abs=0.5), name
        assert o["predicted_change_hu"] == pytest.approx(change, abs=0.5), name
        assert o["reference_change_hu"] == pytest.approx(ref, abs=0.5), name
        assert o["error_hu"] == pytest.approx(change - ref, abs=0.5), name
        assert o["predicted_median_hu"] == pytest.approx(native + change, abs=0.5), name
        assert o["voxels"] == voxels, name
        errors.append(abs(change - ref))
    assert r["phases"]["pvp"]["mean_abs_error_hu"] == pytest.approx(np.mean(errors), abs=0.5)
    assert r["groups"]["kidneys"]["voxels_before_erosion"] == 2 * 216
    assert r["groups"]["subcutaneous_fat"]["labels"] == "subcutaneous_fat.nii.gz"
    assert r["groups"]["skeletal_muscle"]["labels"] == "labels: autochthon_left"
    assert r["skipped"] == {
        "inferior_vena_cava": "none of inferior_vena_cava in the label JSON",
        "portal_splenic_vein": "none of portal_vein_and_splenic_vein in the label JSON",
        "spleen": "not in view (0 voxels; labels: spleen)",
        "pancreas": "none of pancreas in the label JSON",
    }


def test_erosion_drops_the_rim(case):
    """Without erosion the 152-voxel shell (500 HU, +1000 HU change) owns each box's median;
    with it, only the 4 x 4 x 4 core counts."""
    aorta = case["labels"] == 52
    assert float(np.median(case["ct"].hu[aorta])) == RIM_HU
    assert float(np.median(case["pred"].hu[aorta] - case["ct"].hu[aorta])) == RIM_DELTA
    r = real_anatomy_check(case["ct"], case["labels"], LABEL_JSON, {"pvp": case["pred"]})
    assert r["phases"]["pvp"]["organs"]["aorta"]["native_median_hu"] == 40.0
    assert r["phases"]["pvp"]["organs"]["aorta"]["predicted_change_hu"] == 120.0


def test_volume_edge_is_not_an_organ_boundary():
    """A box cut by the first slice keeps that slice: 6 slices, z = 0..5, erode to 5 x 4 x 4."""
    ct = np.full(SHAPE, -1000.0, np.float32)
    lab = np.zeros(SHAPE, np.uint8)
    lab[_box(0, 4, 4)] = 5
    ct[_box(0, 4, 4)] = 60.0
    r = real_anatomy_check(vcesdk.CTVolume(hu=ct, spacing_zyx_mm=SPACING), lab, LABEL_JSON,
                           {"dp": ct + 35.0})
    liver = r["phases"]["dp"]["organs"]["liver"]
    assert liver["voxels"] == 5 * 4 * 4 and r["groups"]["liver"]["voxels_before_erosion"] == 216
    assert liver["predicted_change_hu"] == 35.0 and liver["reference_change_hu"] == 35.0
    assert liver["error_hu"] == 0.0


def test_files_and_muscle_mask_preferred(case):
    """From files (SimpleITK-written); a skeletal_muscle.nii.gz mask replaces the labels."""
    muscle = np.zeros(SHAPE, np.uint8)
    muscle[_box(7, 26, 26)] = 1  # a muscle region the labels do not have, 45 HU core
    ct = case["ct"].hu.copy()
    ct[_box(7, 26, 26)] = RIM_HU
    ct[_core(7, 26, 26)] = 45.0
    d = case["dir"]
    _save(ct, d / "ct.nii.gz")
    _save(muscle, case["masks"] / "skeletal_muscle.nii.gz")
    pred = ct.copy()
    pred[_core(7, 26, 26)] += 8.0
    r = real_anatomy_check(d / "ct.nii.gz", d / "total_seg.nii.gz", d / "labels.json",
                           {"pvp": pred}, masks_dir=case["masks"])
    m = r["phases"]["pvp"]["organs"]["skeletal_muscle"]
    assert r["groups"]["skeletal_muscle"]["labels"] == "skeletal_muscle.nii.gz"
    # reference: TISSUE_HU muscle PVP 60 - NCCT 50 = +10 HU
    assert (m["native_median_hu"], m["predicted_change_hu"], m["error_hu"]) == (45.0, 8.0, -2.0)
    assert r["ct"] == str(d / "ct.nii.gz") and r["shape"] == list(SHAPE)
    assert r["spacing_mm"] == list(SPACING)


def test_bad_inputs_are_refused_with_both_shapes(case):
    ct, lab = case["ct"], case["labels"]
    with pytest.raises(InputError, match=r"the label map is \(14, 40, 39\), the CT "
                                         r"\(14, 40, 40\)"):
        real_anatomy_check(ct, lab[:, :, :39], LABEL_JSON, {"pvp": case["pred"]})
    with pytest.raises(InputError, match=r"the pvp prediction is \(13, 40, 40\)"):
        real_anatomy_check(ct, lab, LABEL_JSON, {"pvp": case["pred"].hu[1:]})
    with pytest.raises(InputError, match="predicted phases must be among ap, pvp, dp, got "
                                         "'arterial'"):
        real_anatomy_check(ct, lab, LABEL_JSON, {"arterial": case["pred"]})
    with pytest.raises(InputError, match="no organ group has voxels after erosion"):
        real_anatomy_check(ct, np.zeros_like(lab), LABEL_JSON, {"pvp": case["pred"]})
    shifted = vcesdk.CTVolume(hu=lab, spacing_zyx_mm=SPACING, origin_xyz_mm=(5.0, 0.0, 0.0))
    with pytest.raises(InputError, match="not one grid"):
        real_anatomy_check(ct, shifted, LABEL_JSON, {"pvp": case["pred"]})


def test_report_json_md_png(case, tmp_path):
    r = real_anatomy_check(case["ct"], case["labels"], LABEL_JSON,
                           {"pvp": case["pred"], "ap": case["pred"]}, masks_dir=case["masks"],
                           model="toy")
    out = write_real_anatomy_report(r, tmp_path / "report")
    assert sorted(p.name for p in out.iterdir()) == ["real_anatomy.png", "report.json",
                                                      "report.md"]
    data = json.loads((out / "report.json").read_text())
    aorta = data["models"]["toy"]["phases"]["pvp"]["organs"]["aorta"]
    assert aorta["error_hu"] == pytest.approx(0.0, abs=0.5)
    ap = data["models"]["toy"]["phases"]["ap"]["organs"]["aorta"]
    assert ap["reference_change_hu"] == 260.0 and ap["error_hu"] == pytest.approx(-140.0)
    md = (out / "report.md").read_text()
    assert "| aorta | 64 | 40.0 | +120.0 | +120.0 | +0.0 | aorta |" in md
    assert "| kidneys | 128 | 32.0 | +100.0 | +139.0 | -39.0 | kidney_cortex + kidney_medulla |" \
        in md
    assert "## toy, PVP" in md and "## toy, AP" in md and "Mean |error| over 6 groups" in md
    png = Image.open(out / "real_anatomy.png")
    assert png.format == "PNG" and png.height == 2 * 300  # one panel per phase
    before = (out / "report.json").read_bytes()
    with pytest.raises(VolumeWriteError, match="already exists"):
        write_real_anatomy_report(r, out)
    assert (out / "report.json").read_bytes() == before


def _assert_finite_for_every_group(result: dict) -> None:
    organs = result["phases"]["pvp"]["organs"]
    assert result["skipped"] == {}
    assert list(organs) == [g.name for g in ORGAN_GROUPS]
    for name, o in organs.items():
        assert o["voxels"] > 0, name
        for key in ("native_median_hu", "predicted_change_hu", "reference_change_hu",
                    "error_hu"):
            assert np.isfinite(o[key]), (name, key)
    assert np.isfinite(result["phases"]["pvp"]["mean_abs_error_hu"])


def test_demo_bundle_on_the_shipped_sample():
    ct = vcesdk.read_volume(sample_ct())
    syn = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, contrast_guard="off")
    r = real_anatomy_check(ct, sample_labels(), sample_dir() / "total_seg_labels.json",
                           {syn.bundle.phase: syn.synthesize(ct)}, masks_dir=sample_dir(),
                           model=syn.bundle.name)
    _assert_finite_for_every_group(r)
    # facts of the native sample (../shared/data/README.md: aorta 43, liver 46 before erosion)
    assert r["groups"]["aorta"]["native_median_hu"] == pytest.approx(42.0, abs=3.0)
    assert r["groups"]["liver"]["native_median_hu"] == pytest.approx(46.0, abs=3.0)
    assert r["groups"]["subcutaneous_fat"]["native_median_hu"] < -80.0


def test_vcesdk_eval_real_anatomy_without_data(tmp_path, capsys):
    out = tmp_path / "eval"
    assert eval_main([str(vcesdk.DEFAULT_BUNDLE), "--real-anatomy", str(sample_dir()),
                      "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "real_anatomy").iterdir()) == [
        "real_anatomy.png", "report.json", "report.md"]
    data = json.loads((out / "real_anatomy" / "report.json").read_text())
    _assert_finite_for_every_group(data["models"]["vcesdk-demo-pvp"])
    printed = capsys.readouterr().out
    assert "mean |error|" in printed and f"wrote {out / 'real_anatomy'}" in printed
    assert eval_main([str(vcesdk.DEFAULT_BUNDLE), "--real-anatomy", str(sample_dir()),
                      "--out", str(out)]) == 1
    assert "vcesdk-eval: error: output already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        eval_main([str(vcesdk.DEFAULT_BUNDLE), "--out", str(tmp_path / "none")])
    assert exc.value.code == 2
    assert "give --data DIR (held-out paired data), --real-anatomy DIR, or both" in \
        capsys.readouterr().err
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_vcesdk_eval_with_data_and_real_anatomy(tmp_path, capsys):
    """Both reports in one OUT: the held-out table at the top, real_anatomy/ inside."""
    import shutil

    patient = tmp_path / "data" / "P1"
    patient.mkdir(parents=True)
    shutil.copy(sample_ct(), patient / "ncct.nii.gz")
    img = sitk.ReadImage(str(sample_ct()))
    enhanced = sitk.Cast(img, sitk.sitkFloat32) + 50.0  # a stand-in PVP truth
    sitk.WriteImage(enhanced, str(patient / "pvp.nii.gz"))
    out = tmp_path / "eval"
    assert eval_main([str(vcesdk.DEFAULT_BUNDLE), "--data", str(tmp_path / "data"),
                      "--real-anatomy", str(sample_dir()), "--out", str(out)]) == 0
    assert {"report.json", "report.md", "real_anatomy"} <= {p.name for p in out.iterdir()}
    held_out = json.loads((out / "report.json").read_text())
    assert held_out["phases"]["pvp"]["cases"] == ["P1"]
    data = json.loads((out / "real_anatomy" / "report.json").read_text())
    _assert_finite_for_every_group(data["models"]["vcesdk-demo-pvp"])
    printed = capsys.readouterr().out
    assert "| NCCT identity |" in printed and "mean |error|" in printed


def test_hand_roi_check_on_a_known_case():
    """Box + HU-range ROIs: a 'vessel' raised by 120 HU passes PVP (reference +120), fat
    raised by 15 HU fails its 10 HU target, air unchanged passes."""
    from vcesdk.training.anatomy import HandROI, hand_roi_check

    ncct = np.full((4, 10, 10), -1000.0, np.float32)
    ncct[:, 2:5, 2:5] = 40.0   # vessel
    ncct[:, 6:9, 6:9] = -100.0  # fat
    scect = ncct.copy()
    scect[:, 2:5, 2:5] += 120.0
    scect[:, 6:9, 6:9] += 15.0
    rois = (HandROI("aorta", ((0, 4), (2, 5), (2, 5)), None, ("aorta",), 25.0),
            HandROI("subcutaneous_fat", ((0, 4), (5, 10), (5, 10)), (-150, -50), None, 10.0),
            HandROI("air", ((0, 4), (0, 2), (0, 10)), (-1100, -900), None, 5.0))
    rows = {r["name"]: r for r in hand_roi_check(ncct, scect, rois, "pvp")}
    assert rows["aorta"]["change_hu"] == 120.0 and rows["aorta"]["reference_hu"] == 120.0
    assert rows["aorta"]["passed"] and rows["aorta"]["voxels"] == 36
    assert rows["subcutaneous_fat"]["voxels"] == 36  # the HU range drops the air in the box
    assert rows["subcutaneous_fat"]["error_hu"] == 15.0 and not rows["subcutaneous_fat"]["passed"]
    assert rows["air"]["change_hu"] == 0.0 and rows["air"]["passed"]
    assert hand_roi_check(ncct, scect, rois, "ap")[0]["reference_hu"] == 260.0
