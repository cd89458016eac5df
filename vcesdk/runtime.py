"""The runtime a vendor embeds: ``Synthesizer(bundle).synthesize(ctvolume) -> ctvolume``.

Flow: HU volume -> (resample to the bundle's grid) -> windows to channels -> pad to the
network's multiples -> sliding windows through ONNX Runtime -> overlap average (vcesdk._C)
-> output channel to HU -> (compose with the input, resample back) -> HU on the input's grid.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time
import warnings
from typing import Callable, Sequence

import numpy as np

from .bundle import Bundle, load_bundle, round_up
from .contrast import check_contrast
from .hu_check import HU_CHECK_MODES, HUStats, check_hu
from .errors import (
    InputError,
    InvalidVoxelValuesError,
    MemoryBudgetError,
    MissingDependencyError,
    ObliqueVolumeError,
    ProviderError,
)
from .intensity import ADDITIVE_COMPOSE, channels_to_hu, enhancement_hu, hu_to_channels
from .stitch import sliding_window, window_grid
from .volume import (
    CTVolume,
    axis_aligned_grid,
    obliquity_deg,
    orient_volume,
    orientation_code,
    resample_volume,
)

_logger = logging.getLogger(__name__)

AIR_HU = -1024.0
"""Values below this (field-of-view padding such as -2048 or -3024) are air to the model."""
DEFAULT_MEMORY_BUDGET_MB = 16384.0
"""Default limit on the estimated memory of one synthesis (``VCESDK_MEMORY_BUDGET_MB``)."""
MAX_OBLIQUE_DEG = 3.0
"""Axes more than this many degrees from the patient axes make a volume oblique."""
OBLIQUE_MODES = ("refuse", "resample")

# Preference order when the caller names no providers.
DEFAULT_PROVIDER_ORDER: tuple[str, ...] = (
    "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclasses.dataclass
class LatencyReport:
    """Timing of one :meth:`Synthesizer.synthesize` call.

    Attributes:
        backend: the ONNX Runtime execution provider that ran the model.
        slices: number of input slices (D of the input volume).
        windows: number of windows the model ran on.
        total_s: wall time of the whole call, seconds.
        model_s: time inside the model (all predictor calls), seconds.
        median_ms_per_slice: median model time per window, times windows per input slice: the
            model's cost of one output slice, ms.
        end_to_end_ms_per_slice: total_s / slices, ms (includes resampling, windowing, stitch).
        prepare_s: reorientation, resampling, HU windowing to channels and padding, seconds.
        stitch_s: sliding-window bookkeeping and overlap averaging (window batches, the
            native kernel), seconds: time inside the sliding window outside the model.
        compose_s: output channel to HU, composition with the input, resampling back,
            seconds.
    """

    backend: str
    slices: int
    windows: int
    total_s: float
    model_s: float
    median_ms_per_slice: float
    end_to_end_ms_per_slice: float
    prepare_s: float = 0.0
    stitch_s: float = 0.0
    compose_s: float = 0.0

    def line(self) -> str:
        """One human-readable line."""
        return (f"latency: {self.median_ms_per_slice:.1f} ms/slice median model time, "
                f"{self.end_to_end_ms_per_slice:.1f} ms/slice end to end over {self.slices} "
                f"slices ({self.windows} windows) on {self.backend}")


def resolve_providers(requested: Sequence[str] | None, bundle: Bundle | None = None
                      ) -> list[str]:
    """Providers to try, in order, filtered to those available here.

    Valid names are ONNX Runtime's execution providers plus the bundle-file backends of
    :data:`vcesdk.backends.BUNDLE_PROVIDERS` ("TorchScript", "TorchScript:cuda",
    "AOTInductor", "AOTInductor:cuda", "TensorRTEngine", "TorchTensorRT").

    Args:
        requested: provider names in order of preference; None for TensorRT, CUDA, CPU (ONNX
            Runtime).
        bundle: when given, a bundle-file backend counts as available only if the bundle
            holds its model file (and ONNX Runtime providers only if it holds an ONNX file).

    Returns:
        The available ones, in the requested order.

    Raises:
        ProviderError: a name that is not a provider (the message lists the valid ones), or
            none of the requested providers is available in this installation.
        MissingDependencyError: an ONNX Runtime provider asked for (or the default order)
            where ONNX Runtime is not installed (the message names the cpu/gpu extras).
    """
    from .backends import BUNDLE_PROVIDERS, INSTALL_ONNXRUNTIME

    try:
        import onnxruntime as ort

        ort_all, ort_here = list(ort.get_all_providers()), list(ort.get_available_providers())
    except ImportError:  # vcesdk installed without its cpu/gpu extra
        ort_all = ort_here = []
    known = ort_all + list(BUNDLE_PROVIDERS)
    names = list(DEFAULT_PROVIDER_ORDER if requested is None else requested)
    if not names:
        raise ProviderError("providers is empty; valid: " + ", ".join(known))
    for name in names:
        if name not in known:
            if not ort_all and name.endswith("ExecutionProvider"):
                raise MissingDependencyError(f"{name} is an ONNX Runtime provider and ONNX "
                                             f"Runtime is not installed: "
                                             f"{INSTALL_ONNXRUNTIME}")
            raise ProviderError(f"unknown execution provider {name!r}; valid: "
                                f"{', '.join(known)}")
    formats = None if bundle is None else bundle.model_formats
    ort_ok = formats is None or "onnx" in formats
    available = ort_here if ort_ok else []
    available += [p for p, (fmt, ok) in BUNDLE_PROVIDERS.items()
                  if p in names and (formats is None or fmt in formats) and ok()]
    chosen = [n for n in names if n in available]
    if not chosen:
        raise ProviderError(f"none of {', '.join(names)} is available in this installation "
                            f"for this bundle (available: {', '.join(available) or 'none'})")
    return chosen


def open_backend(bundle: Bundle, providers: Sequence[str], intra_op_threads: int = 0,
                 provider_options: Sequence[dict] | None = None):
    """The backend for the first usable provider: ONNX Runtime (with the following ONNX
    Runtime providers as its fallbacks for unsupported nodes) or a bundle-file backend.

    Args:
        provider_options: for ONNX Runtime, one dict per provider in `providers` (bundle
            backends take none; their entries are ignored).

    Raises:
        BundleError: the chosen provider needs a model file the bundle does not have.
    """
    from .backends import BUNDLE_PROVIDERS, OrtBackend, open_bundle_backend

    first = providers[0]
    if first in BUNDLE_PROVIDERS:
        return open_bundle_backend(first, bundle.file("model", BUNDLE_PROVIDERS[first][0]),
                                   bundle.path)
    keep = [i for i, p in enumerate(providers) if p not in BUNDLE_PROVIDERS]
    opts = [provider_options[i] for i in keep] if provider_options else None
    return OrtBackend(bundle.file("model", "onnx"), [providers[i] for i in keep],
                      intra_op_threads, opts)


def default_provider_options(bundle: Bundle, providers: Sequence[str],
                             provider_options: dict[str, dict] | None = None) -> list[dict]:
    """One ONNX Runtime options dict per provider: the user's, on top of vcesdk's defaults.

    The TensorRT execution provider gets the bundle's profile shapes and an engine cache
    folder by default (:func:`vcesdk.engines.ort_provider_options`; cache folder
    :func:`vcesdk.engines.default_engine_cache`, root ``$VCESDK_ENGINE_CACHE``), so ONNX
    Runtime builds one engine for every window of the bundle once and reuses it in later
    processes; any key the user gives for it wins. Other providers get only the user's.
    """
    from .engines import ort_provider_options

    out = []
    for p in providers:
        user = dict((provider_options or {}).get(p, {}))
        if p == "TensorrtExecutionProvider":
            user = {**ort_provider_options(bundle, [p])[0], **user}
        out.append(user)
    return out


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


def _check_finite(vol: CTVolume) -> None:
    if not np.all(np.isfinite(vol.hu)):
        raise InvalidVoxelValuesError("input volume holds NaN or infinite values; fix or mask "
                                      "them before synthesis")


def prepare_model_input(bundle: Bundle, vol: CTVolume) -> ModelInput:
    """Resample, window and pad a volume as the bundle's manifest declares.

    Raises:
        InputError: the volume holds NaN or infinite values.
    """
    _check_finite(vol)
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
    channels = hu_to_channels(work.hu, bundle.windows)
    replicated = max(0, window[0] - shape[0])
    if replicated:
        # a thin input (fewer slices than the window): its last slice is repeated to the
        # window depth, so the network sees anatomy that continues rather than air
        channels = np.concatenate([channels, np.repeat(channels[:, -1:], replicated, axis=1)],
                                  axis=1)
        shape = channels.shape[1:]
    if padded != shape:
        pad_values = hu_to_channels(np.float32([bundle.pad_hu]), bundle.windows)[:, 0]
        full = np.empty((len(bundle.windows), *padded), dtype=np.float32)
        full[:] = pad_values[:, None, None, None]
        full[:, :shape[0], :shape[1], :shape[2]] = channels
        channels = full
    return ModelInput(work=work, channels=channels, window=window, stride=stride,
                      replicated_slices=replicated)


def estimate_memory_mb(bundle: Bundle, vol: CTVolume) -> float:
    """Estimated peak memory of :meth:`Synthesizer.synthesize` for `vol`, MB (besides the
    model's own working memory and the input, which the caller already holds).

    Counted, float32: the reoriented and resampled volume on the model grid, its input
    channels padded to the network's multiples, the output channels there, the prediction in
    HU, and on the input grid the difference and the result (2 volumes).
    """
    grid = list(vol.shape)  # axes taken as already in the model's orientation (axial scans)
    if bundle.resample_mm is not None:
        grid = [max(1, round(n * s / t)) for n, s, t in
                zip(grid, vol.spacing_zyx_mm, bundle.resample_mm)]
    padded, _, _ = plan_windows(bundle, grid)
    c_in = len(bundle.windows)
    c_out = int(bundle.manifest["output"]["channels"])
    floats = (2 * float(np.prod(grid)) + float(np.prod(padded)) * (c_in + c_out)
              + 2 * float(np.prod(vol.shape)))
    return floats * 4 / 1e6


class Synthesizer:
    """Turns a non-contrast CT into a synthetic contrast-enhanced CT with one model bundle.

    Construct once (the bundle is verified and the ONNX Runtime session created), then call
    :meth:`synthesize` many times, like ``onnxruntime.InferenceSession``.

    Args:
        bundle: path of a bundle folder (default :data:`vcesdk.DEFAULT_BUNDLE`) or a loaded
            :class:`~vcesdk.bundle.Bundle`.
        providers: providers in order of preference: ONNX Runtime execution providers (e.g.
            ["CUDAExecutionProvider", "CPUExecutionProvider"]) or a bundle-file backend
            ("TorchScript", "TorchScript:cuda", "AOTInductor", "AOTInductor:cuda",
            "TensorRTEngine", "TorchTensorRT"); a provider
            whose model file the bundle lacks counts as unavailable. None tries TensorRT, CUDA,
            CPU through ONNX Runtime. The first available one is used (:attr:`provider`).
        intra_op_threads: ONNX Runtime intra-op threads (0 = its default).
        provider_options: ONNX Runtime options per provider name, e.g.
            {"TensorrtExecutionProvider": {"trt_fp16_enable": "True"}}; the TensorRT EP's
            defaults (bundle profile shapes, engine cache folder) are
            :func:`default_provider_options`, and these override them key by key.
        memory_budget_mb: refuse volumes whose :func:`estimate_memory_mb` exceeds this
            (default ``$VCESDK_MEMORY_BUDGET_MB`` or 16384).
        contrast_guard: what to do when the input already looks contrast-enhanced (see
            :mod:`vcesdk.contrast`): "warn" (default; a :class:`UserWarning` and a log line),
            "refuse" (raise :class:`~vcesdk.errors.ContrastEnhancedInputError`) or "off".
        hu_check: what to do with an input that does not look like CT in Hounsfield units
            (see :mod:`vcesdk.hu_check`: no air at all, e.g. MR, PET or an unsigned export):
            "refuse" (default; raise :class:`~vcesdk.errors.NotCTError`), "warn" or "off".
        oblique: what to do with a volume whose axes are oblique to the patient axes by more
            than :data:`MAX_OBLIQUE_DEG`: "refuse" (default; raise
            :class:`~vcesdk.errors.ObliqueVolumeError`) or "resample" (run on an axis-aligned
            grid, bring the result back onto the input grid).

    Thread safety: one Synthesizer may be used from several threads at once; each
    :meth:`synthesize` call keeps its state on its own stack and gives bit-identical results
    to serial use (ONNX Runtime sessions and TorchScript modules are safe to run
    concurrently; the TensorRT backends serialise calls on their one execution context).
    :attr:`last_latency` is the report of whichever call finished last. Bundles and CTVolume
    objects are read-only to vcesdk; :class:`~vcesdk.stitch.StreamingStitcher` is not
    thread-safe (one per call).

    Attributes:
        bundle: the verified bundle.
        provider: the execution provider that was chosen.
        last_latency: the :class:`LatencyReport` of the last call.
        last_contrast: the :class:`~vcesdk.contrast.ContrastEstimate` of the last call (None
            when the guard is off).
        last_hu: the :class:`~vcesdk.hu_check.HUStats` of the last call (None when the HU
            check is off).
        last_auxiliary: the auxiliary outputs the bundle declares
            (:class:`~vcesdk.bundle.AuxiliaryOutput`, e.g. MAN-GAN's "subtraction" map), of the
            last call: name -> float32 HU volume on the input's grid; empty for bundles
            without any.

    Raises:
        BundleError: the bundle is missing, malformed or altered.
        ProviderError: an unknown or unavailable provider.
    """

    def __init__(self, bundle: str | os.PathLike | Bundle | None = None,
                 providers: Sequence[str] | None = None, intra_op_threads: int = 0,
                 provider_options: dict[str, dict] | None = None,
                 memory_budget_mb: float | None = None, contrast_guard: str = "warn",
                 oblique: str = "refuse", hu_check: str = "refuse") -> None:
        from . import DEFAULT_BUNDLE
        from .contrast import GUARD_MODES

        if contrast_guard not in GUARD_MODES:
            raise InputError(f"contrast_guard must be one of {', '.join(GUARD_MODES)}, got "
                             f"{contrast_guard!r}")
        if oblique not in OBLIQUE_MODES:
            raise InputError(f"oblique must be one of {', '.join(OBLIQUE_MODES)}, got "
                             f"{oblique!r}")
        if hu_check not in HU_CHECK_MODES:
            raise InputError(f"hu_check must be one of {', '.join(HU_CHECK_MODES)}, got "
                             f"{hu_check!r}")
        self.contrast_guard = contrast_guard
        self.hu_check = hu_check
        self.last_hu: HUStats | None = None
        self.oblique = oblique
        self.last_contrast = None
        self.last_auxiliary: dict[str, CTVolume] = {}

        self.memory_budget_mb = float(memory_budget_mb if memory_budget_mb is not None else
                                      os.environ.get("VCESDK_MEMORY_BUDGET_MB",
                                                     DEFAULT_MEMORY_BUDGET_MB))

        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(
            DEFAULT_BUNDLE if bundle is None else bundle)
        chosen = resolve_providers(providers, self.bundle)
        asked = DEFAULT_PROVIDER_ORDER if providers is None else tuple(providers)
        unknown = set(provider_options or {}) - set(asked)
        if unknown:
            raise ProviderError(f"provider_options for {', '.join(sorted(unknown))}, which is "
                                f"not among the providers")
        self._backend = open_backend(self.bundle, chosen, intra_op_threads,
                                     default_provider_options(self.bundle, chosen,
                                                              provider_options))
        self.provider = self._backend.name
        self.last_latency: LatencyReport | None = None
        _logger.info("bundle %s (%s, %s) running on %s", self.bundle.name, self.bundle.phase,
                     self.bundle.manifest["method"], self.provider)

    def predict_windows(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a batch of windows in model values.

        Args:
            batch: float32 (B, C, d, h, w) in [-1, 1], channels as the manifest's windows.

        Returns:
            float32 (B, C', d, h, w) model output in [-1, 1].
        """
        return self._backend.run(batch)

    def _to_input_grid(self, model_grid: CTVolume, vol: CTVolume, default_hu: float
                       ) -> np.ndarray:
        """Values on the model grid brought back onto the input's grid, (D, H, W) float32."""
        if self.bundle.resample_mm is not None:
            return resample_volume(model_grid, (), reference=vol, default_hu=default_hu).hu
        return orient_volume(model_grid, orientation_code(vol)).hu

    def synthesize(self, vol: CTVolume, progress: Callable[[int, int], None] | None = None
                   ) -> CTVolume:
        """Synthesize the bundle's contrast phase from a non-contrast volume.

        Args:
            vol: NCCT, float32 HU (D, H, W), any spacing and orientation.
            progress: called as progress(windows_done, windows_total).

        Returns:
            sCECT, float32 HU (D, H, W) on the input's grid (same shape, spacing, origin,
            direction, source headers). The input is not modified.

        Raises:
            InvalidVoxelValuesError: the volume holds NaN or infinite values.
            MemoryBudgetError: the estimated memory exceeds :attr:`memory_budget_mb`.
            ObliqueVolumeError: oblique axes and ``oblique="refuse"``.
            ContrastEnhancedInputError: the input looks enhanced and
                ``contrast_guard="refuse"``.
            NotCTError: the input does not look like CT in HU and ``hu_check="refuse"``.

        Warns:
            UserWarning: an input thinner than the model's window on the model grid (its last
                slice is repeated to fill the window), an enhanced-looking input
                (``contrast_guard="warn"``), a non-HU-looking input (``hu_check="warn"``).
        """
        t0 = time.perf_counter()
        angle = obliquity_deg(vol)
        if angle > MAX_OBLIQUE_DEG and self.oblique == "refuse":
            raise ObliqueVolumeError(
                f"volume axes are {angle:.1f} degrees oblique to the patient axes (an oblique "
                f"acquisition or reformat); pass --oblique resample (oblique='resample') to "
                f"run on an axis-aligned grid")
        _check_finite(vol)  # once per call; resampling (oblique path) keeps values finite
        self.last_hu = check_hu(vol, self.hu_check)
        self.last_contrast = check_contrast(vol, self.contrast_guard)
        if angle > MAX_OBLIQUE_DEG:
            aligned = resample_volume(vol, (), reference=axis_aligned_grid(vol),
                                      default_hu=AIR_HU)
            enhanced, aux = self._synthesize(aligned, progress, t0)
            delta = enhanced.with_hu(enhanced.hu - aligned.hu)
            back = resample_volume(delta, (), reference=vol, default_hu=0.0).hu
            self.last_auxiliary = {k: vol.with_hu(resample_volume(v, (), reference=vol,
                                                                  default_hu=0.0).hu)
                                   for k, v in aux.items()}
            return vol.with_hu((vol.hu + back).astype(np.float32, copy=False))
        result, self.last_auxiliary = self._synthesize(vol, progress, t0)
        return result

    def _synthesize(self, vol: CTVolume, progress: Callable[[int, int], None] | None,
                    t0: float) -> tuple[CTVolume, dict[str, CTVolume]]:
        b = self.bundle
        need = estimate_memory_mb(b, vol)
        if need > self.memory_budget_mb:
            raise MemoryBudgetError(
                f"synthesizing a {'x'.join(map(str, vol.shape))} volume needs about "
                f"{need:.0f} MB, over the {self.memory_budget_mb:.0f} MB budget; raise "
                f"memory_budget_mb (VCESDK_MEMORY_BUDGET_MB) or split the volume")
        prep = _prepare_finite(b, vol)
        if prep.replicated_slices:
            msg = (f"thin input: {prep.work.shape[0]} slice(s) on the model grid "
                   f"({vol.shape[0]} in the input), fewer than the model's window of "
                   f"{prep.window[0]}; the last slice was repeated to fill the window, so "
                   f"through-plane context is missing and the result is less reliable")
            _logger.warning(msg)
            warnings.warn(msg, UserWarning, stacklevel=3)
        t_prep = time.perf_counter()
        work, window, stride = prep.work, prep.window, prep.stride
        shape = work.shape
        n_windows = len(window_grid(prep.channels.shape[1:], window, stride))
        times: list[tuple[float, int]] = []
        done = [0]

        def predictor(batch: np.ndarray) -> np.ndarray:
            t = time.perf_counter()
            out = self.predict_windows(batch)
            times.append((time.perf_counter() - t, len(batch)))
            return out

        def on_progress(n: int) -> None:
            done[0] = n
            if progress is not None:
                progress(n, n_windows)

        stitched = sliding_window(prep.channels, predictor, window, stride, blend=b.blend,  # type: ignore
                                  batch_size=max(1, b.batch_size), progress=on_progress)
        t_stitch = time.perf_counter()
        pred = channels_to_hu(stitched[b.output_channel, :shape[0], :shape[1], :shape[2]],
                              b.output_hu)
        if b.compose in ADDITIVE_COMPOSE:
            delta = enhancement_hu(pred, work.hu, b.compose, b.output_hu, b.difference_floor_hu)
            out = vol.hu + self._to_input_grid(work.with_hu(delta), vol, 0.0)
        else:
            out = self._to_input_grid(work.with_hu(pred), vol, b.pad_hu)
        result = vol.with_hu(out.astype(np.float32, copy=False))
        auxiliary = {
            a.name: vol.with_hu(self._to_input_grid(work.with_hu(channels_to_hu(
                stitched[a.channel, :shape[0], :shape[1], :shape[2]], a.hu_range)), vol, 0.0))
            for a in b.auxiliary}
        t_end = time.perf_counter()
        total = t_end - t0
        per_window = [t / n for t, n in times]
        model_s = sum(t for t, _ in times)
        depth = vol.shape[0]
        self.last_latency = LatencyReport(
            backend=self.provider, slices=depth, windows=n_windows, total_s=total,
            model_s=model_s,
            median_ms_per_slice=1e3 * statistics.median(per_window) * n_windows / depth,
            end_to_end_ms_per_slice=1e3 * total / depth, prepare_s=t_prep - t0,
            stitch_s=max(0.0, t_stitch - t_prep - model_s), compose_s=t_end - t_stitch)
        return result, auxiliary
