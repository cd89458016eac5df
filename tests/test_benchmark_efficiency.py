"""The benchmark's arithmetic-efficiency fields: FLOPs per window from the manifest (scaled to
the run's window) or counted from generator.pt, the NumPy matmul reference, and the
arithmetic that ties them (no timing is asserted)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vcesdk
from vcesdk.benchmark import efficiency_fields, model_flops
from vcesdk.bundle import load_bundle, window_flops
from vcesdk.errors import BundleError

HAVE_TORCH = __import__("importlib").util.find_spec("torch") is not None


def _with_flops(dst: Path, entry: dict | None) -> Path:
    """A copy of the PVP demo bundle whose manifest carries ``network.flops_per_window`` =
    `entry` (None: a bundle exported before the field, without it)."""
    shutil.copytree(vcesdk.DEFAULT_BUNDLE, dst)
    m = json.loads((dst / "manifest.json").read_text())
    if entry is None:
        m["network"].pop("flops_per_window", None)
    else:
        m["network"]["flops_per_window"] = entry
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory) -> Path:
    """24 x 64 x 64 on the demo's 4 x 2 x 2 mm grid (windows 8 x 64 x 64, 5 at the demo stride 4)."""
    z, y, x = np.meshgrid(np.arange(24), np.arange(64), np.arange(64), indexing="ij")
    hu = np.where(np.hypot(y - 31.5, x - 31.5) < 26, 40.0 + z, -1000.0).astype(np.float32)
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    vcesdk.write_volume(vcesdk.CTVolume(hu=hu, spacing_zyx_mm=(4.0, 2.0, 2.0)), path)
    return path


def test_window_flops_from_the_manifest(tmp_path):
    demo = load_bundle(vcesdk.DEFAULT_BUNDLE)
    # the shipped demos carry the count made at export (8 x 160 x 192, 3.85 GFLOP), scaled by
    # the plane's voxels to another whole-plane window
    assert window_flops(demo, (8, 160, 192)) == 3_845_652_480
    assert window_flops(demo, (8, 64, 64)) == pytest.approx(3_845_652_480 * 64 * 64 / (160 * 192))
    linear = load_bundle(_with_flops(tmp_path / "lin", {
        "flops": 1_000_000, "window": [8, 32, 32], "linear_in_voxels": True}))
    assert window_flops(linear, (8, 32, 32)) == 1e6
    assert window_flops(linear, (8, 64, 96)) == 1e6 * 6  # (64 x 96) / (32 x 32) the voxels
    fixed = load_bundle(_with_flops(tmp_path / "fixed", {
        "flops": 1_000_000, "window": [8, 32, 32], "linear_in_voxels": False}))
    assert window_flops(fixed, (8, 32, 32)) == 1e6
    assert window_flops(fixed, (8, 64, 64)) is None


@pytest.mark.parametrize("entry, message", [
    ({"flops": -1, "window": [8, 32, 32]}, "flops must be a non-negative integer, got -1"),
    ({"flops": 10, "window": [8, 32]}, "window must be three positive integers"),
    ({"flops": 10, "window": [8, 32, 32], "linear_in_voxels": "yes"},
     "linear_in_voxels must be true or false, got 'yes'"),
    ([1, 2], "network.flops_per_window must be an object"),
])
def test_a_malformed_flops_entry_is_refused(tmp_path, entry, message):
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_bundle(_with_flops(tmp_path / "b", entry))


def test_efficiency_arithmetic():
    f = efficiency_fields(2.5e9, 12, 3.0, 60.0)
    assert f["model_gflops"] == pytest.approx(2.5e9 * 12 / 1e9)
    assert f["achieved_gflops_per_s"] == pytest.approx(30.0 / 3.0)
    assert f["peak_matmul_gflops_per_s"] == 60.0
    assert f["efficiency"] == pytest.approx(10.0 / 60.0)
    assert efficiency_fields(None, 12, 3.0, 60.0) == {
        "model_gflops": None, "achieved_gflops_per_s": None,
        "peak_matmul_gflops_per_s": 60.0, "efficiency": None}
    assert efficiency_fields(2.5e9, 12, 3.0, None)["efficiency"] is None  # a GPU backend


def test_without_torch_the_count_is_null_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vcesdk.export.flops", None)  # import fails
    out = model_flops(str(_with_flops(tmp_path / "b", None)), (8, 64, 64))
    assert out["per_window"] is None and out["source"] is None
    assert out["reason"].startswith("the manifest has no network.flops_per_window, and "
                                    "counting it needs torch and vcesdk.export")


def _check_entry(e: dict) -> None:
    """The efficiency fields of one backend entry and their arithmetic."""
    assert e["model_gflops"] == pytest.approx(e["flops_per_window"] * e["windows"] / 1e9)
    assert e["achieved_gflops_per_s"] == pytest.approx(e["model_gflops"] / e["model_s_median"])
    assert e["peak_matmul_gflops_per_s"] == e["peak_matmul"]["gflops_per_s"] > 0
    assert e["efficiency"] == pytest.approx(e["achieved_gflops_per_s"]
                                            / e["peak_matmul_gflops_per_s"])
    pm = e["peak_matmul"]
    assert (pm["n"], pm["dtype"], pm["threads"]) == (2048, "float32", e["threads"])
    assert pm["blas"] and pm["threads_env"]["OPENBLAS_NUM_THREADS"] == str(e["threads"])
    assert e["flops"]["per_window"] == e["flops_per_window"]
    assert e["flops"]["window"] == e["window"]


def test_benchmark_json_and_table_with_a_manifest_count(small_ct, tmp_path):
    bundle = _with_flops(tmp_path / "b", {"flops": 123_000_000, "window": [8, 32, 32],
                                          "linear_in_voxels": True})
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "vcesdk.cli", "benchmark", str(bundle),
                           "--providers", "CPUExecutionProvider", "--input", str(small_ct),
                           "--repeats", "1", "--warmup", "0", "--write-format", "nifti",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    e = json.loads(out.read_text())["backends"]["CPUExecutionProvider"]
    assert (e["window"], e["windows"]) == ([8, 64, 64], 5)  # 24 slices at stride 4
    assert e["flops_per_window"] == 123e6 * 4  # 8 x 64 x 64 = 4 x the counted voxels
    assert e["flops"]["source"].startswith("manifest network.flops_per_window")
    _check_entry(e)
    header = proc.stdout.splitlines()[1]
    assert header.split()[-4:] == ["GFLOP", "GFLOP/s", "matmul", "eff"]
    assert "NumPy matmul (" in proc.stdout


@pytest.mark.skipif(not HAVE_TORCH, reason="counting a bundle without the field needs torch")
def test_benchmark_counts_a_bundle_without_the_field_with_torch(small_ct, tmp_path):
    from vcesdk.benchmark import benchmark
    from vcesdk.export.flops import count_bundle_flops

    bundle = _with_flops(tmp_path / "b", None)  # exported before network.flops_per_window
    report = benchmark(str(bundle), providers=["CPUExecutionProvider"],
                       ct=str(small_ct), repeats=1, warmup=0, write_format="nifti")
    e = report["backends"]["CPUExecutionProvider"]
    assert e["flops"]["source"].startswith("counted now with "
                                           "torch.utils.flop_counter.FlopCounterMode")
    assert e["flops_per_window"] == count_bundle_flops(bundle, (8, 64, 64))
    # the count the shipped demo carries from its export, scaled to this window, agrees
    assert window_flops(load_bundle(vcesdk.DEFAULT_BUNDLE), (8, 64, 64)) == pytest.approx(
        e["flops_per_window"], rel=1e-6)
    _check_entry(e)
