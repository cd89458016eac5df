"""Write a model bundle from a training checkpoint: ONNX export, parity check, manifest."""
from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

import vcesdk
from vcesdk.bundle import SCHEMA_VERSION, bundle_from_manifest, load_bundle
from vcesdk.engines import MODEL_INPUT, engine_profiles, local_gpu_environment
from vcesdk.errors import InputError, MissingDependencyError
from vcesdk.formats import FORMATS, ONNX, TOLERANCE_HU, check_options, parse_formats
from vcesdk.io.atomic import atomic_output
from vcesdk.planning import prepare_model_input
from vcesdk.volume import CTVolume

from .engine_build import (  # noqa: F401  (build_bundle_engine, _write_manifest: API)
    BUILD_SCRIPT,
    ENGINE_FILE,
    _add_engine,
    _checked_parity,
    _runner,
    _write_manifest,
    build_bundle_engine,
    calibration_windows,
)
from .flops import flops_entry
from .onnx_export import export_onnx
from .parity import eager_runner
from .torchscript_export import export_torchscript

_logger = logging.getLogger(__name__)

MODEL_FILE = FORMATS[ONNX].file_name
WEIGHTS_FILE = "generator.pt"
DEMO_NOTICE = ("DEMONSTRATION MODEL trained only on digital phantoms; not a medical device, "
               "not for clinical use or diagnosis.")


def _version_of(module: str) -> str | None:
    """``module.__version__``, or None where the module is not installed."""
    import importlib

    try:
        return str(importlib.import_module(module).__version__)
    except ImportError:
        return None


def _manifest(recipe: dict, network: dict, multiple_of: tuple[int, int, int], demo: bool,
              step: int) -> dict[str, Any]:
    inf = recipe["inference"]
    res = inf.get("resample_mm")

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
                   "difference_floor_hu": inf.get("difference_floor_hu"),
                   "auxiliary": [dict(a) for a in inf.get("auxiliary_outputs") or []]},
        "inference": {"stride": list(inf["stride"]), "blend": inf["blend"],
                      "batch_size": int(inf.get("batch_size", 1))},
        "network": network,
        "training": {"recipe": recipe, "steps": step},
        "build": {"vcesdk": vcesdk.__version__, "torch": torch.__version__,
                  # None where not installed (a GPU image that builds only torch formats)
                  "onnx": _version_of("onnx"), "onnxruntime": _version_of("onnxruntime"),
                  "python": platform.python_version(),
                  "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "files": {},
    }


TARGETS: tuple[str, ...] = ("local", "jetson")


def _check_gpu_formats(names: Sequence[str], target: str) -> None:
    """Fail before any work when a format cannot be built here (clear install hint), from
    the format table's facts: what each file is built from and whether it needs a GPU."""
    fmts = [FORMATS[n] for n in names]
    for f in fmts:
        if f.source == ONNX and ONNX not in names:
            raise InputError(f"{f.name} is built from the ONNX export: use --format "
                             f"onnx,{f.name}")
    for f in fmts:
        if not f.needs_gpu or (f.engine and f.source == ONNX and target != "local"):
            continue  # CPU formats; a TensorRT engine for another device is built there
        if f.engine:
            local_gpu_environment()  # TensorRT and an NVIDIA GPU, no torch needed
        if f.source == "program" and not f.engine:
            import torch

            if not torch.cuda.is_available():
                raise MissingDependencyError(f"{f.name} packages are compiled on a CUDA GPU: "
                                             f"none is visible to torch (install a CUDA "
                                             f"build of torch)")
        if f.engine and f.source == "program":
            import importlib.util

            if importlib.util.find_spec("torch_tensorrt") is None:
                raise MissingDependencyError("torch-tensorrt is not installed: pip install "
                                             "'vcesdk[gpu]' on a machine with an NVIDIA GPU")


