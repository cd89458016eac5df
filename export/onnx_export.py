"""ONNX export of a generator, with onnx.checker and a numeric parity check against eager
PyTorch on the same windows."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vcesdk.engines import MODEL_INPUT, MODEL_OUTPUT
from vcesdk.formats import TOLERANCE_HU

from .parity import eager_runner, measure_parity

_logger = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = MODEL_INPUT
OUTPUT_NAME = MODEL_OUTPUT
FP32_TOLERANCE_HU = TOLERANCE_HU["fp32"]


def export_onnx(generator: torch.nn.Module, path: str | os.PathLike,
                example_shape: Sequence[int], dynamic: bool = True, opset: int = OPSET) -> Path:
    """Export a generator to ONNX and check the graph with onnx.checker.

    Args:
        generator: network taking float32 (B, C, d, h, w) and returning (B, C', d, h, w).
        path: .onnx file to write.
        example_shape: (B, C, d, h, w) of the tracing input.
        dynamic: batch, depth, height and width are dynamic axes (the U-Net allows any size
            that is a multiple of its divisor).
        opset: ONNX opset (17).

    Returns:
        The written path.

    Raises:
        onnx.checker.ValidationError: the exported graph is invalid.
    """
    import onnx

    p = Path(path)
    generator = generator.eval()
    example = torch.zeros(tuple(int(v) for v in example_shape), dtype=torch.float32)
    axes = {0: "batch", 2: "depth", 3: "height", 4: "width"} if dynamic else None
    with torch.no_grad(), warnings.catch_warnings():
        # InstanceNorm always normalises with the input's own statistics, so the exporter's
        # "train=True" notice and its batch-size trace check are expected here.
        warnings.filterwarnings("ignore", message=".*instance_norm.*")
        warnings.filterwarnings("ignore", message=".*Converting a tensor to a Python boolean.*")
        torch.onnx.export(
            generator, (example,), str(p), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes} if axes else None,
            do_constant_folding=True)
    onnx.checker.check_model(onnx.load(str(p)), full_check=True)
    return p


def onnx_parity(generator: torch.nn.Module, onnx_path: str | os.PathLike,
                windows: Sequence[np.ndarray], hu_range: Sequence[float],
                tolerance_hu: float = FP32_TOLERANCE_HU) -> dict:
    """Compare ONNX Runtime (CPU) with eager PyTorch on the same model-input windows.

    Args:
        generator: the eager network.
        onnx_path: its ONNX export.
        windows: float32 arrays (B, C, d, h, w) in model values (e.g. real-CT windows).
        hu_range: output HU range, to express the error in HU.
        tolerance_hu: largest acceptable absolute difference, HU.

    Returns:
        {"max_abs_hu", "tolerance_hu", "windows", "passed", "provider"}.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return measure_parity(eager_runner(generator),
                          lambda b: sess.run(None, {INPUT_NAME: b})[0], windows, hu_range,
                          tolerance_hu, "CPUExecutionProvider")
