"""Input checks before synthesis: the contrast guard on real enhanced and native CT, series
listing and choice, enhanced multi-frame CT, gantry-tilt resampling and oblique volumes."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
from conftest import CHEST_CTA, HCC_SLICES, shared

import vcesdk
from vcesdk import errors
from vcesdk.cli import main
from vcesdk.contrast import check_contrast, estimate_contrast

CTA_AORTA = f"{CHEST_CTA}/aorta_report_ct_cropped.nii.gz"
CTA_PULMONARY = f"{CHEST_CTA}/pulmonary_report_ct_cropped.nii.gz"


# --- the contrast guard --------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["lung1_path", "abdomen_path"])
def test_native_real_ct_passes_the_guard(request, fixture):
    est = estimate_contrast(vcesdk.read_volume(request.getfixturevalue(fixture)))
    assert not est.enhanced
    assert est.slices_with_blood_pool <= 0.1 * est.slices_sampled
    assert check_contrast(vcesdk.read_volume(request.getfixturevalue(fixture)), "refuse") \
        is not None  # refuse mode lets native input through


def test_portal_venous_real_ct_is_flagged(hcc_volume):
    est = estimate_contrast(hcc_volume)
    assert est.enhanced
    assert est.slices_with_blood_pool >= 0.8 * est.slices_sampled
    # aorta ~228, portal vein, spleen ~146 HU (data README); native blood is 40-55 HU
    assert 150.0 <= est.blood_pool_hu <= 260.0


@pytest.mark.parametrize("rel", [CTA_AORTA, CTA_PULMONARY])
def test_arterial_real_ct_is_flagged_near_its_masked_blood_pool(rel):
    vol = vcesdk.read_volume(shared(rel))
    est = estimate_contrast(vol)
    assert est.enhanced
    mask_file = shared(f"{CHEST_CTA}/aorta_report_aorta_seg.nii.gz" if "aorta" in rel
                       else f"{CHEST_CTA}/pulmonary_report_heart_seg.nii.gz")
    from vcesdk.volume import resample_volume

    # the heart mask is on the uncropped grid: brought onto the crop's grid
    mask = resample_volume(vcesdk.read_volume(mask_file), (), reference=vol,
                           default_hu=0.0).hu > 0.5
    assert mask.sum() > 1000
    masked = float(np.median(vol.hu[mask]))  # aorta ~354 HU, heart ~466 HU (data README)
    assert masked > 300.0
    assert abs(est.blood_pool_hu - masked) < 150.0


def test_guard_modes(hcc_volume):
    flagged = vcesdk.CTVolume(hu=hcc_volume.hu[40:56], spacing_zyx_mm=hcc_volume.spacing_zyx_mm)
    with pytest.raises(errors.ContrastEnhancedInputError,
                       match=r"looks contrast-enhanced: blood pool ~\d+ HU.*--contrast-guard"):
        check_contrast(flagged, "refuse")
    with pytest.warns(UserWarning, match="would enhance it again"):
        assert check_contrast(flagged, "warn").enhanced
    assert check_contrast(flagged, "off") is None
    with pytest.raises(errors.InputError, match="must be one of warn, refuse, off"):
        check_contrast(flagged, "strict")


def test_phantom_ncct_passes_the_guard():
    from vcesdk.training.phantom import make_phantom

    for seed in (0, 1):
        case = make_phantom(seed)
        est = estimate_contrast(vcesdk.CTVolume(hu=case.phases["ncct"], spacing_zyx_mm=(4, 2, 2)))
        assert not est.enhanced and est.slices_with_blood_pool <= 0.1 * est.slices_sampled


def test_cli_refuses_enhanced_input_and_writes_nothing(hcc_dicom_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["synthesize", str(hcc_dicom_dir), "-o", str(out), "--contrast-guard", "refuse",
               "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    errors_ = [line for line in err.splitlines() if line.startswith("vcesdk: error:")]
    assert len(errors_) == 1 and "looks contrast-enhanced" in errors_[0]
    assert "Traceback" not in err


def test_cli_warns_and_reports_the_check(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["synthesize", str(shared(CTA_PULMONARY)), "-o", str(out), "--format", "nifti",
               "-q"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "vcesdk: warning: input looks contrast-enhanced" in err
    report = json.loads((out / "report.json").read_text())
    check = report["contrast_check"]
    assert check["mode"] == "warn" and check["enhanced"] is True
    assert check["blood_pool_hu"] > 300


# --- series listing and choice -------------------------------------------------------------

def test_series_listing_and_choice(series, tmp_path, capsys):
    """Three series in one folder: the 8-slice axial CT, a 3-slice copy, an MR image."""
    from pydicom.data import get_testdata_file

    from vcesdk.io.dicom import list_series

    other = pydicom.uid.generate_uid()
    for f in sorted(series.glob("*.dcm"))[:3]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = other
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.SeriesDescription = "THIN COPY"
        ds.save_as(series / f"other_{f.name}")
    shutil.copy2(get_testdata_file("MR_small.dcm"), series / "mr.dcm")
    found = list_series(series)
    assert [(s.modality, s.images, s.plane) for s in found] == [
        ("CT", 8, "axial"), ("CT", 3, "axial"), ("MR", 1, "axial")]
    assert [s.default for s in found] == [True, False, False]
    assert found[1].uid == other and found[1].description == "THIN COPY"
    assert main(["inspect", str(series)]) == 0
    text = capsys.readouterr().out
    assert f"* {found[0].uid}" in text and f"  {other}" in text and "THIN COPY" in text
    assert main(["inspect", str(series), "--series", other]) == 0
    assert "volume: 3 x 512 x 512" in capsys.readouterr().out
    assert main(["inspect", str(series), "--series", "1.2.3"]) == 1
    assert "vcesdk inspect" in capsys.readouterr().err


# --- enhanced multi-frame CT ---------------------------------------------------------------

def test_enhanced_multiframe_ct_reads_like_its_single_frame_source(hcc_files, tmp_path):
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    single = [pydicom.dcmread(f) for f in hcc_files]
    mf = LegacyConvertedEnhancedCTImage(
        legacy_datasets=single, series_instance_uid=pydicom.uid.generate_uid(),
        series_number=99, sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1)
    d = tmp_path / "mf"
    d.mkdir()
    mf.save_as(d / "enhanced.dcm")
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    for f in hcc_files:
        shutil.copy2(f, ref_dir / f.name)
    ref = vcesdk.read_volume(ref_dir)
    vol = vcesdk.read_volume(d)
    assert vol.shape == ref.shape == (len(hcc_files), 512, 512)
    np.testing.assert_array_equal(vol.hu, ref.hu)
    np.testing.assert_allclose(vol.spacing_zyx_mm, ref.spacing_zyx_mm, atol=1e-4)
    np.testing.assert_allclose(vol.origin_xyz_mm, ref.origin_xyz_mm, atol=1e-4)
    from vcesdk.io.dicom import list_series

    (info,) = list_series(d)
    assert info.multiframe and info.images == len(hcc_files) and info.files == 1
    out = tmp_path / "written"  # a synthetic series can be made from multi-frame input
    vcesdk.write_volume(vol, out, like=vol)
    np.testing.assert_array_equal(vcesdk.read_volume(out).hu, np.rint(vol.hu))


# --- gantry tilt ---------------------------------------------------------------------------

def test_gantry_tilt_resample_recovers_the_orthogonal_volume(series):
    """Slice k is moved one pixel row (0.703 mm) posterior per slice and its pixels shifted
    to match, as a tilted gantry records them: 15.7 degrees of tilt, same anatomy."""
    ref = vcesdk.read_volume(series)
    files = sorted(series.glob("*.dcm"), key=lambda f: float(
        pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    row_mm = float(pydicom.dcmread(files[0]).PixelSpacing[0])
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ipp[1] += k * row_mm
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        px = ds.pixel_array.copy()
        px[:px.shape[0] - k] = px[k:]  # row r now holds what lay k rows further on
        ds.PixelData = px.tobytes()
        ds.save_as(f)
    with pytest.raises(errors.GantryTiltError, match=r"gantry tilt of 15\.7 degrees.*--tilt "
                                                     r"resample"):
        vcesdk.read_volume(series)
    fixed = vcesdk.read_volume(series, tilt="resample")
    assert fixed.shape == ref.shape
    np.testing.assert_allclose(fixed.origin_xyz_mm, ref.origin_xyz_mm, atol=1e-4)
    np.testing.assert_allclose(fixed.direction, ref.direction, atol=1e-6)
    n = len(files)
    np.testing.assert_allclose(fixed.hu[:, n:-n], ref.hu[:, n:-n], atol=0.5)


# --- oblique volumes -----------------------------------------------------------------------

def _rotated_grid(vol: vcesdk.CTVolume, degrees: float) -> vcesdk.CTVolume:
    """An empty grid like `vol` turned about the patient's S axis, centred on it."""
    a = np.radians(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    direction = rot @ vol.direction
    extent = (np.asarray(vol.shape[::-1]) - 1) * np.asarray(vol.spacing_zyx_mm[::-1])
    centre = np.asarray(vol.origin_xyz_mm) + vol.direction @ (extent / 2)
    origin = centre - direction @ (extent / 2)
    return vcesdk.CTVolume(hu=np.zeros(vol.shape, np.float32), spacing_zyx_mm=vol.spacing_zyx_mm,
                           origin_xyz_mm=tuple(origin), direction=direction)


def test_oblique_volume_refused_or_resampled(abdomen_volume):
    from vcesdk.volume import obliquity_deg, resample_volume

    axial = abdomen_volume
    oblique = resample_volume(axial, (), reference=_rotated_grid(axial, 20.0))
    assert obliquity_deg(oblique) == pytest.approx(20.0, abs=1e-6)
    with pytest.raises(errors.ObliqueVolumeError, match=r"20\.0 degrees oblique.*--oblique "
                                                        r"resample"):
        vcesdk.Synthesizer().synthesize(oblique)
    syn = vcesdk.Synthesizer(oblique="resample", contrast_guard="off")
    out = syn.synthesize(oblique)
    assert out.shape == oblique.shape
    np.testing.assert_allclose(out.direction, oblique.direction)
    # the enhancement follows the anatomy: it matches running the axial volume and resampling
    # its result (r 0.85 measured; the twice-interpolated input is smoother, hence not 1.0),
    # and not that result turned the wrong way (r 0.12)
    enhanced_axial = syn.synthesize(axial)
    expected = resample_volume(enhanced_axial, (), reference=oblique).hu
    wrong = resample_volume(enhanced_axial, (), reference=_rotated_grid(axial, -20.0)).hu
    body = (oblique.hu > -300) & (expected > -300)
    got = (out.hu - oblique.hu)[body]
    assert np.corrcoef(got, (expected - oblique.hu)[body])[0, 1] > 0.75
    assert np.corrcoef(got, (wrong - oblique.hu)[body])[0, 1] < 0.3
    assert (out.hu >= oblique.hu - 1.0).mean() > 0.99  # residual floor 0 HU survives resampling


# --- HU plausibility: is the input CT in Hounsfield units? ---------------------------------

REAL_CT = ["pyradiomics_lung1/lung1_image.nrrd", "totalseg_abdomen_native/example_ct.nii.gz",
           "totalseg_abdomen_labelled/ct.nii.gz", "hcc048_portal_venous/dicom", CTA_AORTA,
           CTA_PULMONARY]


@pytest.mark.parametrize("rel", REAL_CT)
def test_every_real_ct_looks_like_hu(rel):
    """Small fields of view (the 1.5 mm chest CTA crops) and -2048 padding (hcc048) pass."""
    from vcesdk.hu_check import check_hu

    stats = check_hu(vcesdk.read_volume(shared(rel)), "refuse")
    assert stats.plausible and stats.p01 <= -900.0 and stats.rescale_problem == ""


def test_phantoms_look_like_hu():
    from vcesdk.hu_check import hu_stats
    from vcesdk.training.phantom import make_phantom

    for seed, region in ((0, "abdomen"), (1, "chest"), (2, "pelvis")):
        case = make_phantom(seed, shape=(8, 96, 96), region=region,
                            phases=("ncct", "ap", "pvp", "dp"))
        for phase, hu in case.phases.items():
            stats = hu_stats(vcesdk.CTVolume(hu=hu, spacing_zyx_mm=(4, 2, 2)))
            assert stats.plausible and stats.p01 < -900.0, (region, phase, stats)


def _only_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("vcesdk: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_mr_volume_is_refused_unless_the_check_is_off(tmp_path, capsys):
    """pydicom's MR test image saved as NIfTI (no Modality tag left): refused, nothing
    written; --hu-check off runs it."""
    import SimpleITK as sitk
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    mr = tmp_path / "mr.nii.gz"
    img = sitk.GetImageFromArray(ds.pixel_array.astype(np.float32)[None])
    img.SetSpacing((0.3125, 0.3125, 5.0))
    sitk.WriteImage(img, str(mr))
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    assert main(["synthesize", str(mr), "-o", str(out), "--model", str(vcesdk.DEFAULT_BUNDLE),
                 "-q"]) == 1
    line = _only_error(capsys.readouterr().err)
    assert "does not look like CT in Hounsfield units" in line
    assert "1st percentile 154" in line and "--hu-check off" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert main(["synthesize", str(mr), "-o", str(out), "--model", str(vcesdk.DEFAULT_BUNDLE),
                 "--hu-check", "off", "--format", "nifti", "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["hu_check"] == {"mode": "off"}


def test_unsigned_export_of_a_ct_is_refused_or_warned(abdomen_volume):
    """The native abdomen re-scaled to unsigned (HU + 1024): 1st percentile ~+12."""
    from vcesdk.hu_check import hu_stats

    shifted = abdomen_volume.with_hu(np.maximum(abdomen_volume.hu + 1024.0, 0.0))
    stats = hu_stats(shifted)
    assert not stats.plausible and 0.0 <= stats.p01 <= 50.0 and stats.min == 0.0
    syn = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE)
    with pytest.raises(errors.NotCTError, match=r"1st percentile 1\d"):
        syn.synthesize(shifted)
    syn = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, hu_check="warn", contrast_guard="off")
    with pytest.warns(UserWarning, match="does not look like CT"):
        syn.synthesize(shifted.with_hu(shifted.hu[:, ::2, ::2].repeat(2, 1).repeat(2, 2)[
            :, :shifted.shape[1], :shifted.shape[2]]))
    assert not syn.last_hu.plausible
    with pytest.raises(errors.InputError, match="hu_check must be one of"):
        vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, hu_check="maybe")


def test_dicom_ct_without_rescale_is_refused(series, tmp_path, capsys):
    """Real slices whose RescaleIntercept was removed: stored values (air 0, padding -1024)
    would pass the percentile rule on the padding; the missing rescale is the reason given."""
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        del ds.RescaleIntercept
        ds.save_as(f)
    out = tmp_path / "out"
    assert main(["synthesize", str(series), "-o", str(out), "--contrast-guard", "off",
                 "--model", str(vcesdk.DEFAULT_BUNDLE), "-q"]) == 1
    line = _only_error(capsys.readouterr().err)
    assert "has no RescaleIntercept" in line and not out.exists()


# --- a named DICOM file means its series ---------------------------------------------------

def test_named_dicom_file_reads_its_own_series(series, tmp_path, capsys):
    """A folder of slices of two series at the same positions (a folder read would find
    duplicates across them): naming a file reads that file's series only."""
    files = sorted(series.iterdir())
    other = pydicom.uid.generate_uid()
    for f in files[:3]:  # a second series: the first three slices again, another UID
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = other
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.PixelData = (ds.pixel_array + 7).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(series / f"other_{f.name}")
    full = vcesdk.read_volume(series)  # the largest series: the 8 original slices
    assert full.shape[0] == HCC_SLICES
    mine = vcesdk.read_volume(series / "other_s01.dcm")
    assert mine.shape == (3, 512, 512)
    np.testing.assert_allclose(mine.hu, full.hu[:3] + 7.0)
    assert vcesdk.read_volume(files[4]).shape[0] == HCC_SLICES
    with pytest.raises(errors.SeriesSelectionError, match="belongs to series"):
        vcesdk.read_volume(series / "other_s01.dcm",
                           series_uid=str(full.source_headers[0].SeriesInstanceUID))
    assert main(["inspect", str(series / "other_s00.dcm")]) == 0
    assert "volume: 3 x 512 x 512" in capsys.readouterr().out


def test_single_file_series_is_a_one_slice_volume(tmp_path):
    from pydicom.data import get_testdata_file

    src = tmp_path / "one"
    src.mkdir()
    shutil.copy2(get_testdata_file("CT_small.dcm"), src / "ct.dcm")
    vol = vcesdk.read_volume(src / "ct.dcm")
    assert vol.shape == (1, 128, 128)
    assert vol.spacing_zyx_mm[1:] == pytest.approx((0.661468, 0.661468))


# --- thin inputs ---------------------------------------------------------------------------

def _slab(vol, k: int, n: int):
    origin = np.asarray(vol.origin_xyz_mm) + k * vol.spacing_zyx_mm[0] * vol.direction[:, 2]
    return vcesdk.CTVolume(hu=vol.hu[k:k + n], spacing_zyx_mm=vol.spacing_zyx_mm,
                           origin_xyz_mm=tuple(origin), direction=vol.direction)


def test_thin_input_is_synthesized_with_one_warning():
    """One and two slices of the sample (thinner than the demo's 8-slice window): the last
    slice is repeated to fill the window; one warning; liver enhancement within 10 HU and
    aorta within 30 HU of the same slices synthesized inside the whole volume (measured:
    liver <= 2 HU, aorta <= 22 HU apart on slices 10, 15, 20)."""
    from vcesdk.data import sample_ct, sample_labels, sample_label_names

    ct = vcesdk.read_volume(sample_ct())
    labels = vcesdk.read_volume(sample_labels()).hu
    ids = {name: value for value, name in sample_label_names().items()}
    syn = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, contrast_guard="off")
    full = syn.synthesize(ct).hu - ct.hu
    for k, n in ((15, 1), (20, 2)):
        thin = _slab(ct, k, n)
        with pytest.warns(UserWarning, match=r"thin input: \d slice") as caught:
            out = syn.synthesize(thin)
        assert len([w for w in caught if "thin input" in str(w.message)]) == 1
        assert out.shape == (n, *ct.shape[1:])
        delta = out.hu - thin.hu
        for organ, tol in (("liver", 10.0), ("aorta", 30.0)):
            m = labels[k:k + n] == ids[organ]
            assert abs(np.median(delta[m]) - np.median(full[k:k + n][m])) < tol, (k, organ)
        assert float(np.median(delta[labels[k:k + n] == ids["aorta"]])) > 40.0


@pytest.mark.parametrize("n", [1, 2])
def test_enhanced_thin_input_is_judged_slice_by_slice(hcc_volume, tmp_path, n):
    """One or two enhanced slices (fewer than the 3 the volume rule needs) are flagged when
    every sampled slice shows blood pool."""
    thin = _slab(hcc_volume, 40, n)
    est = estimate_contrast(thin)
    assert est.enhanced and est.slices_sampled == n and est.blood_pool_hu > 150.0
    with pytest.raises(errors.ContrastEnhancedInputError):
        check_contrast(thin, "refuse")
