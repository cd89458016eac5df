"""``vcesdk benchmark``: per-slice latency, throughput, peak memory and the share of time spent
outside the model, for each backend that can run a bundle here, on a real CT.

Each backend runs in its own Python process (so its peak resident memory, read from the
kernel's ``VmHWM``, is its own), through the same path a vendor's integration takes: read the
CT from disk, then the main job ``Synthesizer.synthesize_to`` (a DICOM series is written by a
thread slice by slice while later windows are still in the model). One warm-up pass, then
``repeats`` timed passes. Per pass: end-to-end ms per slice = (read + synthesize and write) /
slices. Reported per backend: median and 90th percentile of that over the passes, model-only
ms per slice (median window time x windows / slices, :class:`~vcesdk.runtime.LatencyReport`),
throughput (slices per second at the median), peak RSS, and the time per slice of each
stage: read, prepare (input checks and contrast guard, reorient, resample, windowing), model,
stitch (overlap averaging), compose (HU, composition, resample back: slab by slab during
the sliding window), write (the wait for the last file after the synthesis ended:
``Synthesizer.last_write_wait_s``; the writing itself overlaps the model).
``outside_model_fraction`` = 1 - model / end to end (median over passes).

Peak GPU memory (``peak_gpu_mb``, MB = 10^6 bytes; details in ``gpu_memory``) for backends
that run on a CUDA GPU (the device column of :data:`vcesdk.formats.FORMATS`), from the
backend's opening through the last pass:

* torch backends (TorchScript:cuda, AOTInductor:cuda): ``torch.cuda.max_memory_allocated``,
  the exact peak of the tensors PyTorch's caching allocator handed out (weights,
  activations, inputs and outputs); the allocator's cache and the CUDA context are not
  counted.
* ONNX Runtime's CUDA and TensorRT providers, TensorRT engines and torch-tensorrt (whose
  TensorRT engine allocates outside PyTorch): device memory in use according to the CUDA
  driver (``cuMemGetInfo``), sampled every 5 ms on a thread, minus the level just before the
  backend opened. This counts everything allocated on the device meanwhile, including the
  memory arenas ONNX Runtime and TensorRT keep, and other processes' allocations on a
  shared GPU; a peak shorter than the sampling interval can be missed.

On the CPU ``peak_gpu_mb`` is null and ``gpu_memory.reason`` says why.

Arithmetic efficiency, per backend:

* ``model_gflops``: FLOPs of the model over the whole volume (one pass), 10^9: FLOPs per
  window x windows. FLOPs per window come from the manifest's ``network.flops_per_window``
  (counted once at export with ``torch.utils.flop_counter.FlopCounterMode``, scaled to the
  run's window by :func:`vcesdk.bundle.window_flops`) or, for bundles without that field,
  are counted now from the bundle's ``generator.pt`` where torch and ``vcesdk.export`` are
  installed (:func:`vcesdk.export.flops.count_bundle_flops`); else null, and
  ``flops.reason`` says why. Convolutions and matrix products only, 2 FLOPs per
  multiply-add.
* ``achieved_gflops_per_s``: ``model_gflops`` / ``model_s_median`` (the median over passes
  of the time inside the model).
* ``peak_matmul_gflops_per_s``: a 2048 x 2048 float32 NumPy matmul (2 n^3 FLOPs, median of
  :data:`MATMUL_REPEATS` after one warm-up), timed in the same run, in its own process with
  the BLAS thread count set to the backend's CPU threads (``peak_matmul`` names NumPy's BLAS
  and the threads); null on a GPU backend (a CPU peak says nothing about it).
* ``efficiency``: ``achieved_gflops_per_s`` / ``peak_matmul_gflops_per_s``.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InputError, VcesdkError
from .volume import CTVolume

STAGES: tuple[str, ...] = ("read", "prepare", "model", "stitch", "compose", "write")
MATMUL_N = 2048
"""Side of the square float32 matrices of the peak-throughput reference."""
MATMUL_REPEATS = 5
"""Timed matmuls (after one warm-up) of the peak-throughput reference; the median counts."""
BLAS_THREAD_VARIABLES: tuple[str, ...] = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                          "OMP_NUM_THREADS", "BLIS_NUM_THREADS",
                                          "VECLIB_MAXIMUM_THREADS")
"""Environment variables that set the thread count of NumPy's BLAS (whichever it is)."""


