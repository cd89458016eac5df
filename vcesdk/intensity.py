"""HU <-> model values, as declared by a bundle's manifest.

Each input channel is the HU volume seen through one display window (level, width), mapped
linearly to [-1, 1] and clipped, as in Choi et al. 2021 (seed 003), whose three windows are
lung/bone (W 2000, L 0), vascular (W 1000, L 200) and mediastinal (W 500, L 50). The output
channel maps [-1, 1] back linearly to an HU range (003: [-1000, 1000]).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from .errors import BundleError

# Choi et al. 2021 (seed 003), "Image preprocessing": lung/bone, vascular, mediastinal windows.
CHOI_WINDOWS: tuple[tuple[str, float, float], ...] = (
    ("lung_bone", 0.0, 2000.0),
    ("vascular", 200.0, 1000.0),
    ("mediastinal", 50.0, 500.0),
)
# Choi et al. 2021: the first output channel is reconverted to HU in [-1000, 1000].
CHOI_OUTPUT_HU: tuple[float, float] = (-1000.0, 1000.0)


@dataclasses.dataclass(frozen=True)
class Window:
    """A display window: HU in [level - width/2, level + width/2] -> [-1, 1], clipped."""

    name: str
    level: float
    width: float

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise BundleError(f"window {self.name!r} has width {self.width}; must be > 0")

    @property
    def bounds_hu(self) -> tuple[float, float]:
        """(low, high) HU mapped to -1 and +1."""
        return (self.level - self.width / 2.0, self.level + self.width / 2.0)


def windows_from_manifest(channels: Sequence[dict]) -> tuple[Window, ...]:
    """Parse the manifest's ``input.channels`` list of {name, level, width}.

    Raises:
        BundleError: a channel misses a key or has a non-positive width.
    """
    if not isinstance(channels, list):
        raise BundleError(f"input.channels must be a list of {{name, level, width}}, got "
                          f"{type(channels).__name__}")
    out = []
    for i, ch in enumerate(channels):
        try:
            w = Window(str(ch["name"]), float(ch["level"]), float(ch["width"]))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BundleError(f"input.channels[{i}] must have name, level and width: {exc}"
                              ) from None
        if not (np.isfinite(w.level) and np.isfinite(w.width)):
            raise BundleError(f"input.channels[{i}]: level and width must be finite numbers")
        out.append(w)
    if not out:
        raise BundleError("input.channels is empty")
    return tuple(out)


def hu_to_channels(hu: np.ndarray, windows: Sequence[Window], out: np.ndarray | None = None
                   ) -> np.ndarray:
    """Map HU to model input channels.

    Args:
        hu: float32 (D, H, W) or any shape, HU.
        windows: one Window per output channel.
        out: float32 (C, *hu.shape) to write into (e.g. the unpadded part of the padded model
            input, so the channels are made in place, without a copy); allocated when None.

    Returns:
        float32 (C, *hu.shape) in [-1, 1] (`out` when given).

    Raises:
        ValueError: `out` of another shape or dtype.
    """
    hu = np.asarray(hu, dtype=np.float32)
    if out is None:
        out = np.empty((len(windows), *hu.shape), dtype=np.float32)
    elif out.shape != (len(windows), *hu.shape) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {(len(windows), *hu.shape)}, got {out.dtype} "
                         f"{out.shape}")
    for c, w in enumerate(windows):
        lo, _ = w.bounds_hu
        np.subtract(hu, np.float32(lo), out=out[c])
        out[c] *= np.float32(2.0 / w.width)
        out[c] -= np.float32(1.0)
        np.clip(out[c], -1.0, 1.0, out=out[c])
    return out


def channels_to_hu(values: np.ndarray, hu_range: Sequence[float]) -> np.ndarray:
    """Map model output values in [-1, 1] linearly to HU in hu_range = (low, high)."""
    lo, hi = float(hu_range[0]), float(hu_range[1])
    v = np.asarray(values, dtype=np.float32)
    return ((v + np.float32(1.0)) * np.float32((hi - lo) / 2.0) + np.float32(lo)).astype(
        np.float32, copy=False)


def hu_to_output(hu: np.ndarray, hu_range: Sequence[float]) -> np.ndarray:
    """Inverse of :func:`channels_to_hu` (the training target), clipped to [-1, 1]."""
    lo, hi = float(hu_range[0]), float(hu_range[1])
    v = (np.asarray(hu, dtype=np.float32) - np.float32(lo)) * np.float32(2.0 / (hi - lo)) - 1.0
    return np.clip(v, -1.0, 1.0).astype(np.float32, copy=False)


ADDITIVE_COMPOSE = ("add_difference", "add_residual")


def enhancement_hu(pred_hu: np.ndarray, input_hu: np.ndarray, compose: str,
                   hu_range: Sequence[float], floor_hu: float | None = None) -> np.ndarray:
    """The HU a model adds to its input under an additive compose mode (bundle
    ``output.compose``), on the model grid; the caller adds it to the input.

    Args:
        pred_hu: float32 (D, H, W) model output in HU (channel 0 through ``hu_range``).
        input_hu: float32 (D, H, W) the input on the same grid, HU.
        compose: "add_residual" (the output is the enhancement itself) or "add_difference"
            (the output is the phase image in its window: enhancement = output - input where
            the input is inside the window, 0 outside it, so HU outside the window come from
            the input unchanged).
        hu_range: the output's (lo, hi) HU.
        floor_hu: lower bound of the enhancement (0: iodine only raises attenuation), or None.

    Returns:
        float32 (D, H, W) enhancement, HU.

    Raises:
        ValueError: a compose mode that is not additive.
    """
    if compose not in ADDITIVE_COMPOSE:
        raise ValueError(f"compose {compose!r} is not additive ({ADDITIVE_COMPOSE})")
    lo, hi = hu_range
    if compose == "add_difference":
        # outside the window the model saw only the window's edge: iodine does not change air
        # or cortical bone, so those voxels keep their HU (METHOD-REVIEW, composition)
        inside = (input_hu >= lo) & (input_hu <= hi)
        delta = np.where(inside, pred_hu - np.clip(input_hu, lo, hi), 0.0).astype(np.float32)
    else:
        delta = np.array(pred_hu, dtype=np.float32, copy=True)
    if floor_hu is not None:
        np.maximum(delta, np.float32(floor_hu), out=delta)
    return delta.astype(np.float32, copy=False)
