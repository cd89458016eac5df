"""AOTInductor: a bundle's ``.pt2`` package (formats ``aoti`` on the CPU, ``aoti_cuda`` on CUDA
GPUs), loaded with ``torch._inductor.aoti_load_package``. Compiled code, so only ever loaded
from a bundle whose checksums were verified. torch is imported when a backend opens.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from ..formats import FORMATS, provider_device
from .base import BackendFamily
from .torchscript import import_torch, torch_available, why_torch_unavailable


class AotiBackend:
    """An AOTInductor package from a verified bundle.

    Args:
        model: the .pt2 file.
        device: "cpu" (format ``aoti``) or "cuda" (format ``aoti_cuda``).

    Raises:
        ProviderError: torch is not installed, or CUDA asked for and not available.
    """

    def __init__(self, model: Path, device: str = "cpu") -> None:
        self.name = "AOTInductor" + (":cuda" if device == "cuda" else "")
        torch = import_torch(self.name, device)
        import torch._inductor

        self._torch = torch
        self._device = torch.device(device)
        self._runner = torch._inductor.aoti_load_package(str(model))
        self._lock = threading.Lock()  # one model container runner per package

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (B, C, d, h, w) -> float32 (B, C', d, h, w)."""
        torch = self._torch
        with self._lock, torch.inference_mode():
            x = torch.from_numpy(np.array(batch, dtype=np.float32)).to(self._device)
            y = self._runner(x)
            if isinstance(y, (list, tuple)):
                y = y[0]
            return y.float().cpu().numpy()


def _open(model: Path, providers: Sequence[str], bundle_path: Path, intra_op_threads: int,
          provider_options: Sequence[dict] | None) -> AotiBackend:
    return AotiBackend(model, provider_device(providers[0]))


FAMILIES: tuple[BackendFamily, ...] = tuple(
    BackendFamily(format=fmt, known=lambda fmt=fmt: list(FORMATS[fmt].provider_names),
                  available=lambda p: torch_available(provider_device(p)), open=_open,
                  why_unavailable=why_torch_unavailable)
    for fmt in ("aoti", "aoti_cuda"))
