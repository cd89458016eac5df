"""Reading and writing CT volumes: real DICOM geometry, round trips through other readers."""
from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

import vcesdk
from vcesdk.errors import VolumeReadError, VolumeWriteError
from vcesdk.volume import CTVolume


def test_real_dicom_series_geometry(hcc_volume):
    vol = hcc_volume
    assert vol.shape == (89, 512, 512)
    assert vol.hu.dtype == np.float32
    assert vol.spacing_zyx_mm == pytest.approx((2.5, 0.703125, 0.703125))
    # slices ordered inferior -> superior along the normal (0, 0, 1)
    np.testing.assert_allclose(vol.direction, np.eye(3), atol=1e-6)
    assert vol.origin_xyz_mm == pytest.approx((-180.0, -180.0, -396.0))
    z = [float(h.ImagePositionPatient[2]) for h in vol.source_headers]
    assert z == pytest.approx(list(-396.0 + 2.5 * np.arange(89)))
    # RescaleSlope/Intercept applied: the padding outside the field of view is -2048 HU, air
    # inside it about -1000 HU, and the portal-venous aorta well above 150 HU (~228 HU median)
    assert vol.hu.min() == pytest.approx(-2048.0)
    assert -1050 < np.median(vol.hu[44, 10:40, 200:300]) < -950


def _files_by_position(folder):
    files = sorted(folder.iterdir())
    return sorted(files, key=lambda f: float(pydicom.dcmread(
        f, stop_before_pixels=True).ImagePositionPatient[2]))


def test_dicom_slices_sorted_by_position_not_file_name(hcc_dicom_dir, tmp_path, hcc_volume):
    files = _files_by_position(hcc_dicom_dir)[30:42]  # 12 adjacent slices
    rng = np.random.default_rng(0)
    for i, f in zip(rng.permutation(len(files)), files):  # names in a scrambled order
        shutil.copy(f, tmp_path / f"x{i:03d}")
    vol = vcesdk.read_volume(tmp_path)
    positions = sorted(float(pydicom.dcmread(f, stop_before_pixels=True)
                             .ImagePositionPatient[2]) for f in files)
    assert vol.origin_xyz_mm[2] == pytest.approx(positions[0])
    k = int(round((positions[0] - hcc_volume.origin_xyz_mm[2]) / 2.5))
    np.testing.assert_array_equal(vol.hu, hcc_volume.hu[k:k + 12])


def test_rescale_slope_and_intercept_are_applied(hcc_dicom_dir, tmp_path):
    src = _files_by_position(hcc_dicom_dir)[:3]
    for f in src:
        shutil.copy(f, tmp_path / f.name)
    ref = vcesdk.read_volume(tmp_path)
    # rewrite one slice with slope 2 and intercept -1000 holding the same HU
    ds = pydicom.dcmread(src[1])
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    stored = np.round((hu + 1000.0) / 2.0).astype(np.int16)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.PixelData = stored.tobytes()
    ds.save_as(tmp_path / src[1].name)
    vol = vcesdk.read_volume(tmp_path)
    k = [str(h.SOPInstanceUID) for h in vol.source_headers].index(str(ds.SOPInstanceUID))
    assert np.abs(vol.hu[k] - ref.hu[k]).max() <= 1.0  # within the 2-HU storage step


