"""Stitching throughput: vcesdk._C against the NumPy reference on the pix2pix3D pattern
(16-slice windows at stride 1, Choi et al. 2021), reduced in-plane to keep the run short.

Run: python -m pytest benchmarks --benchmark-json=bench.json
"""
from __future__ import annotations

import numpy as np
import pytest

from vcesdk.stitch import OverlapAverager, window_grid

SHAPE = (48, 256, 256)
WINDOW = (16, 256, 256)


@pytest.fixture(scope="module")
def windows():
    offsets = window_grid(SHAPE, WINDOW, (1, 256, 256))
    values = np.random.default_rng(0).standard_normal((len(offsets), 1, *WINDOW)).astype(
        np.float32)
    return values, offsets


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_stitch(benchmark, windows, backend, blend):
    values, offsets = windows

    def run():
        m = OverlapAverager(SHAPE, 1, WINDOW, blend=blend, backend=backend)
        for i in range(0, len(offsets), 4):
            m.aggregate(values[i:i + 4], offsets[i:i + 4])
        return m.finalize()

    out = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert out.shape == (1, *SHAPE)
