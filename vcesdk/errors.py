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


class TritonError(VcesdkError, RuntimeError):
    """A Triton Inference Server could not be started or reached, did not answer within the
    stated timeout, or failed a request (vcesdk never falls back to local execution)."""


class RecipeError(VcesdkError, ValueError):
    """A training recipe (YAML file or --set override) is malformed: a missing or misspelt
    key, a value of the wrong type, an unknown method, network or phase; the message names
    the valid keys."""


class TrainingError(VcesdkError, ValueError):
    """A training run cannot start or go on as asked (too few patients, a batch that does not
    split over the processes, a method that cannot train on the data given)."""


class NativeKernelUnavailable(VcesdkError, ImportError):
    """The compiled extension vcesdk._C was demanded but is not importable."""


class MissingDependencyError(VcesdkError, ImportError):
    """An optional package or device a requested path needs is not installed or present
    (TensorRT, torch-tensorrt, a CUDA GPU); the message names what to install."""


# --- reading: each a VolumeReadError, so callers may catch the family or one case ---------

class NotCTError(VolumeReadError):
    """The series or file is not CT (another Modality); vcesdk models take CT only."""


class SeriesSelectionError(VolumeReadError):
    """The requested SeriesInstanceUID is not in the folder (the message lists those found)."""


class SliceGeometryError(VolumeReadError):
    """Slices do not form one regular volume: mixed orientation or size, duplicate or
    unevenly spaced (missing) slice positions, gantry tilt, oblique planes."""


class MissingSlicesError(SliceGeometryError):
    """A gap in slice positions larger than the regular spacing: slices are missing."""


class DuplicateSliceError(SliceGeometryError):
    """Two slices share one position along the slice normal."""


class GantryTiltError(SliceGeometryError):
    """Slices were acquired with gantry tilt (stacked obliquely to their normal)."""


class UnsupportedPixelDataError(VolumeReadError):
    """Pixel data that cannot be decoded (a compressed transfer syntax without its decoder, or
    corrupt data)."""


class InvalidVoxelValuesError(VolumeReadError, InputError):
    """The volume holds NaN or infinite values."""


# --- limits and input suitability ---------------------------------------------------------

class MemoryBudgetError(InputError):
    """The estimated memory a synthesis needs exceeds the configured budget."""


class ObliqueVolumeError(InputError):
    """The volume's axes are oblique to the patient axes (e.g. an oblique reformat); the
    models were trained on axial grids. Pass oblique="resample" to run on a resampled grid."""


class ContrastEnhancedInputError(InputError):
    """The input looks contrast-enhanced already (blood pool far above native blood HU)."""
