"""ONNX Runtime: a session over the bundle's ONNX file with its execution providers (CPU, CUDA,
TensorRT), and the provider options vcesdk passes by default.

``import onnxruntime`` below is an absolute import (Python 3), so it loads the onnxruntime
package (from ``onnxruntime`` or ``onnxruntime-gpu``), never this module; it happens only when
a function here is called.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..bundle import Bundle
from ..errors import MissingDependencyError
from ..formats import ONNX
from .base import BackendFamily

INSTALL_ONNXRUNTIME = ("pip install 'vcesdk[cpu]' (CPU) or 'vcesdk[gpu]' (NVIDIA GPU: "
                      "onnxruntime-gpu; never both)")


def import_onnxruntime() -> Any:
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


def provider_lists() -> tuple[list[str], list[str]]:
    """(every execution provider ONNX Runtime knows, those available in this build); two
    empty lists where ONNX Runtime is not installed."""
    try:
        ort = import_onnxruntime()
    except MissingDependencyError:
        return [], []
    return list(ort.get_all_providers()), list(ort.get_available_providers())


ALLOW_SPINNING = "session.intra_op.allow_spinning"
"""ONNX Runtime session config key; vcesdk sets it to "0". Spinning intra-op workers keep both
cores of this project's 2-core CPU machine busy after each window batch, while the stitcher's
OpenMP threads need them: `vcesdk benchmark vcesdk/models/demo_pvp --providers
CPUExecutionProvider` on the sample, spinning on / off, two rounds: stitch 2.18 / 0.09 ms per
slice, end to end 29.1 / 27.2 and 34.0 / 24.8 ms per slice; the model alone on an idle machine
is the same either way (benchmarks/ort_cpu_options.py: 1.48 / 1.55 s per pass, within noise)."""


class OrtBackend:
    """ONNX Runtime session over a bundle's ONNX file.

    The session's intra-op threads sleep between runs (:data:`ALLOW_SPINNING` = "0").

    Args:
        model: the .onnx file.
        providers: available ONNX Runtime providers in order of preference.
        intra_op_threads: intra-op threads (0 = ONNX Runtime's default).
        provider_options: one options dict per provider (see
            :func:`default_provider_options`).

    Raises:
        MissingDependencyError: ONNX Runtime is not installed.
    """

    def __init__(self, model: Path, providers: Sequence[str], intra_op_threads: int = 0,
                 provider_options: Sequence[dict] | None = None) -> None:
        ort = import_onnxruntime()

        opts = ort.SessionOptions()
        opts.add_session_config_entry(ALLOW_SPINNING, "0")
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        self._session = ort.InferenceSession(
            str(model), sess_options=opts, providers=list(providers),
            provider_options=list(provider_options) if provider_options else None)
        self.name: str = self._session.get_providers()[0]
        self._input = self._session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (B, C, d, h, w) -> float32 (B, C', d, h, w)."""
        (out,) = self._session.run(None, {self._input: np.ascontiguousarray(
            batch, dtype=np.float32)})
        return out


def default_provider_options(bundle: Bundle, providers: Sequence[str],
                             provider_options: dict[str, dict] | None = None) -> list[dict]:
    """One ONNX Runtime options dict per provider: the user's, on top of vcesdk's defaults.

    The TensorRT execution provider gets the bundle's profile shapes and an engine cache
    folder by default (:func:`vcesdk.engines.ort_provider_options`; cache folder
    :func:`vcesdk.engines.default_engine_cache`, root ``$VCESDK_ENGINE_CACHE``), so ONNX
    Runtime builds one engine for every window of the bundle once and reuses it in later
    processes; any key the user gives for it wins. Other providers get only the user's.

    Args:
        bundle: the bundle the session runs.
        providers: provider names, in order.
        provider_options: the user's options per provider name.

    Returns:
        One dict per entry of `providers`.
    """
    from ..engines import ort_provider_options

    out = []
    for p in providers:
        user = dict((provider_options or {}).get(p, {}))
        if p == "TensorrtExecutionProvider":
            user = {**ort_provider_options(bundle, [p])[0], **user}
        out.append(user)
    return out


def _why_unavailable(provider: str) -> str:
    ort_all, ort_here = provider_lists()
    if not ort_all:
        return f"ONNX Runtime is not installed: {INSTALL_ONNXRUNTIME}"
    return f"not in this onnxruntime build (has {', '.join(sorted(ort_here))})"


def _open(model: Path, providers: Sequence[str], bundle_path: Path, intra_op_threads: int,
          provider_options: Sequence[dict] | None) -> OrtBackend:
    return OrtBackend(model, providers, intra_op_threads, provider_options)


FAMILIES: tuple[BackendFamily, ...] = (BackendFamily(
    format=ONNX, known=lambda: provider_lists()[0] or [],
    available=lambda p: p in provider_lists()[1], open=_open,
    why_unavailable=_why_unavailable, chains=True),)

__all__ = ["ALLOW_SPINNING", "FAMILIES", "INSTALL_ONNXRUNTIME", "OrtBackend",
           "default_provider_options", "import_onnxruntime", "provider_lists"]