def export_bundle(checkpoint: dict[str, Any], out_dir: str | os.PathLike,
                  parity_volume: CTVolume, demo: bool = False, max_parity_windows: int = 4,
                  overwrite: bool = False, formats: Sequence[str] | str = ("onnx",),
                  options: Mapping[str, Mapping[str, Any]] | None = None,
                  target: str = "local", calib_volumes: Sequence[CTVolume] = ()) -> Path:
    """Export a checkpoint's generator to a bundle folder (manifest.json, one model file per
    format, generator.pt), each export checked against eager PyTorch on the same real-CT
    windows and its parity recorded in the manifest, and the generator's FLOPs per window
    counted at the parity CT's window (``network.flops_per_window``, :mod:`.flops`).

    Args:
        checkpoint: a training checkpoint dict (see :mod:`vcesdk.training.trainer`), or the
            generator.pt dict of an existing bundle.
        out_dir: bundle folder to create (written atomically).
        parity_volume: a CT volume (HU) whose windows, prepared exactly as the runtime
            prepares them, feed the parity checks; use real CT.
        demo: mark the bundle as a phantom-trained demonstration, not for clinical use.
        max_parity_windows: windows compared.
        overwrite: replace an existing bundle folder.
        formats: export formats from :data:`vcesdk.formats.FORMATS` ("onnx",
            "torchscript", "aoti", "aoti_cuda", "tensorrt", "torch_tensorrt"), in order;
            tensorrt needs onnx.
        options: per-format options, checked against the format table.
        target: "local" (GPU formats are built here) or "jetson" (the TensorRT engine is
            built on the device: the bundle carries the ONNX file, the profiles in
            manifest.engine_build and build_engine.sh; run ``vcesdk build-engine`` there).
        calib_volumes: real CT volumes for int8 calibration.

    Returns:
        The bundle folder.

    Raises:
        InputError: unknown format, option or target; tensorrt without onnx; int8 without
            calibration volumes.
        MissingDependencyError: a GPU format needs TensorRT / torch-tensorrt / a CUDA GPU that
            this machine lacks (the message names what to install).
        BundleError: an export differs from eager PyTorch by more than its precision's
            tolerance (nothing is written).
    """
    from vcesdk.training.trainer import generator_from_checkpoint

    from .tensorrt_export import build_engine, build_script, export_torch_tensorrt

    fmts = parse_formats(formats)
    opts = {f.name: check_options(f, (options or {}).get(f.name, {})) for f in fmts}
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
    names = [f.name for f in fmts]
    if target != "local" and not any(f.engine and f.source == ONNX for f in fmts):
        raise InputError(f"--target {target} applies to TensorRT engines: add tensorrt to "
                         f"--format")
    if opts.get("tensorrt", {}).get("precision") == "int8" and target == "local" \
            and not calib_volumes:
        raise InputError("int8 needs calibration CT volumes (--calib DIR)")
    _check_gpu_formats(names, target)
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
        manifest["files"] = files
        for f in fmts:
            if f.source == "network":
                name = f.file_name
                meta = GRAPH_EXPORTERS[f.name](gen, tmp / name, example, opts[f.name])
                files[name] = {"role": "model", "format": f.name,
                               "precision": opts[f.name]["precision"], **meta}
        bundle = bundle_from_manifest(tmp, manifest)
        for f in fmts:
            o = opts[f.name]
            if f.source == "program" and not f.engine:  # AOTInductor packages
                from .aoti_export import AOTI_PLANE_MAX, export_aoti

                prof = engine_profiles(bundle, o.get("max_batch"),
                                       plane=(multiple[1], 256, AOTI_PLANE_MAX))[MODEL_INPUT]
                meta = export_aoti(gen, tmp / f.file_name, prof, multiple, f.providers[0][1])
                files[f.file_name] = {"role": "model", "format": f.name,
                                      "precision": o["precision"], **meta}
                continue
            if not f.engine:
                continue
            profiles = engine_profiles(bundle, o.get("max_batch"))
            if f.source == "program":  # torch-tensorrt, from the dynamic ExportedProgram
                side = export_torch_tensorrt(gen, tmp / f.file_name, profiles, o["precision"])
                _add_engine(files, f.file_name, f.name, o["precision"], side)
            elif target == "local":
                calib = None
                if o["precision"] == "int8":
                    calib = calibration_windows(bundle, calib_volumes,
                                                profiles[MODEL_INPUT]["opt"])
                side = build_engine(tmp / MODEL_FILE, tmp / ENGINE_FILE, profiles,
                                    o["precision"], o.get("workspace_gb", 4), calib)
                _add_engine(files, ENGINE_FILE, "tensorrt", o["precision"], side)
            else:
                ws = o.get("workspace_gb", 4)
                (tmp / BUILD_SCRIPT).write_text(
                    build_script(MODEL_FILE, ENGINE_FILE, profiles, o["precision"], ws),
                    encoding="utf-8")
                (tmp / BUILD_SCRIPT).chmod(0o755)
                files[BUILD_SCRIPT] = {"role": "build-script", "format": "sh"}
                manifest["engine_build"] = {
                    "target": target, "precision": o["precision"], "workspace_gb": ws,
                    "profiles": profiles, "onnx": MODEL_FILE, "engine": ENGINE_FILE,
                    "command": f"vcesdk build-engine BUNDLE --precision {o['precision']} "
                               f"--parity-input CT"}
        torch.save({"generator": gen.state_dict(), "network": network, "recipe": recipe,
                    "step": int(checkpoint.get("step", 0))}, tmp / WEIGHTS_FILE)
        files[WEIGHTS_FILE] = {"role": "weights", "format": "torch-state-dict",
                               "load": "torch.load(path, weights_only=True)"}
        windows = prepare_model_input(bundle, parity_volume).windows(max_parity_windows)
        # FLOPs per window, counted once here at the window the parity CT is planned at (the
        # benchmark reads them: vcesdk.bundle.window_flops)
        manifest["network"] = {**network, "flops_per_window": flops_entry(
            gen, in_channels, windows.shape[2:], multiple)}
        reference = eager_runner(gen)
        for name, meta in files.items():
            if meta["role"] != "model":
                continue
            meta["parity"] = _checked_parity(
                reference, _runner(meta["format"], tmp / name, tmp), windows, bundle,
                TOLERANCE_HU[meta["precision"]], FORMATS[meta["format"]].check_provider,
                what=meta["format"], versus=f"{meta['format']} - eager",
                reference_name="eager PyTorch fp32 (CPU)")
        _write_manifest(tmp, manifest)
    return final


def _export_onnx(gen, path: Path, example: tuple, opts: dict) -> dict:
    export_onnx(gen, path, example, dynamic=opts["dynamic"], opset=opts["opset"])
    return {"opset": opts["opset"],
            "dynamic_axes": ["batch", "depth", "height", "width"] if opts["dynamic"] else []}


def _export_torchscript(gen, path: Path, example: tuple, opts: dict) -> dict:
    export_torchscript(gen, path, example, mode=opts["mode"], freeze=opts["freeze"])
    return {"mode": opts["mode"], "frozen": opts["freeze"], "torch": torch.__version__,
            "note": "TorchScript is code: load only from a verified bundle"}


GRAPH_EXPORTERS = {"onnx": _export_onnx, "torchscript": _export_torchscript}


def checkpoint_from_bundle(path: str | os.PathLike) -> dict[str, Any]:
    """The generator.pt dict of a verified bundle (weights, network, recipe), loaded with
    ``torch.load(weights_only=True)``; usable wherever a checkpoint is.

    Raises:
        BundleError: not a valid bundle, or it carries no weights file.
    """
    bundle = load_bundle(path)
    return torch.load(bundle.file("weights"), map_location="cpu", weights_only=True)