def test_synthetic_dicom_round_trip_pydicom_and_simpleitk(hcc_volume, tmp_path):
    sub = CTVolume(hu=hcc_volume.hu[40:46] + 0.4, spacing_zyx_mm=hcc_volume.spacing_zyx_mm,
                   origin_xyz_mm=tuple(float(v) for v in hcc_volume.source_headers[40]
                                   .ImagePositionPatient),
                   direction=hcc_volume.direction, source_headers=hcc_volume.source_headers[40:46])
    out = vcesdk.write_volume(sub, tmp_path / "syn", like=sub,
                              series_description="SYNTHETIC PVP test")
    files = sorted(out.iterdir())
    assert len(files) == 6
    src = hcc_volume.source_headers[40]
    uids = set()
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SeriesDescription.startswith("SYNTHETIC")
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.PatientID == src.PatientID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == 6
    # back through vcesdk's pydicom reader
    back = vcesdk.read_volume(out)
    np.testing.assert_allclose(back.hu, np.rint(sub.hu), atol=0)  # int16 storage rounding
    assert back.spacing_zyx_mm == pytest.approx(sub.spacing_zyx_mm)
    assert back.origin_xyz_mm == pytest.approx(sub.origin_xyz_mm)
    # and through SimpleITK's GDCM reader
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out)))
    img = reader.Execute()
    np.testing.assert_allclose(sitk.GetArrayFromImage(img), np.rint(sub.hu), atol=0)
    assert img.GetSpacing() == pytest.approx((0.703125, 0.703125, 2.5))
    assert img.GetOrigin() == pytest.approx(sub.origin_xyz_mm)


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nrrd", "v.mha"])
def test_itk_formats_round_trip_with_geometry(abdomen_volume, tmp_path, name):
    vol = abdomen_volume
    out = vcesdk.write_volume(vol, tmp_path / name)
    back = vcesdk.read_volume(out)
    assert back.shape == vol.shape
    np.testing.assert_allclose(back.hu, np.rint(vol.hu), atol=0)
    assert back.spacing_zyx_mm == pytest.approx(vol.spacing_zyx_mm)
    assert back.origin_xyz_mm == pytest.approx(vol.origin_xyz_mm, abs=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)
    assert np.allclose(np.diag(vol.direction), [-1, -1, 1])  # a non-identity direction kept


def test_dicom_from_nifti_gets_a_new_study(abdomen_volume, tmp_path):
    out = vcesdk.write_volume(abdomen_volume, tmp_path / "dcm")
    back = vcesdk.read_volume(out)
    np.testing.assert_allclose(back.hu, np.rint(abdomen_volume.hu), atol=0)
    np.testing.assert_allclose(back.direction, abdomen_volume.direction, atol=1e-6)
    assert back.origin_xyz_mm == pytest.approx(abdomen_volume.origin_xyz_mm, abs=1e-4)
    assert back.source_headers[0].PatientName == "ANONYMOUS"


def test_existing_output_is_refused_and_failures_leave_nothing(abdomen_volume, tmp_path,
                                                               monkeypatch):
    target = tmp_path / "exists.nii.gz"
    target.write_bytes(b"keep me")
    with pytest.raises(VolumeWriteError, match="already exists"):
        vcesdk.write_volume(abdomen_volume, target)
    assert target.read_bytes() == b"keep me"

    import vcesdk.io.dicom as dicom

    def broken(vol, folder, **kw):
        (folder / "IM00001.dcm").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(dicom, "write_dicom_series", broken)
    with pytest.raises(OSError, match="disk full"):
        vcesdk.write_volume(abdomen_volume, tmp_path / "series")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.nii.gz"]


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(VolumeReadError, match="input not found"):
        vcesdk.read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeReadError, match="no DICOM images"):
        vcesdk.read_volume(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(VolumeReadError, match="unknown volume format"):
        vcesdk.read_volume(tmp_path / "x.txt")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(VolumeReadError, match="cannot read"):
        vcesdk.read_volume(bad)


def test_affine_maps_indices_like_itk(hcc_volume, abdomen_volume):
    """CTVolume.affine takes (column, row, slice, 1) to LPS mm exactly as ITK does, and the
    axis-named spacings are each other's reverse."""
    for vol in (hcc_volume, abdomen_volume):
        img = vol.to_sitk()
        assert vol.spacing_xyz_mm == tuple(reversed(vol.spacing_zyx_mm)) == img.GetSpacing()
        for index in ((0, 0, 0), (5, 7, 3), (vol.shape[2] - 1, vol.shape[1] - 1,
                                             vol.shape[0] - 1)):
            lps = vol.affine @ np.array([*index, 1.0])
            np.testing.assert_allclose(lps[:3], img.TransformIndexToPhysicalPoint(index),
                                       atol=1e-6)


def test_a_failed_output_leaves_no_new_folders(tmp_path):
    """atomic_output removes the (empty) folders it created for the output path on an error."""
    from vcesdk.io.atomic import atomic_output

    with pytest.raises(RuntimeError, match="synthesis failed"):
        with atomic_output(tmp_path / "a" / "b" / "out", is_dir=True):
            raise RuntimeError("synthesis failed")
    assert list(tmp_path.iterdir()) == []
