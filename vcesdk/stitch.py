"""Sliding-window inference over a volume and overlap-average stitching of the window outputs.

The splitter (:func:`window_starts`, :func:`window_grid`) and the merger
(:class:`OverlapAverager`) are separate pieces, as in MONAI's ``inferers/merger.py``;
:func:`sliding_window` joins them with a predictor.

Overlap averaging follows Choi et al. 2021 (Sci Rep, seed 003): the generator runs on every
16-slice window at stride 1 and each output slice is the mean of all windows that cover it
(``blend="mean"``). ``blend="gaussian"`` weights each window voxel by a Gaussian centred on the
window (sigma = 1/8 of the window size per axis, as nnU-Net and MONAI do) so window borders,
where a convolutional network sees least context, count less.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Iterator, Literal, Sequence

import numpy as np

from . import _native
from .errors import InputError

_logger = logging.getLogger(__name__)

Blend = Literal["mean", "gaussian"]
BLENDS: tuple[str, ...] = ("mean", "gaussian")
Predictor = Callable[[np.ndarray], np.ndarray]


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * 3
    t = tuple(int(v) for v in value)
    if len(t) != 3 or any(v < 1 for v in t):
        raise InputError(f"{name} must be three positive integers (d, h, w), got {value!r}")
    return t  # type: ignore[return-value]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start indices of windows along one axis: every `stride`, the last one flush with the end.

    Args:
        length: number of voxels along the axis (>= window; pad first otherwise).
        window: window size in voxels.
        stride: step between window starts in voxels.

    Returns:
        Sorted, distinct start indices; the last equals ``length - window``.

    Raises:
        InputError: length < window, or a non-positive window or stride.
    """
    if window < 1 or stride < 1:
        raise InputError(f"window and stride must be >= 1, got window={window}, stride={stride}")
    if length < window:
        raise InputError(f"axis of length {length} is shorter than the window {window}; pad it")
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def window_grid(shape: Sequence[int], window: Sequence[int], stride: Sequence[int]
                ) -> np.ndarray:
    """All window offsets for a (D, H, W) volume, in slice order (z slowest).

    Returns:
        int64 array (N, 3) of (z, y, x) window starts.
    """
    zs, ys, xs = (window_starts(n, w, s) for n, w, s in zip(shape, window, stride))
    grid = np.array([(z, y, x) for z in zs for y in ys for x in xs], dtype=np.int64)
    return grid.reshape(-1, 3)


@functools.lru_cache(maxsize=16)
def _gaussian_map_cached(window: tuple[int, int, int], sigma_scale: float) -> np.ndarray:
    axes = []
    for n in window:
        centre = (n - 1) / 2.0
        sigma = max(n * sigma_scale, 1e-6)
        axes.append(np.exp(-0.5 * ((np.arange(n) - centre) / sigma) ** 2))
    wmap = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    wmap = wmap / wmap.max()
    # Floor as in nnU-Net: no voxel gets weight 0, so every covered voxel stays defined.
    wmap = np.maximum(wmap, 1e-3).astype(np.float32)
    wmap.setflags(write=False)
    return wmap


