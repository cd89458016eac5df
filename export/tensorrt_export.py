"""TensorRT engines from a bundle's ONNX file with TensorRT's Python builder or trtexec, and
with torch-tensorrt's dynamo path from the bundle's dynamic ExportedProgram.

Version facts, read in NVIDIA/TensorRT (``samples/common/sampleOptions.cpp``,
``include/NvInfer.h``, ``python/src/infer/pyCore.cpp``) and pytorch/TensorRT
(``py/torch_tensorrt/_compile.py``, ``dynamo/_compiler.py``) at each release tag:

* trtexec: ``--skipInference`` exists from 8.6 (8.5, JetPack 5, has ``--buildOnly``);
  ``--fp16`` is gone in 11.0, where every network is strongly typed (``--stronglyTyped`` is a
  no-op) and fp16 comes from a mixed-precision ONNX file (NVIDIA ModelOpt AutoCast).
* Python builder: ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` is required before 10 and
  gone in 11; ``BuilderFlag.FP16/INT8``, ``int8_calibrator``, ``set_calibration_profile`` and
  ``IInt8EntropyCalibrator2`` exist through 10.x (deprecated there) and are removed in 11.
* torch-tensorrt: fp16 is ``enabled_precisions={float16}`` up to 2.9 and
  ``enable_autocast=True, autocast_low_precision_type=float16`` from 2.10 (2.13 dropped
  ``enabled_precisions`` and ``use_explicit_typing``); ``torch_tensorrt.save`` retraces with
  static example shapes by default from 2.10, so it is called with ``retrace=False`` (and the
  ``dynamic_shapes`` it accepts from 2.11) to keep batch, height and width dynamic.

Every engine gets a sidecar (:func:`vcesdk.engines.make_sidecar`) and is checked against a
reference on the same real-CT windows with its precision's tolerance. For edge GPUs (Jetson)
the engine is built where it runs: :func:`build_script` writes ``build_engine.sh`` (finds
trtexec, reads its TensorRT version, picks the command for it, writes the sidecar);
``vcesdk build-engine`` runs the Python builder there.

TensorRT, torch-tensorrt and CUDA are imported only when a function here is called.
"""
from __future__ import annotations

import dataclasses
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
    MODEL_OUTPUT,
    import_tensorrt,
    local_gpu_environment,
    make_sidecar,
    parse_version,
    shape_text,
    sidecar_path,
)
from vcesdk.errors import BundleError, MissingDependencyError

_logger = logging.getLogger(__name__)

DEFAULT_WORKSPACE_GB = 4
BUILDERS = ("tensorrt-python", "torch-tensorrt", "trtexec")

SKIP_INFERENCE_SINCE = (8, 6)
"""trtexec gained ``--skipInference`` in 8.6; 8.5 (JetPack 5) has ``--buildOnly``."""
STRONGLY_TYPED_SINCE = (11, 0)
"""TensorRT 11: strongly typed networks only; no weak-typing precision flags."""
EXPLICIT_BATCH_BEFORE = (10, 0)
"""Before TensorRT 10 a network is explicit-batch only with ``EXPLICIT_BATCH``."""
MIXED_ONNX_SUFFIX = ".fp16.onnx"
"""File of the fp16 mixed-precision ONNX (ModelOpt AutoCast) TensorRT 11 builds fp16 from."""
INSTALL_MODELOPT = "pip install 'nvidia-modelopt[onnx]'"


def _version(v: str | Sequence[int]) -> tuple[int, int]:
    return parse_version(v) if isinstance(v, str) else (int(v[0]), int(v[1]))


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """How the Python builder makes an engine of one precision with one TensorRT version.

    Attributes:
        tensorrt: (major, minor).
        network_flags: ``NetworkDefinitionCreationFlag`` member names for ``create_network``.
        builder_flags: ``BuilderFlag`` member names set on the builder config.
        calibrator: int8 entropy calibration (``IInt8EntropyCalibrator2``) is used.
        mixed_precision_onnx: the ONNX file is first converted to fp16 mixed precision
            (ModelOpt AutoCast, I/O kept float32); the strongly typed network takes its
            precisions from there.
    """

    tensorrt: tuple[int, int]
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    calibrator: bool
    mixed_precision_onnx: bool


