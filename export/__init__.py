"""vcesdk.export: trained generators to deployable model bundles (ONNX, TorchScript,
AOTInductor, TensorRT, torch-tensorrt), each export checked numerically against eager PyTorch.

Names are imported on first use (PEP 562), so ``vcesdk.export.engine_build`` (``vcesdk
build-engine``) loads without PyTorch. The format table is :mod:`vcesdk.formats`.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"export_bundle": "bundle_writer", "export_onnx": "onnx_export",
         "onnx_parity": "onnx_export"}

__all__ = ["export_bundle", "export_onnx", "onnx_parity"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