def gaussian_weight_map(window: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Gaussian importance map for one window, peak 1, floor 1e-3 (cached per window size).

    Args:
        window: (d, h, w) window size in voxels.
        sigma_scale: sigma as a fraction of the window size per axis (0.125 as nnU-Net/MONAI).

    Returns:
        Read-only float32 array (d, h, w).
    """
    return _gaussian_map_cached(_triple(window, "window"), float(sigma_scale))


class OverlapAverager:
    """Running weighted sum of window outputs, finalised once to the weighted mean.

    Memory is O(volume): one float32 sum of shape (C, D, H, W) and one float32 weight of shape
    (D, H, W), whatever the number of windows. Uses the native kernel ``vcesdk._C`` (OpenMP,
    GIL released) unless ``backend="numpy"`` or the extension is missing.

    Args:
        shape: (D, H, W) of the stitched volume, voxels.
        channels: number of output channels C.
        window: (d, h, w) window size, voxels.
        blend: "mean" (uniform weights, Choi et al. 2021) or "gaussian".
        backend: "auto" (native when built), "native" (error if not built) or "numpy".

    Raises:
        InputError: unknown blend or backend, or non-positive sizes.
        NativeKernelUnavailable: backend="native" and the extension is not built.
    """

    def __init__(self, shape: Sequence[int], channels: int, window: Sequence[int],
                 blend: Blend = "mean", backend: str = "auto") -> None:
        if blend not in BLENDS:
            raise InputError(f"blend must be one of {BLENDS}, got {blend!r}")
        if backend not in ("auto", "native", "numpy"):
            raise InputError(f"backend must be 'auto', 'native' or 'numpy', got {backend!r}")
        if channels < 1:
            raise InputError(f"channels must be >= 1, got {channels}")
        self.shape = _triple(shape, "shape")
        self.window = _triple(window, "window")
        self.channels = int(channels)
        self.blend = blend
        if backend == "native":
            self._ext = _native.require_native()
        elif backend == "auto":
            self._ext = _native.native()
        else:
            self._ext = None
        self.backend = "native" if self._ext is not None else "numpy"
        self._wmap = gaussian_weight_map(self.window) if blend == "gaussian" else None
        self._sum = np.zeros((self.channels, *self.shape), dtype=np.float32)
        self._weight = np.zeros(self.shape, dtype=np.float32)
        self._finalized = False

    def aggregate(self, values: np.ndarray, offsets: np.ndarray) -> None:
        """Add a batch of window outputs.

        Args:
            values: float32 (B, C, d, h, w) window outputs.
            offsets: int (B, 3) (z, y, x) start of each window in the volume.

        Raises:
            InputError: shapes that do not match, a window outside the volume, or a call after
                :meth:`finalize`.
        """
        if self._finalized:
            raise InputError("OverlapAverager.aggregate() called after finalize()")
        values = np.ascontiguousarray(values, dtype=np.float32)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        expected = (self.channels, *self.window)
        if values.ndim != 5 or tuple(values.shape[1:]) != expected:
            raise InputError(f"window outputs must have shape (B, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}, {expected[3]}), got {values.shape}")
        if offsets.shape != (values.shape[0], 3):
            raise InputError(f"offsets must have shape ({values.shape[0]}, 3), got "
                             f"{offsets.shape}")
        if self._ext is not None:
            try:
                self._ext.overlap_accumulate(self._sum, self._weight, values, offsets, self._wmap)
            except ValueError as exc:
                raise InputError(str(exc)) from None
        else:
            accumulate_reference(self._sum, self._weight, values, offsets, self._wmap)

    def finalize(self, empty: float = 0.0) -> np.ndarray:
        """The weighted mean, float32 (C, D, H, W); voxels no window covered get `empty`.

        The accumulator's buffer is returned (no copy); further aggregation is refused.
        """
        if self._finalized:
            raise InputError("OverlapAverager.finalize() called twice")
        self._finalized = True
        if self._ext is not None:
            self._ext.overlap_finalize(self._sum, self._weight, float(empty))
        else:
            finalize_reference(self._sum, self._weight, float(empty))
        out, self._sum = self._sum, np.empty(0, np.float32)
        self._weight = np.empty(0, np.float32)
        return out


def accumulate_reference(total: np.ndarray, weight: np.ndarray, values: np.ndarray,
                         offsets: np.ndarray, wmap: np.ndarray | None) -> None:
    """NumPy reference of ``vcesdk._C.overlap_accumulate`` (the test oracle and the fallback).

    Args:
        total: float32 (C, D, H, W) running weighted sum, modified in place.
        weight: float32 (D, H, W) running weight, modified in place.
        values: float32 (B, C, d, h, w) window outputs.
        offsets: int (B, 3) (z, y, x) window starts.
        wmap: float32 (d, h, w) weights or None for uniform weight 1.

    Raises:
        InputError: a window that does not fit in the volume.
    """
    d, h, w = values.shape[2:]
    D, H, W = weight.shape
    for b, (z, y, x) in enumerate(np.asarray(offsets, dtype=np.int64)):
        if z < 0 or y < 0 or x < 0 or z + d > D or y + h > H or x + w > W:
            raise InputError(f"window {b} at offset ({z}, {y}, {x}) with size ({d}, {h}, {w}) "
                             f"does not fit in the volume ({D}, {H}, {W})")
        sl = (slice(z, z + d), slice(y, y + h), slice(x, x + w))
        if wmap is None:
            total[(slice(None), *sl)] += values[b]
            weight[sl] += 1.0
        else:
            total[(slice(None), *sl)] += values[b] * wmap
            weight[sl] += wmap


def finalize_reference(total: np.ndarray, weight: np.ndarray, empty: float) -> None:
    """NumPy reference of ``vcesdk._C.overlap_finalize``: total /= weight in place."""
    covered = weight > 0
    np.divide(total, weight, out=total, where=covered[None])
    total[:, ~covered] = empty


def _iter_batches(offsets: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(offsets), batch_size):
        yield offsets[i:i + batch_size]


def sliding_window(volume: np.ndarray, predictor: Predictor,
                   window: int | Sequence[int], stride: int | Sequence[int] | None = None,
                   blend: Blend = "mean", batch_size: int = 4, pad_value: float | None = None,
                   backend: str = "auto",
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Run `predictor` over every window of a volume and stitch the outputs by overlap averaging.

    Windows are laid out every `stride` voxels along each axis with the last window flush with
    the far border, so every voxel is covered. An axis shorter than the window is padded at the
    far end (with `pad_value`, or by repeating the edge when None) and the padding is cropped
    from the result.

    Args:
        volume: float32 array (C, D, H, W), or (D, H, W) read as C = 1.
        predictor: callable taking float32 (B, C, d, h, w) and returning (B, C', d, h, w).
        window: (d, h, w) window size in voxels (an int means a cube).
        stride: (sd, sh, sw) step in voxels; defaults to the window (no overlap).
        blend: "mean" (uniform average, Choi et al. 2021) or "gaussian".
        batch_size: windows per predictor call.
        pad_value: constant for padding short axes; None repeats the edge voxels.
        backend: stitching kernel: "auto", "native" or "numpy".
        progress: called with the number of windows finished after each batch.

    Returns:
        float32 (C', D, H, W) for a 4-D input; for a 3-D input, (D, H, W) when C' = 1.

    Raises:
        InputError: bad shapes, sizes, blend, or a predictor output of the wrong shape.
    """
    arr = np.asarray(volume)
    squeeze = arr.ndim == 3
    if squeeze:
        arr = arr[None]
    if arr.ndim != 4:
        raise InputError(f"volume must have shape (D, H, W) or (C, D, H, W), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"volume must be numeric, got dtype {arr.dtype}")
    win = _triple(window, "window")
    step = win if stride is None else _triple(stride, "stride")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    shape = arr.shape[1:]
    padded = tuple(max(n, w) for n, w in zip(shape, win))
    if padded != shape:
        pad = [(0, 0)] + [(0, p - n) for p, n in zip(padded, shape)]
        if pad_value is None:
            arr = np.pad(arr, pad, mode="edge")
        else:
            arr = np.pad(arr, pad, mode="constant", constant_values=pad_value)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    offsets = window_grid(padded, win, step)
    d, h, w = win
    merger: OverlapAverager | None = None
    done = 0
    for batch_offsets in _iter_batches(offsets, batch_size):
        batch = np.stack([arr[:, z:z + d, y:y + h, x:x + w] for z, y, x in batch_offsets])
        out = np.asarray(predictor(batch))
        if out.ndim != 5 or out.shape[0] != len(batch_offsets) or tuple(out.shape[2:]) != win:
            raise InputError(f"predictor returned shape {out.shape} for a batch of shape "
                             f"{batch.shape}; expected ({len(batch_offsets)}, C', {d}, {h}, {w})")
        if merger is None:
            merger = OverlapAverager(padded, out.shape[1], win, blend=blend, backend=backend)
        merger.aggregate(out, batch_offsets)
        done += len(batch_offsets)
        if progress is not None:
            progress(done)
    if merger is None:  # unreachable: window_grid yields at least one window
        raise InputError(f"no windows for a volume of shape {padded}")
    result = merger.finalize()
    if padded != shape:
        result = np.ascontiguousarray(result[:, :shape[0], :shape[1], :shape[2]])
    if squeeze and result.shape[0] == 1:
        return result[0]
    return result
