"""Write a model bundle from a training checkpoint: ONNX export, parity check, manifest."""
from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

import vcesdk
from vcesdk.bundle import (
    MANIFEST,
    SCHEMA_VERSION,
    bundle_from_manifest,
    load_bundle,
    sha256_file,
    validate_manifest,
)
from vcesdk.engines import MODEL_INPUT, engine_profiles, local_gpu_environment, sidecar_path
from vcesdk.errors import BundleError, InputError, MissingDependencyError
from vcesdk.io.atomic import atomic_output
from vcesdk.runtime import prepare_model_input
from vcesdk.volume import CTVolume

from .formats import TOLERANCE_HU, check_options, parse_formats
from .onnx_export import export_onnx
from .parity import eager_runner, measure_parity
from .torchscript_export import export_torchscript

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
                   "difference_floor_hu": inf.get("difference_floor_hu"),
                   "auxiliary": [dict(a) for a in inf.get("auxiliary_outputs") or []]},
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


TARGETS: tuple[str, ...] = ("local", "jetson")
ENGINE_FILE = "model.engine"
BUILD_SCRIPT = "build_engine.sh"


def _check_gpu_formats(names: Sequence[str], target: str) -> None:
    """Fail before any work when a GPU format cannot be built here (clear install hint)."""
    if "tensorrt" in names and "onnx" not in names:
        raise InputError("TensorRT engines are built from the ONNX export: use --format "
                         "onnx,tensorrt")
    if "torch_tensorrt" in names or ("tensorrt" in names and target == "local"):
        local_gpu_environment()
    if "torch_tensorrt" in names:
        import importlib.util

        if importlib.util.find_spec("torch_tensorrt") is None:
            raise MissingDependencyError("torch-tensorrt is not installed: pip install "
                                         "'vcesdk[gpu]' on a machine with an NVIDIA GPU")


def calibration_windows(bundle, volumes: Sequence[CTVolume], shape: Sequence[int],
                        max_batches: int = 64) -> list[np.ndarray]:
    """INT8 calibration batches of one shape from real CT volumes, prepared exactly as the
    runtime prepares them (see :func:`vcesdk.export.tensorrt_export.fit_windows`).

    Raises:
        InputError: the volumes give no complete batch.
    """
    from vcesdk.intensity import hu_to_channels

    from .tensorrt_export import fit_windows

    pad = hu_to_channels(np.float32([bundle.pad_hu]), bundle.windows)[:, 0]
    batches: list[np.ndarray] = []
    for vol in volumes:
        batches += fit_windows(prepare_model_input(bundle, vol).windows(), shape, pad)
    if not batches:
        raise InputError(f"calibration volumes gave no complete batch of shape {list(shape)}")
    return batches[:max_batches]


