"""The training methods, one module per family, and the one place that builds them by name.

Importing this package registers every method and every network (the baselines'
:mod:`vcesdk.training.networks` and the seed papers' networks defined beside their methods) in
:mod:`vcesdk.training.registry`; ``create_method`` / ``create_generator`` /
``create_discriminator`` here are the registry's, with every entry present.

    base      Method, AdamConfig, adam_with_decay, the pix2pix conditional GAN losses
    pix2pix   pix2pix3D (003), U-Net L1, pix2pix 2D, CycleGAN
    mangan    MAN-GAN (000)
    hrgan     dual-path GAN (001), DyeFreeNet (002)
    twostage  two-stage neural contrast enhancement (004)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import networks  # noqa: F401  (registers the generic networks)
from ..registry import METHODS, create_discriminator, create_generator, lookup
from . import hrgan, mangan, pix2pix, twostage  # noqa: F401  (register their methods)
from .base import Method

if TYPE_CHECKING:
    from ..recipe import Recipe

__all__ = ["Method", "create_method", "create_generator", "create_discriminator",
           "method_class"]


def method_class(name: str) -> type[Method]:
    """The method class registered as ``name``.

    Raises:
        ValueError: unknown method (the message lists the registered ones).
    """
    return lookup(METHODS, "method", name)


def create_method(recipe: "Recipe") -> Method:
    """The method named by ``recipe.method``, built from the recipe.

    Raises:
        ValueError: unknown method (the message lists the registered ones).
    """
    return method_class(recipe.method)(recipe)