def build_plan(tensorrt_version: str | Sequence[int], precision: str) -> BuildPlan:
    """The builder settings for `precision` with TensorRT `tensorrt_version` (see the module
    docstring for where each version fact comes from).

    Args:
        tensorrt_version: "10.3.0.26" or (10, 3).
        precision: "fp32", "fp16" or "int8".

    Raises:
        MissingDependencyError: int8 with TensorRT 11 or later (implicit calibration was
            removed; int8 there needs an explicitly quantized Q/DQ ONNX).
        BundleError: an unknown precision.
    """
    v = _version(tensorrt_version)
    if precision not in ("fp32", "fp16", "int8"):
        raise BundleError(f"unknown precision {precision!r}; valid: fp32, fp16, int8")
    net = ("EXPLICIT_BATCH",) if v < EXPLICIT_BATCH_BEFORE else ()
    if v >= STRONGLY_TYPED_SINCE:
        if precision == "int8":
            raise MissingDependencyError(
                f"TensorRT {v[0]}.{v[1]} removed implicit INT8 calibration "
                f"(IInt8EntropyCalibrator2, BuilderFlag.INT8); int8 there needs an explicitly "
                f"quantized (Q/DQ) ONNX, e.g. from NVIDIA ModelOpt: use fp16, or a TensorRT "
                f"8.6-10.x build for calibrated int8")
        return BuildPlan(v, (), (), False, precision == "fp16")
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("FP16", "INT8")}[precision]
    return BuildPlan(v, net, flags, precision == "int8", False)


def trtexec_command(onnx_file: str, engine_file: str,
                    profiles: Mapping[str, Mapping[str, Sequence[int]]], precision: str = "fp32",
                    workspace_gb: float = DEFAULT_WORKSPACE_GB,
                    tensorrt_version: str | Sequence[int] = "10.0",
                    trtexec: str = "trtexec") -> list[str]:
    """The trtexec command that builds the same engine as :func:`build_engine` (fp32/fp16).

    Args:
        onnx_file, engine_file: paths as they should appear in the command; for fp16 with
            TensorRT 11+, `onnx_file` must be the mixed-precision ONNX of
            :func:`autocast_command` (trtexec 11 has no ``--fp16``).
        profiles: {input: {"min", "opt", "max"}} from :func:`vcesdk.engines.engine_profiles`.
        precision: "fp32" or "fp16".
        workspace_gb: builder workspace limit, GiB (written in MiB, the unit every trtexec
            version takes without a suffix).
        tensorrt_version: the TensorRT of the trtexec that will run it ("8.5", (10, 3), ...).
        trtexec: the trtexec executable.

    Returns:
        argv list (join with :func:`shlex.join` for a shell).

    Raises:
        BundleError: int8 (calibration needs the Python builder: ``vcesdk build-engine
            --precision int8 --calib DIR`` on the device).
    """
    if precision not in ("fp32", "fp16"):
        raise BundleError("int8 engines are calibrated where they are built: run 'vcesdk "
                          "build-engine BUNDLE --precision int8 --calib DIR' on the device")
    v = _version(tensorrt_version)

    def shapes(key: str) -> str:
        return ",".join(f"{name}:{shape_text(p[key])}" for name, p in profiles.items())

    cmd = [trtexec, f"--onnx={onnx_file}", f"--saveEngine={engine_file}",
           f"--minShapes={shapes('min')}", f"--optShapes={shapes('opt')}",
           f"--maxShapes={shapes('max')}",
           f"--memPoolSize=workspace:{int(float(workspace_gb) * 1024)}",
           "--skipInference" if v >= SKIP_INFERENCE_SINCE else "--buildOnly"]
    if precision == "fp16" and v < STRONGLY_TYPED_SINCE:
        cmd.append("--fp16")
    return cmd


