"""Overlap-average kernel and sliding-window inference."""
from __future__ import annotations

import numpy as np
import pytest

import vcesdk
from vcesdk import _native
from vcesdk.errors import InputError
from vcesdk.stitch import (
    OverlapAverager,
    accumulate_reference,
    finalize_reference,
    gaussian_weight_map,
    sliding_window,
    window_grid,
    window_starts,
)


def test_native_kernel_is_built_with_openmp():
    info = _native.build_info()
    assert info["native"] is True
    assert info["openmp"] is True


def test_window_starts_last_window_flush_with_border():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(4, 4, 1) == [0]
    with pytest.raises(InputError, match="shorter than the window"):
        window_starts(3, 4, 1)


def test_golden_mean_by_hand():
    # 1 x 1 x 4 volume, windows of 2 voxels at stride 1 -> starts 0, 1, 2 with values 1, 2, 4:
    # voxel 0: 1; voxel 1: (1 + 2) / 2; voxel 2: (2 + 4) / 2; voxel 3: 4
    values = {0: 1.0, 1: 2.0, 2: 4.0}

    def predictor(batch):
        return np.stack([np.full_like(b, values[int(b[0, 0, 0, 0])]) for b in batch])

    vol = np.array([[[0.0, 1.0, 2.0, 3.0]]], dtype=np.float32)  # each window's first voxel = start
    out = sliding_window(vol, predictor, (1, 1, 2), (1, 1, 1), batch_size=2)
    np.testing.assert_allclose(out, [[[1.0, 1.5, 3.0, 4.0]]], rtol=0, atol=1e-6)


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
@pytest.mark.parametrize("stride", [(1, 1, 1), (2, 2, 2), (6, 5, 7)])
def test_native_equals_numpy_reference(blend, stride):
    rng = np.random.default_rng(0)
    shape, window, C = (19, 23, 17), (6, 5, 7), 2
    offsets = window_grid(shape, window, stride)
    values = rng.standard_normal((len(offsets), C, *window)).astype(np.float32)
    wmap = gaussian_weight_map(window) if blend == "gaussian" else None
    ref_sum = np.zeros((C, *shape), np.float32)
    ref_w = np.zeros(shape, np.float32)
    accumulate_reference(ref_sum, ref_w, values, offsets, wmap)
    finalize_reference(ref_sum, ref_w, 0.0)
    merger = OverlapAverager(shape, C, window, blend=blend, backend="native")
    for i in range(0, len(offsets), 5):  # batches of 5 windows
        merger.aggregate(values[i:i + 5], offsets[i:i + 5])
    out = merger.finalize()
    assert out.shape == (C, *shape) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref_sum, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["native", "numpy"])
@pytest.mark.parametrize("blend", ["mean", "gaussian"])
@pytest.mark.parametrize("stride", [1, 2, None])
def test_identity_predictor_returns_input(backend, blend, stride):
    rng = np.random.default_rng(1)
    vol = rng.uniform(-1000, 1500, (21, 30, 26)).astype(np.float32)  # HU-like magnitudes
    window = (8, 16, 16)
    out = sliding_window(vol, lambda b: b.copy(), window,
                         None if stride is None else (stride, stride, stride), blend=blend,
                         backend=backend)
    assert out.shape == vol.shape and out.dtype == np.float32
    # float32 running sums over up to 8 x 16 x 16 = 2048 covering windows: relative error of
    # the weighted mean stays below 3e-5 (0.03 HU at 1000 HU)
    np.testing.assert_allclose(out, vol, rtol=3e-5, atol=1e-3)


def test_volume_smaller_than_window_is_padded_and_cropped():
    vol = np.arange(3 * 5 * 6, dtype=np.float32).reshape(3, 5, 6)
    seen = []

    def predictor(batch):
        seen.append(batch.shape)
        return batch * 2.0

    out = sliding_window(vol, predictor, (8, 8, 8), (4, 4, 4), pad_value=-1.0)
    assert seen == [(1, 1, 8, 8, 8)]
    np.testing.assert_array_equal(out, vol * 2.0)


