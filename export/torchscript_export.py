"""TorchScript export of a generator (scripted or traced, frozen)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch


def export_torchscript(generator: torch.nn.Module, path: str | os.PathLike,
                       example_shape: Sequence[int], mode: str = "script",
                       freeze: bool = True) -> Path:
    """Save the generator as TorchScript.

    Args:
        generator: network taking float32 (B, C, d, h, w).
        path: .ts file to write.
        example_shape: (B, C, d, h, w) used by tracing and to check the saved module runs.
        mode: "script" (torch.jit.script; any input size the network allows) or "trace"
            (torch.jit.trace; sizes derived from the example may be baked in).
        freeze: torch.jit.freeze (inlines weights and attributes; eval mode).

    Returns:
        The written path.

    Raises:
        ValueError: unknown mode.
    """
    if mode not in ("script", "trace"):
        raise ValueError(f"mode must be 'script' or 'trace', got {mode!r}")
    generator = generator.eval()
    example = torch.zeros(tuple(int(v) for v in example_shape), dtype=torch.float32)
    with torch.no_grad():
        module = (torch.jit.script(generator) if mode == "script"
                  else torch.jit.trace(generator, (example,)))
        if freeze:
            module = torch.jit.freeze(module.eval())
        module(example)  # fails here, not in deployment, if the module cannot run
    p = Path(path)
    torch.jit.save(module, str(p))
    return p
