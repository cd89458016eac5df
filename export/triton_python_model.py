"""The ``model.py`` of a ``--platform python`` Triton model: the bundle's ONNX file run with
ONNX Runtime inside Triton's Python backend, on the device of the model instance.

:func:`vcesdk.export.triton.write_triton_repository` copies this file unchanged to
``REPO/<bundle>_python/1/model.py`` beside ``1/model.onnx``. It imports neither vcesdk nor
torch (the serving environment, e.g. the NGC Triton container, needs only ``numpy`` and
``onnxruntime`` or ``onnxruntime-gpu``); Triton's ``triton_python_backend_utils`` is imported
when Triton calls the model, so the module also imports in a plain Python for its tests.

Device: a ``KIND_GPU`` instance runs ONNX Runtime's CUDA execution provider on the instance's
GPU (``device_id``) and fails to load where that provider is missing; a ``KIND_CPU`` instance
runs the CPU provider. Nothing falls back silently.

Batching: with dynamic batching Triton hands :meth:`TritonPythonModel.execute` several requests
at once; their window batches are concatenated along axis 0, run as one ONNX Runtime call and
split back, one response per request, in order.

NumPy 2: the Python-backend stubs of Triton up to at least 2.5x (the nvidia-pytriton 0.7.0
wheel's) read NumPy 1's array-descriptor layout, so ``pb.Tensor(name, array)`` sends an empty
tensor and ``as_numpy()`` is unsafe under NumPy 2. Tensors therefore cross by DLPack there
(``np.from_dlpack`` in, ``pb.Tensor.from_dlpack`` out; exact, checked against ONNX Runtime in
the tests); the stub prints a harmless ``PyCapsule_GetPointer called with incorrect name``
traceback per response from NumPy's capsule deleter. Under NumPy 1 the plain calls are used.

Config parameters read (``parameters`` of ``config.pbtxt``, all optional):
``intra_op_threads`` (ONNX Runtime intra-op threads; "0" = its default).
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

_CPU = "CPUExecutionProvider"
_NUMPY2 = int(np.__version__.split(".")[0]) >= 2
_CUDA = "CUDAExecutionProvider"


def _pb_utils() -> Any:
    import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend

    return pb_utils


def session_providers(kind: str, device_id: int, available: list[str]) -> list:
    """ONNX Runtime providers for a model instance.

    Args:
        kind: the instance kind Triton reports ("GPU", "CPU" or "MODEL").
        device_id: the instance's GPU index (GPU instances).
        available: ``onnxruntime.get_available_providers()``.

    Returns:
        The providers list for ``onnxruntime.InferenceSession``.

    Raises:
        RuntimeError: a GPU instance where this onnxruntime build has no CUDA provider.
    """
    if kind == "GPU":
        if _CUDA not in available:
            raise RuntimeError(f"the model instance is KIND_GPU (device {device_id}) but this "
                               f"onnxruntime build has no {_CUDA} (has "
                               f"{', '.join(available)}); install onnxruntime-gpu where Triton "
                               f"runs, or write the repository with --kind KIND_CPU")
        return [(_CUDA, {"device_id": int(device_id)})]
    return [_CPU]


def split_batches(output: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Split a concatenated output (sum(sizes), ...) back into one array per request."""
    if output.shape[0] != sum(sizes):
        raise RuntimeError(f"the model returned {output.shape[0]} windows for "
                           f"{sum(sizes)} requested")
    bounds = np.cumsum([0, *sizes])
    return [output[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


class TritonPythonModel:
    """Triton's Python-backend model: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, str]) -> None:
        """Open the ONNX Runtime session over ``<version>/model.onnx``.

        Args:
            args: Triton's model arguments (``model_config`` JSON, ``model_repository``,
                ``model_version``, ``model_instance_kind``, ``model_instance_device_id``).
        """
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        self.input_name: str = config["input"][0]["name"]
        self.output_name: str = config["output"][0]["name"]
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        opts = ort.SessionOptions()
        threads = int(params.get("intra_op_threads") or 0)
        if threads:
            opts.intra_op_num_threads = threads
        providers = session_providers(args.get("model_instance_kind", "CPU"),
                                      int(args.get("model_instance_device_id", 0) or 0),
                                      list(ort.get_available_providers()))
        self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        self.onnx_input: str = self.session.get_inputs()[0].name
        self.device: str = self.session.get_providers()[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (B, C, d, h, w) model input -> float32 (B, C', d, h, w) model output."""
        (out,) = self.session.run(None, {self.onnx_input: np.ascontiguousarray(
            batch, dtype=np.float32)})
        return out

    def execute(self, requests: list) -> list:
        """One response per request: all requests' windows run as one batch."""
        pb = _pb_utils()
        tensors = [pb.get_input_tensor_by_name(r, self.input_name) for r in requests]
        batches = [np.from_dlpack(t) if _NUMPY2 else t.as_numpy() for t in tensors]
        shapes = {b.shape[1:] for b in batches}
        if len(shapes) > 1:
            # Triton batches only equal shapes; requests of other shapes run one by one
            outputs = [self.run(b) for b in batches]
        else:
            outputs = split_batches(self.run(np.concatenate(batches, axis=0)),
                                    [len(b) for b in batches])
        return [pb.InferenceResponse(output_tensors=[self._tensor(pb, np.ascontiguousarray(o))])
                for o in outputs]

    def _tensor(self, pb: Any, array: np.ndarray) -> Any:
        """The output tensor (by DLPack under NumPy 2; see the module docstring)."""
        if _NUMPY2:
            return pb.Tensor.from_dlpack(self.output_name, array)
        return pb.Tensor(self.output_name, array)

    def finalize(self) -> None:
        """Release the session."""
        self.session = None