def export_bundle(checkpoint: dict[str, Any], out_dir: str | os.PathLike,
                  parity_volume: CTVolume, demo: bool = False, max_parity_windows: int = 4,
                  overwrite: bool = False, formats: Sequence[str] | str = ("onnx",),
                  options: Mapping[str, Mapping[str, Any]] | None = None,
                  target: str = "local", calib_volumes: Sequence[CTVolume] = ()) -> Path:
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
            "torchscript", "tensorrt", "torch_tensorrt"), in order; tensorrt needs onnx.
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
    if target != "local" and "tensorrt" not in names:
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
            if f.name in GRAPH_EXPORTERS:
                name = f"model{f.suffix}"
                meta = GRAPH_EXPORTERS[f.name](gen, tmp / name, example, opts[f.name])
                files[name] = {"role": "model", "format": f.name,
                               "precision": opts[f.name]["precision"], **meta}
        bundle = bundle_from_manifest(tmp, manifest)
        for f in fmts:
            o = opts[f.name]
            if f.name not in ("tensorrt", "torch_tensorrt"):
                continue
            profiles = engine_profiles(bundle, o.get("max_batch"))
            if f.name == "torch_tensorrt":
                side = export_torch_tensorrt(gen, tmp / "model.ep", profiles, o["precision"])
                _add_engine(files, "model.ep", f.name, o["precision"], side)
            elif target == "local":
                calib = None
                if o["precision"] == "int8":
                    calib = calibration_windows(bundle, calib_volumes,
                                                profiles[MODEL_INPUT]["opt"])
                side = build_engine(tmp / "model.onnx", tmp / ENGINE_FILE, profiles,
                                    o["precision"], o.get("workspace_gb", 4), calib)
                _add_engine(files, ENGINE_FILE, "tensorrt", o["precision"], side)
            else:
                ws = o.get("workspace_gb", 4)
                (tmp / BUILD_SCRIPT).write_text(
                    build_script("model.onnx", ENGINE_FILE, profiles, o["precision"], ws),
                    encoding="utf-8")
                (tmp / BUILD_SCRIPT).chmod(0o755)
                files[BUILD_SCRIPT] = {"role": "build-script", "format": "sh"}
                manifest["engine_build"] = {
                    "target": target, "precision": o["precision"], "workspace_gb": ws,
                    "profiles": profiles, "onnx": "model.onnx", "engine": ENGINE_FILE,
                    "command": f"vcesdk build-engine BUNDLE --precision {o['precision']} "
                               f"--parity-input CT"}
        torch.save({"generator": gen.state_dict(), "network": network, "recipe": recipe,
                    "step": int(checkpoint.get("step", 0))}, tmp / WEIGHTS_FILE)
        files[WEIGHTS_FILE] = {"role": "weights", "format": "torch-state-dict",
                               "load": "torch.load(path, weights_only=True)"}
        windows = prepare_model_input(bundle, parity_volume).windows(max_parity_windows)
        reference = eager_runner(gen)
        for name, meta in files.items():
            if meta["role"] != "model":
                continue
            meta["parity"] = _checked_parity(
                reference, _runner(meta["format"], tmp / name, tmp), windows, bundle,
                TOLERANCE_HU[meta["precision"]], _PROVIDER[meta["format"]],
                what=meta["format"], versus=f"{meta['format']} - eager",
                reference_name="eager PyTorch fp32 (CPU)")
        _write_manifest(tmp, manifest)
    return final


def _add_engine(files: dict, name: str, fmt: str, precision: str,
                sidecar: Mapping[str, Any]) -> None:
    """List an engine-holding model file and its sidecar (with the GPU it was built for)."""
    side = sidecar_path(name).name
    files[name] = {"role": "model", "format": fmt, "precision": precision, "sidecar": side}
    files[side] = {"role": "sidecar", "format": "json", "describes": name,
                   **{k: sidecar[k] for k in ("gpu_name", "compute_capability", "tensorrt",
                                              "cuda")}}


def _widest_hu_range(bundle) -> tuple[float, float]:
    """The output HU range with the most HU per model unit among the image and the auxiliary
    outputs: parity in HU is then never understated for any channel."""
    ranges = [bundle.output_hu, *(a.hu_range for a in bundle.auxiliary)]
    return max(ranges, key=lambda r: r[1] - r[0])


def _checked_parity(reference, candidate, windows: np.ndarray, bundle, tol: float,
                    provider: str, what: str, versus: str, reference_name: str) -> dict:
    """Parity of `candidate` against `reference` on real-CT windows, as the manifest records
    it; raises BundleError("<what> parity failed: max |<versus>| = ...") out of tolerance."""
    parity = measure_parity(reference, candidate, [w[None] for w in windows],
                            _widest_hu_range(bundle), tol, provider)
    if not parity["passed"]:
        raise BundleError(f"{what} parity failed: max |{versus}| = "
                          f"{parity['max_abs_hu']:.3f} HU > {tol} HU tolerance")
    _logger.info("%s parity %.4f HU (tolerance %s HU)", what, parity["max_abs_hu"], tol)
    return {"max_abs_hu": round(parity["max_abs_hu"], 6), "tolerance_hu": tol,
            "reference": reference_name, "provider": parity["provider"],
            "windows": parity["windows"], "window_shape": list(windows.shape[1:])}


