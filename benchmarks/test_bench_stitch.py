"""pytest-benchmark cases for stitching: the pix2pix3D pattern (16 x 512 x 512 windows over
96 slices, Choi et al. 2021) for vcesdk's streaming kernel and its peers.

Run: python -m pytest benchmarks --benchmark-json=bench.json
(The standalone script bench_stitch.py adds MONAI/TorchIO, 256 slices, peak RSS, GB/s.)
"""
from __future__ import annotations

import pytest
from bench_stitch import STITCH_METHODS, _stitch_fn, _windows

DEPTH = 96


@pytest.fixture(scope="module", params=[1, 8], ids=lambda s: f"stride{s}")
def case(request):
    values, offsets = _windows(DEPTH, request.param)
    return request.param, values, offsets


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
@pytest.mark.parametrize("method", STITCH_METHODS)
def test_stitch(benchmark, case, method, blend):
    if method == "torch_inplace":
        pytest.importorskip("torch", reason="torch in-place peer needs torch")
    stride, values, offsets = case
    run = _stitch_fn(method, DEPTH, stride, blend, values, offsets)
    out = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert out.shape == (1, DEPTH, 512, 512)
