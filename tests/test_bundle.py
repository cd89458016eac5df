"""Model bundles: verification, tamper refusal, schema errors, providers."""
from __future__ import annotations

import json
import shutil

import pytest

import vcesdk
from vcesdk.bundle import load_bundle, validate_manifest
from vcesdk.errors import BundleError, ProviderError


@pytest.fixture()
def bundle_copy(tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(vcesdk.DEFAULT_BUNDLE, dst)
    return dst


@pytest.mark.parametrize("index,phase", [(0, "ap"), (1, "pvp"), (2, "dp")])
def test_default_bundles_are_verified_demos_of_their_phase(index, phase):
    path = vcesdk.DEFAULT_BUNDLES[index]
    b = load_bundle(path)
    m = b.manifest
    assert b.phase == phase and m["method"] == "pix2pix3d"
    assert m["demo"] is True and m["clinical_use"] is False
    assert "not for clinical use" in m["description"]
    assert [c["name"] for c in m["input"]["channels"]] == ["lung_bone", "vascular",
                                                           "mediastinal"]
    parity = m["files"]["model.onnx"]["parity"]
    assert parity["max_abs_hu"] <= parity["tolerance_hu"] <= 0.5
    assert m["files"]["generator.pt"]["role"] == "weights"
    assert sum(f.stat().st_size for f in path.iterdir()) < 8 * 2**20  # each bundle <= 8 MB
    assert vcesdk.DEFAULT_BUNDLE == vcesdk.DEFAULT_BUNDLES[1]


def test_changed_byte_is_refused(bundle_copy):
    model = bundle_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"SHA-256 of model.onnx .* was changed after export"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="SHA-256 of model.onnx"):
        vcesdk.Synthesizer(bundle_copy)


def test_swapped_weights_file_is_refused(bundle_copy):
    (bundle_copy / "generator.pt").write_bytes(b"not the weights")
    with pytest.raises(BundleError, match="SHA-256 of generator.pt"):
        load_bundle(bundle_copy)


def test_missing_file_and_manifest(bundle_copy, tmp_path):
    (bundle_copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="file model.onnx listed in the manifest is missing"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="has no manifest.json"):
        load_bundle(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(schema_version=99), "schema_version 99 is not supported"),
    (lambda m: m.pop("phase"), "missing phase"),
    (lambda m: m.update(phase="late"), "phase must be one of"),
    (lambda m: m["input"]["window"].update(slices=0), "input.window.slices must be a positive"),
    (lambda m: m["output"].update(compose="blend"), "output.compose must be one of"),
    (lambda m: m["inference"].update(blend="max"), "inference.blend must be one of"),
    (lambda m: m["input"]["channels"][0].pop("width"), r"input.channels\[0\] must have"),
    (lambda m: m["files"].update({"../evil.onnx": {"sha256": "0" * 64, "role": "model"}}),
     "must be a plain file name"),
])
def test_schema_errors_are_precise(edit, message):
    m = json.loads((vcesdk.DEFAULT_BUNDLE / "manifest.json").read_text())
    edit(m)
    with pytest.raises(BundleError, match=message):
        validate_manifest(m)


def test_invalid_json_manifest(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="invalid JSON"):
        load_bundle(bundle_copy)


def test_unknown_provider_lists_valid_ones():
    with pytest.raises(ProviderError, match=r"unknown execution provider 'CUDA'; valid: .*"
                                            r"CUDAExecutionProvider"):
        vcesdk.Synthesizer(providers=["CUDA"])


def test_providers_in_order_and_chosen_one_reported():
    syn = vcesdk.Synthesizer(providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    import onnxruntime as ort

    expected = ("CUDAExecutionProvider" if "CUDAExecutionProvider"
                in ort.get_available_providers() else "CPUExecutionProvider")
    assert syn.provider == expected


def test_info_command_reports_bundle_and_kernel():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "vcesdk.cli", "info"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["phase"] == "pvp" and info["demo"] is True
    # the demo predicts the enhancement (+/-500 HU) added to the input, no auxiliary output
    assert info["outputs"] == {"image": {"channel": 0, "hu_range": [-500.0, 500.0],
                                         "compose": "add_residual"}}
    assert info["native_kernel"]["native"] is True and info["native_kernel"]["openmp"] is True
