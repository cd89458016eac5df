"""AOTInductor packages: the generator's dynamic ExportedProgram (:mod:`.exported_program`)
compiled ahead of time with ``torch._inductor.aoti_compile_and_package`` into one ``.pt2``
file, loaded by the runtime with ``torch._inductor.aoti_load_package`` (PyTorch's deployment
path for ``torch.export``; TorchScript is in maintenance).

A package is compiled for one device: format ``aoti`` for the CPU (C++ compiled with the
host compiler), ``aoti_cuda`` for CUDA GPUs (needs a CUDA build of torch and a GPU here).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch

from vcesdk.errors import MissingDependencyError

from .exported_program import export_program

AOTI_PLANE_MAX = 1024
"""Largest in-plane size (model-grid pixels) an AOTInductor package accepts: 1024 at 2 mm is
2 m, wider than any CT field of view; the smallest is one network multiple."""


def export_aoti(generator: torch.nn.Module, path: str | os.PathLike,
                profile: Mapping[str, Sequence[int]], multiple: Sequence[int],
                device: str = "cpu") -> dict[str, Any]:
    """Compile the generator's dynamic ExportedProgram into an AOTInductor package.

    Args:
        generator: the eager network (moved to `device`, back to the CPU after).
        path: the ``.pt2`` file to write.
        profile: {"min", "opt", "max"} input shapes (B, C, d, h, w) the package accepts.
        multiple: the network's (d, h, w) size multiples.
        device: "cpu" or "cuda".

    Returns:
        Manifest facts: device, torch version, the accepted shape range.

    Raises:
        MissingDependencyError: device "cuda" without a CUDA GPU visible to torch.
        BundleError: the network cannot be exported with dynamic shapes.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise MissingDependencyError("aoti_cuda packages are compiled on a CUDA GPU: none is "
                                     "visible to torch (install a CUDA build of torch)")
    program = export_program(generator, profile, multiple, device)
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    finally:
        generator.cpu()
    return {"device": device, "torch": torch.__version__,
            "shapes": {"min": [int(v) for v in profile["min"]],
                       "max": [int(v) for v in profile["max"]]},
            "load": "torch._inductor.aoti_load_package(path)"}
