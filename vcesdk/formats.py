"""The one table of model formats: what each bundle model file is, how it is built, which
runtime providers run it, on which device, and which precisions and options it takes.

Export (:mod:`vcesdk.export`), the runtime's backend registry (:mod:`vcesdk.backends`), the
CLI, the Triton writer and ``vcesdk build-engine`` all read this table; none keeps its own
list of format or provider names. One row per format, as Ultralytics' exporter keeps one.
Unknown formats and options are refused with the valid ones and the closest match; a user's
option is never rewritten.

No PyTorch, ONNX Runtime or TensorRT import here: the runtime and ``build-engine`` read the
table on machines without them.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping, Sequence

from .errors import InputError

# Parity tolerance per precision, HU of the output range. fp32: reordered float32 sums,
# ~1e-5 relative -> 0.5 HU is far below CT noise (10-20 HU) and the 1 HU DICOM rounding.
# fp16: 11-bit mantissa, ~5e-4 relative over a 1000-HU range plus accumulation -> 5 HU.
# int8: 256 levels over the calibrated range -> 25 HU (a coarse, documented bound).
TOLERANCE_HU: dict[str, float] = {"fp32": 0.5, "fp16": 5.0, "int8": 25.0}

ONNX = "onnx"
"""The format ONNX Runtime runs; every ONNX Runtime execution provider name runs it."""
SOURCES: tuple[str, ...] = ("network", "program", "onnx")
"""What a format's file is built from: the eager network (traced or scripted graph), the
network's dynamic ``torch.export`` ExportedProgram, or the bundle's ONNX file."""
DEVICES: tuple[str, ...] = ("cpu", "cuda")
RUNTIMES: tuple[str, ...] = ("onnxruntime", "torch", "tensorrt")
"""The library that runs a format's file at inference time."""


@dataclasses.dataclass(frozen=True)
class ModelFormat:
    """One model file format of a bundle.

    Attributes:
        name: format name on the command line and in the manifest (``files[*].format``).
        suffix: model file suffix; the file in a bundle is ``model<suffix>``.
        needs_gpu: building the file needs a CUDA GPU.
        options: option name -> allowed values (a tuple; the first is the default) or a type
            for free values. Every format has ``precision``.
        description: one line for help texts.
        source: what the file is built from, one of :data:`SOURCES`.
        runtime: the library that runs the file, one of :data:`RUNTIMES`.
        providers: (runtime provider name, device) pairs that run the file, in the order the
            runtime tries them by default; for ``onnx`` the ONNX Runtime execution providers
            vcesdk orders by default (ONNX Runtime accepts its other providers too).
        check_provider: the provider export and ``build-engine`` run the parity check on.
        engine: the file is tied to the GPU and TensorRT build that made it and carries a
            JSON sidecar (see :mod:`vcesdk.engines`).
        triton_platform: the Triton Inference Server platform that serves the file, if any.
    """

    name: str
    suffix: str
    needs_gpu: bool
    options: Mapping[str, Any]
    description: str
    source: str
    runtime: str
    providers: tuple[tuple[str, str], ...]
    check_provider: str
    engine: bool = False
    triton_platform: str | None = None

    @property
    def file_name(self) -> str:
        """The model file's name in a bundle, ``model<suffix>``."""
        return f"model{self.suffix}"

    @property
    def provider_names(self) -> tuple[str, ...]:
        """The runtime provider names of :attr:`providers`, in order."""
        return tuple(p for p, _ in self.providers)

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions the format can be built in ("fp32" first)."""
        return tuple(self.options["precision"])

    def defaults(self) -> dict[str, Any]:
        """Default value of every option with a fixed set of choices."""
        return {k: v[0] for k, v in self.options.items() if isinstance(v, tuple)}


FORMATS: dict[str, ModelFormat] = {f.name: f for f in (
    ModelFormat("onnx", ".onnx", False,
                {"opset": (17, 18, 19, 20), "dynamic": (True, False), "precision": ("fp32",)},
                "ONNX graph (dynamic batch/depth/height/width), checked with onnx.checker",
                source="network", runtime="onnxruntime",
                providers=(("TensorrtExecutionProvider", "cuda"),
                           ("CUDAExecutionProvider", "cuda"), ("CPUExecutionProvider", "cpu")),
                check_provider="CPUExecutionProvider", triton_platform="onnxruntime_onnx"),
    ModelFormat("torchscript", ".ts", False,
                {"mode": ("script", "trace"), "freeze": (True, False), "precision": ("fp32",)},
                "TorchScript (torch.jit.script or trace, frozen); code, loaded only from "
                "verified bundles",
                source="network", runtime="torch",
                providers=(("TorchScript", "cpu"), ("TorchScript:cuda", "cuda")),
                check_provider="TorchScript", triton_platform="pytorch_libtorch"),
    ModelFormat("aoti", ".pt2", False, {"precision": ("fp32",), "max_batch": int},
                "AOTInductor package (torch.export + torch._inductor.aoti_compile_and_package) "
                "for the CPU; dynamic batch and plane",
                source="program", runtime="torch", providers=(("AOTInductor", "cpu"),),
                check_provider="AOTInductor"),
    ModelFormat("aoti_cuda", ".cuda.pt2", True, {"precision": ("fp32",), "max_batch": int},
                "AOTInductor package compiled for CUDA GPUs (needs a CUDA build of torch)",
                source="program", runtime="torch", providers=(("AOTInductor:cuda", "cuda"),),
                check_provider="AOTInductor:cuda"),
    ModelFormat("tensorrt", ".engine", True,
                {"precision": ("fp32", "fp16", "int8"), "workspace_gb": int, "max_batch": int},
                "TensorRT engine built from the ONNX file with TensorRT's Python builder; "
                "tied to the GPU and TensorRT version that built it",
                source="onnx", runtime="tensorrt", providers=(("TensorRTEngine", "cuda"),),
                check_provider="TensorRTEngine", engine=True, triton_platform="tensorrt_plan"),
    ModelFormat("torch_tensorrt", ".ep", True,
                {"precision": ("fp32", "fp16"), "max_batch": int},
                "torch-tensorrt dynamo compile of the generator, saved as an ExportedProgram",
                source="program", runtime="torch", providers=(("TorchTensorRT", "cuda"),),
                check_provider="TorchTensorRT", engine=True),
)}

FILE_PROVIDERS: dict[str, str] = {p: f.name for f in FORMATS.values() if f.name != ONNX
                                  for p in f.provider_names}
"""Providers that run one of a bundle's own model files (not ONNX Runtime): name -> format."""