def autocast_command(onnx_file: str, out_file: str, python: str = "python3") -> list[str]:
    """ModelOpt AutoCast (``python -m modelopt.onnx.autocast``, documented CLI): the fp32 ONNX
    to fp16 mixed precision with float32 inputs and outputs kept, for TensorRT 11's strongly
    typed fp16 build."""
    return [python, "-m", "modelopt.onnx.autocast", "--onnx_path", onnx_file,
            "--output_path", out_file, "--low_precision_type", "fp16", "--keep_io_types"]


# the TensorRT versions whose trtexec commands differ, and the shell test that selects each
_SCRIPT_BRANCHES = (
    ("11.0", '[ "$TRT_MAJOR" -ge 11 ]'),
    ("8.6", '[ "$TRT_MAJOR" -gt 8 ] || [ "$TRT_MINOR" -ge 6 ]'),
    ("8.5", None),
)


def build_script(onnx_file: str, engine_file: str,
                 profiles: Mapping[str, Mapping[str, Sequence[int]]], precision: str,
                 workspace_gb: float, header: Sequence[str] | None = None) -> str:
    """A POSIX shell script for the device (``build_engine.sh``, run from the bundle folder).

    It finds trtexec (``$TRTEXEC``, then ``PATH``, then JetPack's ``/usr/src/tensorrt/bin``),
    reads the TensorRT version from trtexec's banner (``[TensorRT v8502]``: 8.x is
    major*1000 + minor*100 + patch, 10+ is major*10000 + minor*100 + patch, NVIDIA/TensorRT
    ``NvInferVersion.h``), runs the :func:`trtexec_command` for that version (for fp16 on
    11+, ModelOpt AutoCast first), and writes the engine's sidecar from trtexec's own log
    (``Selected Device``, ``Compute Capability``, ``TensorRT version``) and the CUDA version
    TensorRT was installed for (``libnvinfer`` Debian package ``+cudaX.Y``, else
    ``/usr/local/cuda/version.json`` or ``version.txt``). int8 prints the ``vcesdk
    build-engine`` command and exits 2.

    Args:
        onnx_file, engine_file: file names inside the bundle folder.
        profiles: {input: {"min", "opt", "max"}} shapes.
        precision: "fp32", "fp16" or "int8".
        workspace_gb: builder workspace limit, GiB.
        header: comment lines after ``#!/bin/sh`` (default: the bundle's, naming
            ``vcesdk build-engine``).

    Returns:
        The script text.
    """
    lines = ["#!/bin/sh", *(header or [
        "# Build the TensorRT engine on the GPU that will run it (engines are tied to the",
        "# GPU architecture and TensorRT version). Run from inside the bundle folder.",
        "# Preferred (also checks parity and lists the engine in the manifest):",
        f"#   vcesdk build-engine . --precision {precision} --parity-input CT"]),
             "set -e",
             'cd "$(dirname "$0")"']
    if precision == "int8":
        lines.append("echo 'int8 needs calibration: vcesdk build-engine . --precision int8 "
                     "--calib CT_DIR --parity-input CT' >&2; exit 2")
        return "\n".join(lines) + "\n"
    side = sidecar_path(engine_file).name
    log = f"{Path(engine_file).name}.build.log"
    mixed = Path(onnx_file).with_suffix(MIXED_ONNX_SUFFIX).name
    fail = '>> "$LOG" 2>&1 || { tail -n 40 "$LOG" >&2; exit 1; }'
    lines += [
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || true)}"',
        'if [ -z "$TRTEXEC" ] && [ -x /usr/src/tensorrt/bin/trtexec ]; then',
        "    TRTEXEC=/usr/src/tensorrt/bin/trtexec  # JetPack's place, not on PATH",
        "fi",
        'if [ -z "$TRTEXEC" ]; then',
        "    echo 'trtexec not found on PATH or in /usr/src/tensorrt/bin; install TensorRT "
        "or set TRTEXEC=/path/to/trtexec' >&2",
        "    exit 2",
        "fi",
        r"""TRT_V=$("$TRTEXEC" --help 2>&1 | sed -n 's/.*\[TensorRT v\([0-9][0-9]*\)\].*/\1/p' """
        r"""| head -n 1)""",
        'if [ -z "$TRT_V" ]; then echo "cannot read the TensorRT version from $TRTEXEC" >&2; '
        "exit 2; fi",
        'if [ "$TRT_V" -ge 100000 ]; then TRT_MAJOR=$((TRT_V / 10000)); '
        'TRT_MINOR=$((TRT_V / 100 % 100));',
        'else TRT_MAJOR=$((TRT_V / 1000)); TRT_MINOR=$((TRT_V / 100 % 10)); fi',
        f"LOG={shlex.quote(log)}",
        ': > "$LOG"',
    ]
    for i, (version, test) in enumerate(_SCRIPT_BRANCHES):
        if test is None:
            lines.append("else")
        else:
            lines.append(f"{'if' if i == 0 else 'elif'} {test}; then")
        src = onnx_file
        if precision == "fp16" and _version(version) >= STRONGLY_TYPED_SINCE:
            src = mixed
            lines.append("    " + shlex.join(autocast_command(onnx_file, mixed)) +
                         ' >> "$LOG" 2>&1 || { tail -n 40 "$LOG" >&2; echo "TensorRT 11 '
                         f'builds fp16 from a mixed-precision ONNX: {INSTALL_MODELOPT}" >&2; '
                         "exit 1; }")
        cmd = trtexec_command(src, engine_file, profiles, precision, workspace_gb, version)
        lines.append('    "$TRTEXEC" ' + shlex.join(cmd[1:]) + " " + fail)
    lines.append("fi")
    profiles_json = json.dumps({k: {kk: [int(x) for x in vv] for kk, vv in p.items()}
                                for k, p in profiles.items()})
    lines += [
        r"""GPU_NAME=$(sed -n 's/.*Selected Device: //p' "$LOG" | head -n 1)""",
        r"""GPU_CC=$(sed -n 's/.*Compute Capability: \([0-9.]*\).*/\1/p' "$LOG" | head -n 1)""",
        r"""TRT_VERSION=$(sed -n 's/.*TensorRT version: \([0-9.]*\).*/\1/p' "$LOG" """
        r"""| head -n 1)""",
        'CUDA_SOURCE=""',
        r"""CUDA_VERSION=$(dpkg-query -W -f='${Version}\n' 'libnvinfer*' 2>/dev/null """
        r"""| sed -n 's/.*+cuda\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)""",
        'if [ -n "$CUDA_VERSION" ]; then CUDA_SOURCE="dpkg libnvinfer"; fi',
        'if [ -z "$CUDA_VERSION" ] && [ -f /usr/local/cuda/version.json ]; then',
        r"""    CUDA_VERSION=$(tr -d '\n' < /usr/local/cuda/version.json | sed -n """
        r"""'s/.*"cuda"[^}]*"version" *: *"\([0-9]*\.[0-9]*\).*/\1/p')""",
        '    CUDA_SOURCE="/usr/local/cuda/version.json"',
        "fi",
        'if [ -z "$CUDA_VERSION" ] && [ -f /usr/local/cuda/version.txt ]; then',
        r"""    CUDA_VERSION=$(sed -n 's/.*CUDA Version \([0-9]*\.[0-9]*\).*/\1/p' """
        r"""/usr/local/cuda/version.txt | head -n 1)""",
        '    CUDA_SOURCE="/usr/local/cuda/version.txt"',
        "fi",
        'if [ -z "$CUDA_VERSION" ]; then CUDA_VERSION=unknown; CUDA_SOURCE="not found"; fi',
        'if [ -z "$GPU_CC" ] || [ -z "$TRT_VERSION" ]; then',
        '    echo "trtexec log $LOG names no device or TensorRT version; no sidecar" >&2',
        "    exit 1",
        "fi",
        f"cat > {shlex.quote(side)} <<EOF",
        "{",
        f'  "engine": "{Path(engine_file).name}",',
        '  "gpu_name": "$GPU_NAME",',
        '  "compute_capability": "$GPU_CC",',
        '  "tensorrt": "$TRT_VERSION",',
        '  "cuda": "$CUDA_VERSION",',
        '  "cuda_source": "$CUDA_SOURCE",',
        f'  "precision": "{precision}",',
        f'  "profiles": {profiles_json},',
        '  "builder": "trtexec",',
        f'  "input": "{MODEL_INPUT}",',
        f'  "output": "{MODEL_OUTPUT}"',
        "}",
        "EOF",
        f'echo "built {engine_file} and {side} with TensorRT $TRT_VERSION on $GPU_NAME '
        f'(compute capability $GPU_CC)"',
    ]
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


