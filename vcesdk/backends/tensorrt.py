"""TensorRT backends: a bundle's TensorRT engine ("TensorRTEngine", TensorRT's Python runtime
on CUDA driver buffers, no PyTorch) and its torch-tensorrt ExportedProgram ("TorchTensorRT").
Both check the engine's sidecar against this GPU, TensorRT and CUDA before loading
(:func:`vcesdk.engines.checked_sidecar`) and serialise calls on their one execution context.

TensorRT, torch-tensorrt and the CUDA driver are loaded only when a backend opens or an
availability check runs.
"""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from ..engines import (
    MODEL_INPUT,
    MODEL_OUTPUT,
    checked_sidecar,
    import_tensorrt,
    local_gpu_environment,
    shape_in_profile,
    shape_text,
)
from ..errors import BundleError, MissingDependencyError, ProviderError
from ..formats import FORMATS
from .base import BackendFamily


class TensorrtEngineBackend:
    """A bundle's TensorRT engine, run with TensorRT's Python runtime (``execute_async_v3``)
    on device buffers from the CUDA driver (:class:`vcesdk.cuda_driver.DeviceContext`): no
    PyTorch needed.

    Args:
        engine: the .engine file of a verified bundle; its sidecar must lie beside it.
        bundle_path: the bundle, named in the rebuild message.
        device: CUDA device index.

    Raises:
        MissingDependencyError: TensorRT, the NVIDIA driver or a CUDA GPU is missing.
        BundleError: no sidecar, an engine built for another GPU/TensorRT/CUDA, or an engine
            TensorRT cannot deserialize.
    """

    name = "TensorRTEngine"

    def __init__(self, engine: Path, bundle_path: str | Path = "BUNDLE", device: int = 0
                 ) -> None:
        sidecar = checked_sidecar(engine, bundle_path, f"vcesdk build-engine {bundle_path}",
                                  device)
        trt = import_tensorrt()
        from ..cuda_driver import DeviceContext

        self._cuda = DeviceContext(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(engine.read_bytes())
        if self._engine is None:
            raise BundleError(f"TensorRT could not deserialize {engine.name}; rebuild it: "
                              f"vcesdk build-engine {bundle_path}")
        self._context = self._engine.create_execution_context()
        self._profile = sidecar["profiles"][MODEL_INPUT]
        self.precision = str(sidecar.get("precision", "fp32"))
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor -> (address, bytes)
        self._lock = threading.Lock()  # one execution context: one call at a time

    def _buffer(self, tensor: str, nbytes: int) -> int:
        """A device buffer of at least `nbytes` for `tensor`, grown when needed."""
        ptr, size = self._buffers.get(tensor, (0, 0))
        if size < nbytes:
            if ptr:
                self._cuda.free(ptr)
            ptr = self._cuda.alloc(nbytes)
            self._buffers[tensor] = (ptr, nbytes)
        return ptr

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (B, C, d, h, w) -> float32 (B, C', d, h, w).

        Raises:
            ProviderError: the batch shape lies outside the engine's optimisation profile, or
                TensorRT reports a failed execution.
        """
        shape = tuple(int(v) for v in batch.shape)
        if not shape_in_profile(shape, self._profile):
            raise ProviderError(
                f"window batch {shape_text(shape)} lies outside the engine's profile "
                f"{shape_text(self._profile['min'])} .. {shape_text(self._profile['max'])}; "
                f"rebuild the engine with a larger --plane or --max-batch")
        x = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            self._cuda.make_current()
            self._context.set_input_shape(MODEL_INPUT, shape)
            out = np.empty(tuple(int(v) for v in self._context.get_tensor_shape(MODEL_OUTPUT)),
                           np.float32)
            x_ptr = self._buffer(MODEL_INPUT, x.nbytes)
            y_ptr = self._buffer(MODEL_OUTPUT, out.nbytes)
            self._cuda.to_device(x_ptr, x)
            self._context.set_tensor_address(MODEL_INPUT, x_ptr)
            self._context.set_tensor_address(MODEL_OUTPUT, y_ptr)
            ok = self._context.execute_async_v3(self._cuda.stream)
            self._cuda.synchronize()
            if ok:
                self._cuda.to_host(y_ptr, out)
        if not ok:
            raise ProviderError("TensorRT execute_async_v3 reported a failure")
        return out


def tensorrt_engine_available() -> bool:
    """Whether the TensorRT engine backend can run here (TensorRT and a CUDA GPU)."""
    try:
        local_gpu_environment()
    except MissingDependencyError:
        return False
    return True


class TorchTensorrtBackend:
    """A bundle's torch-tensorrt ExportedProgram (``model.ep``) on CUDA.

    Args:
        model: the .ep file of a verified bundle (its sidecar beside it).
        bundle_path: the bundle, named in the rebuild message.

    Raises:
        MissingDependencyError: torch-tensorrt, TensorRT or a CUDA GPU is missing.
        BundleError: an engine built for another GPU / TensorRT / CUDA.
    """

    name = "TorchTensorRT"

    def __init__(self, model: Path, bundle_path: str | Path = "BUNDLE") -> None:
        checked_sidecar(model, bundle_path, "vcesdk export --format torch_tensorrt")
        try:
            import torch
            import torch_tensorrt  # noqa: F401  (registers the TensorRT runtime ops)
        except ImportError:
            raise MissingDependencyError("torch-tensorrt is not installed: pip install "
                                         "'vcesdk[gpu]'") from None
        self._torch = torch
        self._module = torch.export.load(str(model)).module()
        self._lock = threading.Lock()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (B, C, d, h, w) -> float32 (B, C', d, h, w)."""
        torch = self._torch
        with self._lock, torch.inference_mode():
            x = torch.from_numpy(np.array(batch, dtype=np.float32)).cuda()
            return self._module(x).float().cpu().numpy()


def torch_tensorrt_available() -> bool:
    """Whether the torch-tensorrt backend can run here (torch-tensorrt, TensorRT, a GPU)."""
    return importlib.util.find_spec("torch_tensorrt") is not None and \
        tensorrt_engine_available()


def _open_engine(model: Path, providers: Sequence[str], bundle_path: Path,
                 intra_op_threads: int, provider_options: Sequence[dict] | None
                 ) -> TensorrtEngineBackend:
    return TensorrtEngineBackend(model, bundle_path)


def _open_program(model: Path, providers: Sequence[str], bundle_path: Path,
                  intra_op_threads: int, provider_options: Sequence[dict] | None
                  ) -> TorchTensorrtBackend:
    return TorchTensorrtBackend(model, bundle_path)


FAMILIES: tuple[BackendFamily, ...] = (
    BackendFamily(format="tensorrt", known=lambda: list(FORMATS["tensorrt"].provider_names),
                  available=lambda p: tensorrt_engine_available(), open=_open_engine,
                  why_unavailable=lambda p: "needs TensorRT and an NVIDIA GPU (driver)"),
    BackendFamily(format="torch_tensorrt",
                  known=lambda: list(FORMATS["torch_tensorrt"].provider_names),
                  available=lambda p: torch_tensorrt_available(), open=_open_program,
                  why_unavailable=lambda p: "needs torch-tensorrt, TensorRT and an NVIDIA "
                                            "GPU"),
)