def find_default_ct() -> Path:
    """The real CT used when none is given: the sample shipped with vcesdk
    (:func:`vcesdk.data.sample_ct`, native abdominal CT, 30 x 101 x 122 voxels, 3 mm), so the
    benchmark runs in a fresh install with no data beside it. Pass ``--slices N`` to mirror-
    extend it to a longer series, or ``--input`` for another CT.

    Raises:
        InputError: the sample is missing from the install (pass a CT explicitly).
    """
    from .data import sample_ct

    try:
        return sample_ct()
    except FileNotFoundError as exc:
        raise InputError(f"no CT to benchmark on: {exc}; or pass --input CT") from None


def fit_slices(vol: CTVolume, n: int | None) -> CTVolume:
    """The volume cut or extended to `n` slices (None: unchanged).

    Fewer slices: the central `n` (origin moved along the slice axis). More: the volume is
    mirrored along z (symmetric reflection) until `n` slices, geometry unchanged.

    Raises:
        InputError: n < 1.
    """
    if n is None or n == vol.shape[0]:
        return vol
    if n < 1:
        raise InputError(f"--slices must be >= 1, got {n}")
    d = vol.shape[0]
    if n < d:
        z0 = (d - n) // 2
        origin = tuple(float(o) + z0 * vol.spacing_zyx_mm[0] * float(c) for o, c in
                       zip(vol.origin_xyz_mm, np.asarray(vol.direction).reshape(3, 3)[:, 2]))
        return CTVolume(hu=vol.hu[z0:z0 + n].copy(), spacing_zyx_mm=vol.spacing_zyx_mm,
                        origin_xyz_mm=origin, direction=vol.direction)  # type: ignore[arg-type]
    reps = -(-n // d)
    parts = [vol.hu if i % 2 == 0 else vol.hu[::-1] for i in range(reps)]
    return CTVolume(hu=np.ascontiguousarray(np.concatenate(parts)[:n]),
                    spacing_zyx_mm=vol.spacing_zyx_mm, origin_xyz_mm=vol.origin_xyz_mm,
                    direction=vol.direction)


def peak_rss_mb() -> float:
    """This process's peak resident set size, MB (VmHWM on Linux, else getrusage)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


GPU_SAMPLE_INTERVAL_S = 0.005
"""How often the driver-level GPU memory probe samples ``cuMemGetInfo``, seconds."""


class GpuMemoryProbe:
    """Peak GPU memory of one backend in this process (see the module docstring).

    Call :meth:`start` before the backend opens and :meth:`stop` after the last pass.

    Args:
        provider: the provider as requested (its device and runtime come from the format
            table).
        device: CUDA device ordinal.
        read_used_mb: () -> device memory in use, MB; default the CUDA driver's
            ``cuMemGetInfo`` (:meth:`vcesdk.cuda_driver.DeviceContext.memory_used_mb`).
        interval_s: sampling interval of the driver-level probe, seconds.
    """

    def __init__(self, provider: str, device: int = 0,
                 read_used_mb: Callable[[], float] | None = None,
                 interval_s: float = GPU_SAMPLE_INTERVAL_S) -> None:
        from .formats import provider_device, provider_format

        self.provider = provider
        self.device = int(device)
        self.on_gpu = provider_device(provider) == "cuda"
        fmt = provider_format(provider)
        # torch's allocator sees all of the memory of the plain torch backends; torch-tensorrt's
        # engine allocates through TensorRT, so it is measured at the driver like the others
        self.method = ("torch.cuda.max_memory_allocated"
                       if fmt.runtime == "torch" and not fmt.engine else
                       "cuMemGetInfo sampled every {:g} ms minus the level before the backend "
                       "opened".format(1e3 * interval_s))
        self._read = read_used_mb
        self._interval = float(interval_s)
        self._baseline = 0.0
        self._peak = 0.0
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._torch: Any = None
        self._ctx: Any = None

    def start(self) -> None:
        """Record the level before the backend opens and start sampling (GPU providers)."""
        if not self.on_gpu:
            return
        try:
            if self.method.startswith("torch"):
                import torch

                self._torch = torch
                torch.cuda.init()
                torch.cuda.reset_peak_memory_stats(self.device)
                return
            if self._read is None:
                from .cuda_driver import DeviceContext

                ctx = self._ctx = DeviceContext(self.device)
                self._read = ctx.memory_used_mb
                self._make_current = ctx.make_current
            self._baseline = self._peak = float(self._read())
        except Exception as exc:  # no driver / no torch CUDA: report, don't fail the run
            self._error = f"{type(exc).__name__}: {exc}"
            return
        self._thread = threading.Thread(target=self._sample, name="vcesdk-gpu-probe",
                                        daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        make_current = getattr(self, "_make_current", None)
        if make_current is not None:
            make_current()  # the driver call needs the device's context on this thread
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, float(self._read()))  # type: ignore[misc]

    def stop(self) -> dict[str, Any]:
        """Stop sampling; the result.

        Returns:
            {"peak_mb": float or None, "method": str or None, "reason": str or None,
            "device": int}: ``peak_mb`` None with a ``reason`` on the CPU or when the GPU
            could not be queried.
        """
        if not self.on_gpu:
            return {"peak_mb": None, "method": None, "device": None,
                    "reason": f"{self.provider} runs on the CPU"}
        if self._error is not None:
            return {"peak_mb": None, "method": self.method, "device": self.device,
                    "reason": f"GPU memory could not be read: {self._error}"}
        if self._torch is not None:
            self._torch.cuda.synchronize(self.device)
            peak = self._torch.cuda.max_memory_allocated(self.device) / 1e6
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._peak = max(self._peak, float(self._read()))  # type: ignore[misc]
            peak = max(0.0, self._peak - self._baseline)
        return {"peak_mb": peak, "method": self.method, "device": self.device, "reason": None}


def physical_cores() -> int:
    """Physical CPU cores this process may run on (sibling hyperthreads counted once), from
    Linux's sysfs topology; the logical CPU count where that is not readable."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        for name in ("core_cpus_list", "thread_siblings_list"):
            try:
                cores.add((topo / name).read_text().strip())
                break
            except OSError:
                continue
        else:
            return len(cpus)
    return len(cores) or len(cpus)


def backend_threads(provider: str, ran_on: str, intra_op_threads: int = 0) -> int | None:
    """CPU threads a backend runs the model with, or None when it runs on a GPU.

    Args:
        provider: the provider as requested (its format decides the runtime).
        ran_on: :attr:`vcesdk.Synthesizer.provider`, the one that ran (ONNX Runtime may have
            fallen back to its CPU provider).
        intra_op_threads: the Synthesizer's ONNX Runtime intra-op threads (0: its default,
            one per physical core).

    Returns:
        torch backends: ``torch.get_num_threads()``; ONNX Runtime: `intra_op_threads` or
        :func:`physical_cores`; None on a GPU.
    """
    from .formats import provider_device, provider_format

    fmt = provider_format(provider)
    on_gpu = (ran_on != "CPUExecutionProvider" if fmt.runtime == "onnxruntime"
              else provider_device(provider) == "cuda")
    if on_gpu:
        return None
    if fmt.runtime == "torch":
        import torch  # already imported by the backend

        return int(torch.get_num_threads())
    return int(intra_op_threads) or physical_cores()


def blas_name() -> str:
    """NumPy's BLAS library and version as NumPy's build configuration states it."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]  # numpy >= 1.25
        return f"{blas.get('name', 'unknown')} {blas.get('version', '')}".strip()
    except Exception:  # older numpy: no machine-readable config
        return "unknown"


def _matmul_probe(n: int, repeats: int) -> dict[str, Any]:
    """Time a float32 (n x n) @ (n x n) NumPy matmul in this process (see
    :func:`peak_matmul`)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: BLAS thread pool start, page faults
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"gflops_per_s": 2.0 * n ** 3 / med / 1e9, "seconds_median": med, "n": n,
            "dtype": "float32", "repeats": repeats, "blas": blas_name(),
            "threads_env": {v: os.environ.get(v) for v in BLAS_THREAD_VARIABLES}}


