"""GPU check of the torch deployment paths (issue #16 part 6), run by ``gpu_check.sh``.

On a CUDA machine: TorchScript:cuda and AOTInductor:cuda, each in fp32 (the bundle's files,
written by ``vcesdk.export.export_bundle`` with their parity in the manifest) and fp16 (the
same network cast to float16 inside a float32-in/float32-out wrapper, traced / compiled with
the same exporters), on each CT (default: the sample shipped with vcesdk and lung1):

* parity: max |backend - eager fp32 PyTorch on the CPU| in HU over the CT's windows,
  against the precision's tolerance (:data:`vcesdk.formats.TOLERANCE_HU`);
* model time per slice: one warm-up pass over the CT's windows, then ``--repeats`` timed
  passes (``torch.cuda.synchronize`` is inside the backends' ``.cpu()`` copies), median
  window time x windows / slices, as :class:`vcesdk.runtime.LatencyReport` counts it;
* fp32 also end to end through ``vcesdk.Synthesizer`` (ms per slice, median of the passes).

TensorRT lines (TensorRTEngine, TorchTensorRT, ONNX Runtime's TensorRT provider) are listed
as skipped with their reason where TensorRT or torch-tensorrt is missing. ``--dry-run`` runs
the same code on the CPU providers (TorchScript, AOTInductor) over the first ``--slices``
slices, so the script is tested without a GPU. One JSON file is written.

CT inputs are volume files vcesdk reads, or ``.npz`` files written by ``--save-inputs``
(``hu``, ``spacing_zyx_mm``, ``origin_xyz_mm``, ``direction``), which need no image library on
the GPU machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import vcesdk
from vcesdk.errors import InputError, MissingDependencyError
from vcesdk.formats import TOLERANCE_HU
from vcesdk.volume import CTVolume

ROOT = Path(__file__).resolve().parents[1]
LUNG1 = ROOT.parent / "shared" / "data" / "ct" / "pyradiomics_lung1" / "lung1_image.nrrd"
PRECISIONS: tuple[str, ...] = ("fp32", "fp16")
KINDS: tuple[str, ...] = ("TorchScript", "AOTInductor")


def load_ct(path: str | Path) -> CTVolume:
    """A CT volume from a file vcesdk reads or an ``.npz`` of :func:`save_ct`."""
    p = Path(path)
    if p.suffix == ".npz":
        with np.load(p) as z:
            return CTVolume(hu=z["hu"].astype(np.float32),
                            spacing_zyx_mm=tuple(float(v) for v in z["spacing_zyx_mm"]),
                            origin_xyz_mm=tuple(float(v) for v in z["origin_xyz_mm"]),
                            direction=np.asarray(z["direction"], np.float64))
    return vcesdk.read_volume(p)


def save_ct(vol: CTVolume, path: Path) -> None:
    """Write a volume as ``.npz`` (HU and geometry) for :func:`load_ct`."""
    np.savez_compressed(path, hu=vol.hu, spacing_zyx_mm=np.asarray(vol.spacing_zyx_mm),
                        origin_xyz_mm=np.asarray(vol.origin_xyz_mm),
                        direction=np.asarray(vol.direction))


def default_cts() -> dict[str, Path]:
    """The sample CT shipped with vcesdk and lung1 from ../shared."""
    from vcesdk.data import sample_ct

    return {"sample": Path(sample_ct()), "lung1": LUNG1}


def _median_ms(times: Sequence[float]) -> float:
    return 1e3 * statistics.median(times)


def time_windows(run: Callable[[np.ndarray], np.ndarray], windows: np.ndarray,
                 repeats: int) -> tuple[list[float], np.ndarray]:
    """Per-window seconds over `repeats` timed passes after one warm-up pass, and the
    outputs of the last pass, float32 (N, C', d, h, w)."""
    outs = [run(w[None]) for w in windows]  # warm-up (compiles kernels, fills caches)
    times: list[float] = []
    for _ in range(repeats):
        outs = []
        for w in windows:
            t = time.perf_counter()
            outs.append(run(w[None]))
            times.append(time.perf_counter() - t)
    return times, np.concatenate(outs)


class _LowPrecision:
    """A float32-in, float32-out module running the network in `dtype` (built lazily so the
    module imports without torch)."""

    @staticmethod
    def wrap(generator: Any, dtype: Any) -> Any:
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = generator.to(dtype)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net(x.to(dtype)).float()

        return Wrapped().eval()


def build_fp16(kind: str, generator: Any, bundle: Any, folder: Path, device: str) -> Any:
    """A fp16 backend of `kind` ("TorchScript" or "AOTInductor") on `device`, built with the
    exporters the bundle writer uses and opened with the runtime's backends."""
    import torch

    from vcesdk.backends import AotiBackend, TorchScriptBackend
    from vcesdk.engines import MODEL_INPUT, engine_profiles

    net = _LowPrecision.wrap(generator, torch.float16).to(device)
    multiple = tuple(bundle.multiple_of)
    if kind == "TorchScript":
        path = folder / "model.fp16.ts"
        example = torch.zeros((1, len(bundle.windows), bundle.window[0], 4 * multiple[1],
                               4 * multiple[2]), device=device)
        with torch.no_grad():
            torch.jit.save(torch.jit.freeze(torch.jit.trace(net, example)), str(path))
        return TorchScriptBackend(path, device)
    from vcesdk.export.aoti_export import AOTI_PLANE_MAX, export_aoti

    path = folder / ("model.fp16.cuda.pt2" if device == "cuda" else "model.fp16.pt2")
    prof = engine_profiles(bundle, None, plane=(multiple[1], 256, AOTI_PLANE_MAX))[MODEL_INPUT]
    export_aoti(net, path, prof, multiple, device)
    return AotiBackend(path, device)


def tensorrt_skips() -> dict[str, str]:
    """Why each TensorRT line is skipped here ({} where TensorRT and torch-tensorrt run)."""
    import importlib.util

    from vcesdk.backends.onnxruntime import provider_lists
    from vcesdk.engines import local_gpu_environment

    out: dict[str, str] = {}
    try:
        local_gpu_environment()
    except MissingDependencyError as exc:
        out["TensorRTEngine"] = str(exc)
    if importlib.util.find_spec("torch_tensorrt") is None:
        out["TorchTensorRT"] = "torch-tensorrt is not installed"
    elif "TensorRTEngine" in out:
        out["TorchTensorRT"] = out["TensorRTEngine"]
    if "TensorrtExecutionProvider" not in provider_lists()[1]:
        out["TensorrtExecutionProvider"] = ("onnxruntime-gpu with TensorRT is not installed "
                                            "here")
    return out


def run_check(out_json: Path, work: Path, cts: dict[str, Path], dry_run: bool = False,
              slices: int | None = None, repeats: int = 5,
              kinds: Sequence[str] = KINDS, precisions: Sequence[str] = PRECISIONS
              ) -> dict[str, Any]:
    """Run the check (see the module docstring) and write the report to `out_json`.

    Args:
        out_json: report file.
        work: folder for the bundle and the fp16 files.
        cts: name -> CT path (a file vcesdk reads or an .npz of :func:`save_ct`).
        dry_run: CPU providers instead of the CUDA ones.
        slices: use the first `slices` slices of each CT (default: all; dry run: 8).
        repeats: timed passes.
        kinds, precisions: which backends and precisions.

    Returns:
        The report: {"machine", "dry_run", "device", "stages_s", "skipped", "results":
        [{"ct", "provider", "precision", "slices", "windows", "parity_max_abs_hu",
        "tolerance_hu", "parity_passed", "model_ms_per_slice_median",
        "end_to_end_ms_per_slice_median" (fp32), "error" (when a case failed)}]}.

    Raises:
        MissingDependencyError: not a dry run and torch sees no CUDA GPU.
        InputError: an unknown kind or precision.
    """
    import torch

    from vcesdk.export import export_bundle
    from vcesdk.export.bundle_writer import checkpoint_from_bundle
    from vcesdk.export.parity import eager_runner
    from vcesdk.planning import prepare_model_input
    from vcesdk.training.trainer import generator_from_checkpoint

    bad = [k for k in kinds if k not in KINDS] + [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise InputError(f"unknown kind or precision {', '.join(bad)}; valid: "
                         f"{', '.join(KINDS + PRECISIONS)}")
    device = "cpu" if dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise MissingDependencyError("torch sees no CUDA GPU; pass --dry-run for the CPU path")
    if dry_run and slices is None:
        slices = 8
    suffix = ":cuda" if device == "cuda" else ""
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    vols = {}
    for name, path in cts.items():
        vol = load_ct(path)
        if slices:
            vol = CTVolume(hu=np.ascontiguousarray(vol.hu[:slices]),
                           spacing_zyx_mm=vol.spacing_zyx_mm, origin_xyz_mm=vol.origin_xyz_mm,
                           direction=vol.direction)
        vols[name] = vol
    ckpt = checkpoint_from_bundle(vcesdk.DEFAULT_BUNDLE)
    formats = (["torchscript"] if "TorchScript" in kinds else []) + \
        ([f"aoti{'_cuda' if device == 'cuda' else ''}"] if "AOTInductor" in kinds else [])
    stages["read_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    bundle_dir = export_bundle(ckpt, work / "bundle", next(iter(vols.values())),
                               demo=True, overwrite=True, formats=formats)
    bundle = vcesdk.load_bundle(bundle_dir)
    stages["export_fp32_s"] = time.perf_counter() - t0
    reference = eager_runner(generator_from_checkpoint(ckpt))
    results: list[dict[str, Any]] = []
    for kind in kinds:
        provider = kind + suffix
        for precision in precisions:
            t0 = time.perf_counter()
            syn = None
            try:
                if precision == "fp32":
                    syn = vcesdk.Synthesizer(bundle, providers=[provider],
                                             contrast_guard="off")
                    run = syn.predict_windows
                else:
                    run = build_fp16(kind, generator_from_checkpoint(ckpt), bundle, work,
                                     device).run
            except Exception as exc:  # one failed case is a line of the report
                results.append({"provider": provider, "precision": precision,
                                "error": f"{type(exc).__name__}: {exc}"})
                continue
            stages[f"build_{provider}_{precision}_s"] = time.perf_counter() - t0
            for name, vol in vols.items():
                entry: dict[str, Any] = {"ct": name, "provider": provider,
                                         "precision": precision, "slices": vol.shape[0]}
                try:
                    windows = prepare_model_input(bundle, vol).windows()
                    times, out = time_windows(run, windows, repeats)
                    ref = np.concatenate([reference(w[None]) for w in windows])
                    lo, hi = bundle.output_hu
                    worst = float(np.abs(out - ref).max()) * (hi - lo) / 2.0
                    tol = TOLERANCE_HU[precision]
                    entry.update({"windows": len(windows), "parity_max_abs_hu": worst,
                                  "tolerance_hu": tol, "parity_passed": worst <= tol,
                                  "model_ms_per_slice_median":
                                      _median_ms(times) * len(windows) / vol.shape[0]})
                    if syn is not None:
                        e2e = []
                        for _ in range(repeats):
                            syn.synthesize(vol)
                            e2e.append(syn.last_latency.end_to_end_ms_per_slice)
                        entry["end_to_end_ms_per_slice_median"] = statistics.median(e2e)
                except Exception as exc:
                    entry["error"] = f"{type(exc).__name__}: {exc}"
                    entry["traceback"] = traceback.format_exc(limit=3)
                results.append(entry)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    report = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": gpu},
              "dry_run": dry_run, "device": device, "repeats": repeats,
              "inputs": {k: str(v) for k, v in cts.items()}, "stages_s": stages,
              "skipped": tensorrt_skips(), "results": results}
    out_json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python benchmarks/gpu_check.py --out FILE [--dry-run] ...``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="report JSON to write")
    ap.add_argument("--work", default=None, help="work folder (default: beside --out)")
    ap.add_argument("--dry-run", action="store_true", help="CPU providers, a few slices")
    ap.add_argument("--slices", type=int, default=None, help="first N slices of each CT")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--ct", action="append", metavar="NAME=PATH",
                    help="CT to check (repeatable; default: sample and lung1)")
    ap.add_argument("--save-inputs", metavar="DIR",
                    help="only write the CTs as .npz to DIR (for a GPU machine without "
                         "SimpleITK) and exit")
    a = ap.parse_args(argv)
    try:
        cts = dict(c.split("=", 1) for c in a.ct) if a.ct else default_cts()
        cts = {k: Path(v) for k, v in cts.items()}
        if a.save_inputs:
            Path(a.save_inputs).mkdir(parents=True, exist_ok=True)
            for name, path in cts.items():
                save_ct(load_ct(path), Path(a.save_inputs) / f"{name}.npz")
                print(f"wrote {Path(a.save_inputs) / f'{name}.npz'}")
            return 0
        out = Path(a.out)
        work = Path(a.work) if a.work else out.with_suffix(".work")
        work.mkdir(parents=True, exist_ok=True)
        report = run_check(out, work, cts, dry_run=a.dry_run, slices=a.slices,
                           repeats=a.repeats, kinds=a.kinds.split(","),
                           precisions=a.precisions.split(","))
    except vcesdk.VcesdkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for r in report["results"]:
        if "error" in r:
            print(f"{r.get('ct', '-'):<8}{r['provider']:<20}{r['precision']:<6}ERROR {r['error']}")
        else:
            print(f"{r['ct']:<8}{r['provider']:<20}{r['precision']:<6}"
                  f"parity {r['parity_max_abs_hu']:.3f} HU (tol {r['tolerance_hu']}) "
                  f"model {r['model_ms_per_slice_median']:.2f} ms/slice")
    for name, why in report["skipped"].items():
        print(f"skipped {name}: {why}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
