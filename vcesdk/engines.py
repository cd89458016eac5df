"""TensorRT engines at run time: optimisation profiles, the sidecar that ties an engine to the
GPU and TensorRT build that made it, the compatibility check, the engine backend and the
ONNX Runtime GPU provider options.

A TensorRT engine (``.engine``, the plan file trtexec and Triton read) only runs on the GPU
architecture (compute capability) and TensorRT version that built it. vcesdk never writes
anything into the engine file itself; it writes a JSON *sidecar* beside it
(``model.engine.json``) recording the GPU name, compute capability, TensorRT and CUDA
versions, precision and profiles, and refuses a mismatched engine with a message that says
what to rebuild (``vcesdk build-engine BUNDLE``).

Nothing here imports TensorRT, torch or CUDA at module import time.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .bundle import Bundle, round_up
from .errors import BundleError, MissingDependencyError, ProviderError

MODEL_INPUT = "ncct"
"""Name of the model input tensor in every exported graph (ONNX, TensorRT)."""
MODEL_OUTPUT = "scect"
"""Name of the model output tensor in every exported graph (ONNX, TensorRT)."""
SIDECAR_SUFFIX = ".json"
ENGINE_PROVIDERS: tuple[str, ...] = ("TensorRTEngine",)

# In-plane extent (model-grid pixels) an engine profile covers when the bundle's windows are
# whole planes: optimised for 256 (a 512-pixel, ~0.7-1 mm slice resampled to 2 mm is 180-256)
# and valid up to 512; rounded up to the network's multiples.
DEFAULT_PLANE: tuple[int, int, int] = (64, 256, 512)

INSTALL_TENSORRT = ("install NVIDIA TensorRT for your CUDA version (x86_64 Linux: "
                    "'pip install tensorrt'; Jetson: it comes with JetPack) on a machine with "
                    "an NVIDIA GPU, plus 'pip install \"vcesdk[gpu]\"'")


def import_tensorrt():
    """The ``tensorrt`` module.

    Raises:
        MissingDependencyError: TensorRT is not installed (the message says how to install).
    """
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingDependencyError(f"TensorRT is not installed (import tensorrt failed: "
                                     f"{exc}); {INSTALL_TENSORRT}") from None
    return tensorrt


def local_gpu_environment(device: int = 0) -> dict[str, str]:
    """GPU name, compute capability ("8.6"), TensorRT and CUDA versions of this machine.

    Raises:
        MissingDependencyError: TensorRT, torch or a CUDA GPU is missing.
    """
    trt = import_tensorrt()
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("TensorRT engines are driven through PyTorch's CUDA "
                                     "memory here: pip install torch (a CUDA build)") from None
    if not torch.cuda.is_available():
        raise MissingDependencyError("no CUDA GPU is visible to PyTorch; TensorRT engines need "
                                     "an NVIDIA GPU and a CUDA build of torch")
    props = torch.cuda.get_device_properties(device)
    return {"gpu_name": str(props.name), "compute_capability": f"{props.major}.{props.minor}",
            "tensorrt": str(trt.__version__), "cuda": str(torch.version.cuda)}


def engine_profiles(bundle: Bundle, max_batch: int | None = None,
                    plane: Sequence[int] | None = None) -> dict[str, dict[str, list[int]]]:
    """TensorRT optimisation profile for the windows a bundle's runtime feeds its model.

    Args:
        bundle: the bundle (window slices, fixed or whole-plane height/width, multiples,
            input channels, batch size).
        max_batch: largest batch (default: the manifest's inference.batch_size); the profile
            covers 1..max_batch with the manifest's batch size as optimum.
        plane: (min, opt, max) in-plane size in model-grid pixels for whole-plane windows
            (default :data:`DEFAULT_PLANE`), each rounded up to the network's multiple.

    Returns:
        {input name: {"min": [B, C, d, h, w], "opt": [...], "max": [...]}}.

    Raises:
        BundleError: max_batch below 1 or plane not increasing.
    """
    c = len(bundle.windows)
    d = bundle.window[0]
    b_opt = max(1, bundle.batch_size)
    b_max = b_opt if max_batch is None else int(max_batch)
    if b_max < 1:
        raise BundleError(f"engine profile: max_batch must be >= 1, got {max_batch}")
    b_opt = min(b_opt, b_max)
    lo, opt, hi = plane or DEFAULT_PLANE
    if not lo <= opt <= hi:
        raise BundleError(f"engine profile: plane sizes must be min <= opt <= max, got "
                          f"{tuple(plane or ())}")
    dims = []
    for axis in (1, 2):
        m = bundle.multiple_of[axis]
        fixed = bundle.window[axis]
        dims.append((fixed, fixed, fixed) if fixed else
                    (round_up(lo, m), round_up(opt, m), round_up(hi, m)))
    return {MODEL_INPUT: {
        "min": [1, c, d, dims[0][0], dims[1][0]],
        "opt": [b_opt, c, d, dims[0][1], dims[1][1]],
        "max": [b_max, c, d, dims[0][2], dims[1][2]]}}


def shape_in_profile(shape: Sequence[int], profile: Mapping[str, Sequence[int]]) -> bool:
    """Whether a (B, C, d, h, w) input shape lies inside a {"min", "max"} profile."""
    return len(shape) == len(profile["min"]) and all(
        lo <= s <= hi for s, lo, hi in zip(shape, profile["min"], profile["max"]))


def shape_text(shape: Sequence[int]) -> str:
    """(1, 3, 8, 64, 64) -> "1x3x8x64x64", the shape syntax of trtexec and ONNX Runtime."""
    return "x".join(str(int(v)) for v in shape)


def ort_provider_options(bundle: Bundle, providers: Sequence[str], fp16: bool = False,
                         engine_cache: str | None = None, workspace_gb: float | None = None,
                         device_id: int = 0) -> list[dict[str, str]]:
    """ONNX Runtime provider options, one dict per provider in `providers`.

    TensorRT EP: profile shapes from :func:`engine_profiles` (``trt_profile_min_shapes`` etc.,
    so one engine serves every window of the bundle), ``trt_fp16_enable``,
    ``trt_engine_cache_enable``/``trt_engine_cache_path`` (engines are built on first use and
    cached; ONNX Runtime names cached engines by GPU and TensorRT version itself),
    ``trt_max_workspace_size`` in bytes. CUDA EP: ``device_id``. Others: no options.

    Raises:
        ProviderError: fp16, engine_cache or workspace_gb given but no TensorRT provider in
            the list (these options would silently do nothing).
    """
    trt_name = "TensorrtExecutionProvider"
    if (fp16 or engine_cache or workspace_gb) and trt_name not in providers:
        raise ProviderError("fp16, engine cache and workspace are TensorRT execution provider "
                            "options; add TensorrtExecutionProvider to the providers")
    out: list[dict[str, str]] = []
    for p in providers:
        opts: dict[str, str] = {}
        if p == trt_name:
            prof = engine_profiles(bundle)[MODEL_INPUT]
            opts.update({"device_id": str(device_id),
                         "trt_profile_min_shapes": f"{MODEL_INPUT}:{shape_text(prof['min'])}",
                         "trt_profile_opt_shapes": f"{MODEL_INPUT}:{shape_text(prof['opt'])}",
                         "trt_profile_max_shapes": f"{MODEL_INPUT}:{shape_text(prof['max'])}",
                         "trt_fp16_enable": "True" if fp16 else "False"})
            if engine_cache:
                opts.update({"trt_engine_cache_enable": "True",
                             "trt_engine_cache_path": str(engine_cache)})
            if workspace_gb:
                opts["trt_max_workspace_size"] = str(int(float(workspace_gb) * (1 << 30)))
        elif p == "CUDAExecutionProvider":
            opts["device_id"] = str(device_id)
        out.append(opts)
    return out


def sidecar_path(engine: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def make_sidecar(engine_name: str, env: Mapping[str, str], precision: str,
                 profiles: Mapping[str, Any], builder: str) -> dict[str, Any]:
    """The sidecar record of a freshly built engine (see the module docstring)."""
    return {"engine": engine_name, "gpu_name": env["gpu_name"],
            "compute_capability": env["compute_capability"], "tensorrt": env["tensorrt"],
            "cuda": env["cuda"], "precision": precision, "profiles": dict(profiles),
            "builder": builder, "input": MODEL_INPUT, "output": MODEL_OUTPUT}


def check_engine_compatible(sidecar: Mapping[str, Any], local: Mapping[str, str],
                            bundle_path: str | Path = "BUNDLE") -> None:
    """Refuse an engine built for another GPU architecture, TensorRT version or CUDA major.

    An engine runs only where its compute capability and TensorRT version match (TensorRT's
    default, non-version-compatible build); a different GPU model of the same compute
    capability is accepted.

    Raises:
        BundleError: a mismatch; the message lists what differs and the rebuild command.
    """
    diffs = []
    for key, label in (("compute_capability", "compute capability"),
                       ("tensorrt", "TensorRT")):
        if str(sidecar.get(key)) != str(local.get(key)):
            diffs.append(f"{label} {sidecar.get(key)} (engine) vs {local.get(key)} (here)")
    built_cuda = str(sidecar.get("cuda", "")).split(".")[0]
    here_cuda = str(local.get("cuda", "")).split(".")[0]
    if built_cuda != here_cuda:
        diffs.append(f"CUDA {sidecar.get('cuda')} (engine) vs {local.get('cuda')} (here)")
    if diffs:
        raise BundleError(
            f"TensorRT engine {sidecar.get('engine', '?')} was built on {sidecar.get('gpu_name')}"
            f" and cannot run on this {local.get('gpu_name')}: {'; '.join(diffs)}. Rebuild it "
            f"on this machine: vcesdk build-engine {bundle_path}")


def checked_sidecar(model: Path, bundle_path: str | Path, rebuild: str, device: int = 0
                    ) -> dict[str, Any]:
    """The sidecar of an engine-holding model file, checked against this machine.

    Args:
        model: the .engine / .ep file; its sidecar is ``<file>.json``.
        bundle_path: the bundle, named in the rebuild message.
        rebuild: the command that rebuilds the file, for the missing-sidecar message.
        device: CUDA device index the engine will run on.

    Raises:
        BundleError: no sidecar, or an engine built for another GPU / TensorRT / CUDA.
        MissingDependencyError: TensorRT, torch or a CUDA GPU is missing.
    """
    side = sidecar_path(model)
    if not side.is_file():
        raise BundleError(f"{model.name} has no sidecar {side.name}; rebuild it: {rebuild}")
    sidecar = json.loads(side.read_text(encoding="utf-8"))
    check_engine_compatible(sidecar, local_gpu_environment(device), bundle_path)
    return sidecar


class TensorrtEngineBackend:
    """A bundle's TensorRT engine, run with TensorRT's Python runtime (``execute_async_v3``)
    on PyTorch CUDA buffers.

    Args:
        engine: the .engine file of a verified bundle; its sidecar must lie beside it.
        bundle_path: the bundle, named in the rebuild message.
        device: CUDA device index.

    Raises:
        MissingDependencyError: TensorRT, torch or a CUDA GPU is missing.
        BundleError: no sidecar, an engine built for another GPU/TensorRT/CUDA, or an engine
            TensorRT cannot deserialize.
    """

    name = "TensorRTEngine"

    def __init__(self, engine: Path, bundle_path: str | Path = "BUNDLE", device: int = 0
                 ) -> None:
        sidecar = checked_sidecar(engine, bundle_path, f"vcesdk build-engine {bundle_path}",
                                  device)
        trt = import_tensorrt()
        import torch

        self._torch = torch
        self._device = torch.device("cuda", device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(engine.read_bytes())
        if self._engine is None:
            raise BundleError(f"TensorRT could not deserialize {engine.name}; rebuild it: "
                              f"vcesdk build-engine {bundle_path}")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream(self._device)
        self._profile = sidecar["profiles"][MODEL_INPUT]
        self.precision = str(sidecar.get("precision", "fp32"))
        self._lock = threading.Lock()  # one execution context: one call at a time

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (B, C, d, h, w) -> float32 (B, C', d, h, w).

        Raises:
            ProviderError: the batch shape lies outside the engine's optimisation profile, or
                TensorRT reports a failed execution.
        """
        torch = self._torch
        shape = tuple(int(v) for v in batch.shape)
        if not shape_in_profile(shape, self._profile):
            raise ProviderError(
                f"window batch {shape_text(shape)} lies outside the engine's profile "
                f"{shape_text(self._profile['min'])} .. {shape_text(self._profile['max'])}; "
                f"rebuild the engine with a larger --plane or --max-batch")
        with self._lock, torch.cuda.stream(self._stream):
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self._device)
            self._context.set_input_shape(MODEL_INPUT, shape)
            y = torch.empty(tuple(self._context.get_tensor_shape(MODEL_OUTPUT)),
                            dtype=torch.float32, device=self._device)
            self._context.set_tensor_address(MODEL_INPUT, x.data_ptr())
            self._context.set_tensor_address(MODEL_OUTPUT, y.data_ptr())
            ok = self._context.execute_async_v3(self._stream.cuda_stream)
            out = y.cpu()
            self._stream.synchronize()
        if not ok:
            raise ProviderError("TensorRT execute_async_v3 reported a failure")
        return out.numpy()


def tensorrt_engine_available() -> bool:
    """Whether the TensorRT engine backend can run here (TensorRT, torch and a CUDA GPU)."""
    try:
        local_gpu_environment()
    except MissingDependencyError:
        return False
    return True