def _entropy_calibrator(trt, batches: Sequence[np.ndarray], cache: Path, device: int = 0):
    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise MissingDependencyError(
            f"TensorRT {trt.__version__} has no implicit INT8 calibration "
            f"(IInt8EntropyCalibrator2; superseded by explicit quantization); use fp16, or a "
            f"TensorRT 8.6-10.x build for int8")
    from vcesdk.cuda_driver import DeviceContext

    cuda = DeviceContext(device)

    class EntropyCalibrator(base):  # type: ignore[misc, valid-type]
        """Feeds real-CT windows to TensorRT's entropy calibration, one batch at a time, in a
        device buffer from the CUDA driver."""

        def __init__(self) -> None:
            base.__init__(self)
            self._batches = [np.ascontiguousarray(b, dtype=np.float32) for b in batches]
            self._next = 0
            self._ptr = cuda.alloc(self._batches[0].nbytes)

        def get_batch_size(self) -> int:
            return int(self._batches[0].shape[0])

        def get_batch(self, names):  # noqa: ARG002 (one input)
            if self._next >= len(self._batches):
                return None
            cuda.to_device(self._ptr, self._batches[self._next])
            self._next += 1
            return [int(self._ptr)]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data) -> None:
            cache.write_bytes(bytes(data))

    return EntropyCalibrator()


