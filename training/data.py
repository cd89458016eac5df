"""Paired training data from the digital phantom: random crops of (NCCT channels, target)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from vcesdk.errors import RecipeError
from vcesdk.intensity import Window, hu_to_channels, hu_to_output

from .phantom import make_phantom

# what a model is trained to output: "image" = the phase in HU over model_io.hu_range (one
# channel); "residual" = phase - NCCT; "windows" = the phase under each input window (003:
# pix2pix3D predicts the three windows and keeps the first, [-1000, 1000] HU)
TARGETS = ("image", "residual", "windows")


class PhantomPairs:
    """A fixed set of phantom patients and random aligned crops from them.

    Args:
        seeds: one phantom patient per seed.
        phase: target phase ("pvp").
        windows: input windows (model channels).
        output_hu: (lo, hi) HU mapped to the output range [-1, 1].
        target: "image" (the contrast phase in HU), "residual" (contrast phase - NCCT, HU) or
            "windows" (the phase under each input window; channel 0 is read as HU).
        shape, spacing_mm, noise_hu: phantom settings (see :func:`make_phantom`); each patient
            gets noise_hu scaled by a factor drawn from [0.5, 1.5] (scanners and doses differ).
        noise_free_target: the target is made from the phase's noise-free image (the input
            NCCT keeps its noise; ``data.noise_free_target`` of the recipe).
        keep_noisy: with `noise_free_target`, the target has two channels: the scanned
            (noisy) phase, then the noise-free one (methods with
            ``NOISY_AND_CLEAN_TARGET``, e.g. the two-stage method's stage 2).

    Items are float32 ``x`` (C, d, h, w) and ``y`` (1, d, h, w) in [-1, 1] (C channels for
    target "windows").
    """

    def __init__(self, seeds: Sequence[int], phase: str, windows: Sequence[Window],
                 output_hu: Sequence[float], shape: Sequence[int], spacing_mm: Sequence[float],
                 noise_hu: float, target: str = "image", noise_free_target: bool = False,
                 keep_noisy: bool = False) -> None:
        cases = [make_phantom(int(s), shape=shape, spacing_mm=spacing_mm,
                              noise_hu=noise_hu * float(
                                  np.random.default_rng([int(s), 1]).uniform(0.5, 1.5)),
                              phases=("ncct", phase)) for s in seeds]
        self._setup(cases, phase, windows, output_hu, target,
                    [c.clean[phase] for c in cases] if noise_free_target else None,
                    keep_noisy)

    def _setup(self, cases: Sequence, phase: str, windows: Sequence[Window],
               output_hu: Sequence[float], target: str,
               clean_targets: Sequence[np.ndarray] | None = None,
               keep_noisy: bool = False) -> None:
        if target not in TARGETS:
            raise RecipeError(f"model_io.target must be one of {TARGETS}, got {target!r}")
        if target == "windows":
            w = windows[0]
            if (w.level - w.width / 2, w.level + w.width / 2) != tuple(map(float, output_hu)):
                raise RecipeError(f"target 'windows' reads HU from output channel 0, the first "
                                 f"window: hu_range must be its range "
                                 f"[{w.level - w.width / 2:g}, {w.level + w.width / 2:g}], got "
                                 f"{list(output_hu)}")
        self.cases = list(cases)
        self.phase = phase
        self.x = [hu_to_channels(c.phases["ncct"], windows) for c in self.cases]
        self.target = target
        goals = (list(clean_targets) if clean_targets is not None
                 else [c.phases[phase] for c in self.cases])
        both = keep_noisy and clean_targets is not None
        if target == "windows":
            if both:
                raise RecipeError("a noisy and a noise-free target need model_io.target "
                                  "'image' or 'residual', not 'windows'")
            self.y = [hu_to_channels(g, windows) for g in goals]
            return

        def encode(case, goal: np.ndarray) -> np.ndarray:
            base = case.phases["ncct"] if target == "residual" else 0.0
            return hu_to_output(goal - base, output_hu)[None]

        self.y = [encode(c, g) for c, g in zip(self.cases, goals)]
        if both:  # channel 0 the scanned (noisy) phase, channel 1 the noise-free one
            self.y = [np.concatenate([encode(c, c.phases[phase]), y])
                      for c, y in zip(self.cases, self.y)]

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
        noise_free_target: the target is ``<phase>_clean.nii.gz`` (the noise-free image
            ``vcesdk-data phantoms`` writes).
        keep_noisy: as for :class:`PhantomPairs`.

    Raises:
        InputError: a patient lacks the NCCT or the phase (or its noise-free image with
            ``noise_free_target``), or the grids differ.
    """

    def __init__(self, root, patients: Sequence[str], phase: str, windows: Sequence[Window],
                 output_hu: Sequence[float], target: str = "image", aligned: bool = True,
                 noise_free_target: bool = False, keep_noisy: bool = False) -> None:
        from pathlib import Path

        from vcesdk.errors import InputError
        from vcesdk.io import read_volume

        from .store import find_phase

        root = Path(root)
        cases, clean = [], []
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
            cases.append(PairCase(name, {"ncct": a.hu, phase: b.hu}, a.spacing_zyx_mm))
            if noise_free_target:
                cp = pdir / f"{phase}_clean.nii.gz"
                if not cp.is_file():
                    raise InputError(f"{pdir} has no {cp.name}: data.noise_free_target needs the"
                                     f" noise-free images of a 'vcesdk-data phantoms' set (or "
                                     f"--set data.noise_free_target=false)")
                c = read_volume(cp)
                if c.shape != a.shape:
                    raise InputError(f"{name}: {cp.name} {c.shape} is not on the NCCT grid "
                                     f"{a.shape}")
                clean.append(c.hu)
        self._setup(cases, phase, windows, output_hu, target,
                    clean if noise_free_target else None, keep_noisy)


def dataset_patients(root, phase: str) -> list[str]:
    """Patient folders of a dataset that hold an NCCT and `phase`, sorted."""
    from pathlib import Path

    from .store import find_phase

    return sorted(p.name for p in Path(root).iterdir() if p.is_dir()
                  and find_phase(p, "ncct") is not None and find_phase(p, phase) is not None)


class UnpairedVolumes:
    """Unpaired real scans for methods whose training needs no pairs (004's stage 1, CycleGAN):
    NCCT volumes and contrast-enhanced volumes of other patients, each resampled to the
    recipe's spacing and oriented LPS; crops are drawn independently from both sets.

    Args:
        ncct: NCCT volumes (file or DICOM folder paths, or :class:`~vcesdk.CTVolume`).
        cect: contrast-enhanced volumes, likewise.
        windows, output_hu: as :class:`PhantomPairs` (the CECT is the target, target "image").
        spacing_mm: (z, y, x) grid the crops are cut from.
        min_body_fraction: a crop is redrawn (up to 20 times) until at least this fraction of
            its NCCT / CECT voxels is body (> -500 HU), so air-only crops do not dominate.

    Items: ``sample`` gives x (B, C, d, h, w) NCCT crops and y (B, 1, d, h, w) CECT crops of
    other patients, float32 in [-1, 1]. There is no validation truth (``cases`` is empty).

    Raises:
        InputError: an empty list, or a volume smaller than the crop (at sampling).
    """

    target = "image"

    def __init__(self, ncct: Sequence, cect: Sequence, windows: Sequence[Window],
                 output_hu: Sequence[float], spacing_mm: Sequence[float],
                 min_body_fraction: float = 0.3) -> None:
        from vcesdk.errors import InputError
        from vcesdk.io import read_volume
        from vcesdk.volume import CTVolume, orient_volume, resample_volume

        if not ncct or not cect:
            raise InputError("unpaired training needs at least one NCCT and one contrast-"
                             "enhanced volume")

        def load(v) -> np.ndarray:
            vol = v if isinstance(v, CTVolume) else read_volume(v)
            return orient_volume(resample_volume(vol, spacing_mm)).hu

        self.ncct_hu = [load(v) for v in ncct]
        self.cect_hu = [load(v) for v in cect]
        self.x = [hu_to_channels(v, windows) for v in self.ncct_hu]
        self.y = [hu_to_output(v, output_hu)[None] for v in self.cect_hu]
        self.cases: list = []
        self.min_body = float(min_body_fraction)

    def _crop(self, rng: np.random.Generator, arrays: list, hus: list, crop: Sequence[int]
              ) -> np.ndarray:
        from vcesdk.errors import InputError

        i = int(rng.integers(len(arrays)))
        shape = hus[i].shape
        if any(int(c) > n for c, n in zip(crop, shape)):
            raise InputError(f"a {shape} volume is smaller than the crop {list(crop)}")
        for _ in range(20):
            z0, y0, x0 = (int(rng.integers(n - int(c) + 1)) for n, c in zip(shape, crop))
            sl = (slice(z0, z0 + int(crop[0])), slice(y0, y0 + int(crop[1])),
                  slice(x0, x0 + int(crop[2])))
            if (hus[i][sl] > -500).mean() >= self.min_body:
                break
        return arrays[i][(slice(None), *sl)]

    def sample(self, rng: np.random.Generator, batch_size: int, crop: Sequence[int]
               ) -> tuple[np.ndarray, np.ndarray]:
        """Independent random crops: x (B, C, d, h, w) NCCT, y (B, 1, d, h, w) CECT."""
        xs = [self._crop(rng, self.x, self.ncct_hu, crop) for _ in range(batch_size)]
        ys = [self._crop(rng, self.y, self.cect_hu, crop) for _ in range(batch_size)]
        return np.stack(xs), np.stack(ys)


class WindowStream(torch.utils.data.IterableDataset):
    """The training batches of a run as a stream a ``torch.utils.data.DataLoader`` reads with
    worker processes: batch ``k`` is drawn by ``source.sample`` with its own generator seeded
    by (seed, k), so the windows of every step are the same for any number of workers, on any
    device, and after a resume.

    Args:
        source: :class:`PhantomPairs`, :class:`DatasetPairs` or :class:`UnpairedVolumes`.
        seed: the run's seed (``train.seed``).
        batch_size: windows per batch (the global batch; the trainer slices it per process).
        crop: window size [d, h, w] voxels.
        start, stop: the steps to draw, [start, stop).

    Yields:
        (x, y) float32 tensors (batch, C, d, h, w).
    """

    def __init__(self, source, seed: int, batch_size: int, crop: Sequence[int], start: int,
                 stop: int) -> None:
        super().__init__()
        self.source, self.seed, self.batch_size = source, int(seed), int(batch_size)
        self.crop, self.start, self.stop = tuple(int(c) for c in crop), int(start), int(stop)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of step ``step`` (0-based)."""
        rng = np.random.default_rng([self.seed, int(step), 7])
        x, y = self.source.sample(rng, self.batch_size, self.crop)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        first, every = (0, 1) if info is None else (info.id, info.num_workers)
        # the DataLoader takes one batch from each worker in turn, so worker i draws steps
        # start + i, start + i + n, ...: the stream reaches the loop in step order
        for step in range(self.start + first, self.stop, every):
            yield self.batch(step)
