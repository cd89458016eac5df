"""The runtime a vendor embeds: ``Synthesizer(bundle).synthesize(ctvolume) -> ctvolume``.

Flow: HU volume -> (resample to the bundle's grid) -> windows to channels -> pad to the
network's multiples (:mod:`vcesdk.planning`) -> sliding windows through one backend
(:mod:`vcesdk.backends`: ONNX Runtime, TorchScript, AOTInductor, TensorRT) -> overlap average
(vcesdk._C) -> output channel to HU -> (compose with the input, resample back) -> HU on the
input's grid. The steps after the model run slab by slab while later windows are still in it
(:mod:`vcesdk.streaming`); :meth:`Synthesizer.synthesize_to` also writes a DICOM series slice
by slice from a thread.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .backends import default_provider_options, open_backend, resolve_providers
from .bundle import DEFAULT_BUNDLE, Bundle, load_bundle
from .contrast import GUARD_MODES, check_contrast
from .errors import InputError, MemoryBudgetError, ObliqueVolumeError, ProviderError
from .formats import DEFAULT_PROVIDER_ORDER
from .hu_check import HU_CHECK_MODES, HUStats, check_hu
from .io import write_volume
from .io.atomic import atomic_output
from .io.background import SliceWriterThread
from .io.dicom import DicomSeriesWriter
from .io.itk import itk_suffix
from .planning import (
    AIR_HU,
    _prepare_finite,
    check_finite,
    estimate_memory_mb,
    with_slice_stride,
)
from .stitch import sliding_window, window_grid
from .streaming import OutputStream, SliceSink
from .volume import (
    CTVolume,
    axis_aligned_grid,
    obliquity_deg,
    resample_volume,
)

_logger = logging.getLogger(__name__)

DEFAULT_MEMORY_BUDGET_MB = 16384.0
"""Default limit on the estimated memory of one synthesis (``VCESDK_MEMORY_BUDGET_MB``)."""
MAX_OBLIQUE_DEG = 3.0
"""Axes more than this many degrees from the patient axes make a volume oblique."""
OBLIQUE_MODES = ("refuse", "resample")

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
        prepare_s: the input checks (obliquity, finite values, HU check, contrast guard),
            reorientation, resampling, HU windowing to channels and padding, seconds.
        stitch_s: sliding-window bookkeeping and overlap averaging (window batches, the
            native kernel), seconds: time inside the sliding window outside the model.
        compose_s: output channel to HU, composition with the input, resampling back and
            handing slices to ``on_slices``, seconds (slab by slab during the sliding window,
            :class:`vcesdk.streaming.OutputStream`).
        window: (d, h, w) size of each window on the model grid, voxels (the padded plane
            for a whole-plane bundle).
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
    window: tuple[int, int, int] | None = None

    def line(self) -> str:
        """One human-readable line."""
        return (f"latency: {self.median_ms_per_slice:.1f} ms/slice median model time, "
                f"{self.end_to_end_ms_per_slice:.1f} ms/slice end to end over {self.slices} "
                f"slices ({self.windows} windows) on {self.backend}")


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
            :func:`vcesdk.backends.onnxruntime.default_provider_options`, and these override
            them key by key.
        memory_budget_mb: refuse volumes whose :func:`vcesdk.planning.estimate_memory_mb`
            exceeds this (default ``$VCESDK_MEMORY_BUDGET_MB`` or 16384).
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
        triton_url: with ``providers=["Triton"]``, the server: ``grpc://host:8001`` or
            ``http://host:8000`` (see :mod:`vcesdk.triton_client`: the server's model config
            is checked against the manifest; windows run only there, never locally).
        triton_model: the server's model name (default: the bundle's, as ``vcesdk triton``
            names it).
        triton_timeout_s: how long one window batch may retry an unreachable server before
            :class:`~vcesdk.errors.TritonError` (default
            :data:`vcesdk.triton_client.DEFAULT_TIMEOUT_S`, 30 s).
        triton_shared_memory: how window batches reach the server: "auto" (default: through
            system shared memory when the URL's host is 127.0.0.1, ``localhost`` or ::1, else
            over the network; a server that cannot map it gets them over the network after
            one warning), "system" (always; a :class:`~vcesdk.errors.TritonError` when the
            server cannot) or "off" (never). :attr:`provider` ends in ``+shm`` while it is in
            use; :meth:`close` unregisters and removes the regions.
        stride: slices between consecutive windows, overriding the bundle's
            (``inference.stride[0]`` of its manifest); 1 <= stride <= the window depth.
            Smaller: more windows averaged per slice (slower); larger: fewer windows (faster).
            A value that differs from the bundle's is logged as one warning naming both. None
            (default): the bundle's.

    Thread safety: one Synthesizer may be used from several threads at once; each
    :meth:`synthesize` call keeps its state on its own stack and gives bit-identical results
    to serial use (ONNX Runtime sessions and TorchScript modules are safe to run
    concurrently; the TensorRT backends serialise calls on their one execution context).
    :attr:`last_latency` is the report of whichever call finished last. Bundles and CTVolume
    objects are read-only to vcesdk; :class:`~vcesdk.stitch.StreamingStitcher` is not
    thread-safe (one per call).

    Attributes:
        bundle: the verified bundle (its :attr:`~vcesdk.bundle.Bundle.stride` carries the
            ``stride`` override; its ``manifest`` stays the file's).
        bundle_stride: the slice stride the bundle's manifest declares (:attr:`stride`: the
            one used).
        provider: the execution provider that was chosen (for Triton, the server, model and
            version, and ``+shm`` while system shared memory carries the tensors).
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
        InputError: a bad mode, or a stride outside 1..window depth.
    """

    def __init__(self, bundle: str | os.PathLike | Bundle | None = None,
                 providers: Sequence[str] | None = None, intra_op_threads: int = 0,
                 provider_options: dict[str, dict] | None = None,
                 memory_budget_mb: float | None = None, contrast_guard: str = "warn",
                 oblique: str = "refuse", hu_check: str = "refuse",
                 triton_url: str | None = None, triton_model: str | None = None,
                 triton_timeout_s: float | None = None,
                 triton_shared_memory: str | None = None, stride: int | None = None) -> None:
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
        self.last_write_wait_s: float | None = None  # see synthesize_to

        self.memory_budget_mb = float(memory_budget_mb if memory_budget_mb is not None else
                                      os.environ.get("VCESDK_MEMORY_BUDGET_MB",
                                                     DEFAULT_MEMORY_BUDGET_MB))

        loaded = bundle if isinstance(bundle, Bundle) else load_bundle(
            DEFAULT_BUNDLE if bundle is None else bundle)
        self.bundle_stride = int(loaded.stride[0])  # the manifest's; self.stride: the one used
        if stride is not None:
            loaded = with_slice_stride(loaded, stride)  # InputError outside 1..window depth
            if loaded.stride[0] != self.bundle_stride:
                _logger.warning("bundle %s: slice stride %d overrides the bundle's stride %d "
                                "(window depth %d)", loaded.name, loaded.stride[0],
                                self.bundle_stride, loaded.window[0])
        self.bundle = loaded
        # --- Triton (vcesdk.triton_client): a remote provider, outside the file-format
        # registry of vcesdk.backends; it runs alone and never falls back to local execution
        from .triton_client import DEFAULT_TIMEOUT_S, is_triton, open_triton

        if is_triton(providers):
            if provider_options:
                raise ProviderError("provider_options are ONNX Runtime's; the Triton provider "
                                    "takes triton_url, triton_model, triton_timeout_s, "
                                    "triton_shared_memory")
            self._backend = open_triton(self.bundle, triton_url, triton_model,
                                        timeout_s=triton_timeout_s or DEFAULT_TIMEOUT_S,
                                        shared_memory=triton_shared_memory or "auto")
            self.last_latency = None
            _logger.info("bundle %s (%s, %s) running on %s", self.bundle.name,
                         self.bundle.phase, self.bundle.manifest["method"], self.provider)
            return
        if triton_url or triton_model or triton_shared_memory:
            raise ProviderError("triton_url/triton_model/triton_shared_memory given but "
                                "providers does not name Triton; pass providers=['Triton']")
        chosen = resolve_providers(providers, self.bundle)
        asked = DEFAULT_PROVIDER_ORDER if providers is None else tuple(providers)
        unknown = set(provider_options or {}) - set(asked)
        if unknown:
            raise ProviderError(f"provider_options for {', '.join(sorted(unknown))}, which is "
                                f"not among the providers")
        self._backend = open_backend(self.bundle, chosen, intra_op_threads,
                                     default_provider_options(self.bundle, chosen,
                                                              provider_options))
        self.last_latency: LatencyReport | None = None
        _logger.info("bundle %s (%s, %s) running on %s", self.bundle.name, self.bundle.phase,
                     self.bundle.manifest["method"], self.provider)

    @property
    def stride(self) -> int:
        """Slices between consecutive windows in this Synthesizer's runs (the override, or
        the bundle's)."""
        return int(self.bundle.stride[0])

    @property
    def provider(self) -> str:
        """The backend's name (read each time: a Triton backend's can lose its ``+shm``)."""
        return self._backend.name

    def close(self) -> None:
        """Release what the backend holds outside this process (the Triton provider's shared
        memory regions and their server registrations); idempotent. Garbage collection and
        interpreter exit do the same; afterwards a Triton Synthesizer runs nothing."""
        close = getattr(self._backend, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "Synthesizer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def predict_windows(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a batch of windows in model values.

        Args:
            batch: float32 (B, C, d, h, w) in [-1, 1], channels as the manifest's windows.

        Returns:
            float32 (B, C', d, h, w) model output in [-1, 1].
        """
        return self._backend.run(batch)

    def synthesize(self, vol: CTVolume, progress: Callable[[int, int], None] | None = None,
                   on_slices: SliceSink | None = None) -> CTVolume:
        """Synthesize the bundle's contrast phase from a non-contrast volume.

        The work after the model streams: each slab the stitcher finishes is composed back to
        HU and brought onto the input grid while later windows still run
        (:class:`vcesdk.streaming.OutputStream`), and `on_slices` gets each output slice as
        soon as it is final (e.g. a DICOM writer thread, as ``vcesdk synthesize`` does).

        Args:
            vol: NCCT, float32 HU (D, H, W), any spacing and orientation.
            progress: called as progress(windows_done, windows_total).
            on_slices: called as on_slices(k0, hu) with float32 (n, H, W) HU of output slices
                k0 .. k0 + n - 1 on the input grid, each slice exactly once; each run ascends,
                but runs arrive in the order the model finishes them (an input stored from
                head to feet gets its last slices first; all at once at the end for an oblique
                input or a bundle without resampling); `hu` is a view of the returned volume's
                slices, final (never written again): do not modify it.

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
        check_finite(vol)  # once per call; resampling (oblique path) keeps values finite
        self.last_hu = check_hu(vol, self.hu_check)
        self.last_contrast = check_contrast(vol, self.contrast_guard)
        if angle > MAX_OBLIQUE_DEG:
            aligned = resample_volume(vol, (), reference=axis_aligned_grid(vol),
                                      default_hu=AIR_HU)
            enhanced, aux = self._synthesize(aligned, progress, t0, None)
            delta = enhanced.with_hu(enhanced.hu - aligned.hu)
            back = resample_volume(delta, (), reference=vol, default_hu=0.0).hu
            self.last_auxiliary = {k: vol.with_hu(resample_volume(v, (), reference=vol,
                                                                  default_hu=0.0).hu)
                                   for k, v in aux.items()}
            result = vol.with_hu((vol.hu + back).astype(np.float32, copy=False))
            if on_slices is not None:
                on_slices(0, result.hu)
            return result
        result, self.last_auxiliary = self._synthesize(vol, progress, t0, on_slices)
        return result

    def synthesize_to(self, vol: CTVolume, path: str | os.PathLike, like: CTVolume | None = None,
                      series_description: str = "SYNTHETIC", overwrite: bool = False,
                      progress: Callable[[int, int], None] | None = None) -> CTVolume:
        """Synthesize and write the result: the main job.

        A DICOM series (a folder path) streams: a writer thread writes each slice as soon as
        it is final (:class:`vcesdk.io.background.SliceWriterThread`), while later windows
        are still in the model. NIfTI / NRRD / MHA files are written at the end. Either way
        the output appears only when complete (temporary sibling, renamed into place).
        :attr:`last_write_wait_s` is the time from the synthesis' end to the last file.

        Args:
            vol: NCCT, float32 HU (D, H, W).
            path: a folder for a DICOM series, or a .nii.gz / .nii / .nrrd / .mha file.
            like: volume whose DICOM headers give patient and study tags (default `vol`).
            series_description: DICOM SeriesDescription ("SYNTHETIC" prefixed).
            overwrite: replace an existing output.
            progress: as for :meth:`synthesize`.

        Returns:
            The synthetic volume, as :meth:`synthesize` returns it.

        Raises:
            Everything :meth:`synthesize` raises; VolumeWriteError: the output exists (and not
            `overwrite`) or cannot be written. Nothing is left at `path` on an error.
        """
        like = like if like is not None else vol
        p = Path(path)
        if itk_suffix(p) is not None:
            out = self.synthesize(vol, progress)
            t = time.perf_counter()
            write_volume(out, p, like=like, series_description=series_description,
                         overwrite=overwrite)
            self.last_write_wait_s = time.perf_counter() - t
            return out
        with atomic_output(p, is_dir=True, overwrite=overwrite) as tmp:
            writer = SliceWriterThread(DicomSeriesWriter(
                vol, tmp, like=like, series_description=series_description).write)
            try:
                out = self.synthesize(vol, progress, on_slices=writer.put)
            except BaseException:
                with contextlib.suppress(Exception):
                    writer.close(cancel=True)
                raise
            t = time.perf_counter()
            writer.close()  # the slices still queued; raises a write error
            self.last_write_wait_s = time.perf_counter() - t
        return out

    def _synthesize(self, vol: CTVolume, progress: Callable[[int, int], None] | None,
                    t0: float, on_slices: SliceSink | None
                    ) -> tuple[CTVolume, dict[str, CTVolume]]:
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

        # finished slabs are composed and brought onto the input grid while later windows run
        stream = OutputStream(b, vol, work, on_slices)
        sliding_window(prep.channels, predictor, window, stride, blend=b.blend,  # type: ignore
                       batch_size=max(1, b.batch_size), progress=on_progress,
                       on_slices=stream.model_slab)
        streamed = stream.seconds
        t_stitch = time.perf_counter()
        result, auxiliary = stream.finish()
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
            stitch_s=max(0.0, t_stitch - t_prep - model_s - streamed),
            compose_s=stream.seconds,
            window=tuple(int(v) for v in window))  # type: ignore[arg-type]
        return result, auxiliary
