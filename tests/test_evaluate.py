"""vcesdk-eval: the report of a bundle against the NCCT identity baseline on phantoms."""
from __future__ import annotations

import json

import numpy as np
import pytest
from vcesdk.training.datacli import generate
from vcesdk.training.evaluate import main as eval_main
from vcesdk.training.metrics import image_metrics, noise_decomposition

import vcesdk


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("heldout") / "ds"
    # seeds 9000+ are never used by the training recipes (they train on seeds < 1000)
    return generate(out, 2, ["ncct", "pvp"], seed=9000, size_hwd=(112, 112, 16),
                    spacing_mm=(4, 2, 2), dicom=False, jobs=1, progress=False)


def test_report_schema_and_identity_baseline(held_out, tmp_path, capsys):
    out = tmp_path / "report"
    assert eval_main([str(vcesdk.DEFAULT_BUNDLE), "--data", str(held_out), "--out", str(out)]) == 0
    assert "| NCCT identity |" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    pvp = report["phases"]["pvp"]
    assert pvp["cases"] == ["P09000", "P09001"]
    for entry in (pvp["ncct_identity"], pvp["oracle"]):
        assert set(entry) == {"psnr", "ssim", "ms_ssim", "mae_hu"}
        assert all(set(v) == {"mean", "sd"} and np.isfinite(v["mean"]) for v in entry.values())
    model = pvp["models"]["vcesdk-demo-pvp"]
    assert set(model) == {"psnr", "ssim", "ms_ssim", "mae_hu", "headroom_closed"}
    # the oracle (noise-free truth vs the noisy target) is the ceiling: far above the identity
    oracle, ident = pvp["oracle"], pvp["ncct_identity"]
    assert oracle["psnr"]["mean"] > ident["psnr"]["mean"] + 5
    assert oracle["mae_hu"]["mean"] < 0.6 * ident["mae_hu"]["mean"]
    # headroom_closed = (model - identity) / (oracle - identity), per metric
    for m in ("psnr", "mae_hu"):
        assert model["headroom_closed"][m] == pytest.approx(
            (model[m]["mean"] - ident[m]["mean"]) / (oracle[m]["mean"] - ident[m]["mean"]),
            rel=1e-9)
    # the identity row is exactly the metrics of NCCT vs the truth, averaged over the cases
    per_case = []
    for pid in pvp["cases"]:
        ncct = vcesdk.read_volume(held_out / pid / "ncct.nii.gz").hu
        truth = vcesdk.read_volume(held_out / pid / "pvp.nii.gz").hu
        body = vcesdk.read_volume(held_out / pid / "labels.nii.gz").hu > 0
        per_case.append(image_metrics(ncct, truth, 60, 500, body))
    for m in ("psnr", "ssim", "ms_ssim", "mae_hu"):
        assert pvp["ncct_identity"][m]["mean"] == pytest.approx(
            np.mean([c[m] for c in per_case]), rel=1e-6)
    # PVP enhancement makes NCCT differ from the truth by tens of HU in the body
    assert 10 < pvp["ncct_identity"]["mae_hu"]["mean"] < 80
    # the oracle row is the clean phase the phantom generator writes, scored like a model
    clean = [image_metrics(vcesdk.read_volume(held_out / pid / "pvp_clean.nii.gz").hu,
                           vcesdk.read_volume(held_out / pid / "pvp.nii.gz").hu, 60, 500,
                           vcesdk.read_volume(held_out / pid / "labels.nii.gz").hu > 0)
             for pid in pvp["cases"]]
    assert oracle["psnr"]["mean"] == pytest.approx(np.mean([c["psnr"] for c in clean]),
                                                   rel=1e-6)
    # the error against the noise-free truth, split: the identity passes all of its noise
    noise = pvp["noise_decomposition"]
    assert set(noise) == {"ncct_identity", "vcesdk-demo-pvp"}
    assert noise["ncct_identity"]["ncct_noise_kept"]["mean"] == pytest.approx(1.0, abs=0.05)
    for row in noise.values():
        assert set(row) == {"error_rms_hu", "ncct_noise_kept", "other_error_rms_hu"}
        assert row["other_error_rms_hu"]["mean"] <= row["error_rms_hu"]["mean"] + 1e-9
    md = (out / "report.md").read_text()
    assert "## PVP (2 cases)" in md and "+/-" in md
    assert "| model | error RMS (HU) | NCCT noise kept | other error RMS (HU) |" in md
    assert "| oracle (noise-free truth) |" in md and "headroom closed PSNR / MAE" in md
    for png in ("example_pvp_vcesdk-demo-pvp.png", "histogram_pvp.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_noise_decomposition_splits_kept_noise_from_the_rest():
    rng = np.random.default_rng(0)
    ncct_clean = rng.uniform(-100, 100, (4, 32, 32))
    truth_clean = ncct_clean + 50.0
    n = rng.normal(0, 15, ncct_clean.shape)
    other = rng.normal(0, 5, ncct_clean.shape)
    # an exact enhancer of the noisy NCCT keeps all of its noise: kept 1, error RMS 15 HU
    exact = noise_decomposition(ncct_clean + n + 50.0, truth_clean, ncct_clean + n, ncct_clean)
    assert exact["ncct_noise_kept"] == pytest.approx(1.0, abs=1e-9)
    assert exact["other_error_rms_hu"] == pytest.approx(0.0, abs=1e-9)
    assert exact["error_rms_hu"] == pytest.approx(15.0, rel=0.05)
    # half the noise removed plus an independent 5 HU error
    half = noise_decomposition(truth_clean + 0.5 * n + other, truth_clean, ncct_clean + n,
                               ncct_clean)
    assert half["ncct_noise_kept"] == pytest.approx(0.5, abs=0.02)
    assert half["other_error_rms_hu"] == pytest.approx(5.0, rel=0.05)
    assert half["error_rms_hu"] == pytest.approx(np.hypot(7.5, 5.0), rel=0.05)
    mask = np.zeros(ncct_clean.shape, bool)
    mask[:, 8:24, 8:24] = True   # a mask selects the voxels
    masked = noise_decomposition(truth_clean + 0.5 * n, truth_clean, ncct_clean + n, ncct_clean,
                                 mask)
    assert masked["ncct_noise_kept"] == pytest.approx(0.5, abs=1e-9)
    with pytest.raises(ValueError, match="shapes differ"):
        noise_decomposition(truth_clean[:2], truth_clean, ncct_clean, ncct_clean)
    with pytest.raises(ValueError, match="equals its noise-free image"):
        noise_decomposition(truth_clean, truth_clean, ncct_clean, ncct_clean)


def test_noise_free_set_is_evaluated_without_a_noise_decomposition(tmp_path, capsys):
    """A phantom set made with --noise-hu 0 has an NCCT equal to its noise-free image: nothing
    to split, so the report has no noise table (and vcesdk-eval does not fail)."""
    data = generate(tmp_path / "clean", 1, ["ncct", "pvp"], seed=9000, size_hwd=(64, 64, 8),
                    spacing_mm=(4, 2, 2), noise_hu=0.0, dicom=False, jobs=1, progress=False)
    out = tmp_path / "report"
    assert eval_main([str(vcesdk.DEFAULT_BUNDLE), "--data", str(data), "--out", str(out)]) == 0
    pvp = json.loads((out / "report.json").read_text())["phases"]["pvp"]
    assert "noise_decomposition" not in pvp and "noise_decomposition_left_out" not in pvp
    assert pvp["oracle"]["mae_hu"]["mean"] == pytest.approx(0.0, abs=1e-6)


def test_dataset_without_the_phase_is_refused(held_out, tmp_path, capsys):
    d = tmp_path / "ap_only"
    (d / "P1").mkdir(parents=True)
    (d / "P1" / "ncct.nii.gz").write_bytes((held_out / "P09000" / "ncct.nii.gz").read_bytes())
    assert eval_main([str(vcesdk.DEFAULT_BUNDLE), "--data", str(d), "--out",
                      str(tmp_path / "r")]) == 1
    assert "no patient" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_run_folder_is_exported_then_evaluated(held_out, tmp_path):
    from helpers import tiny_recipe
    from vcesdk.training.trainer import Trainer

    import dataclasses

    Trainer(dataclasses.replace(tiny_recipe(2), name="tiny-pvp"), tmp_path / "run",
            progress=False).fit()
    out = tmp_path / "report"
    # two models side by side: each gets its own rows, from its own prediction
    assert eval_main([str(tmp_path / "run"), str(vcesdk.DEFAULT_BUNDLE), "--data",
                      str(held_out), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    pvp = report["phases"]["pvp"]
    name = "tiny-pvp"
    assert set(pvp["models"]) == {name, "vcesdk-demo-pvp"}
    assert np.isfinite(pvp[name]["mae_hu"]["mean"])
    assert set(pvp["noise_decomposition"]) == {"ncct_identity", name, "vcesdk-demo-pvp"}
    # a 2-step tiny run and the demo bundle predict different volumes
    assert pvp[name]["mae_hu"]["mean"] != pvp["vcesdk-demo-pvp"]["mae_hu"]["mean"]
    noise = pvp["noise_decomposition"]
    assert (noise[name]["error_rms_hu"]["mean"]
            != noise["vcesdk-demo-pvp"]["error_rms_hu"]["mean"])
    assert eval_main([str(tmp_path), "--data", str(held_out), "--out",
                      str(tmp_path / "r2")]) == 1  # neither a bundle nor a run folder