DEFAULT_PROVIDER_ORDER: tuple[str, ...] = FORMATS[ONNX].provider_names
"""Providers tried when the caller names none: TensorRT, CUDA, CPU through ONNX Runtime."""


def closest_match(word: str, choices: Sequence[str]) -> str:
    """"; did you mean 'x'?" for the closest of `choices` to `word`, or "" when none is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else ""


def provider_format(provider: str) -> ModelFormat:
    """The format a runtime provider runs: the bundle-file providers of :data:`FILE_PROVIDERS`,
    and ``onnx`` for every other name (ONNX Runtime execution providers)."""
    return FORMATS[FILE_PROVIDERS.get(provider, ONNX)]


def provider_device(provider: str) -> str:
    """"cuda" or "cpu": where a provider runs the model. A provider the table does not list
    (another ONNX Runtime execution provider, e.g. OpenVINO) counts as "cpu"."""
    for f in FORMATS.values():
        for name, device in f.providers:
            if name == provider:
                return device
    return "cpu"


def formats_with_precision(precision: str, names: Sequence[str] | None = None) -> list[str]:
    """The formats (of `names`, default all, in order) that can be built in `precision`."""
    return [n for n in (FORMATS if names is None else names)
            if precision in FORMATS[n].precisions]


def parse_formats(spec: str | Sequence[str]) -> list[ModelFormat]:
    """Formats from "onnx,torchscript" or a list, in the given order, without repeats.

    Raises:
        InputError: an unknown format (the message lists the valid ones and the closest).
    """
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec)
             if s.strip()]
    if not names:
        raise InputError(f"no export format given; valid: {', '.join(FORMATS)}")
    out: list[ModelFormat] = []
    for n in names:
        if n not in FORMATS:
            raise InputError(f"unknown export format {n!r}; valid: {', '.join(FORMATS)}"
                             f"{closest_match(n, list(FORMATS))}")
        if FORMATS[n] not in out:
            out.append(FORMATS[n])
    return out


def check_options(fmt: ModelFormat, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options for `fmt`: defaults updated with `options`, each checked.

    Raises:
        InputError: an option the format does not take, or a value it does not allow (the
            message names the allowed values); nothing is silently changed.
    """
    resolved = fmt.defaults()
    for key, value in options.items():
        if key not in fmt.options:
            raise InputError(f"export format {fmt.name!r} takes no option {key!r}; valid: "
                             f"{', '.join(fmt.options)}{closest_match(key, list(fmt.options))}")
        allowed = fmt.options[key]
        if isinstance(allowed, tuple):
            if value not in allowed:
                raise InputError(f"{fmt.name} option {key}={value!r} is not allowed; choose "
                                 f"one of {', '.join(map(str, allowed))}")
        elif not isinstance(value, allowed):
            raise InputError(f"{fmt.name} option {key} must be {allowed.__name__}, got "
                             f"{value!r}")
        resolved[key] = value
    return resolved
