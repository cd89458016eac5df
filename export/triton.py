"""A Triton Inference Server model repository from a bundle.

Layout (Triton's model repository convention)::

    REPO/<bundle>_<suffix>/config.pbtxt
    REPO/<bundle>_<suffix>/1/model.onnx | model.plan | model.pt
    REPO/<bundle>_<suffix>/vcesdk_manifest.json   (pre/post-processing for clients)

One model per platform: ``onnxruntime_onnx`` (the bundle's ONNX file), ``tensorrt_plan``
(the bundle's engine; without one, the ONNX file and a ``build_plan.sh`` trtexec command for
the serving GPU, since plans are built where they run) and ``pytorch_libtorch`` (the
bundle's TorchScript file; libtorch models name their tensors ``INPUT__0``/``OUTPUT__0``).

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
from vcesdk.io.atomic import atomic_output

from .formats import _closest

# platform -> (bundle model format, file name Triton loads by default, name suffix)
PLATFORMS: dict[str, tuple[str, str, str]] = {
    "onnxruntime_onnx": ("onnx", "model.onnx", "onnx"),
    "tensorrt_plan": ("tensorrt", "model.plan", "trt"),
    "pytorch_libtorch": ("torchscript", "model.pt", "libtorch"),
}
KINDS: tuple[str, ...] = ("KIND_GPU", "KIND_CPU")


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
                 max_queue_delay_us: int = 100, kind: str = "KIND_GPU", count: int = 1):
    """Triton ``ModelConfig`` message for one platform.

    Args:
        bundle: the verified bundle.
        platform: one of :data:`PLATFORMS`.
        name: model name (the repository folder name).
        max_batch_size: largest batch Triton forms; dynamic batching on.
        max_queue_delay_us: dynamic batching queue delay, microseconds.
        kind: instance group kind, "KIND_GPU" or "KIND_CPU" (tensorrt_plan: GPU only).
        count: model instances per device.

    Returns:
        ``tritonclient.grpc.model_config_pb2.ModelConfig``.

    Raises:
        InputError: unknown platform or kind, batch size < 1, a TensorRT plan on CPU.
    """
    pb = _model_config_pb2()
    if platform not in PLATFORMS:
        raise InputError(f"unknown Triton platform {platform!r}; valid: "
                         f"{', '.join(PLATFORMS)}{_closest(platform, list(PLATFORMS))}")
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
    cfg = pb.ModelConfig(name=name, platform=platform, max_batch_size=int(max_batch_size))
    cfg.input.add(name=in_name, data_type=pb.TYPE_FP32, dims=[c_in, *spatial])
    cfg.output.add(name=out_name, data_type=pb.TYPE_FP32, dims=[c_out, *spatial])
    cfg.dynamic_batching.max_queue_delay_microseconds = int(max_queue_delay_us)
    cfg.instance_group.add(kind=getattr(pb.ModelInstanceGroup, kind), count=int(count))
    for key, value in (("vcesdk_bundle", bundle.name), ("vcesdk_phase", bundle.phase),
                       ("vcesdk_method", str(bundle.manifest["method"])),
                       ("vcesdk_manifest", "vcesdk_manifest.json")):
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
    return [p for p in PLATFORMS
            if ("torchscript" if p == "pytorch_libtorch" else "onnx") in formats]


def write_triton_repository(bundle_path: str | os.PathLike, out_dir: str | os.PathLike,
                            platforms: Sequence[str] = tuple(PLATFORMS),
                            max_batch_size: int = 4, max_queue_delay_us: int = 100,
                            kind: str = "KIND_GPU", overwrite: bool = False) -> Path:
    """Write a Triton model repository with one model per platform (see the module
    docstring), atomically.

    Args:
        bundle_path: a bundle folder (verified before use).
        out_dir: repository folder to create.
        platforms: Triton platforms, from :data:`PLATFORMS`.
        max_batch_size, max_queue_delay_us, kind: see :func:`model_config`.
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
        raise InputError(f"no Triton platform given; valid: {', '.join(PLATFORMS)}")
    plans = []
    for platform in platforms:
        if platform not in PLATFORMS:
            raise InputError(f"unknown Triton platform {platform!r}; valid: "
                             f"{', '.join(PLATFORMS)}{_closest(platform, list(PLATFORMS))}")
        need = "torchscript" if platform == "pytorch_libtorch" else "onnx"
        try:
            bundle.file("model", need)
        except BundleError:
            raise BundleError(f"Triton platform {platform} needs the bundle's {need} file; "
                              f"re-export the bundle with --format onnx,{need}") from None
        cfg = model_config(bundle, platform, f"{bundle.name}_{PLATFORMS[platform][2]}",
                           max_batch_size, max_queue_delay_us, kind)
        plans.append((platform, cfg, config_text(cfg)))
    with atomic_output(out_dir, is_dir=True, overwrite=overwrite) as tmp:
        for platform, cfg, text in plans:
            fmt, filename, _ = PLATFORMS[platform]
            model_dir = tmp / cfg.name
            (model_dir / "1").mkdir(parents=True)
            (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
            shutil.copy2(bundle.path / "manifest.json", model_dir / "vcesdk_manifest.json")
            if platform != "tensorrt_plan":
                shutil.copy2(bundle.file("model", fmt), model_dir / "1" / filename)
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

