"""vcesdk: virtual contrast enhancement of CT.

The runtime API::

    import vcesdk
    vol = vcesdk.read_volume("ncct_series_folder")          # CTVolume, float32 HU (D, H, W)
    syn = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE)           # verified bundle, ONNX Runtime
    scect = syn.synthesize(vol)                              # CTVolume on the input's grid
    vcesdk.write_volume(scect, "out/scect_pvp", like=vol)    # derived DICOM series

Training lives in ``vcesdk.training`` and export in ``vcesdk.export``; neither is imported here.
"""
from __future__ import annotations

from .bundle import DEFAULT_BUNDLE, DEFAULT_BUNDLES, Bundle, load_bundle
from .errors import VcesdkError
from .runtime import LatencyReport, Synthesizer
from .io import read_volume, write_volume
from .stitch import OverlapAverager, gaussian_weight_map, sliding_window
from .volume import CTVolume

__version__ = "0.1.0"


__all__ = [
    "Bundle", "CTVolume", "DEFAULT_BUNDLE", "DEFAULT_BUNDLES", "LatencyReport", "OverlapAverager", "Synthesizer",
    "VcesdkError", "gaussian_weight_map", "load_bundle", "read_volume", "sliding_window",
    "write_volume", "__version__",
]
