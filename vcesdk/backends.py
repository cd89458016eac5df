"""Model backends behind one ``run(batch) -> output`` interface.

* :class:`OrtBackend`: ONNX Runtime with its execution providers (CPU, CUDA, TensorRT).
* :class:`TorchScriptBackend`: a bundle's TorchScript file on CPU or CUDA (needs torch, which
  the runtime otherwise does not import). A TorchScript file is code: it is only ever loaded
  from a bundle whose SHA-256 checksums were verified.

Provider names: every ONNX Runtime execution provider name, plus "TorchScript" (CPU) and
"TorchScript:cuda".
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from .errors import ProviderError

_logger = logging.getLogger(__name__)

TORCHSCRIPT_PROVIDERS: tuple[str, ...] = ("TorchScript", "TorchScript:cuda")


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
    """

    def __init__(self, model: Path, providers: Sequence[str], intra_op_threads: int = 0
                 ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        self._session = ort.InferenceSession(str(model), sess_options=opts,
                                             providers=list(providers))
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


def torchscript_available(device: str) -> bool:
    """Whether the TorchScript backend can run here on `device`."""
    try:
        import torch
    except ImportError:
        return False
    return device == "cpu" or torch.cuda.is_available()