def _write_manifest(folder: Path, manifest: dict) -> None:
    """Checksum every listed file, validate, write manifest.json, verify by loading."""
    for name, meta in manifest["files"].items():
        meta["sha256"] = sha256_file(folder / name)
    validate_manifest(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    load_bundle(folder)


_PROVIDER = {"onnx": "CPUExecutionProvider", "torchscript": "torchscript:cpu",
             "tensorrt": "TensorRTEngine", "torch_tensorrt": "TorchTensorRT"}


def _runner(fmt: str, path: Path, bundle_dir: Path):
    """batch -> output of one exported model file, run as the runtime runs it."""
    if fmt == "onnx":
        from vcesdk.backends import OrtBackend

        return OrtBackend(path, ["CPUExecutionProvider"]).run
    from vcesdk.backends import BUNDLE_PROVIDERS, open_bundle_backend

    name = next(p for p, (f, _) in BUNDLE_PROVIDERS.items() if f == fmt)
    return open_bundle_backend(name, path, bundle_dir).run


def build_bundle_engine(bundle_path: str | os.PathLike, parity_volume: CTVolume,
                        precision: str | None = None, workspace_gb: float | None = None,
                        max_batch: int | None = None, calib_volumes: Sequence[CTVolume] = (),
                        max_parity_windows: int = 4) -> Path:
    """Build the TensorRT engine of a bundle on this machine (``vcesdk build-engine``), as on
    a Jetson for a bundle exported with ``--target jetson``.

    The engine is built from the bundle's verified ONNX file with the profiles of its
    manifest, gets a sidecar, and is checked against ONNX Runtime (CPU) on the bundle's ONNX
    file over real-CT windows (the ONNX file itself passed parity against eager PyTorch at
    export). The bundle is updated atomically: a copy is changed and renamed into place.

    Args:
        bundle_path: the bundle folder (updated in place, atomically).
        parity_volume: real CT whose windows check the engine.
        precision: "fp32", "fp16" or "int8"; default: manifest engine_build.precision, else
            fp32.
        workspace_gb: builder workspace, GiB; default: engine_build.workspace_gb, else 4.
        max_batch: largest batch when the manifest carries no engine_build profiles.
        calib_volumes: real CT volumes for int8 calibration.
        max_parity_windows: windows compared.

    Returns:
        The bundle folder.

    Raises:
        MissingDependencyError: no TensorRT or CUDA GPU here.
        BundleError: the bundle has no ONNX model, the build fails, or parity fails.
        InputError: int8 without calibration volumes.
    """
    import shutil

    from .tensorrt_export import build_engine

    src = load_bundle(bundle_path)
    plan = src.manifest.get("engine_build") or {}
    precision = precision or plan.get("precision", "fp32")
    workspace_gb = workspace_gb or plan.get("workspace_gb", 4)
    check_options(parse_formats("tensorrt")[0], {"precision": precision})
    if precision == "int8" and not calib_volumes:
        raise InputError("int8 needs calibration CT volumes (--calib DIR)")
    onnx_file = src.file("model", "onnx")
    local_gpu_environment()
    final = Path(bundle_path)
    with atomic_output(final, is_dir=True, overwrite=True) as tmp:
        shutil.copytree(final, tmp, dirs_exist_ok=True)
        manifest = copy.deepcopy(src.manifest)
        bundle = bundle_from_manifest(tmp, manifest)
        profiles = plan.get("profiles") or engine_profiles(bundle, max_batch)
        calib = (calibration_windows(bundle, calib_volumes, profiles[MODEL_INPUT]["opt"])
                 if precision == "int8" else None)
        side = build_engine(tmp / onnx_file.name, tmp / ENGINE_FILE, profiles, precision,
                            workspace_gb, calib)
        files = manifest["files"]
        _add_engine(files, ENGINE_FILE, "tensorrt", precision, side)
        windows = prepare_model_input(bundle, parity_volume).windows(max_parity_windows)
        files[ENGINE_FILE]["parity"] = _checked_parity(
            _runner("onnx", tmp / onnx_file.name, tmp), _runner("tensorrt", tmp / ENGINE_FILE, tmp),
            windows, bundle, TOLERANCE_HU[precision], "TensorRTEngine",
            what=f"TensorRT {precision} engine", versus="engine - ONNX",
            reference_name=f"{onnx_file.name} on ONNX Runtime CPU")
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
