"""TensorRT engines from a bundle's ONNX file with TensorRT's Python builder, and with
torch-tensorrt's dynamo path from the eager generator.

* Optimisation profiles cover exactly the windows the bundle's runtime feeds the model
  (:func:`vcesdk.engines.engine_profiles`).
* Precisions fp32, fp16 (``BuilderFlag.FP16``) and int8 (``BuilderFlag.INT8`` with an
  ``IInt8EntropyCalibrator2`` fed from real CT windows prepared exactly as the runtime
  prepares them; TensorRT deprecated implicit calibration in 10.1 in favour of explicit
  quantization, and vcesdk says so where a TensorRT build lacks it).
* Every engine gets a sidecar (:func:`vcesdk.engines.make_sidecar`) and is checked against a
  reference on the same real-CT windows with its precision's tolerance.
* For edge GPUs (Jetson) the engine is built where it runs: :func:`trtexec_command` gives the
  command written into the bundle, ``vcesdk build-engine`` runs the Python builder there.

TensorRT, torch-tensorrt and CUDA are imported only when a function here is called.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vcesdk.engines import (
    MODEL_INPUT,
    import_tensorrt,
    local_gpu_environment,
    make_sidecar,
    shape_text,
    sidecar_path,
)
from vcesdk.errors import BundleError, MissingDependencyError

_logger = logging.getLogger(__name__)

DEFAULT_WORKSPACE_GB = 4
BUILDERS = ("tensorrt-python", "torch-tensorrt", "trtexec")


def trtexec_command(onnx_file: str, engine_file: str,
                    profiles: Mapping[str, Mapping[str, Sequence[int]]], precision: str = "fp32",
                    workspace_gb: float = DEFAULT_WORKSPACE_GB) -> list[str]:
    """The trtexec command that builds the same engine as :func:`build_engine` (fp32/fp16).

    Args:
        onnx_file, engine_file: paths as they should appear in the command.
        profiles: {input: {"min", "opt", "max"}} from :func:`vcesdk.engines.engine_profiles`.
        precision: "fp32" or "fp16".
        workspace_gb: builder workspace limit, GiB.

    Returns:
        argv list (join with :func:`shlex.join` for a shell).

    Raises:
        BundleError: int8 (calibration needs the Python builder: ``vcesdk build-engine
            --int8 --calib DIR`` on the device).
    """
    if precision not in ("fp32", "fp16"):
        raise BundleError("int8 engines are calibrated where they are built: run 'vcesdk "
                          "build-engine BUNDLE --int8 --calib DIR' on the device")

    def shapes(key: str) -> str:
        return ",".join(f"{name}:{shape_text(p[key])}" for name, p in profiles.items())

    cmd = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={engine_file}",
           f"--minShapes={shapes('min')}", f"--optShapes={shapes('opt')}",
           f"--maxShapes={shapes('max')}",
           f"--memPoolSize=workspace:{int(float(workspace_gb) * 1024)}M", "--skipInference"]
    if precision == "fp16":
        cmd.append("--fp16")
    return cmd


def build_script(onnx_file: str, engine_file: str,
                 profiles: Mapping[str, Mapping[str, Sequence[int]]], precision: str,
                 workspace_gb: float) -> str:
    """A POSIX shell script for the device: trtexec build, or vcesdk build-engine for int8."""
    lines = ["#!/bin/sh",
             "# Build the TensorRT engine on the GPU that will run it (engines are tied to the",
             "# GPU architecture and TensorRT version). Run from inside the bundle folder.",
             "# Preferred (also writes the sidecar, checks parity and updates the manifest):",
             f"#   vcesdk build-engine . --precision {precision} --parity-input CT",
             "set -e"]
    if precision == "int8":
        lines.append("echo 'int8 needs calibration: vcesdk build-engine . --precision int8 "
                     "--calib CT_DIR --parity-input CT' >&2; exit 2")
    else:
        lines.append(shlex.join(trtexec_command(onnx_file, engine_file, profiles, precision,
                                                workspace_gb)))
    return "\n".join(lines) + "\n"


def fit_windows(windows: np.ndarray, shape: Sequence[int], pad_values: Sequence[float]
                ) -> list[np.ndarray]:
    """Cut calibration windows to one fixed batch shape (TensorRT calibrates one shape).

    Args:
        windows: float32 (N, C, d, h, w) model-input windows.
        shape: target (B, C, d, h, w); h and w are centre-cropped or padded with
            `pad_values` (per channel, model values of the manifest's pad HU).
        pad_values: (C,) fill values.

    Returns:
        float32 (B, C, d, h, w) batches; a last incomplete batch is dropped.
    """
    b, c, d, h, w = (int(v) for v in shape)
    out = np.empty((len(windows), c, d, h, w), np.float32)
    out[:] = np.asarray(pad_values, np.float32)[None, :, None, None, None]
    _, _, wd, wh, ww = windows.shape
    ch, cw = min(h, wh), min(w, ww)
    sy, sx = (wh - ch) // 2, (ww - cw) // 2
    dy, dx = (h - ch) // 2, (w - cw) // 2
    out[:, :, :min(d, wd), dy:dy + ch, dx:dx + cw] = \
        windows[:, :, :min(d, wd), sy:sy + ch, sx:sx + cw]
    return [out[i:i + b] for i in range(0, len(out) - b + 1, b)]


def _entropy_calibrator(trt, batches: Sequence[np.ndarray], cache: Path):
    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise MissingDependencyError(
            f"TensorRT {trt.__version__} has no implicit INT8 calibration "
            f"(IInt8EntropyCalibrator2; superseded by explicit quantization); use fp16, or a "
            f"TensorRT 8.6-10.x build for int8")
    import torch

    class EntropyCalibrator(base):  # type: ignore[misc, valid-type]
        """Feeds real-CT windows to TensorRT's entropy calibration, one batch at a time."""

        def __init__(self) -> None:
            base.__init__(self)
            self._batches = list(batches)
            self._next = 0
            self._device = torch.empty(tuple(self._batches[0].shape), dtype=torch.float32,
                                       device="cuda")

        def get_batch_size(self) -> int:
            return int(self._batches[0].shape[0])

        def get_batch(self, names):  # noqa: ARG002 (one input)
            if self._next >= len(self._batches):
                return None
            self._device.copy_(torch.from_numpy(self._batches[self._next]))
            torch.cuda.synchronize()
            self._next += 1
            return [int(self._device.data_ptr())]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data) -> None:
            cache.write_bytes(bytes(data))

    return EntropyCalibrator()


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike,
                 profiles: Mapping[str, Mapping[str, Sequence[int]]], precision: str = "fp32",
                 workspace_gb: float = DEFAULT_WORKSPACE_GB,
                 calibration: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """Build a TensorRT engine from an ONNX file and write it with its sidecar.

    Args:
        onnx_path: the bundle's ONNX file.
        engine_path: .engine file to write (the sidecar goes to ``<engine>.json``).
        profiles: {input: {"min", "opt", "max"}} shapes (B, C, d, h, w).
        precision: "fp32", "fp16" or "int8".
        workspace_gb: builder workspace memory limit, GiB.
        calibration: for int8, float32 batches all of the profile's opt shape, from real CT
            (see :func:`fit_windows`); the calibration cache is written beside the engine.

    Returns:
        The sidecar dict (also written).

    Raises:
        MissingDependencyError: no TensorRT / CUDA GPU, or int8 without calibration support.
        BundleError: the ONNX parser or the builder failed (parser errors in the message), or
            int8 without calibration batches.
    """
    env = local_gpu_environment()
    trt = import_tensorrt()
    engine_path = Path(engine_path)
    cache = engine_path.with_name(engine_path.name + ".calib")  # int8 calibration cache
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(str(trt.__version__).split(".")[0]) < 10:  # TensorRT 8.x: explicit batch opt-in
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT could not parse {Path(onnx_path).name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    for name, p in profiles.items():
        profile.set_shape(name, tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 layers fall back to fp16, not fp32
    if precision == "int8":
        if not calibration:
            raise BundleError("int8 needs calibration windows from real CT (--calib DIR)")
        config.set_flag(trt.BuilderFlag.INT8)
        calib_profile = builder.create_optimization_profile()
        for name, p in profiles.items():
            calib_profile.set_shape(name, tuple(p["opt"]), tuple(p["opt"]), tuple(p["opt"]))
        config.set_calibration_profile(calib_profile)
        config.int8_calibrator = _entropy_calibrator(trt, calibration, cache)
    _logger.info("building TensorRT %s engine (%s) on %s", precision, trt.__version__,
                 env["gpu_name"])
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BundleError(f"TensorRT failed to build the {precision} engine (see TensorRT's "
                          f"log above); try a larger workspace or fp32")
    engine_path.write_bytes(bytes(serialized))
    if cache.exists():
        cache.unlink()  # calibration cache: a build by-product, not part of the bundle
    side = make_sidecar(engine_path.name, env, precision, profiles, "tensorrt-python")
    sidecar_path(engine_path).write_text(json.dumps(side, indent=2), encoding="utf-8")
    return side


def export_torch_tensorrt(generator, path: str | os.PathLike,
                          profiles: Mapping[str, Mapping[str, Sequence[int]]],
                          precision: str = "fp32") -> dict[str, Any]:
    """Compile the eager generator with torch-tensorrt's dynamo path and save it as an
    ExportedProgram (``.ep``), with a sidecar.

    Args:
        generator: the eager network (moved to CUDA for compilation).
        path: .ep file to write.
        profiles: {input: {"min", "opt", "max"}} from :func:`vcesdk.engines.engine_profiles`.
        precision: "fp32" or "fp16".

    Returns:
        The sidecar dict (also written).

    Raises:
        MissingDependencyError: torch-tensorrt, TensorRT or a CUDA GPU is missing.
    """
    import torch

    env = local_gpu_environment()
    try:
        import torch_tensorrt
    except ImportError:
        raise MissingDependencyError("torch-tensorrt is not installed: pip install "
                                     "'vcesdk[gpu]' on a machine with an NVIDIA GPU") from None
    p = profiles[MODEL_INPUT]
    model = generator.eval().cuda()
    inputs = [torch_tensorrt.Input(min_shape=tuple(p["min"]), opt_shape=tuple(p["opt"]),
                                   max_shape=tuple(p["max"]), dtype=torch.float32)]
    kwargs: dict[str, Any] = {"enabled_precisions": {torch.float16 if precision == "fp16"
                                                     else torch.float32}}
    if "use_explicit_typing" in inspect.signature(torch_tensorrt.dynamo.compile).parameters:
        kwargs["use_explicit_typing"] = False  # let TensorRT pick fp16 kernels
    compiled = torch_tensorrt.compile(model, ir="dynamo", inputs=inputs, **kwargs)
    example = [torch.zeros(tuple(p["opt"]), dtype=torch.float32, device="cuda")]
    save_params = inspect.signature(torch_tensorrt.save).parameters
    key = "arg_inputs" if "arg_inputs" in save_params else "inputs"
    torch_tensorrt.save(compiled, str(path), **{key: example})
    generator.cpu()
    side = make_sidecar(Path(path).name, env, precision, profiles, "torch-tensorrt")
    side["torch_tensorrt"] = str(torch_tensorrt.__version__)
    sidecar_path(path).write_text(json.dumps(side, indent=2), encoding="utf-8")
    return side
