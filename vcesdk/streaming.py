"""The main job's back half, run while later windows are still in the model: finished slabs of
the model grid are composed back to HU and brought onto the input's grid, and each input slice
is handed on (e.g. to a DICOM writer thread) as soon as every model slice it reads is final.

Which model slices an input slice reads is geometry only: its four corners, taken into the
model grid's continuous index, give the model slices its linear interpolation touches; one
slice of margin on each side keeps the interpolation of a partial model slab the same as that
of the whole model grid (SimpleITK's linear interpolator reads the two neighbouring slices).
A bundle without resampling (orientation only) composes the same way and is brought onto the
input grid at the end, in one pass.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .bundle import Bundle
from .intensity import ADDITIVE_COMPOSE, channels_to_hu, enhancement_hu
from .volume import CTVolume, orient_volume, orientation_code, resample_volume

SliceSink = Callable[[int, np.ndarray], None]
"""on_slices(k0, hu): float32 (n, H, W) HU of input slices k0 .. k0 + n - 1: a view of the
result's slices, final (never written again); not to be modified."""


def model_slices_read(model: CTVolume, target: CTVolume) -> tuple[np.ndarray, np.ndarray]:
    """For each slice k of `target`, the model slices [lo[k], hi[k]) its linear interpolation
    from `model` reads, with one slice of margin each side, clipped to the model grid.

    Args:
        model: the model-grid volume (any grid; only its geometry is used).
        target: the grid resampled onto (only its geometry is used).

    Returns:
        (lo, hi): int64 (D_target,) each.
    """
    D, H, W = target.shape
    i = np.array([0.0, W - 1.0, 0.0, W - 1.0])
    j = np.array([0.0, 0.0, H - 1.0, H - 1.0])
    k = np.arange(D, dtype=np.float64)
    idx = np.stack([np.broadcast_to(i[None, :], (D, 4)), np.broadcast_to(j[None, :], (D, 4)),
                    np.broadcast_to(k[:, None], (D, 4)), np.ones((D, 4))])  # (4, D, 4)
    phys = np.tensordot(target.affine, idx, axes=1)
    cont = np.tensordot(np.linalg.inv(model.affine), phys, axes=1)[2]  # model z, (D, 4)
    lo = np.floor(cont.min(axis=1)).astype(np.int64) - 1
    hi = np.floor(cont.max(axis=1)).astype(np.int64) + 3
    n = model.shape[0]
    return np.clip(lo, 0, n - 1), np.clip(hi, 1, n)


class OutputStream:
    """Compose a synthesis slab by slab and emit input-grid slices as they become final.

    Args:
        bundle: the bundle whose output mapping and compose mode apply.
        vol: the input volume (its grid is the output's).
        work: the input on the model grid (oriented and resampled as the bundle says).
        on_slices: receives finished output slices (see :data:`SliceSink`), each input slice
            exactly once; each run ascends, runs come in the order they become final (an input
            stored head to feet: its last slices first); None to only assemble.

    Attributes:
        seconds: time spent composing, resampling and in `on_slices`.
    """

    def __init__(self, bundle: Bundle, vol: CTVolume, work: CTVolume,
                 on_slices: SliceSink | None = None) -> None:
        self.bundle, self.vol, self.work, self.on_slices = bundle, vol, work, on_slices
        self.additive = bundle.compose in ADDITIVE_COMPOSE
        self.model = np.empty(work.shape, np.float32)  # enhancement (additive) or phase, HU
        self.aux_model = {a.name: np.empty(work.shape, np.float32) for a in bundle.auxiliary}
        self.out = np.empty(vol.shape, np.float32)
        self.aux_out = {a.name: np.empty(vol.shape, np.float32) for a in bundle.auxiliary}
        self._final = 0  # model slices [0, _final) are composed
        self._done = np.zeros(vol.shape[0], dtype=bool)
        self._read = (model_slices_read(work, vol) if bundle.resample_mm is not None
                      else None)
        self.seconds = 0.0

    def model_slab(self, z0: int, slab: np.ndarray) -> None:
        """Take finished model-grid slices (the stitcher's ``on_slices``).

        Args:
            z0: first slice of the slab on the padded model grid.
            slab: float32 (C, n, Hp, Wp) network output in [-1, 1], padded grid.
        """
        t = time.perf_counter()
        b = self.bundle
        D, H, W = self.work.shape
        z1 = min(z0 + slab.shape[1], D)
        if z1 > z0:  # slices past D are the padding to the network's size multiple
            n = z1 - z0
            pred = channels_to_hu(slab[b.output_channel, :n, :H, :W], b.output_hu)
            self.model[z0:z1] = (enhancement_hu(pred, self.work.hu[z0:z1], b.compose,
                                                b.output_hu, b.difference_floor_hu)
                                 if self.additive else pred)
            for a in b.auxiliary:
                self.aux_model[a.name][z0:z1] = channels_to_hu(slab[a.channel, :n, :H, :W],
                                                               a.hu_range)
            self._final = z1
            self._emit()
        self.seconds += time.perf_counter() - t

    def finish(self) -> tuple[CTVolume, dict[str, CTVolume]]:
        """Emit what is left; the output volume and the auxiliary outputs on the input grid."""
        t = time.perf_counter()
        self._final = self.work.shape[0]
        if self._read is None:
            self._orient_all()
        else:
            self._emit()
        self.seconds += time.perf_counter() - t
        return (self.vol.with_hu(self.out),
                {k: self.vol.with_hu(v) for k, v in self.aux_out.items()})

    def _emit(self) -> None:
        if self._read is None:
            return
        lo, hi = self._read
        ready = ~self._done & (hi <= self._final)
        k = 0
        D = len(ready)
        while k < D:
            if not ready[k]:
                k += 1
                continue
            k1 = k
            while k1 < D and ready[k1]:
                k1 += 1
            self._resample(k, k1, int(lo[k:k1].min()), int(hi[k:k1].max()))
            k = k1

    def _resample(self, k0: int, k1: int, z0: int, z1: int) -> None:
        """Input slices [k0, k1) from model slices [z0, z1)."""
        target = self.vol.slices(k0, k1)
        fill = 0.0 if self.additive else self.bundle.pad_hu
        back = resample_volume(self.work.slices(z0, z1, self.model[z0:z1]), (),
                               reference=target, default_hu=fill).hu
        self.out[k0:k1] = self.vol.hu[k0:k1] + back if self.additive else back
        for name, arr in self.aux_model.items():
            self.aux_out[name][k0:k1] = resample_volume(
                self.work.slices(z0, z1, arr[z0:z1]), (), reference=target,
                default_hu=0.0).hu
        self._done[k0:k1] = True
        if self.on_slices is not None:
            self.on_slices(k0, self.out[k0:k1])

    def _orient_all(self) -> None:
        """No resampling: the model grid is the input's, permuted; one exact pass at the end."""
        code = orientation_code(self.vol)
        back = orient_volume(self.work.with_hu(self.model), code).hu
        self.out[:] = self.vol.hu + back if self.additive else back
        for name, arr in self.aux_model.items():
            self.aux_out[name][:] = orient_volume(self.work.with_hu(arr), code).hu
        self._done[:] = True
        if self.on_slices is not None:
            self.on_slices(0, self.out)
