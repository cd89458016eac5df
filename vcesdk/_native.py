"""Loads the compiled extension ``vcesdk._C`` once.

The NumPy reference in :mod:`vcesdk.stitch` is the documented fallback: when the extension is
missing (a source checkout that was never built) one warning is logged and the reference runs;
``require_native()`` raises instead, for callers that demand the native path.
"""
from __future__ import annotations

import logging
from types import ModuleType

from .errors import NativeKernelUnavailable

_logger = logging.getLogger(__name__)

try:
    from . import _C as _ext  # type: ignore[attr-defined]

    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # pragma: no cover - exercised only on an unbuilt checkout
    _ext = None
    _IMPORT_ERROR = exc

_warned = False


def native() -> ModuleType | None:
    """The extension module, or None (with one logged warning) when it is not built."""
    global _warned
    if _ext is None and not _warned:
        _logger.warning("vcesdk._C is not built (%s); using the NumPy reference kernel",
                        _IMPORT_ERROR)
        _warned = True
    return _ext


def require_native() -> ModuleType:
    """The extension module.

    Raises:
        NativeKernelUnavailable: vcesdk._C could not be imported.
    """
    if _ext is None:
        raise NativeKernelUnavailable(
            f"the native kernel vcesdk._C is not available ({_IMPORT_ERROR}); "
            "reinstall vcesdk with a C++17 compiler (pip install .)")
    return _ext


def build_info() -> dict:
    """Compiler and OpenMP settings of the extension, or {'native': False} when it is missing."""
    if _ext is None:
        return {"native": False}
    return {"native": True, **_ext.build_info()}
