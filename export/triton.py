"""A Triton Inference Server model repository from a bundle.

Layout (Triton's model repository convention)::

    REPO/<bundle>_<suffix>/config.pbtxt
    REPO/<bundle>_<suffix>/1/model.onnx | model.plan | model.pt
    REPO/<bundle>_<suffix>/vcesdk_manifest.json   (pre/post-processing for clients)

One model per platform: ``onnxruntime_onnx`` (the bundle's ONNX file), ``tensorrt_plan``
(the bundle's engine; without one, the ONNX file and a ``build_plan.sh`` trtexec command for
the serving GPU, since plans are built where they run), ``pytorch_libtorch`` (the
bundle's TorchScript file; libtorch models name their tensors ``INPUT__0``/``OUTPUT__0``) and
``python`` (Triton's Python backend, which every tritonserver build ships, including the one in
the ``nvidia-pytriton`` wheel: ``1/model.py`` (:mod:`vcesdk.export.triton_python_model`) runs
``1/model.onnx`` with ONNX Runtime on the instance's device; the config names
``backend: "python"`` instead of a platform).

``config.pbtxt`` is built as Triton's own ``inference.ModelConfig`` protobuf message (from
``tritonclient``, which ships Triton's model_config.proto compiled) and written with
protobuf's text format, so every field name, type and enum is checked against the documented
schema; the written text is parsed back before the repository is renamed into place.
Inputs are the model-value windows the manifest describes (float32 (C, d, h, w), h and w -1
for whole-plane windows); the batch dimension is Triton's (``max_batch_size``) with dynamic
batching.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

from vcesdk.bundle import Bundle, load_bundle
from vcesdk.engines import MODEL_INPUT, MODEL_OUTPUT, engine_profiles, sidecar_path
from vcesdk.errors import BundleError, InputError, MissingDependencyError
from vcesdk.formats import FORMATS, ONNX, closest_match
from vcesdk.io.atomic import atomic_output

# Triton's side of each platform: the file name it loads by default and the model-name suffix.
_TRITON_FILES: dict[str, tuple[str, str]] = {
    "onnxruntime_onnx": ("model.onnx", "onnx"),
    "tensorrt_plan": ("model.plan", "trt"),
    "pytorch_libtorch": ("model.pt", "libtorch"),
}
# platform -> (bundle model format, file name Triton loads by default, name suffix); the
# format that each platform serves is the format table's (``triton_platform``).
PLATFORMS: dict[str, tuple[str, str, str]] = {
    platform: (next(f.name for f in FORMATS.values() if f.triton_platform == platform), *files)
    for platform, files in _TRITON_FILES.items()}
PYTHON = "python"
"""The Python-backend platform: the bundle's ONNX file run by ONNX Runtime inside Triton's
Python backend (``model.py``: :mod:`vcesdk.export.triton_python_model`)."""
SERVING: dict[str, tuple[str, str, str]] = {**PLATFORMS, PYTHON: (ONNX, "model.onnx", "python")}
"""Every platform the writer takes, as :data:`PLATFORMS`: the format table's platforms and
the Python backend (which serves the ONNX file without being a format's own platform)."""


def source_format(platform: str) -> str:
    """The bundle model file a platform's model is made from: its own format, except a
    TensorRT plan, which is built from the ONNX file where the bundle carries no engine."""
    fmt = FORMATS[SERVING[platform][0]]
    return ONNX if fmt.source == ONNX else fmt.name
KINDS: tuple[str, ...] = ("KIND_GPU", "KIND_CPU")


def _source_sha256(bundle: Bundle, platform: str) -> str:
    """The manifest's sha256 of the bundle model file a platform's model is made from."""
    return str(bundle.manifest["files"][bundle.file("model", source_format(platform)).name]
               ["sha256"])


def _model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise MissingDependencyError("the Triton writer validates against Triton's "
                                     "model_config.proto from tritonclient: pip install "
                                     "'vcesdk[export]' (tritonclient[grpc])") from None
    return model_config_pb2


def tensor_names(platform: str) -> tuple[str, str]:
    """(input, output) tensor names Triton expects for a platform."""
    if platform == "pytorch_libtorch":
        return "INPUT__0", "OUTPUT__0"
    return MODEL_INPUT, MODEL_OUTPUT


def model_config(bundle: Bundle, platform: str, name: str, max_batch_size: int = 4,
                 max_queue_delay_us: int = 100, kind: str = "KIND_GPU", count: int = 1,
                 dynamic_batching: bool = True):
    """Triton ``ModelConfig`` message for one platform.

    Args:
        bundle: the verified bundle.
        platform: one of :data:`SERVING`.
        name: model name (the repository folder name).
        max_batch_size: largest batch Triton forms (and accepts in one request).
        max_queue_delay_us: dynamic batching queue delay, microseconds.
        kind: instance group kind, "KIND_GPU" or "KIND_CPU" (tensorrt_plan: GPU only).
        count: model instances per device.
        dynamic_batching: let Triton merge requests into batches of up to max_batch_size
            (off: every request runs alone).

    Returns:
        ``tritonclient.grpc.model_config_pb2.ModelConfig``.

    Raises:
        InputError: unknown platform or kind, batch size < 1, a TensorRT plan on CPU.
    """
    pb = _model_config_pb2()
    if platform not in SERVING:
        raise InputError(f"unknown Triton platform {platform!r}; valid: "
                         f"{', '.join(SERVING)}"
                         f"{closest_match(platform, list(SERVING))}")
    if kind not in KINDS:
        raise InputError(f"unknown instance kind {kind!r}; valid: {', '.join(KINDS)}")
    if platform == "tensorrt_plan" and kind != "KIND_GPU":
        raise InputError("a TensorRT plan runs on a GPU only (KIND_GPU)")
    if max_batch_size < 1:
        raise InputError(f"max_batch_size must be >= 1, got {max_batch_size}")
    c_in = len(bundle.windows)
    c_out = int(bundle.manifest["output"]["channels"])
    d, h, w = bundle.window
    spatial = [d, h or -1, w or -1]
    in_name, out_name = tensor_names(platform)
    if count < 1:
        raise InputError(f"instance count must be >= 1, got {count}")
    if platform == PYTHON:
        cfg = pb.ModelConfig(name=name, backend="python", max_batch_size=int(max_batch_size))
    else:
        cfg = pb.ModelConfig(name=name, platform=platform,
                             max_batch_size=int(max_batch_size))
    cfg.input.add(name=in_name, data_type=pb.TYPE_FP32, dims=[c_in, *spatial])
    cfg.output.add(name=out_name, data_type=pb.TYPE_FP32, dims=[c_out, *spatial])
    if dynamic_batching:
        cfg.dynamic_batching.max_queue_delay_microseconds = int(max_queue_delay_us)
    cfg.instance_group.add(kind=getattr(pb.ModelInstanceGroup, kind), count=int(count))
    for key, value in (("vcesdk_bundle", bundle.name), ("vcesdk_phase", bundle.phase),
                       ("vcesdk_method", str(bundle.manifest["method"])),
                       ("vcesdk_manifest", "vcesdk_manifest.json"),
                       # the model file it is made from, as the manifest hashes it: clients
                       # (vcesdk.triton_client) refuse a server model of another bundle
                       ("vcesdk_source_sha256", _source_sha256(bundle, platform))):
        cfg.parameters[key].string_value = value
    return cfg


def config_text(cfg) -> str:
    """``config.pbtxt`` text of a ModelConfig, checked by parsing it back."""
    from google.protobuf import text_format

    text = text_format.MessageToString(cfg)
    again = type(cfg)()
    text_format.Parse(text, again)
    if again != cfg:
        raise BundleError("config.pbtxt did not round-trip through Triton's schema")
    return text


def servable_platforms(bundle_path: str | os.PathLike) -> list[str]:
    """The platforms a bundle has model files for (tensorrt_plan needs ONNX or an engine)."""
    formats = load_bundle(bundle_path).model_formats
    return [p for p in SERVING if source_format(p) in formats]


def write_triton_repository(bundle_path: str | os.PathLike, out_dir: str | os.PathLike,
                            platforms: Sequence[str] = tuple(SERVING),
                            max_batch_size: int = 4, max_queue_delay_us: int = 100,
                            kind: str = "KIND_GPU", overwrite: bool = False,
                            dynamic_batching: bool = True, count: int = 1) -> Path:
    """Write a Triton model repository with one model per platform (see the module
    docstring), atomically.

    Args:
        bundle_path: a bundle folder (verified before use).
        out_dir: repository folder to create.
        platforms: Triton platforms, from :data:`SERVING`.
        max_batch_size, max_queue_delay_us, kind, dynamic_batching, count: see
            :func:`model_config`.
        overwrite: replace an existing repository folder.

    Returns:
        The repository folder.

    Raises:
        InputError: unknown platform; no platforms.
        BundleError: the bundle lacks the file a platform needs (ONNX for onnxruntime_onnx and
            tensorrt_plan, TorchScript for pytorch_libtorch), or its engine's profile allows
            fewer than max_batch_size windows.
        MissingDependencyError: tritonclient is not installed.
    """
    bundle = load_bundle(bundle_path)
    if not platforms:
        raise InputError(f"no Triton platform given; valid: {', '.join(SERVING)}")
    plans = []
    for platform in platforms:
        if platform not in SERVING:
            raise InputError(f"unknown Triton platform {platform!r}; valid: "
                             f"{', '.join(SERVING)}"
                         f"{closest_match(platform, list(SERVING))}")
        need = source_format(platform)
        try:
            bundle.file("model", need)
        except BundleError:
            raise BundleError(f"Triton platform {platform} needs the bundle's {need} file; "
                              f"re-export the bundle with --format onnx,{need}") from None
        cfg = model_config(bundle, platform, f"{bundle.name}_{SERVING[platform][2]}",
                           max_batch_size, max_queue_delay_us, kind, count,
                           dynamic_batching)
        plans.append((platform, cfg, config_text(cfg)))
    with atomic_output(out_dir, is_dir=True, overwrite=overwrite) as tmp:
        for platform, cfg, text in plans:
            fmt, filename, _ = SERVING[platform]
            model_dir = tmp / cfg.name
            (model_dir / "1").mkdir(parents=True)
            (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
            shutil.copy2(bundle.path / "manifest.json", model_dir / "vcesdk_manifest.json")
            if platform != "tensorrt_plan":
                shutil.copy2(bundle.file("model", fmt), model_dir / "1" / filename)
                if platform == PYTHON:
                    shutil.copy2(Path(__file__).with_name("triton_python_model.py"),
                                 model_dir / "1" / "model.py")
                continue
            try:
                engine = bundle.file("model", "tensorrt")
            except BundleError:
                engine = None
            if engine is not None:
                side = json.loads(sidecar_path(engine).read_text(encoding="utf-8"))
                top = side["profiles"][MODEL_INPUT]["max"][0]
                if top < max_batch_size:
                    raise BundleError(f"the bundle's engine takes batches up to {top}, below "
                                      f"max_batch_size {max_batch_size}; rebuild it with "
                                      f"--max-batch {max_batch_size} or lower max_batch_size")
                shutil.copy2(engine, model_dir / "1" / filename)
                shutil.copy2(sidecar_path(engine), model_dir / "model.plan.json")
                continue
            # no engine in the bundle: plans are built on the serving GPU
            shutil.copy2(bundle.file("model", "onnx"), model_dir / "model.onnx")
            from .tensorrt_export import build_script

            prof = engine_profiles(bundle, max_batch=max_batch_size)
            (model_dir / "build_plan.sh").write_text(build_script(
                "model.onnx", "1/model.plan", prof, "fp32", 4, header=[
                    "# Build 1/model.plan on the GPU Triton serves from (TensorRT plans are",
                    "# tied to the GPU and TensorRT version): finds trtexec, picks its flags "
                    "by TensorRT version,",
                    "# writes model.plan.json (the sidecar). Run inside this folder."]),
                encoding="utf-8")
            (model_dir / "build_plan.sh").chmod(0o755)
    return Path(out_dir)

