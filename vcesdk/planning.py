"""Planning a synthesis: the model grid, padding to the network's multiples, the window plan
and the memory estimate, from a bundle's manifest alone (no backend, no model run).

Flow: HU volume -> (clip field-of-view padding to air) -> orient to the bundle's orientation
-> (resample to the bundle's grid) -> HU windows to channels -> (repeat the last slice of a
thin input to the window depth) -> pad to the network's multiples -> windows and strides for
:func:`~vcesdk.stitch.sliding_window`.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from .bundle import Bundle, round_up
from .errors import InputError, InvalidVoxelValuesError
from .intensity import hu_to_channels
from .stitch import window_grid
from .volume import CTVolume, orient_volume, resample_volume

AIR_HU = -1024.0
"""Values below this (field-of-view padding such as -2048 or -3024) are air to the model."""


def plan_windows(bundle: Bundle, shape: Sequence[int]
                 ) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]:
    """Padded shape, window and stride for a model-grid volume of `shape` (D, H, W).

    The volume is padded at the far end of each axis to the network's size multiples (and to
    at least the window depth); an axis whose manifest window is null is one whole-plane
    window.
    """
    d = bundle.window[0]
    padded = [max(round_up(int(shape[0]), bundle.multiple_of[0]), d)]
    window = [d]
    stride = [bundle.stride[0]]
    for axis in (1, 2):
        size = bundle.window[axis]
        n = round_up(int(shape[axis]), bundle.multiple_of[axis])
        if size is None:
            padded.append(n)
            window.append(n)
            stride.append(n)
        else:
            padded.append(max(n, size))
            window.append(size)
            stride.append(bundle.stride[axis] or size)
    return tuple(padded), tuple(window), tuple(stride)  # type: ignore[return-value]


def with_slice_stride(bundle: Bundle, stride: int) -> Bundle:
    """The bundle with its slice stride (manifest ``inference.stride[0]``) replaced.

    Only :attr:`~vcesdk.bundle.Bundle.stride` changes; ``bundle.manifest`` stays the file's
    (what the bundle itself says).

    Args:
        bundle: a loaded bundle.
        stride: slices between consecutive windows, 1 <= stride <= the window depth
            ``bundle.window[0]``; a larger stride would leave slices that no window covers.

    Returns:
        A copy of `bundle` (``dataclasses.replace``) with ``stride[0] == stride``.

    Raises:
        InputError: `stride` is not an integer from 1 to the window depth.
    """
    depth = bundle.window[0]
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) \
            or not 1 <= int(stride) <= depth:
        raise InputError(f"stride must be an integer from 1 to the window depth of bundle "
                         f"{bundle.name} ({depth} slices; a larger stride would leave slices "
                         f"that no window covers), got {stride!r}")
    return dataclasses.replace(bundle, stride=(int(stride), *bundle.stride[1:]))


@dataclasses.dataclass
class ModelInput:
    """A volume prepared for the model: on the bundle's grid, windowed to channels, padded.

    Attributes:
        work: the volume on the model grid (resampled when the bundle says so), HU.
        channels: float32 (C, *padded) model input values.
        window, stride: (d, h, w) window and stride for :func:`~vcesdk.stitch.sliding_window`.
        replicated_slices: slices added by repeating the last one, when the volume on the
            model grid is thinner than the window (0 otherwise).
    """

    work: CTVolume
    channels: np.ndarray
    window: tuple[int, int, int]
    stride: tuple[int, int, int]
    replicated_slices: int = 0

    def windows(self, limit: int | None = None) -> np.ndarray:
        """The first `limit` windows (all by default), float32 (N, C, d, h, w)."""
        grid = window_grid(self.channels.shape[1:], self.window, self.stride)[:limit]
        d, h, w = self.window
        return np.stack([self.channels[:, z:z + d, y:y + h, x:x + w] for z, y, x in grid])


def check_finite(vol: CTVolume) -> None:
    """Refuse a volume with NaN or infinite values.

    Raises:
        InvalidVoxelValuesError: the volume holds NaN or infinite values.
    """
    if not np.all(np.isfinite(vol.hu)):
        raise InvalidVoxelValuesError("input volume holds NaN or infinite values; fix or mask "
                                      "them before synthesis")


def prepare_model_input(bundle: Bundle, vol: CTVolume) -> ModelInput:
    """Resample, window and pad a volume as the bundle's manifest declares.

    Raises:
        InvalidVoxelValuesError: the volume holds NaN or infinite values.
    """
    check_finite(vol)
    return _prepare_finite(bundle, vol)


def _prepare_finite(bundle: Bundle, vol: CTVolume) -> ModelInput:
    """:func:`prepare_model_input` for a volume already known to be finite."""
    if float(vol.hu.min()) < AIR_HU:
        # padding outside the scanned field of view (-2048, -3024, PixelPaddingValue) is air
        # to the model; the input itself is not modified
        vol = vol.with_hu(np.maximum(vol.hu, np.float32(AIR_HU)))
    work = orient_volume(vol, bundle.orientation)
    if bundle.resample_mm is not None:
        work = resample_volume(work, bundle.resample_mm, default_hu=bundle.pad_hu)
    shape = work.shape
    padded, window, stride = plan_windows(bundle, shape)
    replicated = max(0, window[0] - shape[0])
    # one pass from HU to the channels, written straight into the padded model input
    channels = np.empty((len(bundle.windows), *padded), dtype=np.float32)
    hu_to_channels(work.hu, bundle.windows, out=channels[:, :shape[0], :shape[1], :shape[2]])
    if replicated:
        # a thin input (fewer slices than the window): its last slice is repeated to the
        # window depth, so the network sees anatomy that continues rather than air
        channels[:, shape[0]:shape[0] + replicated, :shape[1], :shape[2]] = \
            channels[:, shape[0] - 1:shape[0], :shape[1], :shape[2]]
    filled = (shape[0] + replicated, shape[1], shape[2])
    if padded != filled:
        pad_values = hu_to_channels(np.float32([bundle.pad_hu]), bundle.windows)[:, 0]
        for c, v in enumerate(pad_values):
            channels[c, filled[0]:] = v
            channels[c, :filled[0], filled[1]:] = v
            channels[c, :filled[0], :filled[1], filled[2]:] = v
    return ModelInput(work=work, channels=channels, window=window, stride=stride,
                      replicated_slices=replicated)


def estimate_memory_mb(bundle: Bundle, vol: CTVolume) -> float:
    """Estimated peak memory of :meth:`vcesdk.Synthesizer.synthesize` for `vol`, MB (besides the
    model's own working memory and the input, which the caller already holds).

    Counted, float32: the reoriented and resampled volume on the model grid, its input
    channels padded to the network's multiples, the composed output there (one volume per
    output channel: the result and any auxiliary output; the stitcher holds only a ring of
    about one window, :class:`vcesdk.stitch.StreamingStitcher`), and on the input grid one
    volume per output channel plus a resampled slab.
    """
    grid = list(vol.shape)  # axes taken as already in the model's orientation (axial scans)
    if bundle.resample_mm is not None:
        grid = [max(1, round(n * s / t)) for n, s, t in
                zip(grid, vol.spacing_zyx_mm, bundle.resample_mm)]
    padded, _, _ = plan_windows(bundle, grid)
    c_in = len(bundle.windows)
    c_out = int(bundle.manifest["output"]["channels"])
    floats = ((1 + c_out) * float(np.prod(grid)) + float(np.prod(padded)) * c_in
              + (1 + c_out) * float(np.prod(vol.shape)))
    return floats * 4 / 1e6
