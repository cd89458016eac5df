"""The few CUDA driver API calls the TensorRT paths need, through ``ctypes`` on ``libcuda``.

TensorRT's Python package brings no device-memory or device-query API of its own, and
``vcesdk build-engine`` must run where TensorRT is installed without a CUDA build of PyTorch
(a Jetson with JetPack's TensorRT, a server with only ``pip install tensorrt``). The CUDA
driver library (``libcuda.so.1``, ``nvcuda.dll``) is installed with every NVIDIA driver, so
the device name, compute capability, device buffers and a stream come from it directly.

Functions and constants are the documented driver API (CUDA Driver API reference, "Device
Management", "Memory Management", "Stream Management", "Primary Context Management"):
``cuInit``, ``cuDeviceGet``, ``cuDeviceGetName``, ``cuDeviceGetAttribute`` with
``CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR`` = 75 / ``_MINOR`` = 76,
``cuDevicePrimaryCtxRetain``, ``cuCtxSetCurrent``, ``cuMemAlloc_v2``, ``cuMemFree_v2``,
``cuMemcpyHtoD_v2``, ``cuMemcpyDtoH_v2``, ``cuStreamCreate``, ``cuStreamSynchronize``,
``cuMemGetInfo_v2``. TensorRT's runtime API calls share the device's primary context, which is
the one made current here.

Nothing is loaded at import time.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from typing import Any

import numpy as np

from .errors import MissingDependencyError, ProviderError

CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76

_LIB: Any = None
_LOCK = threading.Lock()


def load_driver() -> Any:
    """The CUDA driver library (loaded once), initialised with ``cuInit(0)``.

    Raises:
        MissingDependencyError: no NVIDIA driver library, or ``cuInit`` fails (no GPU visible).
    """
    global _LIB
    with _LOCK:
        if _LIB is None:
            names = ["nvcuda.dll"] if sys.platform == "win32" else \
                ["libcuda.so.1", ctypes.util.find_library("cuda") or "libcuda.so"]
            lib = None
            for name in names:
                try:
                    lib = ctypes.CDLL(name)
                    break
                except OSError:
                    continue
            if lib is None:
                raise MissingDependencyError("no NVIDIA driver here (libcuda could not be "
                                             "loaded); TensorRT engines need an NVIDIA GPU")
            _check(lib, lib.cuInit(0), "cuInit", MissingDependencyError,
                   "no CUDA GPU is visible (cuInit failed)")
            _LIB = lib
    return _LIB


def _check(lib: Any, status: int, call: str, error: type = ProviderError,
           what: str | None = None) -> None:
    if int(status) != 0:
        raise error(f"{what or 'CUDA driver call failed'}: {call} returned CUDA error "
                    f"{int(status)}")


def device_properties(device: int = 0, lib: Any = None) -> tuple[str, str]:
    """(name, compute capability "major.minor") of CUDA device `device`.

    Args:
        device: CUDA device ordinal.
        lib: a loaded driver library (default :func:`load_driver`).

    Raises:
        MissingDependencyError: no driver, no GPU, or no device of that ordinal.
    """
    lib = lib or load_driver()
    dev = ctypes.c_int(0)
    _check(lib, lib.cuDeviceGet(ctypes.byref(dev), int(device)), "cuDeviceGet",
           MissingDependencyError, f"no CUDA device {device}")
    name = ctypes.create_string_buffer(256)
    _check(lib, lib.cuDeviceGetName(name, 256, dev), "cuDeviceGetName", MissingDependencyError)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    _check(lib, lib.cuDeviceGetAttribute(ctypes.byref(major),
                                         CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev),
           "cuDeviceGetAttribute", MissingDependencyError)
    _check(lib, lib.cuDeviceGetAttribute(ctypes.byref(minor),
                                         CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev),
           "cuDeviceGetAttribute", MissingDependencyError)
    return name.value.decode(errors="replace"), f"{major.value}.{minor.value}"


class DeviceContext:
    """The primary context of one device, made current on the calling thread, with device
    buffers and one stream: enough to feed a TensorRT execution context without PyTorch.

    Args:
        device: CUDA device ordinal.
        lib: a loaded driver library (default :func:`load_driver`).
    """

    def __init__(self, device: int = 0, lib: Any = None) -> None:
        self._lib = lib or load_driver()
        self._dev = ctypes.c_int(0)
        _check(self._lib, self._lib.cuDeviceGet(ctypes.byref(self._dev), int(device)),
               "cuDeviceGet", MissingDependencyError, f"no CUDA device {device}")
        self._ctx = ctypes.c_void_p(0)
        _check(self._lib, self._lib.cuDevicePrimaryCtxRetain(ctypes.byref(self._ctx),
                                                            self._dev),
               "cuDevicePrimaryCtxRetain")
        self.make_current()
        stream = ctypes.c_void_p(0)
        _check(self._lib, self._lib.cuStreamCreate(ctypes.byref(stream), 0), "cuStreamCreate")
        self.stream = int(stream.value or 0)
        """CUstream handle (an int), as ``execute_async_v3`` takes it."""

    def make_current(self) -> None:
        """Make this device's primary context current on the calling thread."""
        _check(self._lib, self._lib.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")

    def alloc(self, nbytes: int) -> int:
        """A device buffer of `nbytes` bytes; returns its address (free with :meth:`free`)."""
        ptr = ctypes.c_uint64(0)
        _check(self._lib, self._lib.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(
            max(1, int(nbytes)))), "cuMemAlloc_v2")
        return int(ptr.value)

    def free(self, ptr: int) -> None:
        """Free a buffer from :meth:`alloc`."""
        _check(self._lib, self._lib.cuMemFree_v2(ctypes.c_uint64(ptr)), "cuMemFree_v2")

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        """Copy a C-contiguous host array into the device buffer at `ptr` (synchronous)."""
        a = np.ascontiguousarray(array)
        _check(self._lib, self._lib.cuMemcpyHtoD_v2(ctypes.c_uint64(ptr),
                                                   a.ctypes.data_as(ctypes.c_void_p),
                                                   ctypes.c_size_t(a.nbytes)),
               "cuMemcpyHtoD_v2")

    def to_host(self, ptr: int, out: np.ndarray) -> np.ndarray:
        """Copy the device buffer at `ptr` into the C-contiguous host array `out`."""
        _check(self._lib, self._lib.cuMemcpyDtoH_v2(out.ctypes.data_as(ctypes.c_void_p),
                                                   ctypes.c_uint64(ptr),
                                                   ctypes.c_size_t(out.nbytes)),
               "cuMemcpyDtoH_v2")
        return out

    def synchronize(self) -> None:
        """Wait for the stream."""
        _check(self._lib, self._lib.cuStreamSynchronize(ctypes.c_void_p(self.stream)),
               "cuStreamSynchronize")

    def memory_used_mb(self) -> float:
        """Device memory in use on this device (all processes), MB (``cuMemGetInfo_v2``)."""
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        _check(self._lib, self._lib.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)),
               "cuMemGetInfo_v2")
        return (total.value - free.value) / 1e6
