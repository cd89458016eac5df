"""The table of export formats: one row per format (name, file suffix, needs a GPU, allowed
options and their defaults), as Ultralytics' exporter keeps one. Unknown formats and options
are refused with the valid ones and the closest match; a user's option is never rewritten."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping, Sequence

from vcesdk.errors import InputError

# Parity tolerance per precision, HU of the output range. fp32: reordered float32 sums,
# ~1e-5 relative -> 0.5 HU is far below CT noise (10-20 HU) and the 1 HU DICOM rounding.
# fp16: 11-bit mantissa, ~5e-4 relative over a 1000-HU range plus accumulation -> 5 HU.
# int8: 256 levels over the calibrated range -> 25 HU (a coarse, documented bound).
TOLERANCE_HU: dict[str, float] = {"fp32": 0.5, "fp16": 5.0, "int8": 25.0}


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Attributes:
        name: format name used on the command line.
        suffix: model file suffix in the bundle.
        needs_gpu: building the file needs a CUDA GPU (TensorRT engines).
        options: option name -> allowed values (a tuple) or a type for free values; the
            first tuple entry is the default.
        description: one line for help texts.
    """

    name: str
    suffix: str
    needs_gpu: bool
    options: Mapping[str, Any]
    description: str

    def defaults(self) -> dict[str, Any]:
        """Default value of every option with a fixed set of choices."""
        return {k: v[0] for k, v in self.options.items() if isinstance(v, tuple)}


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("onnx", ".onnx", False,
                 {"opset": (17, 18, 19, 20), "dynamic": (True, False),
                  "precision": ("fp32",)},
                 "ONNX graph (dynamic batch/depth/height/width), checked with onnx.checker"),
    ExportFormat("torchscript", ".ts", False,
                 {"mode": ("script", "trace"), "freeze": (True, False),
                  "precision": ("fp32",)},
                 "TorchScript (torch.jit.script or trace, frozen); code, loaded only from "
                 "verified bundles"),
    ExportFormat("aoti", ".pt2", False,
                 {"precision": ("fp32",), "max_batch": int},
                 "AOTInductor package (torch.export + torch._inductor.aoti_compile_and_package) "
                 "for the CPU; dynamic batch and plane"),
    ExportFormat("aoti_cuda", ".cuda.pt2", True,
                 {"precision": ("fp32",), "max_batch": int},
                 "AOTInductor package compiled for CUDA GPUs (needs a CUDA build of torch)"),
    ExportFormat("tensorrt", ".engine", True,
                 {"precision": ("fp32", "fp16", "int8"), "workspace_gb": int, "max_batch": int},
                 "TensorRT engine built from the ONNX file with TensorRT's Python builder; "
                 "tied to the GPU and TensorRT version that built it"),
    ExportFormat("torch_tensorrt", ".ep", True,
                 {"precision": ("fp32", "fp16"), "max_batch": int},
                 "torch-tensorrt dynamo compile of the generator, saved as an ExportedProgram"),
)}


def _closest(word: str, choices: Sequence[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else ""


def parse_formats(spec: str | Sequence[str]) -> list[ExportFormat]:
    """Formats from "onnx,torchscript" or a list, in the given order, without repeats.

    Raises:
        InputError: an unknown format (the message lists the valid ones and the closest).
    """
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec)
             if s.strip()]
    if not names:
        raise InputError(f"no export format given; valid: {', '.join(FORMATS)}")
    out: list[ExportFormat] = []
    for n in names:
        if n not in FORMATS:
            raise InputError(f"unknown export format {n!r}; valid: {', '.join(FORMATS)}"
                             f"{_closest(n, list(FORMATS))}")
        if FORMATS[n] not in out:
            out.append(FORMATS[n])
    return out


def check_options(fmt: ExportFormat, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options for `fmt`: defaults updated with `options`, each checked.

    Raises:
        InputError: an option the format does not take, or a value it does not allow (the
            message names the allowed values); nothing is silently changed.
    """
    resolved = fmt.defaults()
    for key, value in options.items():
        if key not in fmt.options:
            raise InputError(f"export format {fmt.name!r} takes no option {key!r}; valid: "
                             f"{', '.join(fmt.options)}{_closest(key, list(fmt.options))}")
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
