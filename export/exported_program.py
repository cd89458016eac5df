"""One dynamic ``torch.export`` ExportedProgram of a generator: the single source of the
torch-tensorrt engine and of the AOTInductor package.

The U-Net's skip concatenations need every spatial size to be a multiple of the network's
:meth:`size_multiple` (demo: (8, 16, 16)); a plain ``Dim(min, max)`` on height or width makes
``torch.export`` fail with ``Constraints violated ... Suggested fixes: h = 16*_h``. Height and
width are therefore derived dims, ``16 * Dim("h_16", ...)`` (torch.export's documented
"derived dimensions"), the batch is its own ``Dim`` (traced with an example batch of 2 so it is
not specialised to 1), and the depth is the bundle's fixed window depth.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from vcesdk.errors import BundleError

EXAMPLE_BATCH = 2
"""Batch of the tracing example: torch.export specialises sizes 0 and 1, never 2."""


def dynamic_shapes(profile: Mapping[str, Sequence[int]], multiple: Sequence[int]
                   ) -> tuple[dict[int, Any]]:
    """torch.export ``dynamic_shapes`` for the model input, covering a shape profile.

    Args:
        profile: {"min", "max"} input shapes (B, C, d, h, w) (e.g.
            :func:`vcesdk.engines.engine_profiles`); d must be fixed (min == max).
        multiple: the network's (d, h, w) size multiples.

    Returns:
        ``({0: batch, 3: m_h * Dim("h_<m_h>"), 4: m_w * Dim("w_<m_w>")},)``: batch in
        1..max(2, max batch), h and w over the multiples of m inside [min, max].

    Raises:
        BundleError: a profile whose depth varies, or whose h/w range holds no multiple.
    """
    lo, hi = [int(v) for v in profile["min"]], [int(v) for v in profile["max"]]
    if lo[2] != hi[2]:
        raise BundleError(f"exported programs take one window depth; profile has "
                          f"{lo[2]}..{hi[2]}")
    dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=max(EXAMPLE_BATCH, hi[0]))}
    for axis, name in ((3, "h"), (4, "w")):
        m = int(multiple[axis - 2])
        k_lo, k_hi = math.ceil(lo[axis] / m), hi[axis] // m
        if k_lo > k_hi:
            raise BundleError(f"no {name} in {lo[axis]}..{hi[axis]} is a multiple of {m}")
        if k_lo == k_hi:
            continue  # a fixed size: leave the axis static
        dims[axis] = m * torch.export.Dim(f"{name}_{m}", min=k_lo, max=k_hi)
    return (dims,)


def example_input(profile: Mapping[str, Sequence[int]], multiple: Sequence[int],
                  device: str = "cpu") -> torch.Tensor:
    """A zero float32 tracing example inside the profile: batch 2, the profile's opt plane
    rounded to the multiples (a size of 2+ multiples, so no dim is specialised)."""
    opt = [int(v) for v in profile["opt"]]
    hi = [int(v) for v in profile["max"]]
    shape = [EXAMPLE_BATCH, opt[1], opt[2]]
    for axis in (3, 4):
        m = int(multiple[axis - 2])
        shape.append(max(2 * m, min(hi[axis], m * max(1, round(opt[axis] / m)))))
    return torch.zeros(shape, dtype=torch.float32, device=device)


def export_program(generator: torch.nn.Module, profile: Mapping[str, Sequence[int]],
                   multiple: Sequence[int], device: str = "cpu"
                   ) -> torch.export.ExportedProgram:
    """``torch.export.export`` of the generator in eval mode, dynamic in batch, height and
    width over `profile` (see :func:`dynamic_shapes`).

    Args:
        generator: the eager network (moved to `device`).
        profile: {"min", "opt", "max"} input shapes (B, C, d, h, w).
        multiple: the network's (d, h, w) size multiples.
        device: "cpu" or "cuda".

    Returns:
        The ExportedProgram; its ``module()`` accepts float32 (B, C, d, h, w) within the
        profile.

    Raises:
        BundleError: the network cannot be exported with these dynamic shapes (the message
            carries torch.export's reason).
    """
    model = generator.eval().to(device)
    example = example_input(profile, multiple, device)
    try:
        with torch.no_grad():
            return torch.export.export(model, (example,),
                                       dynamic_shapes=dynamic_shapes(profile, multiple))
    except torch._dynamo.exc.UserError as exc:  # constraint violations, with suggested fixes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"torch.export could not export the generator with dynamic "
                          f"batch/height/width: {first}") from None
