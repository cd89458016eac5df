"""Model backends behind one ``run(batch) -> output`` interface.

* :class:`OrtBackend`: ONNX Runtime with its execution providers (CPU, CUDA, TensorRT).
* :class:`TorchScriptBackend`: a bundle's TorchScript file on CPU or CUDA (needs torch, which
  the runtime otherwise does not import). A TorchScript file is code: it is only ever loaded
  from a bundle whose SHA-256 checksums were verified.

* :class:`~vcesdk.engines.TensorrtEngineBackend`: a bundle's TensorRT engine ("TensorRTEngine").
* :class:`TorchTensorrtBackend`: a bundle's torch-tensorrt ExportedProgram ("TorchTensorRT").
* :class:`AotiBackend`: a bundle's AOTInductor package ("AOTInductor", "AOTInductor:cuda").

Provider names: every ONNX Runtime execution provider name, plus the names in
:data:`BUNDLE_PROVIDERS` ("TorchScript", "TorchScript:cuda", "AOTInductor",
"AOTInductor:cuda", "TensorRTEngine", "TorchTensorRT"), each of which runs one model file of the bundle.

Thread safety: ONNX Runtime sessions and TorchScript modules may be run from several threads;
the TensorRT backends serialise calls on their one execution context.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from .engines import TensorrtEngineBackend, checked_sidecar, tensorrt_engine_available
from .errors import MissingDependencyError, ProviderError

_logger = logging.getLogger(__name__)


INSTALL_ONNXRUNTIME = ("pip install 'vcesdk[cpu]' (CPU) or 'vcesdk[gpu]' (NVIDIA GPU: "
                      "onnxruntime-gpu; never both)")


def import_onnxruntime():
    """The ``onnxruntime`` module (from onnxruntime or onnxruntime-gpu).

    Raises:
        MissingDependencyError: neither is installed (the message names the extras).
    """
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(f"ONNX Runtime is not installed: {INSTALL_ONNXRUNTIME}"
                                     ) from None
    return onnxruntime


class Backend(Protocol):
    """What the runtime needs from a model backend."""

    name: str

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (B, C, d, h, w) model input -> float32 (B, C', d, h, w) model output."""


class OrtBackend:
    """ONNX Runtime session over a bundle's ONNX file.

    Args:
        model: the .onnx file.
        providers: available ONNX Runtime providers in order of preference.
        intra_op_threads: intra-op threads (0 = ONNX Runtime's default).
        provider_options: one options dict per provider (see
            :func:`vcesdk.engines.ort_provider_options`).
    """

    def __init__(self, model: Path, providers: Sequence[str], intra_op_threads: int = 0,
                 provider_options: Sequence[dict] | None = None) -> None:
        ort = import_onnxruntime()

        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        self._session = ort.InferenceSession(
            str(model), sess_options=opts, providers=list(providers),
            provider_options=list(provider_options) if provider_options else None)
        self.name = self._session.get_providers()[0]
        self._input = self._session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self._session.run(None, {self._input: np.ascontiguousarray(
            batch, dtype=np.float32)})
        return out


class TorchScriptBackend:
    """A TorchScript module from a verified bundle.

    Args:
        model: the .ts file (from a bundle verified by :func:`vcesdk.bundle.load_bundle`).
        device: "cpu" or "cuda".

    Raises:
        ProviderError: torch is not installed, or CUDA was asked for and is not available.
    """

    def __init__(self, model: Path, device: str = "cpu") -> None:
        try:
            import torch
        except ImportError:
            raise ProviderError("the TorchScript backend needs PyTorch: pip install "
                                "'vcesdk[export]' (or torch)") from None
        if device == "cuda" and not torch.cuda.is_available():
            raise ProviderError("TorchScript:cuda asked for but torch sees no CUDA device")
        self._torch = torch
        self._device = torch.device(device)
        self._module = torch.jit.load(str(model), map_location=self._device).eval()
        self.name = f"TorchScript:{device}"

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.array(batch, dtype=np.float32)).to(self._device)
            return self._module(x).float().cpu().numpy()


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

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.array(batch, dtype=np.float32)).cuda()
            return self._module(x).float().cpu().numpy()


class AotiBackend:
    """An AOTInductor package (``.pt2``) from a verified bundle, loaded with
    ``torch._inductor.aoti_load_package``; compiled code, so only ever loaded from a bundle
    whose checksums were verified.

    Args:
        model: the .pt2 file.
        device: "cpu" (format ``aoti``) or "cuda" (format ``aoti_cuda``).

    Raises:
        ProviderError: torch is not installed, or CUDA asked for and not available.
    """

    def __init__(self, model: Path, device: str = "cpu") -> None:
        try:
            import torch
            import torch._inductor
        except ImportError:
            raise ProviderError("the AOTInductor backend needs PyTorch: pip install "
                                "'vcesdk[export]' (or torch)") from None
        if device == "cuda" and not torch.cuda.is_available():
            raise ProviderError("AOTInductor:cuda asked for but torch sees no CUDA device")
        self._torch = torch
        self._device = torch.device(device)
        self._runner = torch._inductor.aoti_load_package(str(model))
        self._lock = threading.Lock()  # one model container runner per package
        self.name = "AOTInductor" + (":cuda" if device == "cuda" else "")

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (B, C, d, h, w) -> float32 (B, C', d, h, w)."""
        torch = self._torch
        with self._lock, torch.inference_mode():
            x = torch.from_numpy(np.array(batch, dtype=np.float32)).to(self._device)
            y = self._runner(x)
            if isinstance(y, (list, tuple)):
                y = y[0]
            return y.float().cpu().numpy()


def torchscript_available(device: str) -> bool:
    """Whether the TorchScript backend can run here on `device`."""
    try:
        import torch
    except ImportError:
        return False
    return device == "cpu" or torch.cuda.is_available()


def torch_tensorrt_available() -> bool:
    """Whether the torch-tensorrt backend can run here."""
    import importlib.util

    return importlib.util.find_spec("torch_tensorrt") is not None and \
        tensorrt_engine_available()


# Providers that run one of the bundle's own model files (not ONNX Runtime):
# name -> (bundle file format, availability check).
BUNDLE_PROVIDERS: dict[str, tuple[str, Callable[[], bool]]] = {
    "TorchScript": ("torchscript", lambda: torchscript_available("cpu")),
    "TorchScript:cuda": ("torchscript", lambda: torchscript_available("cuda")),
    "AOTInductor": ("aoti", lambda: torchscript_available("cpu")),
    "AOTInductor:cuda": ("aoti_cuda", lambda: torchscript_available("cuda")),
    "TensorRTEngine": ("tensorrt", tensorrt_engine_available),
    "TorchTensorRT": ("torch_tensorrt", torch_tensorrt_available),
}


def open_bundle_backend(name: str, model: Path, bundle_path: Path):
    """The backend for one of :data:`BUNDLE_PROVIDERS` on the bundle file `model`."""
    if name.startswith("TorchScript"):
        return TorchScriptBackend(model, "cuda" if name.endswith(":cuda") else "cpu")
    if name.startswith("AOTInductor"):
        return AotiBackend(model, "cuda" if name.endswith(":cuda") else "cpu")
    if name == "TensorRTEngine":
        return TensorrtEngineBackend(model, bundle_path)
    if name == "TorchTensorRT":
        return TorchTensorrtBackend(model, bundle_path)
    raise ProviderError(f"no bundle backend named {name!r}")
