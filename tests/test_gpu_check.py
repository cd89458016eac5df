"""benchmarks/gpu_check.sh in its CPU dry run: the same code path as on a GPU machine with the
CPU providers, on a few slices of the sample CT and lung1 read from .npz (as on a GPU machine
without SimpleITK)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the GPU check needs torch (export extra)")

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_parity_and_latency(lung1_path, tmp_path):
    import vcesdk
    from vcesdk.data import sample_ct
    from vcesdk.planning import prepare_model_input

    env = {**os.environ, "PYTHON": sys.executable}
    inputs = tmp_path / "inputs"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out",
                           "unused", "--save-inputs", str(inputs), "--ct",
                           f"sample={sample_ct()}", "--ct", f"lung1={lung1_path}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lung1 = np.load(inputs / "lung1.npz")
    np.testing.assert_array_equal(lung1["hu"], vcesdk.read_volume(lung1_path).hu)

    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run",
                           "--kinds", "TorchScript", "--precisions", "fp32", "--slices", "4",
                           "--repeats", "1", "--ct", f"sample={inputs / 'sample.npz'}",
                           "--ct", f"lung1={inputs / 'lung1.npz'}"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert "TensorRTEngine" in report["skipped"]  # no TensorRT here: skipped with its reason
    assert "TensorRT is not installed" in report["skipped"]["TensorRTEngine"]
    bundle = vcesdk.load_bundle(Path(str(out)[:-len(".json")] + ".work") / "bundle")
    assert "torchscript" in bundle.model_formats
    by_ct = {r["ct"]: r for r in report["results"]}
    assert set(by_ct) == {"sample", "lung1"}
    for name, r in by_ct.items():
        assert "error" not in r, r
        assert r["provider"] == "TorchScript" and r["precision"] == "fp32" and r["slices"] == 4
        vol = vcesdk.read_volume(lung1_path if name == "lung1" else sample_ct())
        vol = vcesdk.CTVolume(hu=vol.hu[:4], spacing_zyx_mm=vol.spacing_zyx_mm,
                              origin_xyz_mm=vol.origin_xyz_mm, direction=vol.direction)
        assert r["windows"] == len(prepare_model_input(bundle, vol).windows())
        assert 0.0 <= r["parity_max_abs_hu"] <= r["tolerance_hu"] == 0.5 and r["parity_passed"]
        assert r["model_ms_per_slice_median"] > 0
        assert r["end_to_end_ms_per_slice_median"] > 0
    assert "wrote" in proc.stdout and "parity" in proc.stdout


def test_gpu_check_without_a_gpu_refuses_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out",
                           str(tmp_path / "x.json"), "--kinds", "TorchScript"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: torch sees no CUDA GPU; pass --dry-run for the CPU "
                                   "path")
    assert not (tmp_path / "x.json").exists()
