"""Numeric parity of an exported model against a reference, in HU of the output range."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

Runner = Callable[[np.ndarray], np.ndarray]


def eager_runner(generator: "torch.nn.Module") -> Runner:
    """float32 (B, C, d, h, w) -> eager PyTorch fp32 output on the CPU (the reference)."""
    import torch

    generator = generator.eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return generator(torch.from_numpy(np.array(batch, dtype=np.float32))).numpy()

    return run


def measure_parity(reference: Runner, candidate: Runner, windows: Sequence[np.ndarray],
                   hu_range: Sequence[float], tolerance_hu: float, provider: str) -> dict:
    """Largest |candidate - reference| over the windows, in HU.

    Args:
        reference, candidate: batch -> output, both float32 (B, C', d, h, w) in [-1, 1].
        windows: float32 batches (B, C, d, h, w) in model values, e.g. real-CT windows
            prepared as the runtime prepares them.
        hu_range: output HU range [lo, hi]; the model's [-1, 1] spans it, so one model unit
            is (hi - lo) / 2 HU.
        tolerance_hu: largest acceptable difference, HU (per precision, see
            :data:`vcesdk.formats.TOLERANCE_HU`).
        provider: what ran the candidate, recorded with the result.

    Returns:
        {"max_abs_hu", "tolerance_hu", "windows", "passed", "provider"}.
    """
    scale = (float(hu_range[1]) - float(hu_range[0])) / 2.0
    worst, n = 0.0, 0
    for batch in windows:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        diff = np.abs(np.asarray(candidate(batch), np.float32) - reference(batch))
        worst = max(worst, float(diff.max()) * scale)
        n += len(batch)
    return {"max_abs_hu": worst, "tolerance_hu": float(tolerance_hu), "windows": n,
            "passed": worst <= tolerance_hu, "provider": provider}