def peak_matmul(threads: int, n: int = MATMUL_N, repeats: int = MATMUL_REPEATS
                ) -> dict[str, Any]:
    """Peak float32 matmul throughput of NumPy's BLAS on `threads` threads: the reference the
    benchmark's ``efficiency`` divides by.

    Runs in its own Python process, with every variable of :data:`BLAS_THREAD_VARIABLES`
    set to `threads` (BLAS libraries read them when they load).

    Args:
        threads: BLAS threads (the backend's, :func:`backend_threads`).
        n: matrix side.
        repeats: timed matmuls after one warm-up.

    Returns:
        {"gflops_per_s": 2 n^3 / median seconds / 1e9, "seconds_median", "n", "dtype",
        "repeats", "blas": NumPy's BLAS, "threads": `threads`, "threads_env"}.

    Raises:
        InputError: threads < 1.
        VcesdkError: the probe process failed.
    """
    if threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    env = {**os.environ, **{v: str(int(threads)) for v in BLAS_THREAD_VARIABLES}}
    args = json.dumps({"matmul": {"n": int(n), "repeats": int(repeats)}})
    proc = subprocess.run([sys.executable, "-m", "vcesdk.benchmark", args], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise VcesdkError(f"matmul reference failed: {last}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "threads": int(threads)}


def model_flops(bundle: str, window: Sequence[int]) -> dict[str, Any]:
    """FLOPs of one forward pass of a bundle's network on one (d, h, w) window.

    From the manifest's ``network.flops_per_window`` (:func:`vcesdk.bundle.window_flops`), else
    counted now from the bundle's ``generator.pt`` with torch
    (:func:`vcesdk.export.flops.count_bundle_flops`) where torch and vcesdk.export are
    installed.

    Returns:
        {"per_window": FLOPs or None, "window": [d, h, w], "source": where the count comes
        from or None, "reason": why there is none, or None}.
    """
    from .bundle import load_bundle, window_flops
    from .errors import BundleError

    win = [int(v) for v in window]
    b = load_bundle(bundle, verify=False)
    counted = window_flops(b, win)
    if counted is not None:
        entry = b.manifest["network"]["flops_per_window"]
        how = ("as counted" if [int(v) for v in entry["window"]] == win
               else "scaled by window voxels")
        return {"per_window": counted, "window": win, "reason": None,
                "source": f"manifest network.flops_per_window ({entry.get('counter')} at "
                          f"{'x'.join(map(str, entry['window']))} at export; {how})"}
    why = ("the manifest's network.flops_per_window was counted at another window and is "
           "not linear in voxels" if (b.manifest.get("network") or {}).get("flops_per_window")
           else "the manifest has no network.flops_per_window")
    try:
        from .export.flops import COUNTER, count_bundle_flops
    except ImportError as exc:
        return {"per_window": None, "window": win, "source": None,
                "reason": f"{why}, and counting it needs torch and vcesdk.export ({exc.name} "
                          f"missing: pip install 'vcesdk[export]')"}
    try:
        flops = count_bundle_flops(bundle, win)
    except BundleError as exc:
        return {"per_window": None, "window": win, "source": None,
                "reason": f"{why}, and it cannot be counted: {exc}"}
    return {"per_window": float(flops), "window": win, "reason": None,
            "source": f"counted now with {COUNTER} on the bundle's generator.pt ({why})"}


def efficiency_fields(flops_per_window: float | None, windows: int, model_s: float,
                      peak_gflops_per_s: float | None) -> dict[str, float | None]:
    """The arithmetic-efficiency fields of one backend entry (see the module docstring).

    Args:
        flops_per_window: FLOPs of one window (None: unknown).
        windows: windows per pass.
        model_s: seconds inside the model per pass (median over passes).
        peak_gflops_per_s: the matmul reference, GFLOP/s (None: none for this backend).

    Returns:
        {"model_gflops", "achieved_gflops_per_s", "peak_matmul_gflops_per_s", "efficiency"}:
        model_gflops = flops_per_window x windows / 1e9; achieved = model_gflops / model_s;
        efficiency = achieved / peak; each None where an input is missing.
    """
    gflops = None if flops_per_window is None else flops_per_window * windows / 1e9
    achieved = gflops / model_s if gflops is not None and model_s > 0 else None
    eff = (achieved / peak_gflops_per_s if achieved is not None and peak_gflops_per_s
           else None)
    return {"model_gflops": gflops, "achieved_gflops_per_s": achieved,
            "peak_matmul_gflops_per_s": peak_gflops_per_s, "efficiency": eff}


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, float), q))


