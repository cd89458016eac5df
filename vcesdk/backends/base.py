"""The backend protocol and the registry entry every backend module declares."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np


class Backend(Protocol):
    """What the runtime needs from a model backend: a name and ``run``."""

    name: str

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (B, C, d, h, w) model input -> float32 (B, C', d, h, w) model output."""


Opener = Callable[[Path, Sequence[str], Path, int, "Sequence[dict] | None"], Backend]
"""(model file, providers, bundle folder, intra-op threads, provider options) -> backend."""


@dataclasses.dataclass(frozen=True)
class BackendFamily:
    """How the runtime runs the model files of one format (one row of
    :data:`vcesdk.formats.FORMATS`); each backend module declares its families and
    :mod:`vcesdk.backends` registers them.

    Attributes:
        format: the model format it runs.
        known: () -> every provider name it answers to (ONNX Runtime: all of ONNX Runtime's
            execution providers; others: the format table's providers).
        available: provider name -> whether it can run here (packages, devices).
        open: the :data:`Opener` that makes the backend.
        why_unavailable: provider name -> one line saying why it cannot run here (what
            `available` checks).
        chains: later providers of the same format in a request are fallbacks inside one
            backend (ONNX Runtime assigns unsupported nodes to them); otherwise only the
            first provider is used.
    """

    format: str
    known: Callable[[], list[str]]
    available: Callable[[str], bool]
    open: Opener
    why_unavailable: Callable[[str], str]
    chains: bool = False
