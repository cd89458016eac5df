"""Write a model bundle from a training checkpoint: ONNX export, parity check, manifest."""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vcesdk
from vcesdk.bundle import MANIFEST, SCHEMA_VERSION, load_bundle, sha256_file, validate_manifest
from vcesdk.errors import BundleError
from vcesdk.fileio import atomic_output
from vcesdk.runtime import prepare_model_input
from vcesdk.volume import CTVolume

from .onnx_export import FP32_TOLERANCE_HU, OPSET, export_onnx, onnx_parity

_logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "generator.pt"
DEMO_NOTICE = ("DEMONSTRATION MODEL trained only on digital phantoms; not a medical device, "
               "not for clinical use or diagnosis.")


def _manifest(recipe: dict, network: dict, multiple_of: tuple[int, int, int], demo: bool,
              step: int) -> dict[str, Any]:
    inf = recipe["inference"]
    res = inf.get("resample_mm")
    import onnx
    import onnxruntime

    return {
        "schema_version": SCHEMA_VERSION,
        "name": recipe["name"],
        "phase": recipe["phase"],
        "method": recipe["method"],
        "paper": recipe.get("paper", ""),
        "description": (DEMO_NOTICE + " " if demo else "") +
                       f"{recipe['method']} generator, NCCT -> {recipe['phase'].upper()}.",
        "demo": demo,
        "clinical_use": False,
        "input": {
            "channels": recipe["model_io"]["windows"],
            "value_range": [-1.0, 1.0],
            "window": {"slices": int(inf["window_slices"]), "height": None, "width": None},
            "multiple_of": list(multiple_of),
            "resample": {"spacing_mm": [float(v) for v in res]} if res else None,
            "pad_hu": -1024.0,
            "orientation": "LPS",
        },
        "output": {"channels": int(network["config"].get("out_channels", 1)), "channel": 0,
                   "value_range": [-1.0, 1.0],
                   "hu_range": [float(v) for v in recipe["model_io"]["hu_range"]],
                   "compose": inf.get("compose", "replace"),
                   "difference_floor_hu": inf.get("difference_floor_hu")},
        "inference": {"stride": list(inf["stride"]), "blend": inf["blend"],
                      "batch_size": int(inf.get("batch_size", 1))},
        "network": network,
        "training": {"recipe": recipe, "steps": step},
        "build": {"vcesdk": vcesdk.__version__, "torch": torch.__version__,
                  "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                  "python": platform.python_version(),
                  "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "files": {},
    }


def export_bundle(checkpoint: dict[str, Any], out_dir: str | os.PathLike,
                  parity_volume: CTVolume, demo: bool = False, max_parity_windows: int = 4,
                  overwrite: bool = False) -> Path:
    """Export a checkpoint's generator to a bundle folder (manifest.json, model.onnx,
    generator.pt), with the ONNX-vs-eager parity on real windows recorded in the manifest.

    Args:
        checkpoint: a training checkpoint dict (see :mod:`vcesdk.training.trainer`).
        out_dir: bundle folder to create (written atomically).
        parity_volume: a CT volume (HU) whose windows, prepared exactly as the runtime
            prepares them, feed the parity check; use real CT.
        demo: mark the bundle as a phantom-trained demonstration, not for clinical use.
        max_parity_windows: windows compared.
        overwrite: replace an existing bundle folder.

    Returns:
        The bundle folder.

    Raises:
        BundleError: the ONNX output differs from eager PyTorch by more than the fp32
            tolerance (nothing is written).
    """
    from vcesdk.training.trainer import generator_from_checkpoint

    gen = generator_from_checkpoint(checkpoint)
    recipe = checkpoint["recipe"]
    network = {"name": checkpoint["network"]["name"], "config": checkpoint["network"]["config"]}
    multiple = tuple(gen.size_multiple()) if hasattr(gen, "size_multiple") else (1, 1, 1)
    manifest = _manifest(recipe, network, multiple, demo, int(checkpoint.get("step", 0)))
    final = Path(out_dir)
    with atomic_output(final, is_dir=True, overwrite=overwrite) as tmp:
        d = int(recipe["inference"]["window_slices"])
        in_channels = len(recipe["model_io"]["windows"])
        export_onnx(gen, tmp / MODEL_FILE, (1, in_channels, d, multiple[1] * 4, multiple[2] * 4))
        torch.save({"generator": gen.state_dict(), "network": network, "recipe": recipe,
                    "step": int(checkpoint.get("step", 0))}, tmp / WEIGHTS_FILE)
        manifest["files"] = {
            MODEL_FILE: {"sha256": sha256_file(tmp / MODEL_FILE), "role": "model",
                         "format": "onnx", "precision": "fp32", "opset": OPSET,
                         "dynamic_axes": ["batch", "depth", "height", "width"]},
            WEIGHTS_FILE: {"sha256": sha256_file(tmp / WEIGHTS_FILE), "role": "weights",
                           "format": "torch-state-dict",
                           "load": "torch.load(path, weights_only=True)"},
        }
        validate_manifest(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        bundle = load_bundle(tmp)
        windows = prepare_model_input(bundle, parity_volume).windows(max_parity_windows)
        parity = onnx_parity(gen, tmp / MODEL_FILE, [w[None] for w in windows],
                             bundle.output_hu, FP32_TOLERANCE_HU)
        if not parity["passed"]:
            raise BundleError(f"ONNX parity failed: max |ONNX - eager| = "
                              f"{parity['max_abs_hu']:.3f} HU > {FP32_TOLERANCE_HU} HU tolerance")
        manifest["files"][MODEL_FILE]["parity"] = {
            "max_abs_hu": round(parity["max_abs_hu"], 6), "tolerance_hu": FP32_TOLERANCE_HU,
            "reference": "eager PyTorch fp32 (CPU)", "provider": parity["provider"],
            "windows": parity["windows"], "window_shape": list(windows.shape[1:])}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    _logger.info("bundle written to %s (ONNX parity %.4f HU)", final, parity["max_abs_hu"])
    return final

