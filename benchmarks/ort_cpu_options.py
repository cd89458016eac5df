"""What each ONNX Runtime CPU option buys the demo network, measured against the matmul peak.

The model alone, on the windows the runtime cuts from a real CT (default: the embedded sample
through the demo PVP bundle, the bundle's batch size), one ONNX Runtime session per
configuration in this process, configurations taken in turns (round robin) so a slow spell of
the machine does not fall on one of them:

* ``ort_defaults``: ONNX Runtime's defaults (graph optimisation ORT_ENABLE_ALL, memory
  pattern on, spinning intra-op threads);
* ``vcesdk_default``: the session the runtime opens (:class:`vcesdk.backends.OrtBackend`:
  the defaults with ``session.intra_op.allow_spinning = 0``, so worker threads sleep after a
  run and leave the cores to the stitcher);
* ``opt_basic`` / ``opt_extended``: lower graph optimisation levels;
* ``no_mem_pattern``: memory pattern planning off;
* ``io_binding``: input bound once, output into an ONNX Runtime-allocated buffer;
* ``int8_qdq``: static int8 quantization (onnxruntime.quantization, QDQ format, per-channel
  weights, MinMax calibration on the same windows), with its parity in HU against fp32;
* ``fp16``: weights and activations in float16, float32 input and output
  (``onnxruntime.transformers.float16.convert_float_to_float16``, ``keep_io_types``).

For each: median seconds per batch, GFLOP/s (FLOPs per window from the manifest or counted
from generator.pt: :func:`vcesdk.benchmark.model_flops`), the fraction of the float32 matmul
peak of NumPy's BLAS on the same threads (:func:`vcesdk.benchmark.peak_matmul`), and the
largest output difference from ``ort_defaults`` in HU (the manifest's output HU range).
Run it on bundles exported at different times to see what an export change bought (e.g. the
U-Net's upsampling, :func:`vcesdk.training.networks.upsample_nearest`).

Usage:
    python benchmarks/ort_cpu_options.py [--bundle vcesdk/models/demo_pvp] [--ct CT]
        [--threads N] [--rounds 5] [--json runs/ort_cpu_options.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _windows(bundle, ct: str | None) -> np.ndarray:
    from vcesdk.data import sample_ct
    from vcesdk.io import read_volume
    from vcesdk.planning import prepare_model_input

    vol = read_volume(ct or sample_ct())
    return prepare_model_input(bundle, vol).windows()


def _quantize(model: Path, windows: np.ndarray, batch: int, dst: Path) -> Path:
    """Static int8 QDQ copy of `model`, calibrated (MinMax) on `windows`."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self._it = iter([{name: windows[i:i + batch]} for i in range(0, len(windows),
                                                                          batch)])

        def get_next(self):
            return next(self._it, None)

    import onnx

    name = onnx.load(str(model), load_external_data=False).graph.input[0].name
    quantize_static(str(model), str(dst), Reader(name), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    return dst


def _half(model: Path, dst: Path) -> Path:
    """float16 copy of `model` with float32 input and output."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(model)), keep_io_types=True), str(dst))
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="vcesdk/models/demo_pvp")
    p.add_argument("--ct", default=None, help="CT to cut windows from (default: the sample)")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads (default: physical cores, as the benchmark)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default="ort_cpu_options.json")
    args = p.parse_args(argv)

    import onnxruntime as ort

    from vcesdk.backends.onnxruntime import ALLOW_SPINNING
    from vcesdk.benchmark import model_flops, peak_matmul, physical_cores
    from vcesdk.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    threads = args.threads or physical_cores()
    windows = np.ascontiguousarray(_windows(bundle, args.ct), dtype=np.float32)
    batch = max(1, bundle.batch_size)
    batches = [windows[i:i + batch] for i in range(0, len(windows), batch)]
    flops = model_flops(args.bundle, windows.shape[2:])
    per_window = flops.get("per_window")
    lo, hi = bundle.manifest["output"]["hu_range"]
    hu_per_unit = (hi - lo) / 2.0
    model = Path(args.bundle) / "model.onnx"
    tmp = Path(tempfile.mkdtemp(prefix="vcesdk_ort_options_"))
    int8 = _quantize(model, windows, batch, tmp / "model.int8.onnx")
    fp16 = _half(model, tmp / "model.fp16.onnx")

    def session(path: Path, **cfg) -> "ort.InferenceSession":
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        for k, v in cfg.items():
            if k.startswith("entry:"):
                so.add_session_config_entry(k[len("entry:"):], v)
            else:
                setattr(so, k, v)
        return ort.InferenceSession(str(path), sess_options=so,
                                    providers=["CPUExecutionProvider"])

    configs = {
        "ort_defaults": (model, {}),
        "vcesdk_default": (model, {f"entry:{ALLOW_SPINNING}": "0"}),
        "opt_basic": (model, {"graph_optimization_level":
                              ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}),
        "opt_extended": (model, {"graph_optimization_level":
                                 ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}),
        "no_mem_pattern": (model, {"enable_mem_pattern": False}),
        "io_binding": (model, {f"entry:{ALLOW_SPINNING}": "0"}),
        "int8_qdq": (int8, {f"entry:{ALLOW_SPINNING}": "0"}),
        "fp16": (fp16, {f"entry:{ALLOW_SPINNING}": "0"}),
    }
    runners = {}
    outputs: dict[str, list[np.ndarray]] = {}
    for name, (path, cfg) in configs.items():
        s = session(path, **cfg)
        iname = s.get_inputs()[0].name
        if name == "io_binding":
            def run(s=s, iname=iname) -> list[np.ndarray]:
                res = []
                for b in batches:
                    io = s.io_binding()
                    io.bind_cpu_input(iname, b)
                    io.bind_output(s.get_outputs()[0].name)
                    s.run_with_iobinding(io)
                    res.append(io.copy_outputs_to_cpu()[0])
                return res
        else:
            def run(s=s, iname=iname) -> list[np.ndarray]:
                return [s.run(None, {iname: b})[0] for b in batches]
        outputs[name] = run()  # warm-up
        runners[name] = run
    times: dict[str, list[float]] = {n: [] for n in configs}
    for r in range(args.rounds):
        for name, run in runners.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n} {times[n][-1]:.2f} s" for n in configs), flush=True)
    peak = peak_matmul(threads)
    ref = outputs["ort_defaults"]
    rows = []
    for name in configs:
        med = statistics.median(times[name])
        gflops = per_window * len(windows) / 1e9 if per_window else None
        achieved = gflops / med if gflops else None
        diff = max(float(np.abs(a - b).max()) for a, b in zip(outputs[name], ref)) * hu_per_unit
        rows.append({"config": name, "seconds_median": med, "seconds_all": times[name],
                     "achieved_gflops_per_s": achieved,
                     "efficiency": achieved / peak["gflops_per_s"] if achieved else None,
                     "max_abs_diff_hu_vs_ort_defaults": diff})
    report = {"bundle": args.bundle, "ct": args.ct or "embedded sample", "windows":
              list(windows.shape), "batch": batch, "threads": threads,
              "onnxruntime": ort.__version__, "flops": flops, "peak_matmul": peak,
              "machine": {"platform": platform.platform(), "python": platform.python_version()},
              "configs": rows}
    Path(args.json).write_text(json.dumps(report, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(windows)} windows {tuple(windows.shape[1:])}, batch {batch}, {threads} "
          f"threads, matmul peak {peak['gflops_per_s']:.1f} GFLOP/s ({peak['blas']})")
    print(f"{'config':16s} {'s/pass':>7s} {'GFLOP/s':>8s} {'of peak':>8s} {'max |diff| HU':>14s}")
    for r in rows:
        eff = f"{100 * r['efficiency']:.0f} %" if r["efficiency"] else "-"
        gf = f"{r['achieved_gflops_per_s']:.1f}" if r["achieved_gflops_per_s"] else "-"
        print(f"{r['config']:16s} {r['seconds_median']:7.2f} {gf:>8s} {eff:>8s} "
              f"{r['max_abs_diff_hu_vs_ort_defaults']:14.2f}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
