"""pytest-benchmark cases for the runtime: one whole synthesis of a real CT (lung1, 48 x 512
x 512) per backend that can run here, through ``Synthesizer.synthesize``.

Run: python -m pytest benchmarks/test_bench_runtime.py --benchmark-json=runtime.json
(``vcesdk benchmark BUNDLE --json FILE`` adds read/write, per-stage times and peak memory.)
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import vcesdk
from vcesdk.benchmark import candidate_providers

ROOT = Path(__file__).resolve().parents[1]
SHARED_CT = Path(os.environ.get("VCESDK_SHARED_CT", ROOT.parent / "shared" / "data" / "ct"))


@pytest.fixture(scope="module")
def lung1():
    return vcesdk.read_volume(SHARED_CT / "pyradiomics_lung1" / "lung1_image.nrrd")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, lung1):
    """The demo model with ONNX and TorchScript files (TorchScript needs the export extra)."""
    try:
        from vcesdk.export import export_bundle
        from vcesdk.export.bundle_writer import checkpoint_from_bundle
    except ImportError:
        return Path(vcesdk.DEFAULT_BUNDLE)
    return export_bundle(checkpoint_from_bundle(vcesdk.DEFAULT_BUNDLE),
                         tmp_path_factory.mktemp("b") / "bundle", lung1,
                         formats="onnx,torchscript", demo=True, max_parity_windows=1)


@pytest.mark.parametrize("provider", ["CPUExecutionProvider", "TorchScript", "CUDAExecutionProvider",
                                      "TensorrtExecutionProvider", "TensorRTEngine"])
def test_synthesize(benchmark, bundle, lung1, provider):
    ok, skipped = candidate_providers(str(bundle))
    if provider not in ok:
        pytest.skip(f"{provider}: {skipped.get(provider, 'not available')}")
    syn = vcesdk.Synthesizer(bundle, providers=[provider])
    out = benchmark.pedantic(syn.synthesize, args=(lung1,), rounds=3, warmup_rounds=1)
    assert out.shape == lung1.shape
    benchmark.extra_info.update(provider=syn.provider,
                                model_ms_per_slice=syn.last_latency.median_ms_per_slice,
                                end_to_end_ms_per_slice=syn.last_latency.end_to_end_ms_per_slice)
