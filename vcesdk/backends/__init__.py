"""Model backends behind one ``run(batch) -> output`` interface, and the one registry that
maps every provider name to the backend that runs it.

Modules, one per runtime (each declares its :class:`~vcesdk.backends.base.BackendFamily`
entries, registered here):

* :mod:`.onnxruntime`: ONNX Runtime over the bundle's ONNX file, with any of its execution
  providers (CPU, CUDA, TensorRT, ...); later ONNX Runtime providers of a request are the
  session's fallbacks for unsupported nodes.
* :mod:`.torchscript`: the bundle's TorchScript file ("TorchScript", "TorchScript:cuda").
* :mod:`.aoti`: the bundle's AOTInductor packages ("AOTInductor", "AOTInductor:cuda").
* :mod:`.tensorrt`: the bundle's TensorRT engine ("TensorRTEngine") and torch-tensorrt
  ExportedProgram ("TorchTensorRT").

Which provider runs which model format, and on which device, is the format table's
(:data:`vcesdk.formats.FORMATS`); this registry adds how to open and when a provider is
available. Nothing here imports torch, ONNX Runtime or TensorRT at import time.

Thread safety: ONNX Runtime sessions and TorchScript modules may be run from several threads;
the AOTInductor and TensorRT backends serialise calls.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..bundle import Bundle
from ..errors import MissingDependencyError, ProviderError
from ..formats import DEFAULT_PROVIDER_ORDER, FILE_PROVIDERS, FORMATS, ONNX, provider_format
from . import aoti as _aoti
from . import onnxruntime as _onnxruntime
from . import tensorrt as _tensorrt
from . import torchscript as _torchscript
from .aoti import AotiBackend
from .base import Backend, BackendFamily
from .onnxruntime import INSTALL_ONNXRUNTIME, OrtBackend, default_provider_options, \
    import_onnxruntime
from .tensorrt import TensorrtEngineBackend, TorchTensorrtBackend
from .torchscript import TorchScriptBackend

REGISTRY: dict[str, BackendFamily] = {}
"""Model format -> the backend family that runs its files (one per row of the format table)."""


def register_backend(family: BackendFamily) -> BackendFamily:
    """Add a backend family to :data:`REGISTRY`.

    Raises:
        ProviderError: its format is not in the format table, or already has a backend.
    """
    if family.format not in FORMATS:
        raise ProviderError(f"backend for unknown model format {family.format!r}; valid: "
                            f"{', '.join(FORMATS)}")
    if family.format in REGISTRY:
        raise ProviderError(f"model format {family.format!r} already has a backend")
    REGISTRY[family.format] = family
    return family


for _module in (_onnxruntime, _torchscript, _aoti, _tensorrt):
    for _family in _module.FAMILIES:
        register_backend(_family)


def family_of(provider: str) -> BackendFamily:
    """The backend family that runs `provider` (any name that is not a bundle-file provider
    is taken as an ONNX Runtime execution provider)."""
    return REGISTRY[provider_format(provider).name]


def known_providers() -> list[str]:
    """Every valid provider name: ONNX Runtime's execution providers (where it is installed)
    and the bundle-file providers of the format table."""
    return [p for fmt in FORMATS for p in REGISTRY[fmt].known()]


def resolve_providers(requested: Sequence[str] | None, bundle: Bundle | None = None
                      ) -> list[str]:
    """Providers to try, in order, filtered to those available here.

    Valid names are ONNX Runtime's execution providers plus the bundle-file providers of
    :data:`vcesdk.formats.FILE_PROVIDERS` ("TorchScript", "TorchScript:cuda", "AOTInductor",
    "AOTInductor:cuda", "TensorRTEngine", "TorchTensorRT").

    Args:
        requested: provider names in order of preference; None for
            :data:`~vcesdk.formats.DEFAULT_PROVIDER_ORDER` (TensorRT, CUDA, CPU through ONNX
            Runtime).
        bundle: when given, a provider counts as available only if the bundle holds the
            model file of its format.

    Returns:
        The available ones, in the requested order.

    Raises:
        ProviderError: a name that is not a provider (the message lists the valid ones), or
            none of the requested providers is available in this installation.
        MissingDependencyError: an ONNX Runtime provider asked for (or the default order)
            where ONNX Runtime is not installed (the message names the cpu/gpu extras).
    """
    known = known_providers()
    ort_installed = bool(REGISTRY[ONNX].known())
    names = list(DEFAULT_PROVIDER_ORDER if requested is None else requested)
    if not names:
        raise ProviderError("providers is empty; valid: " + ", ".join(known))
    for name in names:
        if name not in known:
            if not ort_installed and name.endswith("ExecutionProvider"):
                raise MissingDependencyError(f"{name} is an ONNX Runtime provider and ONNX "
                                             f"Runtime is not installed: "
                                             f"{INSTALL_ONNXRUNTIME}")
            raise ProviderError(f"unknown execution provider {name!r}; valid: "
                                f"{', '.join(known)}")
    formats = None if bundle is None else bundle.model_formats
    chosen = [n for n in names
              if (formats is None or provider_format(n).name in formats)
              and family_of(n).available(n)]
    if not chosen:
        here = [p for p in known if (formats is None or provider_format(p).name in formats)
                and (p in names or provider_format(p).name == ONNX) and family_of(p).available(p)]
        raise ProviderError(f"none of {', '.join(names)} is available in this installation "
                            f"for this bundle (available: {', '.join(here) or 'none'})")
    return chosen


def open_backend(bundle: Bundle, providers: Sequence[str], intra_op_threads: int = 0,
                 provider_options: Sequence[dict] | None = None) -> Backend:
    """The backend for the first provider of `providers` (resolved with
    :func:`resolve_providers`). For ONNX Runtime the following ONNX Runtime providers are the
    session's fallbacks; other providers run alone.

    Args:
        bundle: the verified bundle.
        providers: available providers in order of preference.
        intra_op_threads: ONNX Runtime intra-op threads (0 = its default).
        provider_options: for ONNX Runtime, one dict per provider in `providers` (other
            backends take none; their entries are ignored).

    Raises:
        BundleError: the bundle lacks the model file the chosen provider needs.
        ProviderError, MissingDependencyError: the backend cannot start here.
    """
    first = providers[0]
    fmt = provider_format(first)
    family = REGISTRY[fmt.name]
    keep = ([i for i, p in enumerate(providers) if provider_format(p).name == fmt.name]
            if family.chains else [0])
    opts = [provider_options[i] for i in keep] if provider_options else None
    return family.open(bundle.file("model", fmt.name), [providers[i] for i in keep],
                       bundle.path, intra_op_threads, opts)


def open_model_file(fmt: str, model: Path, bundle_path: Path) -> Backend:
    """The backend that checks a freshly exported model file: format `fmt`'s
    ``check_provider`` of the format table (ONNX: ONNX Runtime's CPU provider).

    Raises:
        ProviderError, MissingDependencyError: that backend cannot start here.
    """
    f = FORMATS[fmt]
    return REGISTRY[f.name].open(Path(model), [f.check_provider], Path(bundle_path), 0, None)


def provider_availability(bundle: Bundle) -> tuple[list[str], dict[str, str]]:
    """Every provider of the format table that can run `bundle` here (in table order), and
    why each other one cannot.

    Returns:
        (available providers, {provider: reason}).
    """
    formats = bundle.model_formats
    ok: list[str] = []
    why: dict[str, str] = {}
    for f in FORMATS.values():
        family = REGISTRY[f.name]
        for p in f.provider_names:
            if f.name not in formats:
                why[p] = f"the bundle has no {f.name} file"
            elif family.available(p):
                ok.append(p)
            else:
                why[p] = family.why_unavailable(p)
    return ok, why


__all__ = [
    "AotiBackend", "Backend", "BackendFamily", "DEFAULT_PROVIDER_ORDER", "FILE_PROVIDERS",
    "INSTALL_ONNXRUNTIME", "OrtBackend", "REGISTRY",
    "TensorrtEngineBackend", "TorchScriptBackend", "TorchTensorrtBackend",
    "default_provider_options", "family_of", "import_onnxruntime", "known_providers",
    "open_backend", "open_model_file", "provider_availability", "register_backend",
    "resolve_providers",
]
