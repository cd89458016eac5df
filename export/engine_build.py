"""Bundle-level engine work that needs no PyTorch: ``vcesdk build-engine`` (the TensorRT
engine of a bundle built on this machine, checked against the bundle's ONNX file on ONNX
Runtime), INT8 calibration windows, and the manifest helpers the bundle writer shares
(engine entries, parity records, checksummed manifest writing, runners per format).

Runs where TensorRT and an NVIDIA driver are installed without a CUDA build of PyTorch (or
any PyTorch), e.g. on a Jetson with JetPack's TensorRT.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vcesdk.bundle import MANIFEST, bundle_from_manifest, load_bundle, sha256_file, \
    validate_manifest
from vcesdk.engines import MODEL_INPUT, engine_profiles, local_gpu_environment, sidecar_path
from vcesdk.errors import BundleError, InputError
from vcesdk.formats import FORMATS, TOLERANCE_HU, check_options
from vcesdk.io.atomic import atomic_output
from vcesdk.planning import prepare_model_input
from vcesdk.volume import CTVolume

from .parity import measure_parity

_logger = logging.getLogger(__name__)

ENGINE_FILE = FORMATS["tensorrt"].file_name
BUILD_SCRIPT = "build_engine.sh"


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


def _runner(fmt: str, path: Path, bundle_dir: Path):
    """batch -> output of one exported model file, run as the runtime runs it, on the
    format table's ``check_provider`` for `fmt` (ONNX: ONNX Runtime's CPU provider)."""
    from vcesdk.backends import open_model_file

    return open_model_file(fmt, path, bundle_dir).run


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
        MissingDependencyError: no TensorRT or NVIDIA GPU here (PyTorch is not needed), or
            int8 with TensorRT 11+.
        BundleError: the bundle has no ONNX model, the build fails, or parity fails.
        InputError: int8 without calibration volumes.
    """
    import shutil

    from .tensorrt_export import build_engine

    src = load_bundle(bundle_path)
    plan = src.manifest.get("engine_build") or {}
    precision = precision or plan.get("precision", "fp32")
    workspace_gb = workspace_gb or plan.get("workspace_gb", 4)
    check_options(FORMATS["tensorrt"], {"precision": precision})
    if precision == "int8" and not calib_volumes:
        raise InputError("int8 needs calibration CT volumes (--calib DIR)")
    onnx_file = src.file("model", "onnx")
    from vcesdk.engines import import_tensorrt

    from .tensorrt_export import build_plan

    build_plan(str(import_tensorrt().__version__), precision)  # int8 on TensorRT 11+: refused
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
            windows, bundle, TOLERANCE_HU[precision], FORMATS["tensorrt"].check_provider,
            what=f"TensorRT {precision} engine", versus="engine - ONNX",
            reference_name=f"{onnx_file.name} on ONNX Runtime CPU")
        _write_manifest(tmp, manifest)
    return final