def test_multichannel_output_shape():
    vol = np.ones((2, 10, 12, 12), np.float32)
    out = sliding_window(vol, lambda b: np.concatenate([b, -b, 3 * b], axis=1), (4, 8, 8),
                         (2, 4, 4))
    assert out.shape == (6, 10, 12, 12)
    np.testing.assert_allclose(out[:2], 1.0)
    np.testing.assert_allclose(out[2:4], -1.0)
    np.testing.assert_allclose(out[4:], 3.0)


def test_predictor_with_wrong_output_shape_is_reported():
    vol = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(InputError, match=r"predictor returned shape \(1, 1, 4, 4, 4\)"):
        sliding_window(vol, lambda b: b[:, :, ::2, ::2, ::2], (8, 8, 8))


def test_merger_refuses_after_finalize_and_bad_offsets():
    m = OverlapAverager((4, 4, 4), 1, (2, 2, 2))
    with pytest.raises(InputError, match=r"offset \(3, 0, 0\).*does not fit"):
        m.aggregate(np.zeros((1, 1, 2, 2, 2), np.float32), np.array([[3, 0, 0]]))
    m.aggregate(np.ones((1, 1, 2, 2, 2), np.float32), np.array([[0, 0, 0]]))
    out = m.finalize(empty=-7.0)
    assert out[0, 0, 0, 0] == 1.0 and out[0, 3, 3, 3] == -7.0
    with pytest.raises(InputError, match="after finalize"):
        m.aggregate(np.ones((1, 1, 2, 2, 2), np.float32), np.array([[0, 0, 0]]))


def test_bad_arguments_name_the_valid_choices():
    with pytest.raises(InputError, match=r"blend must be one of \('mean', 'gaussian'\)"):
        sliding_window(np.zeros((4, 4, 4), np.float32), lambda b: b, 2, blend="max")
    with pytest.raises(InputError, match="window must be three positive integers"):
        sliding_window(np.zeros((4, 4, 4), np.float32), lambda b: b, (2, 0, 2))


def test_gaussian_map_peaks_in_the_centre():
    w = gaussian_weight_map((5, 7, 9))
    assert w.shape == (5, 7, 9) and w.dtype == np.float32
    assert w[2, 3, 4] == pytest.approx(1.0)
    assert w.min() >= 1e-3 and w[0, 0, 0] < 0.01
    assert not w.flags.writeable


def test_public_entry_point():
    assert vcesdk.sliding_window is sliding_window


# --- streaming stitcher (grid order, ring accumulator, analytic normaliser) -----------------

from vcesdk.stitch import StreamingStitcher  # noqa: E402


def _reference_stitch(values, offsets, shape, window, blend):
    C = values.shape[1]
    total = np.zeros((C, *shape), np.float32)
    weight = np.zeros(shape, np.float32)
    wmap = gaussian_weight_map(window) if blend == "gaussian" else None
    accumulate_reference(total, weight, values, offsets, wmap)
    finalize_reference(total, weight, 0.0)
    return total


