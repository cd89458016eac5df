"""Paired training data from the digital phantom: random crops of (NCCT channels, target)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from vcesdk.intensity import Window, hu_to_channels, hu_to_output

from .phantom import make_phantom


class PhantomPairs:
    """A fixed set of phantom patients and random aligned crops from them.

    Args:
        seeds: one phantom patient per seed.
        phase: target phase ("pvp").
        windows: input windows (model channels).
        output_hu: (lo, hi) HU mapped to the output range [-1, 1].
        target: "image" (the contrast phase in HU) or "residual" (contrast phase - NCCT, HU).
        shape, spacing_mm, noise_hu: phantom settings (see :func:`make_phantom`); each patient
            gets noise_hu scaled by a factor drawn from [0.5, 1.5] (scanners and doses differ).

    Items are float32 ``x`` (C, d, h, w) and ``y`` (1, d, h, w) in [-1, 1].
    """

    def __init__(self, seeds: Sequence[int], phase: str, windows: Sequence[Window],
                 output_hu: Sequence[float], shape: Sequence[int], spacing_mm: Sequence[float],
                 noise_hu: float, target: str = "image") -> None:
        cases = [make_phantom(int(s), shape=shape, spacing_mm=spacing_mm,
                              noise_hu=noise_hu * float(
                                  np.random.default_rng([int(s), 1]).uniform(0.5, 1.5)),
                              phases=("ncct", phase)) for s in seeds]
        self._setup(cases, phase, windows, output_hu, target)

    def _setup(self, cases: Sequence, phase: str, windows: Sequence[Window],
               output_hu: Sequence[float], target: str) -> None:
        if target not in ("image", "residual"):
            raise ValueError(f"target must be 'image' or 'residual', got {target!r}")
        self.cases = list(cases)
        self.phase = phase
        self.x = [hu_to_channels(c.phases["ncct"], windows) for c in self.cases]
        self.target = target
        self.y = [hu_to_output(c.phases[phase] - (c.phases["ncct"] if target == "residual"
                                                  else 0.0), output_hu)[None]
                  for c in self.cases]

    def __len__(self) -> int:
        return len(self.cases)

    def sample(self, rng: np.random.Generator, batch_size: int, crop: Sequence[int]
               ) -> tuple[np.ndarray, np.ndarray]:
        """A batch of random aligned crops: x (B, C, d, h, w), y (B, 1, d, h, w)."""
        xs, ys = [], []
        for _ in range(batch_size):
            i = int(rng.integers(len(self.cases)))
            D, H, W = self.x[i].shape[1:]
            d, h, w = (min(int(c), n) for c, n in zip(crop, (D, H, W)))
            z0, y0, x0 = (int(rng.integers(n - c + 1)) for n, c in zip((D, H, W), (d, h, w)))
            sl = (slice(None), slice(z0, z0 + d), slice(y0, y0 + h), slice(x0, x0 + w))
            xs.append(self.x[i][sl])
            ys.append(self.y[i][sl])
        return np.stack(xs), np.stack(ys)


@dataclasses.dataclass
class PairCase:
    """One patient of a dataset folder: phases name -> float32 (D, H, W) HU on one grid."""

    name: str
    phases: dict
    spacing_mm: tuple


class DatasetPairs(PhantomPairs):
    """Aligned (NCCT, phase) pairs read from a dataset folder instead of generated: the layout
    of ``vcesdk-data phantoms`` (``<phase>_aligned.nii.gz`` is used as the target when present)
    or the user layout (pairs must be on the NCCT grid: build a store with ``vcesdk-data
    store`` first for unregistered scans). Same items as :class:`PhantomPairs`.

    Args:
        root: dataset folder.
        patients: patient folder names to use (e.g. a train/validation split).
        aligned: use ``<phase>_aligned.nii.gz`` as the target where present (False: the
            misaligned scan itself, for 004's misalignment study).

    Raises:
        InputError: a patient lacks the NCCT or the phase, or the two grids differ.
    """

    def __init__(self, root, patients: Sequence[str], phase: str, windows: Sequence[Window],
                 output_hu: Sequence[float], target: str = "image", aligned: bool = True
                 ) -> None:
        from pathlib import Path

        from vcesdk.errors import InputError
        from vcesdk.volume import read_volume

        from .store import find_phase

        root = Path(root)
        cases = []
        for name in patients:
            pdir = root / name
            nc = find_phase(pdir, "ncct")
            truth = pdir / f"{phase}_aligned.nii.gz"
            ph = truth if aligned and truth.is_file() else find_phase(pdir, phase)
            if nc is None or ph is None:
                raise InputError(f"{pdir} lacks an ncct or {phase} scan")
            a, b = read_volume(nc), read_volume(ph)
            if a.shape != b.shape:
                raise InputError(f"{name}: {phase} {b.shape} is not on the NCCT grid {a.shape};"
                                 f" register with 'vcesdk-data store' first")
            cases.append(PairCase(name, {"ncct": a.hu, phase: b.hu}, a.spacing_mm))
        self._setup(cases, phase, windows, output_hu, target)


def dataset_patients(root, phase: str) -> list[str]:
    """Patient folders of a dataset that hold an NCCT and `phase`, sorted."""
    from pathlib import Path

    from .store import find_phase

    return sorted(p.name for p in Path(root).iterdir() if p.is_dir()
                  and find_phase(p, "ncct") is not None and find_phase(p, phase) is not None)
