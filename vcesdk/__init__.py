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

from pathlib import Path

from .bundle import Bundle, load_bundle
from .errors import VcesdkError
from .runtime import LatencyReport, Synthesizer
from .io import read_volume, write_volume
from .stitch import OverlapAverager, gaussian_weight_map, sliding_window
from .volume import CTVolume

__version__ = "0.1.0"

_MODELS = Path(__file__).resolve().parent / "models"
#: The bundled demo models, one per contrast phase (arterial, portal venous, delayed):
#: pix2pix3D trained on digital phantoms. Demonstrations, not for clinical use.
#: ``vcesdk synthesize`` without ``--model`` runs all three.
DEFAULT_BUNDLES: tuple[Path, ...] = tuple(_MODELS / f"demo_{p}" for p in ("ap", "pvp", "dp"))
#: The portal-venous demo model (the one-phase default of :class:`Synthesizer`).
DEFAULT_BUNDLE: Path = _MODELS / "demo_pvp"

__all__ = [
    "Bundle", "CTVolume", "DEFAULT_BUNDLE", "DEFAULT_BUNDLES", "LatencyReport", "OverlapAverager", "Synthesizer",
    "VcesdkError", "gaussian_weight_map", "load_bundle", "read_volume", "sliding_window",
    "write_volume", "__version__",
]