@pytest.mark.parametrize("backend", ["native", "numpy"])
@pytest.mark.parametrize("blend", ["mean", "gaussian"])
@pytest.mark.parametrize("shape, window, stride, batch", [
    ((19, 23, 17), (6, 5, 7), (1, 1, 1), 4),      # stride 1
    ((19, 23, 17), (6, 5, 7), (2, 2, 2), 3),      # stride 2
    ((19, 23, 17), (6, 5, 7), (6, 5, 7), 1),      # stride = window
    ((40, 9, 11), (16, 9, 11), (1, 9, 11), 7),    # whole-plane windows, pix2pix3D pattern
    ((13, 20, 20), (5, 8, 8), (3, 5, 6), 5),      # window sizes that do not divide the volume
])
def test_streaming_equals_reference(backend, blend, shape, window, stride, batch):
    rng = np.random.default_rng(2)
    offsets = window_grid(shape, window, stride)
    values = rng.standard_normal((len(offsets), 2, *window)).astype(np.float32)
    ref = _reference_stitch(values, offsets, shape, window, blend)
    st = StreamingStitcher(shape, 2, window, stride, blend=blend, max_batch=batch,
                           backend=backend)
    for i in range(0, len(offsets), batch):
        st.aggregate(values[i:i + batch], offsets[i:i + batch])
    out = st.finalize()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_streaming_hands_out_slices_in_order_with_a_small_ring():
    shape, window, stride = (200, 16, 16), (8, 16, 16), (1, 16, 16)
    offsets = window_grid(shape, window, stride)
    vol = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    seen = []

    def on_slices(z0, slab):
        seen.append((z0, slab.shape[1]))
        assert slab.flags.c_contiguous and slab.dtype == np.float32
        np.testing.assert_allclose(slab[0], vol[z0:z0 + slab.shape[1]], rtol=1e-5, atol=1e-5)

    st = StreamingStitcher(shape, 1, window, stride, on_slices=on_slices, max_batch=4)
    for i in range(0, len(offsets), 4):
        batch = np.stack([vol[None, z:z + 8] for z, _, _ in offsets[i:i + 4]])
        st.aggregate(batch, offsets[i:i + 4])
    assert st.finalize() is None
    # every slice exactly once, in order; the ring holds 8 + 3 x 1 slices, not 200
    assert sum(n for _, n in seen) == 200
    assert [z for z, _ in seen] == sorted(z for z, _ in seen) and seen[0][0] == 0
    assert st.ring_bytes == 0  # released by finalize
    assert StreamingStitcher(shape, 1, window, stride, on_slices=on_slices,
                             max_batch=4).ring_bytes == 11 * 16 * 16 * 4


def test_sliding_window_on_slices_and_memmap(tmp_path):
    vol = np.random.default_rng(4).standard_normal((30, 12, 10)).astype(np.float32)
    mm = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32,
                                   shape=(1, 30, 12, 10))
    got = sliding_window(vol, lambda b: b, (8, 16, 16), (2, 4, 4),
                         on_slices=lambda z0, s: mm.__setitem__(
                             (slice(None), slice(z0, z0 + s.shape[1])), s))
    assert got is None
    mm.flush()
    np.testing.assert_allclose(np.load(tmp_path / "out.npy")[0], vol, rtol=1e-5, atol=1e-5)


def test_streaming_refuses_out_of_order_windows():
    st = StreamingStitcher((10, 4, 4), 1, (4, 4, 4), (2, 4, 4), max_batch=2)
    with pytest.raises(InputError, match="windows must arrive in grid order"):
        st.aggregate(np.zeros((1, 1, 4, 4, 4), np.float32), np.array([[2, 0, 0]]))
    with pytest.raises(InputError, match=r"finalize\(\) after 0 of 4 windows"):
        st.finalize()


def test_whole_plane_batches_are_zero_copy_read_only_views():
    vol = np.random.default_rng(5).standard_normal((1, 20, 6, 7)).astype(np.float32)
    seen = []

    def predictor(batch):
        seen.append(np.shares_memory(batch, vol) or batch.base is not None)
        with pytest.raises(ValueError, match="read-only"):
            batch[0, 0, 0, 0, 0] = 1.0  # the input volume can never be changed
        return batch

    out = sliding_window(vol, predictor, (8, 6, 7), (3, 6, 7), batch_size=3)
    np.testing.assert_allclose(out, vol, rtol=1e-6, atol=1e-6)
    assert all(seen)


def test_streaming_refuses_a_stride_beyond_the_window_and_a_strided_out():
    with pytest.raises(InputError, match=r"stride \(5, 4, 4\) exceeds the window \(4, 4, 4\)"):
        StreamingStitcher((10, 4, 4), 1, (4, 4, 4), (5, 4, 4))
    out = np.zeros((1, 10, 4, 8), np.float32)[..., ::2]  # a view with a gap along x
    with pytest.raises(InputError, match="writeable C-contiguous float32"):
        StreamingStitcher((10, 4, 4), 1, (4, 4, 4), (2, 4, 4), out=out)
