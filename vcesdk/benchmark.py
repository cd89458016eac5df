"""``vcesdk benchmark``: per-slice latency, throughput, peak memory and the share of time spent
outside the model, for each backend that can run a bundle here, on a real CT.

Each backend runs in its own Python process (so its peak resident memory, read from the
kernel's ``VmHWM``, is its own), through the same path a vendor's integration takes: read the
CT from disk, ``Synthesizer.synthesize``, write the synthetic series. One warm-up pass, then
``repeats`` timed passes. Per pass: end-to-end ms per slice = (read + synthesize + write) /
slices. Reported per backend: median and 90th percentile of that over the passes, model-only
ms per slice (median window time x windows / slices, :class:`~vcesdk.runtime.LatencyReport`),
throughput (slices per second at the median), peak RSS, and the time per slice of each
stage: read, prepare (reorient, resample, windowing), model, stitch (overlap averaging),
compose (HU, composition, resample back), write. ``outside_model_fraction`` = 1 - model /
end to end (median over passes).

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


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, float), q))


def run_backend(bundle: str, provider: str, ct: str, slices: int | None, repeats: int,
                warmup: int, write_format: str = "dicom") -> dict[str, Any]:
    """Benchmark one provider in this process (see the module docstring).

    Returns:
        One backend entry: ``backend``, ``provider``, ``ms_per_slice_median``,
        ``ms_per_slice_p90``, ``model_ms_per_slice_median``, ``throughput_slices_per_s``,
        ``peak_rss_mb``, ``peak_gpu_mb`` (None on the CPU), ``gpu_memory`` (see
        :meth:`GpuMemoryProbe.stop`), ``outside_model_fraction``, ``stages_ms_per_slice``,
        ``passes``.
    """
    from .formats import provider_device
    from .io import output_path, read_volume, write_volume
    from .runtime import Synthesizer

    probe = GpuMemoryProbe(provider)
    probe.start()
    syn = Synthesizer(bundle, providers=[provider])
    passes: list[dict[str, float]] = []
    model_ms: list[float] = []
    n_slices = 0
    with tempfile.TemporaryDirectory(prefix="vcesdk-bench-") as tmp:
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            vol = fit_slices(read_volume(ct), slices)
            t1 = time.perf_counter()
            out = syn.synthesize(vol)
            t2 = time.perf_counter()
            write_volume(out, output_path(tmp, f"pass{i}", write_format), like=vol)
            t3 = time.perf_counter()
            lat = syn.last_latency
            assert lat is not None
            n_slices = vol.shape[0]
            if i < warmup:
                continue
            passes.append({"read": t1 - t0, "prepare": lat.prepare_s, "model": lat.model_s,
                           "stitch": lat.stitch_s, "compose": lat.compose_s,
                           "write": t3 - t2, "total": t3 - t0})
            model_ms.append(lat.median_ms_per_slice)
    gpu = probe.stop()
    if gpu["peak_mb"] is not None and provider_device(syn.provider) != "cuda":
        # e.g. ONNX Runtime fell back to its CPU provider
        gpu = {**gpu, "peak_mb": None, "reason": f"{syn.provider} ran the model on the CPU"}
    per_slice = [1e3 * p["total"] / n_slices for p in passes]
    median_total = statistics.median(p["total"] for p in passes)
    return {
        "backend": provider, "provider": syn.provider, "slices": n_slices,
        "windows": syn.last_latency.windows if syn.last_latency else 0,
        "ms_per_slice_median": statistics.median(per_slice),
        "ms_per_slice_p90": _pct(per_slice, 90),
        "model_ms_per_slice_median": statistics.median(model_ms),
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
              write_format: str = "dicom", progress: Callable[[str], None] | None = None
              ) -> dict[str, Any]:
    """Benchmark each provider in its own process; see the module docstring.

    Args:
        bundle: bundle folder.
        providers: providers to measure (default: every one that can run the bundle here).
        ct: real CT (file or DICOM folder); default :func:`find_default_ct`.
        slices: cut or mirror-extend the CT to this many slices (:func:`fit_slices`).
        repeats, warmup: timed and untimed passes per provider.
        write_format: output format of each pass ("dicom", "nifti", ...).
        progress: called with each provider name before it runs.

    Returns:
        {"machine", "bundle", "input", "slices", "repeats", "warmup",
        "backends": {provider: entry (see :func:`run_backend`)},
        "skipped": {provider: reason}}.

    Raises:
        ProviderError: a named provider is unknown.
        VcesdkError: a worker process failed (its last stderr line in the message).
    """
    from .backends import resolve_providers

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
                           "write_format": write_format})
        proc = subprocess.run([sys.executable, "-m", "vcesdk.benchmark", args],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise VcesdkError(f"benchmark of {p} failed: {last}")
        results[p] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpus": os.cpu_count(), "python": platform.python_version()},
            "bundle": str(bundle), "input": ct_path, "slices": slices, "repeats": repeats,
            "warmup": warmup, "write_format": write_format, "backends": results,
            "skipped": skipped}


def table(report: dict[str, Any]) -> str:
    """The report as a fixed-width text table."""
    rows = [f"{'backend':<26}{'ms/slice':>10}{'p90':>8}{'model':>8}{'slices/s':>10}"
            f"{'peak MB':>9}{'GPU MB':>8}{'outside':>9}"]
    for name, e in report["backends"].items():
        gpu = e.get("peak_gpu_mb")
        rows.append(f"{name:<26}{e['ms_per_slice_median']:>10.1f}{e['ms_per_slice_p90']:>8.1f}"
                    f"{e['model_ms_per_slice_median']:>8.1f}"
                    f"{e['throughput_slices_per_s']:>10.1f}{e['peak_rss_mb']:>9.0f}"
                    f"{'-' if gpu is None else format(gpu, '.0f'):>8}"
                    f"{100 * e['outside_model_fraction']:>8.0f}%")
    for name, why in report["skipped"].items():
        rows.append(f"{name:<26}skipped: {why}")
    return "\n".join(rows)


def _worker(argv: list[str]) -> int:
    a = json.loads(argv[0])
    try:
        entry = run_backend(a["bundle"], a["provider"], a["ct"], a["slices"], a["repeats"],
                            a["warmup"], a["write_format"])
    except VcesdkError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(entry))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
