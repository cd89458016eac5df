"""Floating-point operations of a generator per model window, counted with PyTorch's
``torch.utils.flop_counter.FlopCounterMode`` (one forward pass, batch 1, float32, no grad).

What is counted: the operations FlopCounterMode knows, i.e. convolutions (and transposed
convolutions), matrix products and attention, at 2 FLOPs per multiply-add. Normalisation,
activations, interpolation and element-wise arithmetic are not counted (they are memory-bound
and a small share of a 3D U-Net's arithmetic).

Export stores the count in the manifest as ``network.flops_per_window`` (see
:func:`flops_entry`; the runtime reads it with :func:`vcesdk.bundle.window_flops`, no torch);
``vcesdk benchmark`` counts bundles without the field with :func:`count_bundle_flops` where
torch is installed.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from vcesdk.errors import InputError

COUNTER = "torch.utils.flop_counter.FlopCounterMode"


def count_flops(gen: torch.nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of `gen` on a zero input.

    Args:
        gen: the generator (any device; it is run where its parameters are).
        input_shape: (B, C, d, h, w) model input shape, voxels.

    Returns:
        FLOPs (2 per multiply-add) of the counted operations (see the module docstring).

    Raises:
        InputError: a shape that is not five positive integers.
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 5 or min(shape) < 1:
        raise InputError(f"input_shape must be (B, C, d, h, w) positive integers, got "
                         f"{tuple(input_shape)!r}")
    param = next(gen.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(shape, dtype=torch.float32, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        gen(x)
    return int(counter.get_total_flops())


def flops_entry(gen: torch.nn.Module, in_channels: int, window: Sequence[int],
                multiple_of: Sequence[int]) -> dict[str, Any]:
    """The manifest's ``network.flops_per_window`` for `gen` at one window shape.

    The count is repeated on a second window one size multiple larger in height and width;
    ``linear_in_voxels`` says whether FLOPs per voxel are the same at both (true for a fully
    convolutional network at sizes that are multiples of its divisors), which lets the
    runtime scale the count to another whole-plane window.

    Args:
        gen: the generator.
        in_channels: input channels C.
        window: (d, h, w) window, voxels (e.g. the one the parity CT is planned at).
        multiple_of: (d, h, w) the network's size divisors.

    Returns:
        {"flops": int, "window": [d, h, w], "linear_in_voxels": bool, "counter": str,
        "counted": what is counted, "torch": version}.
    """
    d, h, w = (int(v) for v in window)
    flops = count_flops(gen, (1, in_channels, d, h, w))
    other = (d, h + int(multiple_of[1]), w + int(multiple_of[2]))
    flops_other = count_flops(gen, (1, in_channels, *other))
    linear = flops * math.prod(other) == flops_other * d * h * w
    return {"flops": flops, "window": [d, h, w], "linear_in_voxels": bool(linear),
            "counter": COUNTER,
            "counted": "convolutions and matrix products, 2 FLOPs per multiply-add, batch 1",
            "torch": torch.__version__}


def count_bundle_flops(bundle_path: str | os.PathLike, window: Sequence[int]) -> int:
    """FLOPs per window of a bundle's generator, rebuilt from its ``generator.pt`` (for
    bundles exported before ``network.flops_per_window`` existed).

    Args:
        bundle_path: a bundle folder holding a weights file (verified on load).
        window: (d, h, w) window, voxels.

    Returns:
        FLOPs of one forward pass on one window (see :func:`count_flops`).

    Raises:
        BundleError: not a valid bundle, or it carries no weights file.
    """
    from vcesdk.bundle import load_bundle
    from vcesdk.training.trainer import generator_from_checkpoint

    from .bundle_writer import checkpoint_from_bundle

    gen = generator_from_checkpoint(checkpoint_from_bundle(bundle_path))
    channels = len(load_bundle(bundle_path, verify=False).windows)
    return count_flops(gen, (1, channels, *window))
