"""The main job end to end on real CT with the bundled demo model, through the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import vcesdk
from vcesdk.training.anatomy import REAL_CT_ROIS

# Hand-placed ROIs inside the descending / abdominal aorta of the two real native scans
# (NCCT median ~40 HU there): (slices, rows, columns), from the one table of hand ROIs.
AORTA_ROI = {
    name: tuple(slice(*r) for r in next(roi.box for roi in REAL_CT_ROIS[rel]
                                        if roi.name == "aorta"))
    for name, rel in (("lung1", "pyradiomics_lung1/lung1_image.nrrd"),
                      ("abdomen", "totalseg_abdomen_native/example_ct.nii.gz"))}
AORTA_GAIN_HU = 40.0  # demo model: median sCECT - NCCT in the aorta must exceed this


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vcesdk.cli", *args], capture_output=True,
                          text=True, timeout=600)


def _air_mask(hu: np.ndarray) -> np.ndarray:
    """Air outside the body: voxels below -900 HU in a 12-voxel frame at the image border."""
    frame = np.zeros(hu.shape[1:], bool)
    frame[:12], frame[-12:], frame[:, :12], frame[:, -12:] = True, True, True, True
    return (hu < -900) & (hu > -1100) & frame[None]


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory, lung1_path, abdomen_path):
    out = {}
    for name, path in (("lung1", lung1_path), ("abdomen", abdomen_path)):
        target = tmp_path_factory.mktemp(name) / "out"
        proc = _run_cli("synthesize", str(path), "-o", str(target), "--format", "nifti", "-q")
        assert proc.returncode == 0, proc.stderr
        out[name] = (path, target, proc)
    return out


@pytest.mark.parametrize("name", ["lung1", "abdomen"])
def test_main_job_output_geometry_preview_and_latency(synthesized, name):
    src, target, proc = synthesized[name]
    vin = vcesdk.read_volume(src)
    vout = vcesdk.read_volume(target / "scect_pvp.nii.gz")
    assert vout.shape == vin.shape
    assert vout.spacing_zyx_mm == pytest.approx(vin.spacing_zyx_mm, rel=1e-6)
    assert vout.origin_xyz_mm == pytest.approx(vin.origin_xyz_mm, abs=1e-3)
    np.testing.assert_allclose(vout.direction, vin.direction, atol=1e-6)
    png = Image.open(target / "preview.png")
    assert png.format == "PNG" and png.height >= 3 * 256 and png.width > 3 * 200
    assert "ms/slice" in proc.stdout and "CPUExecutionProvider" in proc.stdout
    report = json.loads((target / "report.json").read_text())
    assert report["latency"]["slices"] == vin.shape[0]
    assert report["latency"]["median_ms_per_slice"] > 0
    assert report["demo"] is True


@pytest.mark.parametrize("name", ["lung1", "abdomen"])
def test_aorta_brighter_and_air_unchanged(synthesized, name):
    src, target, _ = synthesized[name]
    vin = vcesdk.read_volume(src).hu
    vout = vcesdk.read_volume(target / "scect_pvp.nii.gz").hu
    roi = AORTA_ROI[name]
    assert 25 < np.median(vin[roi]) < 55  # the ROI really is unenhanced blood
    gain = float(np.median(vout[roi] - vin[roi]))
    assert gain > AORTA_GAIN_HU, f"aorta gain {gain:.1f} HU"
    air = _air_mask(vin)
    assert air.sum() > 1000
    diff = vout[air] - vin[air]
    noise = float(vin[air].std())
    assert abs(float(diff.mean())) < max(5.0, noise), (diff.mean(), noise)


def test_real_dicom_series_through_cli(hcc_dicom_dir, tmp_path):
    target = tmp_path / "hcc"
    proc = _run_cli("synthesize", str(hcc_dicom_dir), "-o", str(target), "-q")
    assert proc.returncode == 0, proc.stderr
    assert "89 slices x 512 x 512" in proc.stdout
    out = vcesdk.read_volume(target / "scect_pvp")
    assert out.shape == (89, 512, 512)
    assert out.spacing_zyx_mm == pytest.approx((2.5, 0.703125, 0.703125))
    assert out.origin_xyz_mm == pytest.approx((-180.0, -180.0, -396.0))
    hdr = out.source_headers[0]
    assert hdr.SeriesDescription.startswith("SYNTHETIC PVP")
    assert hdr.PatientID == "Patient_01"


def test_cli_errors_are_one_line(tmp_path, lung1_path):
    proc = _run_cli("synthesize", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("vcesdk: error: input not found")
    assert "Traceback" not in proc.stderr
    (tmp_path / "taken").mkdir()
    proc = _run_cli("synthesize", str(lung1_path), "-o", str(tmp_path / "taken"))
    assert proc.returncode == 1 and "already exists" in proc.stderr
    assert list((tmp_path / "taken").iterdir()) == []
    proc = _run_cli("synthesize", str(lung1_path), "-o", str(tmp_path / "o"), "--model",
                    str(tmp_path))
    assert proc.returncode == 1 and "has no manifest.json" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_python_api_keeps_input_untouched(abdomen_volume):
    before = abdomen_volume.hu.copy()
    syn = vcesdk.Synthesizer()
    out = syn.synthesize(abdomen_volume)
    np.testing.assert_array_equal(abdomen_volume.hu, before)
    assert out.hu.dtype == np.float32 and out.shape == abdomen_volume.shape
    assert syn.last_latency.backend == syn.provider


def test_runtime_needs_no_torch(abdomen_path):
    # the vendor runtime imports and runs with torch made unimportable
    code = ("import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
            "import vcesdk\n"
            f"v = vcesdk.read_volume({str(abdomen_path)!r})\n"
            "out = vcesdk.Synthesizer().synthesize(v)\n"
            "print(out.shape == v.shape)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_orientation_does_not_change_the_result(abdomen_volume):
    # the abdomen file is stored with flipped x and y (direction diag(-1, -1, 1)); the runtime
    # reorients to the model's LPS axes, so the same anatomy stored LPS gives the same sCECT
    from vcesdk.volume import orient_volume, orientation_code

    assert orientation_code(abdomen_volume) == "RAS"
    lps = orient_volume(abdomen_volume, "LPS")
    assert orientation_code(lps) == "LPS"
    np.testing.assert_array_equal(lps.hu, abdomen_volume.hu[:, ::-1, ::-1])
    syn = vcesdk.Synthesizer()
    a = syn.synthesize(abdomen_volume).hu
    b = syn.synthesize(lps).hu
    np.testing.assert_allclose(a[:, ::-1, ::-1], b, atol=0.05)
