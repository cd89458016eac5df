"""The registries of networks and training methods (as timm's): names -> classes.

This module holds the tables and nothing else, so every module that defines a network or a
method imports it and none of them imports another to be found. The tables are filled when
:mod:`vcesdk.training.networks` (the generic networks) and :mod:`vcesdk.training.methods` (the
methods and the seed papers' networks) are imported; :mod:`vcesdk.training.methods` is the one
entry point that guarantees both, and re-exports the ``create_*`` functions.
"""
from __future__ import annotations

from typing import Any, Callable

GENERATORS: dict[str, Callable[..., Any]] = {}
DISCRIMINATORS: dict[str, Callable[..., Any]] = {}
METHODS: dict[str, Callable[..., Any]] = {}


def _registrar(table: dict, kind: str) -> Callable[[str], Callable]:
    def register(name: str) -> Callable:
        def deco(cls):
            if name in table:
                raise ValueError(f"{kind} {name!r} registered twice")
            table[name] = cls
            cls.registry_name = name
            return cls
        return deco
    register.__doc__ = f"Class decorator: make a {kind} constructible by name."
    return register


register_generator = _registrar(GENERATORS, "generator")
register_discriminator = _registrar(DISCRIMINATORS, "discriminator")
register_method = _registrar(METHODS, "method")


def lookup(table: dict, kind: str, name: str) -> Callable[..., Any]:
    """The class registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; registered: {', '.join(sorted(table))}")
    return table[name]


def create_generator(name: str, cfg: dict[str, Any] | None = None):
    """Build a registered generator from its config (keyword arguments of its class).

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    return lookup(GENERATORS, "generator", name)(**dict(cfg or {}))


def create_discriminator(name: str, cfg: dict[str, Any] | None = None):
    """Build a registered discriminator from its config.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    return lookup(DISCRIMINATORS, "discriminator", name)(**dict(cfg or {}))

