"""Messy input and safe output: series selection, non-CT, missing / duplicate / tilted slices,
compressed transfer syntaxes, truncated files, NaN, field-of-view padding, small volumes,
memory budget, concurrency, dciodvfy on the written DICOM, and fuzzing of the DICOM reader
and the manifest parser. Broken files are made from copies of real CT (hcc048) and pydicom's
own test files; inputs are never modified."""
from __future__ import annotations

import contextlib
import copy
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest

import vcesdk
from vcesdk import errors
from vcesdk.errors import VcesdkError


@pytest.fixture(scope="module")
def reference(hcc_files, tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    for i, f in enumerate(hcc_files):
        shutil.copy2(f, d / f"s{i:02d}.dcm")
    return vcesdk.read_volume(d)


def _files(d: Path) -> list[Path]:
    return sorted(d.glob("*.dcm"))


def test_series_selection(series, reference, tmp_path):
    other_uid = pydicom.uid.generate_uid()
    for f in _files(series)[:3]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = other_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(series / f"other_{f.name}")
    vol = vcesdk.read_volume(series)  # the largest CT series
    assert vol.shape == reference.shape
    np.testing.assert_array_equal(vol.hu, reference.hu)
    assert vcesdk.read_volume(series, series_uid=other_uid).shape[0] == 3
    with pytest.raises(errors.SeriesSelectionError, match=f"found: .*{other_uid}"):
        vcesdk.read_volume(series, series_uid="1.2.3")


def test_non_ct_is_refused(tmp_path):
    from pydicom.data import get_testdata_file

    shutil.copy2(get_testdata_file("MR_small.dcm"), tmp_path / "mr.dcm")
    with pytest.raises(errors.NotCTError, match=r"modalities: MR.*vcesdk needs CT"):
        vcesdk.read_volume(tmp_path)


def test_missing_duplicate_and_tilted_slices(series):
    files = _files(series)
    # a duplicate position (another SOP instance at the same place)
    ds = pydicom.dcmread(files[2])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(series / "dup.dcm")
    with pytest.raises(errors.DuplicateSliceError, match="duplicate slice position"):
        vcesdk.read_volume(series)
    (series / "dup.dcm").unlink()
    # a missing slice in the middle
    moved = series.parent / "held"
    moved.mkdir()
    shutil.move(str(files[4]), moved / files[4].name)
    with pytest.raises(errors.MissingSlicesError, match=r"1 slice\(s\) missing between"):
        vcesdk.read_volume(series)
    shutil.move(str(moved / files[4].name), files[4])
    # gantry tilt: positions shift along y by dz * tan(15 deg) per slice
    for k, f in enumerate(_files(series)):
        ds = pydicom.dcmread(f)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ipp[1] += k * 2.5 * np.tan(np.radians(15))
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
        ds.save_as(f)
    with pytest.raises(errors.GantryTiltError, match=r"gantry tilt of 15.0 degrees"):
        vcesdk.read_volume(series)


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless", "JPEGLSLossless"])
def test_compressed_transfer_syntaxes_read_identically(series, reference, syntax):
    uid = getattr(pydicom.uid, syntax)
    for f in _files(series):
        ds = pydicom.dcmread(f)
        ds.compress(uid)
        ds.save_as(f)
    assert pydicom.dcmread(_files(series)[0]).file_meta.TransferSyntaxUID == uid
    vol = vcesdk.read_volume(series)
    np.testing.assert_array_equal(vol.hu, reference.hu)


def test_undecodable_and_truncated_pixel_data(series):
    f = _files(series)[3]
    ds = pydicom.dcmread(f)
    ds.compress(pydicom.uid.RLELossless)
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\x00" * 80])  # an RLE frame header naming no segments
    ds.save_as(f)
    with pytest.raises(errors.UnsupportedPixelDataError, match=r"s03.dcm \(RLE Lossless\)"):
        vcesdk.read_volume(series)
    data = _files(series)[5].read_bytes()
    _files(series)[5].write_bytes(data[: len(data) // 3])  # truncated mid pixel data
    with pytest.raises(VcesdkError):
        vcesdk.read_volume(series)


def test_nan_in_nifti_is_refused_with_one_line(tmp_path):
    import SimpleITK as sitk

    a = np.full((6, 32, 32), -1000, np.float32)
    a[2, 5, 5] = np.nan
    a[3, 6, 6] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(errors.InvalidVoxelValuesError, match="2 NaN or infinite voxel"):
        vcesdk.read_volume(tmp_path / "nan.nii.gz")
    proc = subprocess.run([sys.executable, "-m", "vcesdk.cli", "synthesize",
                           str(tmp_path / "nan.nii.gz"), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("vcesdk: error:")]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert "NaN or infinite" in lines[0] and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def lung_slab(lung1_path):
    from vcesdk.benchmark import fit_slices

    return fit_slices(vcesdk.read_volume(lung1_path), 16)


@pytest.fixture(scope="module")
def synth():
    return vcesdk.Synthesizer()


def test_field_of_view_padding_is_air_to_the_model(lung_slab, synth):
    d, h, w = lung_slab.shape
    yy, xx = np.mgrid[:h, :w]
    outside = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 > (0.49 * w) ** 2
    air = lung_slab.hu.copy()
    air[:, outside] = -1024.0
    padded = air.copy()
    padded[:, outside] = -3024.0
    before = padded.copy()
    a = synth.synthesize(lung_slab.with_hu(air))
    b = synth.synthesize(lung_slab.with_hu(padded))
    np.testing.assert_array_equal(padded, before)  # the input is not modified
    np.testing.assert_allclose(b.hu[:, ~outside], a.hu[:, ~outside], atol=1e-3)
    assert (b.hu[:, outside] <= -3024 + 1e-3 + (a.hu[:, outside] + 1024).max()).all()


def test_volume_smaller_than_a_window(synth):
    hu = np.full((3, 40, 40), -1000.0, np.float32)  # air around a block of soft tissue
    hu[:, 8:32, 8:32] = 40.0
    vol = vcesdk.CTVolume(hu=hu, spacing_zyx_mm=(4.0, 2.0, 2.0))
    with pytest.warns(UserWarning, match="thin input: 3 slice"):
        out = synth.synthesize(vol)
    assert out.shape == (3, 40, 40) and np.isfinite(out.hu).all()
    assert (out.hu >= hu - 1e-3).all()  # add_residual with a 0 HU floor never darkens


def test_memory_budget(lung_slab):
    syn = vcesdk.Synthesizer(memory_budget_mb=10)
    with pytest.raises(errors.MemoryBudgetError,
                       match=r"16x512x512 volume needs about \d+ MB, over the 10 MB budget"):
        syn.synthesize(lung_slab)


def test_one_synthesizer_from_several_threads_is_bit_identical(lung_slab, synth):
    serial = synth.synthesize(lung_slab).hu
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = synth.synthesize(lung_slab).hu

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    for r in results.values():
        np.testing.assert_array_equal(r, serial)


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy not installed (Debian package dicom3tools)")
@pytest.mark.parametrize("source", ["dicom", "nifti"])
def test_written_dicom_passes_dciodvfy(source, reference, lung_slab, tmp_path):
    vol = reference if source == "dicom" else lung_slab
    out = vcesdk.write_volume(vol, tmp_path / "s", like=vol)
    for f in sorted(out.iterdir())[:3]:
        proc = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        report = proc.stdout + proc.stderr
        errors_found = [ln for ln in report.splitlines() if ln.startswith("Error")]
        assert errors_found == [], report


# ---- fuzzing ------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis", reason="fuzzing needs hypothesis (dev extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 600) | st.floats(allow_nan=True)
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _paths(d: dict, prefix=()):
    for k, v in d.items():
        yield (*prefix, k)
        if isinstance(v, dict):
            yield from _paths(v, (*prefix, k))


MANIFEST = json.loads((Path(vcesdk.DEFAULT_BUNDLE) / "manifest.json").read_text())
MANIFEST_PATHS = list(_paths(MANIFEST))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(MANIFEST_PATHS), st.booleans(), JSON), max_size=4))
def test_fuzz_manifest_parser(edits):
    from vcesdk.bundle import bundle_from_manifest, validate_manifest

    m = copy.deepcopy(MANIFEST)
    for path, delete, value in edits:
        node = m
        for k in path[:-1]:
            if not isinstance(node, dict) or k not in node:
                break
            node = node[k]
        else:
            if isinstance(node, dict):
                if delete:
                    node.pop(path[-1], None)
                else:
                    node[path[-1]] = value
    with contextlib.suppress(errors.BundleError):  # anything else fails the test
        validate_manifest(m)
        bundle_from_manifest(".", m)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_dicom_reader(hcc_files, tmp_path_factory, data):
    d = tmp_path_factory.mktemp("fuzz")
    for i, f in enumerate(hcc_files[:3]):
        shutil.copy2(f, d / f"s{i}.dcm")
    victim = d / f"s{data.draw(st.integers(0, 2))}.dcm"
    raw = bytearray(victim.read_bytes())
    header_end = min(len(raw), 4096)  # mostly header bytes: where the parser's choices are
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, header_end - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    victim.write_bytes(bytes(raw))
    try:
        vol = vcesdk.read_volume(d)
    except VcesdkError:
        return
    assert vol.hu.ndim == 3 and vol.hu.dtype == np.float32


def test_unknown_vr_in_a_used_header_tag_skips_that_file(series, reference):
    """Found by the fuzzer in CI: Modality's VR bytes 'CS' turned into 'C\\x00' made pydicom
    raise NotImplementedError on first access; the file is now skipped like any unreadable
    one and the series reads without it."""
    files = _files(series)
    raw = files[-1].read_bytes()
    tag = b"\x08\x00\x60\x00CS"
    assert raw.count(tag) == 1
    files[-1].write_bytes(raw.replace(tag, b"\x08\x00\x60\x00C\x00"))
    vol = vcesdk.read_volume(series)  # the last slice is dropped, the rest read as before
    assert vol.shape[0] == reference.shape[0] - 1
    np.testing.assert_array_equal(vol.hu, reference.hu[:-1])
