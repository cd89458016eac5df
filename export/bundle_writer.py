"""Write a model bundle from a training checkpoint: ONNX export, parity check, manifest."""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

import vcesdk
from vcesdk.bundle import MANIFEST, SCHEMA_VERSION, load_bundle, sha256_file, validate_manifest
from vcesdk.errors import BundleError, InputError
from vcesdk.fileio import atomic_output
from vcesdk.runtime import prepare_model_input
from vcesdk.volume import CTVolume

from .formats import TOLERANCE_HU, check_options, parse_formats
from .onnx_export import export_onnx, onnx_parity
from .torchscript_export import export_torchscript, torchscript_parity

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
                  overwrite: bool = False, formats: Sequence[str] | str = ("onnx",),
                  options: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Export a checkpoint's generator to a bundle folder (manifest.json, one model file per
    format, generator.pt), each export checked against eager PyTorch on the same real-CT
    windows and its parity recorded in the manifest.

    Args:
        checkpoint: a training checkpoint dict (see :mod:`vcesdk.training.trainer`), or the
            generator.pt dict of an existing bundle.
        out_dir: bundle folder to create (written atomically).
        parity_volume: a CT volume (HU) whose windows, prepared exactly as the runtime
            prepares them, feed the parity checks; use real CT.
        demo: mark the bundle as a phantom-trained demonstration, not for clinical use.
        max_parity_windows: windows compared.
        overwrite: replace an existing bundle folder.
        formats: export formats from :data:`vcesdk.export.formats.FORMATS` ("onnx",
            "torchscript", ...), in order; the first is the default model file.
        options: per-format options, checked against the format table.

    Returns:
        The bundle folder.

    Raises:
        InputError: unknown format or option.
        BundleError: an export differs from eager PyTorch by more than its precision's
            tolerance (nothing is written).
    """
    from vcesdk.training.trainer import generator_from_checkpoint

    fmts = parse_formats(formats)
    opts = {f.name: check_options(f, (options or {}).get(f.name, {})) for f in fmts}
    for f in fmts:
        if f.name not in EXPORTERS:
            raise InputError(f"export format {f.name!r} needs a GPU build step: run "
                             f"'vcesdk build-engine' on the target machine (not available in "
                             f"this version)")
    gen = generator_from_checkpoint(checkpoint)
    recipe = checkpoint["recipe"]
    network = {"name": checkpoint["network"]["name"], "config": checkpoint["network"]["config"]}
    multiple = tuple(gen.size_multiple()) if hasattr(gen, "size_multiple") else (1, 1, 1)
    manifest = _manifest(recipe, network, multiple, demo, int(checkpoint.get("step", 0)))
    final = Path(out_dir)
    with atomic_output(final, is_dir=True, overwrite=overwrite) as tmp:
        d = int(recipe["inference"]["window_slices"])
        in_channels = len(recipe["model_io"]["windows"])
        example = (1, in_channels, d, multiple[1] * 4, multiple[2] * 4)
        files: dict[str, dict] = {}
        for f in fmts:
            name = f"model{f.suffix}"
            meta = EXPORTERS[f.name](gen, tmp / name, example, opts[f.name])
            files[name] = {"sha256": sha256_file(tmp / name), "role": "model",
                           "format": f.name, "precision": opts[f.name]["precision"], **meta}
        torch.save({"generator": gen.state_dict(), "network": network, "recipe": recipe,
                    "step": int(checkpoint.get("step", 0))}, tmp / WEIGHTS_FILE)
        files[WEIGHTS_FILE] = {"sha256": sha256_file(tmp / WEIGHTS_FILE), "role": "weights",
                               "format": "torch-state-dict",
                               "load": "torch.load(path, weights_only=True)"}
        manifest["files"] = files
        validate_manifest(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        bundle = load_bundle(tmp)
        windows = prepare_model_input(bundle, parity_volume).windows(max_parity_windows)
        for f in fmts:
            name = f"model{f.suffix}"
            tol = TOLERANCE_HU[opts[f.name]["precision"]]
            parity = PARITY[f.name](gen, tmp / name, [w[None] for w in windows],
                                    bundle.output_hu, tol)
            if not parity["passed"]:
                raise BundleError(f"{f.name} parity failed: max |{f.name} - eager| = "
                                  f"{parity['max_abs_hu']:.3f} HU > {tol} HU tolerance")
            files[name]["parity"] = {
                "max_abs_hu": round(parity["max_abs_hu"], 6), "tolerance_hu": tol,
                "reference": "eager PyTorch fp32 (CPU)", "provider": parity["provider"],
                "windows": parity["windows"], "window_shape": list(windows.shape[1:])}
            _logger.info("%s parity %.4f HU (tolerance %s HU)", f.name, parity["max_abs_hu"],
                         tol)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return final


def _export_onnx(gen, path: Path, example: tuple, opts: dict) -> dict:
    export_onnx(gen, path, example, dynamic=opts["dynamic"], opset=opts["opset"])
    return {"opset": opts["opset"],
            "dynamic_axes": ["batch", "depth", "height", "width"] if opts["dynamic"] else []}


def _export_torchscript(gen, path: Path, example: tuple, opts: dict) -> dict:
    export_torchscript(gen, path, example, mode=opts["mode"], freeze=opts["freeze"])
    return {"mode": opts["mode"], "frozen": opts["freeze"], "torch": torch.__version__,
            "note": "TorchScript is code: load only from a verified bundle"}


EXPORTERS = {"onnx": _export_onnx, "torchscript": _export_torchscript}
PARITY = {"onnx": onnx_parity, "torchscript": torchscript_parity}


def checkpoint_from_bundle(path: str | os.PathLike) -> dict[str, Any]:
    """The generator.pt dict of a verified bundle (weights, network, recipe), loaded with
    ``torch.load(weights_only=True)``; usable wherever a checkpoint is.

    Raises:
        BundleError: not a valid bundle, or it carries no weights file.
    """
    bundle = load_bundle(path)
    return torch.load(bundle.file("weights"), map_location="cpu", weights_only=True)
