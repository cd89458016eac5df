"""vcesdk.export: trained generators to deployable model bundles (ONNX first; TorchScript and
TensorRT follow), each export checked numerically against eager PyTorch."""
from .bundle_writer import export_bundle
from .onnx_export import export_onnx, onnx_parity

__all__ = ["export_bundle", "export_onnx", "onnx_parity"]