def mixed_precision_onnx(onnx_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """The fp32 ONNX file converted to fp16 mixed precision with NVIDIA ModelOpt AutoCast
    (``modelopt.onnx.autocast.convert_to_mixed_precision``, float32 inputs and outputs kept),
    for TensorRT 11's strongly typed fp16 build.

    Raises:
        MissingDependencyError: ModelOpt is not installed.
    """
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError:
        raise MissingDependencyError(
            f"TensorRT 11 builds fp16 engines from a mixed-precision ONNX (strongly typed "
            f"networks): {INSTALL_MODELOPT}, or build fp32") from None
    import onnx

    model = convert_to_mixed_precision(onnx_path=str(onnx_path), low_precision_type="fp16",
                                       keep_io_types=True)
    onnx.save(model, str(out_path))
    return Path(out_path)


def configure_builder(trt: Any, builder: Any, plan: BuildPlan) -> tuple[Any, Any]:
    """(network, config) from `builder` as `plan` says: network creation flags and builder
    precision flags by name, so a member a TensorRT version lacks is never touched.

    Args:
        trt: the ``tensorrt`` module.
        builder: a ``trt.Builder``.
        plan: from :func:`build_plan` for this TensorRT.
    """
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    config = builder.create_builder_config()
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    return network, config


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike,
                 profiles: Mapping[str, Mapping[str, Sequence[int]]], precision: str = "fp32",
                 workspace_gb: float = DEFAULT_WORKSPACE_GB,
                 calibration: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """Build a TensorRT engine from an ONNX file and write it with its sidecar; needs TensorRT
    and an NVIDIA GPU, not PyTorch.

    The builder settings per TensorRT version come from :func:`build_plan` (8.x: explicit
    batch flag; 8.x-10.x: ``BuilderFlag.FP16``/``INT8`` and entropy calibration; 11+:
    strongly typed, fp16 from a ModelOpt AutoCast mixed-precision ONNX).

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
        MissingDependencyError: no TensorRT / NVIDIA GPU, int8 with TensorRT 11+, or fp16 with
            TensorRT 11+ without ModelOpt.
        BundleError: the ONNX parser or the builder failed (parser errors in the message), or
            int8 without calibration batches.
    """
    trt = import_tensorrt()
    plan = build_plan(str(trt.__version__), precision)  # refuses int8 on 11+ before any work
    if plan.calibrator and not calibration:
        raise BundleError("int8 needs calibration windows from real CT (--calib DIR)")
    env = local_gpu_environment()
    engine_path = Path(engine_path)
    cache = engine_path.with_name(engine_path.name + ".calib")  # int8 calibration cache
    source = Path(onnx_path)
    mixed = engine_path.with_name(engine_path.stem + MIXED_ONNX_SUFFIX)
    if plan.mixed_precision_onnx:
        source = mixed_precision_onnx(onnx_path, mixed)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, config = configure_builder(trt, builder, plan)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT could not parse {source.name}: {errors}")
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    for name, p in profiles.items():
        profile.set_shape(name, tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
    config.add_optimization_profile(profile)
    if plan.calibrator:
        calib_profile = builder.create_optimization_profile()
        for name, p in profiles.items():
            calib_profile.set_shape(name, tuple(p["opt"]), tuple(p["opt"]), tuple(p["opt"]))
        config.set_calibration_profile(calib_profile)
        config.int8_calibrator = _entropy_calibrator(trt, calibration or [], cache)
    _logger.info("building TensorRT %s engine (%s) on %s", precision, trt.__version__,
                 env["gpu_name"])
    serialized = builder.build_serialized_network(network, config)
    for leftover in (cache, mixed):
        if leftover.exists():
            leftover.unlink()  # build by-products, not part of the bundle
    if serialized is None:
        raise BundleError(f"TensorRT failed to build the {precision} engine (see TensorRT's "
                          f"log above); try a larger workspace or fp32")
    engine_path.write_bytes(bytes(serialized))
    side = make_sidecar(engine_path.name, env, precision, profiles, "tensorrt-python")
    sidecar_path(engine_path).write_text(json.dumps(side, indent=2), encoding="utf-8")
    return side


def torch_tensorrt_compile_kwargs(parameters: Sequence[str], precision: str,
                                  float16: Any = None) -> dict[str, Any]:
    """Precision arguments of ``torch_tensorrt.dynamo.compile`` for its installed version,
    chosen by the parameters its signature has (pytorch/TensorRT ``dynamo/_compiler.py``):

    * 2.10-2.13 (``enable_autocast``): fp16 is ``enable_autocast=True,
      autocast_low_precision_type=torch.float16`` (2.13 removed ``enabled_precisions``; from
      2.10 explicit typing is the default, which ``enabled_precisions`` cannot change).
    * 2.4-2.9: ``enabled_precisions={float16, float32}``, with ``use_explicit_typing=False``
      where that parameter exists (2.8, 2.9), so TensorRT may pick fp16 kernels.
    * fp32: no arguments (every version's default).

    Args:
        parameters: parameter names of the installed ``torch_tensorrt.dynamo.compile``.
        precision: "fp32" or "fp16".
        float16: ``torch.float16`` (imported when not given).

    Raises:
        BundleError: another precision.
    """
    if precision == "fp32":
        return {}
    if precision != "fp16":
        raise BundleError(f"torch_tensorrt precision must be fp32 or fp16, got {precision!r}")
    if float16 is None:
        import torch

        float16 = torch.float16
    params = set(parameters)
    if "enable_autocast" in params:
        return {"enable_autocast": True, "autocast_low_precision_type": float16}
    import torch

    out: dict[str, Any] = {"enabled_precisions": {float16, torch.float32}}
    if "use_explicit_typing" in params:
        out["use_explicit_typing"] = False
    return out


def torch_tensorrt_save_kwargs(parameters: Sequence[str], example: Any,
                               dynamic: Any) -> dict[str, Any]:
    """Arguments of ``torch_tensorrt.save`` that keep the saved program dynamic, chosen by the
    parameters of the installed version (pytorch/TensorRT ``_compile.py``):

    * ``retrace=False`` always: from 2.10 the default ``retrace=True`` re-exports with the
      example's static shape (the saved ``.ep`` then refuses every other batch or plane);
      ``retrace=False`` serialises the compiled graph with its symbolic shapes (2.4-2.13).
    * ``dynamic_shapes`` where accepted (2.11+), the same spec the program was exported with.
    * the example as ``arg_inputs`` (2.5+) or ``inputs`` (2.4).

    Args:
        parameters: parameter names of the installed ``torch_tensorrt.save``.
        example: the tracing example tensor.
        dynamic: the torch.export ``dynamic_shapes`` of the program.
    """
    params = set(parameters)
    out: dict[str, Any] = {"arg_inputs" if "arg_inputs" in params else "inputs": [example]}
    if "retrace" in params:
        out["retrace"] = False
    if "dynamic_shapes" in params:
        out["dynamic_shapes"] = dynamic
    return out


def export_torch_tensorrt(generator, path: str | os.PathLike,
                          profiles: Mapping[str, Mapping[str, Sequence[int]]],
                          precision: str = "fp32",
                          multiple: Sequence[int] | None = None) -> dict[str, Any]:
    """Compile the generator's dynamic ExportedProgram (:mod:`.exported_program`) with
    torch-tensorrt's dynamo path and save it as an ExportedProgram (``.ep``) with a sidecar.

    Args:
        generator: the eager network (moved to CUDA for export and compilation, back after).
        path: .ep file to write.
        profiles: {input: {"min", "opt", "max"}} from :func:`vcesdk.engines.engine_profiles`.
        precision: "fp32" or "fp16" (see :func:`torch_tensorrt_compile_kwargs`).
        multiple: the network's (d, h, w) size multiples (default its ``size_multiple()``).

    Returns:
        The sidecar dict (also written).

    Raises:
        MissingDependencyError: torch-tensorrt, TensorRT or a CUDA GPU is missing.
    """
    import torch

    from .exported_program import dynamic_shapes, example_input, export_program

    env = local_gpu_environment()
    try:
        import torch_tensorrt
    except ImportError:
        raise MissingDependencyError("torch-tensorrt is not installed: pip install "
                                     "'vcesdk[gpu]' on a machine with an NVIDIA GPU") from None
    if not torch.cuda.is_available():
        raise MissingDependencyError("torch-tensorrt compiles on CUDA: install a CUDA build "
                                     "of torch")
    p = profiles[MODEL_INPUT]
    mult = tuple(multiple or generator.size_multiple())
    program = export_program(generator, p, mult, device="cuda")
    spec = [torch_tensorrt.Input(min_shape=tuple(p["min"]), opt_shape=tuple(p["opt"]),
                                 max_shape=tuple(p["max"]), dtype=torch.float32)]
    compile_params = inspect.signature(torch_tensorrt.dynamo.compile).parameters
    kwargs = torch_tensorrt_compile_kwargs(list(compile_params), precision)
    key = "arg_inputs" if "arg_inputs" in compile_params else "inputs"
    compiled = torch_tensorrt.dynamo.compile(program, **{key: spec}, **kwargs)
    example = example_input(p, mult, "cuda")
    torch_tensorrt.save(compiled, str(path), **torch_tensorrt_save_kwargs(
        list(inspect.signature(torch_tensorrt.save).parameters), example,
        dynamic_shapes(p, mult)))
    generator.cpu()
    side = make_sidecar(Path(path).name, env, precision, profiles, "torch-tensorrt")
    side["torch_tensorrt"] = str(torch_tensorrt.__version__)
    side["compile_args"] = sorted(kwargs)
    sidecar_path(path).write_text(json.dumps(side, indent=2), encoding="utf-8")
    return side
