"""The slice-stride override: ``Synthesizer(stride=...)``, ``vcesdk synthesize --stride`` and
``vcesdk benchmark --stride`` (the window count follows it, the bundle's own stride gives the
same output as no override, a stride the window cannot cover is refused)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

import vcesdk
from vcesdk.errors import InputError
from vcesdk.planning import plan_windows, with_slice_stride
from vcesdk.stitch import window_grid


@pytest.fixture(scope="module")
def demo():
    return vcesdk.load_bundle(vcesdk.DEFAULT_BUNDLE)  # window 8 slices, stride 4, 4x2x2 mm


@pytest.fixture(scope="module")
def small_volume():
    """24 slices of 64 x 64 on the demo's 4 x 2 x 2 mm grid: no resampling, no padding; a
    smooth body-like ramp from air to soft tissue."""
    z, y, x = np.meshgrid(np.arange(24), np.arange(64), np.arange(64), indexing="ij")
    r = np.hypot(y - 31.5, x - 31.5)
    hu = np.where(r < 26, 40.0 + 2.0 * z + 0.5 * y, -1000.0).astype(np.float32)
    return vcesdk.CTVolume(hu=hu, spacing_zyx_mm=(4.0, 2.0, 2.0))


# windows over 24 slices, window 8, last window flush: starts 0..16 every `stride` (+ 16)
GOLDEN_WINDOWS = {1: 17, 2: 9, 3: 7, 4: 5, 8: 3}


@pytest.mark.parametrize("stride", sorted(GOLDEN_WINDOWS))
def test_the_stride_sets_the_window_plan(demo, stride):
    b = with_slice_stride(demo, stride)
    padded, window, planned = plan_windows(b, (24, 64, 64))
    assert (padded, window, planned) == ((24, 64, 64), (8, 64, 64), (stride, 64, 64))
    assert len(window_grid(padded, window, planned)) == GOLDEN_WINDOWS[stride]
    assert b.manifest is demo.manifest and demo.stride == (4, None, None)  # a copy


@pytest.mark.parametrize("stride", [1, 8])
def test_synthesizer_runs_the_windows_of_its_stride(demo, small_volume, stride, caplog):
    with caplog.at_level(logging.WARNING, logger="vcesdk.runtime"):
        syn = vcesdk.Synthesizer(demo, stride=stride)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"bundle {demo.name}: slice stride {stride} overrides the bundle's "
                        f"stride 4 (window depth 8)"]
    assert (syn.stride, syn.bundle_stride) == (stride, 4)
    out = syn.synthesize(small_volume)
    assert syn.last_latency.windows == GOLDEN_WINDOWS[stride]
    assert syn.last_latency.window == (8, 64, 64)
    assert out.shape == small_volume.shape and np.isfinite(out.hu).all()


def test_the_bundles_own_stride_is_bit_identical_and_silent(demo, small_volume, caplog):
    plain = vcesdk.Synthesizer(demo)
    with caplog.at_level(logging.WARNING, logger="vcesdk.runtime"):
        same = vcesdk.Synthesizer(demo, stride=4)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    np.testing.assert_array_equal(same.synthesize(small_volume).hu,
                                  plain.synthesize(small_volume).hu)
    assert same.last_latency.windows == plain.last_latency.windows == GOLDEN_WINDOWS[4]


@pytest.mark.parametrize("bad", [0, -1, 9, 2.5, True, "2"])
def test_a_stride_outside_the_window_is_refused(demo, bad):
    with pytest.raises(InputError) as err:
        vcesdk.Synthesizer(demo, stride=bad)
    assert str(err.value) == (
        f"stride must be an integer from 1 to the window depth of bundle {demo.name} (8 "
        f"slices; a larger stride would leave slices that no window covers), got {bad!r}")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vcesdk.cli", *args], capture_output=True,
                          text=True, timeout=600)


def test_cli_stride_is_used_warned_and_recorded(small_volume, tmp_path):
    src = tmp_path / "ct.nii.gz"
    vcesdk.write_volume(small_volume, src)
    out = tmp_path / "out"
    proc = _cli("synthesize", str(src), "-o", str(out), "--format", "nifti", "--model",
                str(vcesdk.DEFAULT_BUNDLE), "--stride", "2", "--hu-check", "off",
                "--contrast-guard", "off", "-q")
    assert proc.returncode == 0, proc.stderr
    assert ("slice stride 2 overrides the bundle's stride 4 (window depth 8)"
            in proc.stderr)
    report = json.loads((out / "report.json").read_text())
    assert (report["stride"], report["bundle_stride"]) == (2, 4)
    assert report["latency"]["windows"] == GOLDEN_WINDOWS[2]
    # out of range: one error line, nothing written
    proc = _cli("synthesize", str(src), "-o", str(tmp_path / "bad"), "--stride", "9")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "vcesdk: error: stride must be an integer from 1 to the window depth")
    assert not (tmp_path / "bad").exists()


def test_benchmark_stride_is_used_warned_and_recorded(small_volume, tmp_path):
    from vcesdk.benchmark import benchmark

    src = tmp_path / "ct.nii.gz"
    vcesdk.write_volume(small_volume, src)
    out = tmp_path / "bench.json"
    proc = _cli("benchmark", str(vcesdk.DEFAULT_BUNDLE), "--providers", "CPUExecutionProvider",
                "--input", str(src), "--repeats", "1", "--warmup", "0", "--write-format",
                "nifti", "--stride", "8", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "vcesdk: warning: slice stride 8 overrides the bundle's stride 4" in proc.stderr
    report = json.loads(out.read_text())
    entry = report["backends"]["CPUExecutionProvider"]
    assert report["stride"] == 8
    assert (entry["stride"], entry["bundle_stride"], entry["windows"]) == (8, 4, 3)
    with pytest.raises(InputError, match="from 1 to the window depth"):  # before any worker
        benchmark(str(vcesdk.DEFAULT_BUNDLE), ct=str(src), stride=0)