def run_backend(bundle: str, provider: str, ct: str, slices: int | None, repeats: int,
                warmup: int, write_format: str = "dicom", stride: int | None = None
                ) -> dict[str, Any]:
    """Benchmark one provider in this process (see the module docstring).

    Args:
        stride: slice stride overriding the bundle's (:class:`vcesdk.Synthesizer`).

    Returns:
        One backend entry: ``backend``, ``provider``, ``slices``, ``windows``, ``window``
        (d, h, w), ``stride`` (the slice stride used), ``bundle_stride``, ``threads`` (CPU
        threads of the model, None on a GPU), ``ms_per_slice_median``, ``ms_per_slice_p90``,
        ``model_ms_per_slice_median``, ``model_s_median``, ``throughput_slices_per_s``,
        ``peak_rss_mb``, ``peak_gpu_mb`` (None on the CPU), ``gpu_memory`` (see
        :meth:`GpuMemoryProbe.stop`), ``outside_model_fraction``, ``stages_ms_per_slice``,
        ``passes``.
    """
    from .formats import provider_device
    from .io import output_path, read_volume
    from .runtime import Synthesizer

    probe = GpuMemoryProbe(provider)
    probe.start()
    syn = Synthesizer(bundle, providers=[provider], stride=stride)
    passes: list[dict[str, float]] = []
    model_ms: list[float] = []
    n_slices = 0
    with tempfile.TemporaryDirectory(prefix="vcesdk-bench-") as tmp:
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            vol = fit_slices(read_volume(ct), slices)
            t1 = time.perf_counter()
            # the main job: a DICOM series is written by a thread while the model runs
            syn.synthesize_to(vol, output_path(tmp, f"pass{i}", write_format), like=vol)
            t3 = time.perf_counter()
            lat = syn.last_latency
            assert lat is not None
            n_slices = vol.shape[0]
            if i < warmup:
                continue
            passes.append({"read": t1 - t0, "prepare": lat.prepare_s, "model": lat.model_s,
                           "stitch": lat.stitch_s, "compose": lat.compose_s,
                           "write": syn.last_write_wait_s, "total": t3 - t0})
            model_ms.append(lat.median_ms_per_slice)
    gpu = probe.stop()
    if gpu["peak_mb"] is not None and provider_device(syn.provider) != "cuda":
        # e.g. ONNX Runtime fell back to its CPU provider
        gpu = {**gpu, "peak_mb": None, "reason": f"{syn.provider} ran the model on the CPU"}
    per_slice = [1e3 * p["total"] / n_slices for p in passes]
    median_total = statistics.median(p["total"] for p in passes)
    lat = syn.last_latency
    return {
        "backend": provider, "provider": syn.provider, "slices": n_slices,
        "windows": lat.windows if lat else 0,
        "window": list(lat.window) if lat and lat.window else None,
        "stride": syn.stride, "bundle_stride": syn.bundle_stride,
        "threads": backend_threads(provider, syn.provider),
        "ms_per_slice_median": statistics.median(per_slice),
        "ms_per_slice_p90": _pct(per_slice, 90),
        "model_ms_per_slice_median": statistics.median(model_ms),
        "model_s_median": statistics.median(p["model"] for p in passes),
        "throughput_slices_per_s": n_slices / median_total,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": gpu["peak_mb"],
        "gpu_memory": gpu,
        "outside_model_fraction": statistics.median(1.0 - p["model"] / p["total"]
                                                    for p in passes),
        "stages_ms_per_slice": {s: 1e3 * statistics.median(p[s] for p in passes) / n_slices
                                for s in STAGES},
        "passes": len(passes),
    }


