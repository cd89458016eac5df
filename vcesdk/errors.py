"""Exceptions raised by vcesdk. Every error a user can cause is a :class:`VcesdkError`.

The CLI turns each of these into one line on stderr and a non-zero exit status.
"""


class VcesdkError(Exception):
    """Base class of every error vcesdk raises on bad input or a bad bundle."""


class InputError(VcesdkError, ValueError):
    """An input volume, array or argument is not what the function accepts."""


class VolumeReadError(VcesdkError):
    """A file or DICOM series could not be read as a CT volume."""


class VolumeWriteError(VcesdkError):
    """An output could not be written (nothing was left behind)."""


class BundleError(VcesdkError):
    """A model bundle is missing, malformed, tampered with or incompatible."""


class ProviderError(VcesdkError, ValueError):
    """An unknown or unavailable inference provider was requested."""


class NativeKernelUnavailable(VcesdkError, ImportError):
    """The compiled extension vcesdk._C was demanded but is not importable."""


class MissingDependencyError(VcesdkError, ImportError):
    """An optional package or device a requested path needs is not installed or present
    (TensorRT, torch-tensorrt, a CUDA GPU); the message names what to install."""
