"""2D and 2.5D networks on the SDK's 5D layout.

Every generator in the registry takes (B, C, d, h, w) and returns (B, C', d, h, w), so the
runtime's sliding window, the trainer's validation and the exporters treat 2D, 2.5D and 3D
networks alike. The slice-wise papers (000, 001, 002, 004) are 2D: a :class:`SliceWise`
network folds the slices into the batch, with ``context`` neighbours on each side stacked as
channels (001, 002 and 004 feed 3 consecutive slices: context 1), runs :meth:`forward2d` on
(B*d, C*(2*context+1), h, w) and unfolds the result.
"""
from __future__ import annotations

import abc

import torch
from torch import nn

from .networks import add_input, zero_last_conv


def slice_stacks(x: torch.Tensor, context: int) -> torch.Tensor:
    """Each slice with its ``context`` neighbours on either side as channels.

    Args:
        x: (B, C, d, h, w).
        context: neighbours per side; the first and last slices repeat their edge slice
            (001: "missing neighbours duplicated").

    Returns:
        (B*d, C*(2*context+1), h, w), slice-major within each volume; channel blocks ordered
        from the most cranial (lowest index) neighbour to the most caudal.
    """
    b, c, d, h, w = x.shape
    k = int(context)
    if k == 0:
        return x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)
    padded = torch.cat([x[:, :, :1]] * k + [x] + [x[:, :, -1:]] * k, dim=2)
    stacks = torch.stack([padded[:, :, i:i + d] for i in range(2 * k + 1)], dim=2)
    # (B, C, 2k+1, d, h, w) -> (B, d, 2k+1, C, h, w): neighbour-major channel blocks
    return stacks.permute(0, 3, 2, 1, 4, 5).reshape(b * d, c * (2 * k + 1), h, w)


def unstack_slices(y: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of the slice folding: (B*d, C', h, w) -> (B, C', d, h, w)."""
    n, c, h, w = y.shape
    return y.reshape(batch, n // batch, c, h, w).permute(0, 2, 1, 3, 4)


class SliceWise(nn.Module, abc.ABC):
    """Base class of 2D / 2.5D generators on 5D tensors (see the module docstring).

    Subclasses set ``self.context`` and implement :meth:`forward2d`.
    """

    context: int = 0
    residual: bool = False

    def set_residual(self, residual: bool) -> None:
        """Residual output (our option, declared in the recipe's generator config): channel 0
        becomes the input's channel 0 (the centre slice of the first window, which must be the
        output's window) plus :meth:`forward2d`'s channel 0; the last conv is zeroed, so the
        network starts as the identity."""
        self.residual = bool(residual)
        if self.residual:
            zero_last_conv(self)

    @abc.abstractmethod
    def forward2d(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C*(2*context+1), h, w) -> (N, C', h, w)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = unstack_slices(self.forward2d(slice_stacks(x, self.context)), x.shape[0])
        if self.residual:
            out = add_input(out, x)
        return out