def candidate_providers(bundle: str) -> tuple[list[str], dict[str, str]]:
    """Every provider that can run `bundle` here, and why each other known one cannot
    (:func:`vcesdk.backends.provider_availability`)."""
    from .backends import provider_availability
    from .bundle import load_bundle

    return provider_availability(load_bundle(bundle))


def benchmark(bundle: str, providers: Sequence[str] | None = None, ct: str | None = None,
              slices: int | None = None, repeats: int = 5, warmup: int = 1,
              write_format: str = "dicom", progress: Callable[[str], None] | None = None,
              stride: int | None = None) -> dict[str, Any]:
    """Benchmark each provider in its own process; see the module docstring.

    Args:
        bundle: bundle folder.
        providers: providers to measure (default: every one that can run the bundle here).
        ct: real CT (file or DICOM folder); default :func:`find_default_ct`.
        slices: cut or mirror-extend the CT to this many slices (:func:`fit_slices`).
        repeats, warmup: timed and untimed passes per provider.
        write_format: output format of each pass ("dicom", "nifti", ...).
        progress: called with each provider name before it runs.
        stride: slice stride overriding the bundle's (1 .. window depth; None: the
            bundle's).

    Returns:
        {"machine", "bundle", "input", "slices", "stride", "repeats", "warmup",
        "backends": {provider: entry (see :func:`run_backend`) plus ``flops_per_window``,
        ``flops`` (:func:`model_flops`), ``peak_matmul`` (:func:`peak_matmul`, or
        {"reason"}) and :func:`efficiency_fields`}, "skipped": {provider: reason}}.

    Raises:
        ProviderError: a named provider is unknown.
        InputError: a stride outside 1 .. the bundle's window depth.
        VcesdkError: a worker process failed (its last stderr line in the message).
    """
    from .backends import resolve_providers
    from .bundle import load_bundle
    from .planning import with_slice_stride

    if stride is not None:  # refuse before any worker starts (InputError with the range)
        with_slice_stride(load_bundle(bundle, verify=False), stride)

    ct_path = str(ct or find_default_ct())
    found, skipped = candidate_providers(bundle)
    if providers:
        resolve_providers(list(providers))  # unknown names -> ProviderError listing valid ones
        chosen = [p for p in providers if p in found]
        skipped = {p: skipped.get(p, "not available") for p in providers if p not in found}
    else:
        chosen = found
    results: dict[str, Any] = {}
    for p in chosen:
        if progress:
            progress(p)
        args = json.dumps({"bundle": str(bundle), "provider": p, "ct": ct_path,
                           "slices": slices, "repeats": repeats, "warmup": warmup,
                           "write_format": write_format, "stride": stride})
        proc = subprocess.run([sys.executable, "-m", "vcesdk.benchmark", args],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise VcesdkError(f"benchmark of {p} failed: {last}")
        results[p] = json.loads(proc.stdout.strip().splitlines()[-1])
    flops: dict[tuple[int, ...], dict] = {}   # one count per window shape
    peaks: dict[int, dict] = {}               # one matmul reference per thread count
    for e in results.values():
        window = tuple(e["window"] or ())
        if window and window not in flops:
            flops[window] = model_flops(bundle, window)
        f = flops.get(window, {"per_window": None, "source": None,
                               "reason": "the run reported no window"})
        if e["threads"] is not None and e["threads"] not in peaks:
            peaks[e["threads"]] = peak_matmul(e["threads"])
        peak = (peaks[e["threads"]] if e["threads"] is not None else
                {"gflops_per_s": None, "reason": f"{e['provider']} ran the model on a GPU; "
                                                 f"the reference is a CPU matmul"})
        e.update({"flops_per_window": f["per_window"], "flops": f, "peak_matmul": peak,
                  **efficiency_fields(f["per_window"], e["windows"], e["model_s_median"],
                                      peak["gflops_per_s"])})
    return {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpus": os.cpu_count(), "python": platform.python_version()},
            "bundle": str(bundle), "input": ct_path, "slices": slices, "stride": stride,
            "repeats": repeats, "warmup": warmup, "write_format": write_format,
            "backends": results, "skipped": skipped}


def table(report: dict[str, Any]) -> str:
    """The report as a fixed-width text table."""
    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    rows = [f"{'backend':<26}{'ms/slice':>10}{'p90':>8}{'model':>8}{'slices/s':>10}"
            f"{'peak MB':>9}{'GPU MB':>8}{'outside':>9}{'GFLOP':>8}{'GFLOP/s':>9}"
            f"{'matmul':>8}{'eff':>6}"]
    notes = []
    for name, e in report["backends"].items():
        eff = e.get("efficiency")
        rows.append(f"{name:<26}{e['ms_per_slice_median']:>10.1f}{e['ms_per_slice_p90']:>8.1f}"
                    f"{e['model_ms_per_slice_median']:>8.1f}"
                    f"{e['throughput_slices_per_s']:>10.1f}{e['peak_rss_mb']:>9.0f}"
                    f"{num(e.get('peak_gpu_mb'), '.0f'):>8}"
                    f"{100 * e['outside_model_fraction']:>8.0f}%"
                    f"{num(e.get('model_gflops'), '.1f'):>8}"
                    f"{num(e.get('achieved_gflops_per_s'), '.1f'):>9}"
                    f"{num(e.get('peak_matmul_gflops_per_s'), '.0f'):>8}"
                    f"{'-' if eff is None else format(100 * eff, '.0f') + '%':>6}")
        if e.get("flops", {}).get("reason"):
            notes.append(f"{name}: no FLOPs: {e['flops']['reason']}")
        if e.get("peak_matmul", {}).get("reason"):
            notes.append(f"{name}: no peak: {e['peak_matmul']['reason']}")
    for name, why in report["skipped"].items():
        rows.append(f"{name:<26}skipped: {why}")
    peak = next((e["peak_matmul"] for e in report["backends"].values()
                 if e.get("peak_matmul", {}).get("gflops_per_s")), None)
    if peak:
        rows.append(f"GFLOP: the model's FLOPs per pass; GFLOP/s: over the time in the model; "
                    f"matmul: GFLOP/s of a {peak['n']} x {peak['n']} {peak['dtype']} NumPy "
                    f"matmul ({peak['blas']}, {peak['threads']} threads); eff = GFLOP/s / "
                    f"matmul")
    return "\n".join(rows + notes)


def _worker(argv: list[str]) -> int:
    a = json.loads(argv[0])
    if "matmul" in a:
        print(json.dumps(_matmul_probe(a["matmul"]["n"], a["matmul"]["repeats"])))
        return 0
    try:
        entry = run_backend(a["bundle"], a["provider"], a["ct"], a["slices"], a["repeats"],
                            a["warmup"], a["write_format"], a.get("stride"))
    except VcesdkError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(entry))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
