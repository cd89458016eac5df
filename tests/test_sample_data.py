"""The real CT shipped with the package (vcesdk.data): files, geometry, labels, packaging, and
the ``synthesize --sample`` / ``demo`` / ``benchmark`` paths that use it."""
from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vcesdk
import vcesdk.data as vdata
from vcesdk.data import SAMPLE_FILES, sample_ct, sample_dir, sample_label_names, sample_labels

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (30, 101, 122)  # (D, H, W) of TotalSegmentator's example_ct_sm.nii.gz


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vcesdk.cli", *args], capture_output=True,
                          text=True, timeout=600)


def _ids() -> dict[str, int]:
    return {name: value for value, name in sample_label_names().items()}


@pytest.fixture(scope="module")
def ct() -> vcesdk.CTVolume:
    return vcesdk.read_volume(sample_ct())


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.rint(vcesdk.read_volume(sample_labels()).hu).astype(np.int32)


def test_sample_files_exist_with_licence_and_attribution():
    d = sample_dir()
    assert d == Path(vdata.__file__).resolve().parent / "sample"
    for name in SAMPLE_FILES:
        assert (d / name).is_file(), name
    assert sample_ct() == d / "ct.nii.gz" and sample_labels() == d / "total_seg.nii.gz"
    assert sample_ct().stat().st_size == 483312  # the shared file, byte for byte in size
    licence = (d / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence
    # the canonical text, https://www.apache.org/licenses/LICENSE-2.0.txt, unmodified
    assert hashlib.md5((d / "LICENSE").read_bytes()).hexdigest() == \
        "3b83ef96387f14655fc854ddc3c6bd57"
    attribution = (d / "ATTRIBUTION.md").read_text(encoding="utf-8")
    for needle in ("TotalSegmentator", "Wasserthal", "https://github.com/wasserth/TotalSegmentator",
                   "example_ct_sm.nii.gz", "slices 82-111", "Apache License, Version 2.0"):
        assert needle in attribution, needle


def test_sample_ct_is_native_hu_with_3mm_slices(ct):
    assert ct.shape == SHAPE
    assert ct.hu.dtype == np.float32
    assert ct.spacing_zyx_mm == pytest.approx((3.0, 3.0, 3.0))
    assert float(ct.hu.min()) == -1100.0 and float(ct.hu.max()) == 1207.0
    assert -1030.0 < float(np.percentile(ct.hu, 5)) < -970.0  # air outside the body
    frame = np.zeros(SHAPE[1:], bool)
    frame[:5], frame[-5:], frame[:, :5], frame[:, -5:] = True, True, True, True
    assert -1010.0 < float(np.median(ct.hu[:, frame])) < -970.0


def test_sample_ct_reads_the_same_with_nibabel(ct):
    """Round trip against another reader: nibabel's (x, y, z) RAS array is vcesdk's (z, y, x)
    array, the LPS direction diag(-1, -1, 1) carrying the flip."""
    import nibabel as nib

    img = nib.load(sample_ct())
    raw = np.asarray(img.dataobj).astype(np.float32)
    np.testing.assert_array_equal(raw.transpose(2, 1, 0), ct.hu)
    np.testing.assert_allclose(ct.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-9)
    ras_origin = img.affine[:3, 3]
    assert ct.origin_xyz_mm == pytest.approx((-ras_origin[0], -ras_origin[1], ras_origin[2]),
                                         abs=1e-3)


def test_label_map_matches_and_names_organs(ct, labels):
    names = sample_label_names()
    assert len(names) == 117 and all(isinstance(k, int) for k in names)
    ids = _ids()
    assert ids["aorta"] == 52 and ids["liver"] == 5 and ids["spleen"] == 1
    assert labels.shape == ct.shape
    assert int((labels == ids["aorta"]).sum()) == 997
    assert int((labels == ids["liver"]).sum()) == 38634
    assert int((labels == ids["inferior_vena_cava"]).sum()) == 1368
    # native: blood in the aorta ~43 HU, liver ~46 HU (../shared/data/README.md)
    assert float(np.median(ct.hu[labels == ids["aorta"]])) == 43.0
    assert float(np.median(ct.hu[labels == ids["liver"]])) == 46.0
    for mask in ("skeletal_muscle.nii.gz", "subcutaneous_fat.nii.gz"):
        m = vcesdk.read_volume(sample_dir() / mask).hu
        assert m.shape == ct.shape and set(np.unique(m).tolist()) == {0.0, 1.0}


def test_missing_sample_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(vdata, "_SAMPLE", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="missing from this vcesdk install: .*nowhere"):
        sample_ct()
    partial = tmp_path / "sample"
    partial.mkdir()
    (partial / "ct.nii.gz").write_bytes(b"")
    monkeypatch.setattr(vdata, "_SAMPLE", partial)
    with pytest.raises(FileNotFoundError, match="file total_seg.nii.gz is missing"):
        sample_labels()


def test_setup_ships_every_sample_file_as_package_data():
    """setup.py's package_data for vcesdk.data matches every file in the sample folder (what
    a wheel or a non-editable install copies)."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    package_data = packages = None
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "package_data":
            package_data = ast.literal_eval(node.value)
        if isinstance(node, ast.keyword) and node.arg == "packages":
            packages = ast.literal_eval(node.value)
    assert "vcesdk.data" in packages
    patterns = package_data["vcesdk.data"]
    for f in sample_dir().iterdir():
        assert any(fnmatch.fnmatch(f"sample/{f.name}", p) for p in patterns), f.name
    assert sorted(f.name for f in sample_dir().iterdir()) == sorted(SAMPLE_FILES)


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory):
    target = tmp_path_factory.mktemp("sample") / "out"
    proc = _run_cli("synthesize", "--sample", "-o", str(target), "--format", "nifti", "-q")
    return target, proc


def test_synthesize_sample_writes_three_phases_preview_report(synthesized, ct, labels):
    """README command 1: with no --model, the three demo bundles (AP, PVP, DP)."""
    target, proc = synthesized
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in target.iterdir()) == [
        "preview.png", "report.json", "scect_ap.nii.gz", "scect_dp.nii.gz", "scect_pvp.nii.gz"]
    assert f"input: {sample_ct()} 30 slices x 101 x 122" in proc.stdout
    report = json.loads((target / "report.json").read_text())
    assert report["input"] == str(sample_ct()) and report["shape"] == list(SHAPE)
    assert [e["phase"] for e in report["phases"]] == ["ap", "pvp", "dp"]
    assert all(e["demo"] and e["latency"]["slices"] == 30 for e in report["phases"])
    assert report["contrast_check"]["enhanced"] is False
    assert report["hu_check"]["plausible"] is True and report["hu_check"]["mode"] == "refuse"
    png = Image.open(target / "preview.png")
    assert png.format == "PNG" and png.height == 3 * 256 + 2 * 8  # a row per phase, 8 px gaps
    aorta, air = labels == _ids()["aorta"], ct.hu < -950
    change = {}
    for phase in ("ap", "pvp", "dp"):
        out = vcesdk.read_volume(target / f"scect_{phase}.nii.gz")
        assert out.shape == SHAPE and out.spacing_zyx_mm == pytest.approx(ct.spacing_zyx_mm)
        change[phase] = float(np.median(out.hu[aorta] - ct.hu[aorta]))
        assert abs(float(np.median(out.hu[air] - ct.hu[air]))) < 5.0  # air left alone
    # each demo enhances the aorta, arterial most, as in the phantom's kinetics (reference
    # +260 / +120 / +70 HU; measured 162 / 78 / 40 HU)
    assert change["ap"] > 100.0 and change["pvp"] > 40.0 and change["dp"] > 20.0, change
    assert change["ap"] > change["pvp"] > change["dp"], change


def test_demo_is_synthesize_sample(synthesized, tmp_path):
    target, _ = synthesized
    proc = _run_cli("demo", "-o", str(tmp_path / "demo"), "--format", "nifti", "-q")
    assert proc.returncode == 0, proc.stderr
    a = vcesdk.read_volume(target / "scect_pvp.nii.gz").hu
    b = vcesdk.read_volume(tmp_path / "demo" / "scect_pvp.nii.gz").hu
    np.testing.assert_allclose(a, b, atol=1e-3)
    assert json.loads((tmp_path / "demo" / "report.json").read_text())["input"] == \
        str(sample_ct())


def test_sample_and_input_together_or_neither_is_a_one_line_error(tmp_path):
    out = tmp_path / "o"
    proc = _run_cli("synthesize", str(sample_ct()), "--sample", "-o", str(out))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"vcesdk: error: give either INPUT ({sample_ct()}) or --sample, not both"]
    assert not out.exists() and list(tmp_path.iterdir()) == []
    proc = _run_cli("synthesize", "-o", str(out))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "vcesdk: error: no input: give INPUT (a DICOM folder or a CT volume file) or --sample "
        "(the CT shipped with vcesdk)"]
    assert not out.exists()


def test_benchmark_defaults_to_the_sample(tmp_path):
    from vcesdk.benchmark import benchmark, find_default_ct

    assert find_default_ct() == sample_ct()
    report = benchmark(str(vcesdk.DEFAULT_BUNDLE), providers=["CPUExecutionProvider"],
                       repeats=1, warmup=0, write_format="nifti")
    assert report["input"] == str(sample_ct())
    entry = report["backends"]["CPUExecutionProvider"]
    assert entry["slices"] == 30 and entry["passes"] == 1 and entry["ms_per_slice_median"] > 0
