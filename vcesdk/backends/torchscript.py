"""TorchScript: a bundle's ``.ts`` file on CPU ("TorchScript") or CUDA ("TorchScript:cuda").

Needs torch, which the runtime otherwise does not import (imported when a backend opens). A
TorchScript file is code: it is only ever loaded from a bundle whose SHA-256 checksums were
verified.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ProviderError
from ..formats import FORMATS, provider_device
from .base import BackendFamily


def torch_available(device: str) -> bool:
    """Whether torch is importable here and, for `device` "cuda", sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return device == "cpu" or torch.cuda.is_available()


def import_torch(provider: str, device: str):
    """The ``torch`` module for a torch-based provider on `device`.

    Raises:
        ProviderError: torch is not installed, or CUDA asked for and not available.
    """
    try:
        import torch
    except ImportError:
        raise ProviderError(f"the {provider} backend needs PyTorch: pip install "
                            f"'vcesdk[export]' (or torch)") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise ProviderError(f"{provider} asked for but torch sees no CUDA device")
    return torch


class TorchScriptBackend:
    """A TorchScript module from a verified bundle.

    Args:
        model: the .ts file (from a bundle verified by :func:`vcesdk.bundle.load_bundle`).
        device: "cpu" or "cuda".

    Raises:
        ProviderError: torch is not installed, or CUDA was asked for and is not available.
    """

    def __init__(self, model: Path, device: str = "cpu") -> None:
        self.name = f"TorchScript:{device}"
        torch = import_torch("TorchScript" + (":cuda" if device == "cuda" else ""), device)
        self._torch = torch
        self._device = torch.device(device)
        self._module = torch.jit.load(str(model), map_location=self._device).eval()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (B, C, d, h, w) -> float32 (B, C', d, h, w)."""
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.array(batch, dtype=np.float32)).to(self._device)
            return self._module(x).float().cpu().numpy()


def why_torch_unavailable(provider: str) -> str:
    """Why a torch-based provider cannot run here (one line)."""
    if provider_device(provider) == "cuda":
        return "needs torch with a CUDA GPU visible to it"
    return "needs torch (pip install 'vcesdk[export]')"


def _open(model: Path, providers: Sequence[str], bundle_path: Path, intra_op_threads: int,
          provider_options: Sequence[dict] | None) -> TorchScriptBackend:
    return TorchScriptBackend(model, provider_device(providers[0]))


FAMILIES: tuple[BackendFamily, ...] = (BackendFamily(
    format="torchscript", known=lambda: list(FORMATS["torchscript"].provider_names),
    available=lambda p: torch_available(provider_device(p)), open=_open,
    why_unavailable=why_torch_unavailable),)
