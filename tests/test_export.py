"""ONNX export, parity against eager PyTorch, and bundles made from checkpoints."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export tests need the export extra (torch)")
pytest.importorskip("onnx", reason="export tests need the export extra (onnx)")

from helpers import tiny_recipe  # noqa: E402
from vcesdk.export import export_bundle, export_onnx, onnx_parity  # noqa: E402
from vcesdk.training.methods import create_generator  # noqa: E402
from vcesdk.training.recipe import builtin_recipe, load_recipe  # noqa: E402
from vcesdk.training.trainer import Trainer, load_checkpoint  # noqa: E402

import vcesdk  # noqa: E402
from vcesdk.errors import BundleError  # noqa: E402


@pytest.fixture(scope="module")
def small_generator():
    torch.manual_seed(0)
    return create_generator("unet3d", dict(in_channels=3, out_channels=1, base=8,
                                           strides=[[2, 2, 2], [2, 2, 2], [1, 2, 2]])).eval()


def test_onnx_export_dynamic_shapes_and_parity(small_generator, tmp_path):
    import onnx

    path = export_onnx(small_generator, tmp_path / "g.onnx", (1, 3, 8, 32, 32))
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "depth", "height", "width"]
    assert model.opset_import[0].version == 17
    rng = np.random.default_rng(0)
    windows = [rng.uniform(-1, 1, (2, 3, 8, 48, 40)).astype(np.float32),
               rng.uniform(-1, 1, (1, 3, 16, 64, 96)).astype(np.float32)]
    parity = onnx_parity(small_generator, path, windows, (-1000, 1000))
    assert parity["passed"] and parity["windows"] == 3
    assert parity["max_abs_hu"] < 0.5


def test_onnx_export_of_the_input_skip_u_net(tmp_path):
    """unet_l1_small's generator (input_skip: the full-resolution level) exports to ONNX with
    dynamic shapes and matches PyTorch."""
    torch.manual_seed(0)
    cfg = load_recipe(builtin_recipe("unet_l1_small")).generator["config"]
    g = create_generator("unet3d", {**cfg, "zero_init": False}).eval()
    assert g.input_skip and g.size_multiple() == (4, 32, 32)
    path = export_onnx(g, tmp_path / "g.onnx", (1, 3, 8, 32, 32))
    x = [np.random.default_rng(2).uniform(-1, 1, (2, 3, 8, 64, 96)).astype(np.float32)]
    parity = onnx_parity(g, path, x, (-500, 500))
    assert parity["passed"] and parity["max_abs_hu"] < 0.5


def test_flop_count_golden_case():
    """One 3x3x3 convolution, 2 -> 4 channels, 'same' padding, on a 1 x 2 x 2 x 4 x 4 input:
    2 FLOPs x (4 x 2 x 4 x 4 outputs) x (2 x 27 taps) = 13824 (the bias is not counted)."""
    from vcesdk.export.flops import count_flops

    conv = torch.nn.Conv3d(2, 4, kernel_size=3, padding=1)
    assert count_flops(conv, (1, 2, 2, 4, 4)) == 2 * (4 * 2 * 4 * 4) * (2 * 27) == 13824
    assert count_flops(conv, (3, 2, 2, 4, 4)) == 3 * 13824
    with pytest.raises(vcesdk.errors.InputError, match=r"\(B, C, d, h, w\)"):
        count_flops(conv, (2, 2, 4, 4))


def test_parity_detects_a_different_model(small_generator, tmp_path):
    path = export_onnx(small_generator, tmp_path / "g.onnx", (1, 3, 8, 32, 32))
    other = create_generator("unet3d", dict(in_channels=3, out_channels=1, base=8,
                                            strides=[[2, 2, 2], [2, 2, 2], [1, 2, 2]])).eval()
    x = [np.random.default_rng(1).uniform(-1, 1, (1, 3, 8, 32, 32)).astype(np.float32)]
    parity = onnx_parity(other, path, x, (-1000, 1000))
    assert not parity["passed"] and parity["max_abs_hu"] > 1.0


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    Trainer(tiny_recipe(2), run, resume=False, progress=False).fit()
    return load_checkpoint(run)


def test_checkpoint_to_bundle_runs_in_the_runtime(tiny_checkpoint, abdomen_volume, tmp_path):
    out = export_bundle(tiny_checkpoint, tmp_path / "bundle", abdomen_volume)
    m = json.loads((out / "manifest.json").read_text())
    par = m["files"]["model.onnx"]["parity"]
    assert par["max_abs_hu"] <= par["tolerance_hu"] == 0.5
    assert par["window_shape"][0] == 3 and par["windows"] >= 1
    assert m["network"]["config"]["base"] == 8
    assert m["build"]["torch"] == torch.__version__
    # FLOPs per window, counted once at export at the parity CT's window
    fl = m["network"]["flops_per_window"]
    assert fl["window"] == par["window_shape"][1:] and fl["linear_in_voxels"] is True
    assert fl["counter"] == "torch.utils.flop_counter.FlopCounterMode"
    from vcesdk.export.flops import count_bundle_flops

    assert fl["flops"] == count_bundle_flops(out, fl["window"]) > 0
    d, h, w = fl["window"]
    assert vcesdk.bundle.window_flops(vcesdk.load_bundle(out), (d, 2 * h, w)) == 2 * fl["flops"]
    # the weights file loads safely and reproduces the generator
    state = torch.load(out / "generator.pt", weights_only=True)
    assert state["network"]["name"] == "unet3d"
    syn = vcesdk.Synthesizer(out)
    result = syn.synthesize(abdomen_volume)
    assert result.shape == abdomen_volume.shape
    assert result.spacing_zyx_mm == abdomen_volume.spacing_zyx_mm
    assert np.isfinite(result.hu).all()
    # refuses to overwrite
    with pytest.raises(vcesdk.errors.VolumeWriteError, match="already exists"):
        export_bundle(tiny_checkpoint, out, abdomen_volume)


def test_failed_parity_writes_nothing(tiny_checkpoint, abdomen_volume, tmp_path, monkeypatch):
    import vcesdk.export.engine_build as eb  # the parity check the bundle writer runs

    monkeypatch.setattr(eb, "measure_parity", lambda *a, **k: {
        "max_abs_hu": 3.0, "tolerance_hu": 0.5, "windows": 1, "passed": False,
        "provider": "CPUExecutionProvider"})
    with pytest.raises(BundleError, match=r"onnx parity failed: max \|onnx - eager\| = 3.000 HU"):
        export_bundle(tiny_checkpoint, tmp_path / "b", abdomen_volume)
    assert list(tmp_path.iterdir()) == []


def test_torchscript_export_parity_and_runtime_backend(tiny_checkpoint, abdomen_volume,
                                                      tmp_path):
    out = export_bundle(tiny_checkpoint, tmp_path / "bundle", abdomen_volume,
                        formats="onnx,torchscript")
    m = json.loads((out / "manifest.json").read_text())
    ts = m["files"]["model.ts"]
    assert ts["format"] == "torchscript" and ts["precision"] == "fp32" and ts["frozen"] is True
    assert ts["parity"]["max_abs_hu"] <= ts["parity"]["tolerance_hu"] == 0.5
    a = vcesdk.Synthesizer(out, providers=["TorchScript"])
    b = vcesdk.Synthesizer(out, providers=["CPUExecutionProvider"])
    assert a.provider == "TorchScript:cpu" and b.provider == "CPUExecutionProvider"
    ra, rb = a.synthesize(abdomen_volume), b.synthesize(abdomen_volume)
    np.testing.assert_allclose(ra.hu, rb.hu, atol=0.5)  # the two backends agree within 0.5 HU


def test_format_table_refuses_unknown_formats_and_options(tiny_checkpoint, abdomen_volume,
                                                         tmp_path):
    from vcesdk.errors import InputError
    from vcesdk.formats import FORMATS, check_options, parse_formats

    assert [f.name for f in parse_formats("onnx, torchscript,onnx")] == ["onnx", "torchscript"]
    with pytest.raises(InputError, match=r"unknown export format 'tensorrtt'; valid: onnx, "
                                         r"torchscript, aoti, aoti_cuda, tensorrt, "
                                         r"torch_tensorrt; did you mean 'tensorrt'\?"):
        parse_formats("onnx,tensorrtt")
    with pytest.raises(InputError, match=r"takes no option 'opsett'.*did you mean 'opset'"):
        check_options(FORMATS["onnx"], {"opsett": 17})
    with pytest.raises(InputError, match=r"precision='fp16' is not allowed; choose one of fp32"):
        check_options(FORMATS["onnx"], {"precision": "fp16"})
    assert check_options(FORMATS["torchscript"], {"mode": "trace"}) == {
        "mode": "trace", "freeze": True, "precision": "fp32"}
    assert FORMATS["tensorrt"].needs_gpu and not FORMATS["onnx"].needs_gpu
    with pytest.raises(InputError, match="bogus"):
        export_bundle(tiny_checkpoint, tmp_path / "b", abdomen_volume, formats="bogus")
    assert not (tmp_path / "b").exists()


def test_export_cli_from_a_bundle(tmp_path, abdomen_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "vcesdk.cli", "export",
                           str(vcesdk.DEFAULT_BUNDLE), "-o", str(tmp_path / "re"), "--format",
                           "onnx,torchscript", "--parity-input", str(abdomen_path), "--demo"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "onnx parity" in proc.stdout and "torchscript parity" in proc.stdout, proc.stdout
    m = json.loads((tmp_path / "re" / "manifest.json").read_text())
    assert set(m["files"]) == {"model.onnx", "model.ts", "generator.pt"}
    proc = subprocess.run([sys.executable, "-m", "vcesdk.cli", "export",
                           str(vcesdk.DEFAULT_BUNDLE), "-o", str(tmp_path / "x"), "--format",
                           "onnx,tensorrtt", "--parity-input", str(abdomen_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "did you mean 'tensorrt'" in proc.stderr
