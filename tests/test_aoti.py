"""The dynamic ExportedProgram and the AOTInductor package (format ``aoti``): one compile of the
demo generator per module (C++ through the host compiler, about a minute on 2 cores), then
two plane sizes (the abdomen's and lung1's model grids) and batches 1 and 2 against ONNX
Runtime within 0.5 HU, parity in the manifest, the runtime provider, and the CLI round trip
``vcesdk export BUNDLE --format onnx,aoti`` / ``vcesdk synthesize CT --providers AOTInductor``."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="AOTInductor needs torch (export extra)")

import vcesdk  # noqa: E402
from vcesdk.bundle import load_bundle  # noqa: E402
from vcesdk.errors import BundleError  # noqa: E402

pytestmark = pytest.mark.slow


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vcesdk.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def aoti_bundle(tmp_path_factory, abdomen_path):
    """The demo generator exported as ONNX + AOTInductor through the CLI (one compile)."""
    out = tmp_path_factory.mktemp("aoti") / "bundle"
    proc = _cli("export", str(vcesdk.DEFAULT_BUNDLE), "-o", str(out), "--format", "onnx,aoti",
                "--parity-input", str(abdomen_path), "--demo")
    assert proc.returncode == 0, proc.stderr
    return load_bundle(out)


@pytest.fixture(scope="module")
def real_windows(aoti_bundle, abdomen_volume, lung1_path):
    """Model-input windows of two real CTs, each on its own model grid plane size."""
    from vcesdk.planning import prepare_model_input

    lung1 = vcesdk.read_volume(lung1_path)
    out = {}
    for name, vol in (("abdomen", abdomen_volume), ("lung1", lung1)):
        w = prepare_model_input(aoti_bundle, vol).windows(2)
        out[name] = w
    assert out["abdomen"].shape[-2:] != out["lung1"].shape[-2:]  # two plane sizes
    return out


def _hu(bundle) -> float:
    lo, hi = bundle.output_hu
    return (hi - lo) / 2.0  # HU per model unit


def test_manifest_records_aoti_parity(aoti_bundle):
    meta = aoti_bundle.manifest["files"]["model.pt2"]
    assert meta["format"] == "aoti" and meta["device"] == "cpu"
    assert meta["precision"] == "fp32" and meta["torch"] == torch.__version__
    par = meta["parity"]
    assert par["provider"] == "AOTInductor" and par["tolerance_hu"] == 0.5
    assert 0 <= par["max_abs_hu"] <= 0.5 and par["windows"] >= 1
    assert meta["shapes"]["min"][0] == 1 and meta["shapes"]["max"][3] == 1024


def test_exported_program_and_aoti_agree_with_onnx(aoti_bundle, real_windows):
    from vcesdk.backends import AotiBackend, OrtBackend
    from vcesdk.engines import engine_profiles
    from vcesdk.export.bundle_writer import checkpoint_from_bundle
    from vcesdk.export.exported_program import export_program
    from vcesdk.training.trainer import generator_from_checkpoint

    gen = generator_from_checkpoint(checkpoint_from_bundle(aoti_bundle.path))
    prof = engine_profiles(aoti_bundle, plane=(16, 256, 1024))["ncct"]
    program = export_program(gen, prof, gen.size_multiple()).module()
    aoti = AotiBackend(aoti_bundle.file("model", "aoti"))
    onnx = OrtBackend(aoti_bundle.file("model", "onnx"), ["CPUExecutionProvider"])
    scale = _hu(aoti_bundle)
    seen = set()
    for name, windows in real_windows.items():
        for batch in (windows[:1], windows[:2]):
            ref = onnx.run(batch)
            with torch.no_grad():
                ep = program(torch.from_numpy(batch)).numpy()
            got = aoti.run(batch)
            assert got.shape == ref.shape == (len(batch), 1, *batch.shape[2:])
            assert np.abs(got - ref).max() * scale <= 0.5, name
            assert np.abs(ep - ref).max() * scale <= 0.5, name
            seen.add((len(batch), batch.shape[-2:]))
    assert len(seen) == 4  # batches 1 and 2 on both plane sizes


def test_aoti_provider_in_the_runtime_and_cli(aoti_bundle, abdomen_volume, abdomen_path,
                                              tmp_path):
    syn = vcesdk.Synthesizer(aoti_bundle, providers=["AOTInductor"])
    cpu = vcesdk.Synthesizer(aoti_bundle, providers=["CPUExecutionProvider"])
    assert syn.provider == "AOTInductor"
    a, b = syn.synthesize(abdomen_volume).hu, cpu.synthesize(abdomen_volume).hu
    assert np.abs(a - b).max() <= 0.5
    proc = _cli("synthesize", str(abdomen_path), "-o", str(tmp_path / "out"), "--model",
                str(aoti_bundle.path), "--providers", "AOTInductor", "--format", "nifti", "-q")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "AOTInductor" in json.dumps(report)
    # the demo bundle has no AOTInductor package: the provider is unavailable for it
    with pytest.raises(vcesdk.errors.ProviderError, match="none of AOTInductor is available"):
        vcesdk.Synthesizer(providers=["AOTInductor"])


def test_dynamic_shapes_use_the_network_multiples():
    from vcesdk.export.exported_program import dynamic_shapes

    (dims,) = dynamic_shapes({"min": [1, 3, 8, 64, 64], "max": [4, 3, 8, 512, 512]},
                             (8, 16, 16))
    assert set(dims) == {0, 3, 4}
    assert str(dims[3]) .startswith("16*h_16") or "h_16" in str(dims[3])
    with pytest.raises(BundleError, match="one window depth"):
        dynamic_shapes({"min": [1, 3, 8, 64, 64], "max": [1, 3, 16, 64, 64]}, (8, 16, 16))
    with pytest.raises(BundleError, match="no h in 65..79 is a multiple of 16"):
        dynamic_shapes({"min": [1, 3, 8, 65, 64], "max": [1, 3, 8, 79, 64]}, (8, 16, 16))
