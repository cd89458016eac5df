"""Training recipes: frozen dataclasses read from YAML; the resolved recipe is stored with
every checkpoint and bundle."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

from vcesdk.bundle import PHASES  # the contrast phases a recipe (and its bundle) can target

_SECTIONS = ("generator", "discriminator", "data", "model_io", "optim", "loss", "train",
             "inference")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A training recipe.

    Attributes:
        name: recipe name (becomes the bundle name).
        method: registered method, e.g. "pix2pix3d".
        phase: target phase, "ap" | "pvp" | "dp".
        paper: the seed the settings come from.
        generator / discriminator: {"name": registry name, "config": constructor kwargs}.
        data: phantom settings: shape [D, H, W], spacing_mm [z, y, x], noise_hu, n_train,
            n_val, seed, crop [d, h, w].
        model_io: input windows ([{name, level, width}]), output hu_range [lo, hi] and target
            ("image": the phase in HU, as the papers; "residual": phase - NCCT in HU).
        optim: lr, betas, decay_every (steps), decay_factor.
        loss: l1_weight, real_label (one-sided label smoothing), gan_weight.
        train: steps, batch_size, val_every, ckpt_every, seed.
        inference: what the bundle declares: window_slices, stride [sd, sh|null, sw|null],
            blend, batch_size, resample_mm [z, y, x] | null, compose.
    """

    name: str
    method: str
    phase: str
    paper: str
    generator: dict
    discriminator: dict
    data: dict
    model_io: dict
    optim: dict
    loss: dict
    train: dict
    inference: dict

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        """Build from a dict; unknown or missing keys are errors.

        Raises:
            ValueError: names the missing or unexpected keys.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(fields - set(d))
        extra = sorted(set(d) - fields)
        if missing or extra:
            raise ValueError(f"recipe keys: missing {missing}, unexpected {extra}")
        for s in _SECTIONS:
            if not isinstance(d[s], dict):
                raise ValueError(f"recipe section {s!r} must be a mapping")
        return cls(**d)

    def with_overrides(self, steps: int | None = None, phase: str | None = None,
                       sets: Sequence[str] = ()) -> "Recipe":
        """A copy with command-line overrides applied (the copy is what checkpoints store).

        Args:
            steps: replaces train.steps (--max-steps).
            phase: replaces phase ("ap" | "pvp" | "dp"); a name ending in "-<old phase>" gets
                the new phase as its suffix, so bundles stay distinguishable.
            sets: "KEY=VALUE" items (--set), KEY a top-level field ("name") or
                "section.key" ("optim.decay_every"); VALUE is read as YAML (numbers, lists).

        Raises:
            ValueError: unknown phase, malformed item, or a key the recipe does not have.
        """
        import yaml

        d = self.to_dict()
        if steps is not None:
            d["train"]["steps"] = int(steps)
        if phase is not None:
            if phase not in PHASES:
                raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
            if d["name"].endswith(f"-{d['phase']}") and phase != d["phase"]:
                d["name"] = d["name"][: -len(d["phase"])] + phase
            d["phase"] = phase
        for item in sets:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--set wants KEY=VALUE, got {item!r}")
            value = yaml.safe_load(raw)
            section, dot, sub = key.partition(".")
            if not dot:
                if section not in d or section in _SECTIONS:
                    raise ValueError(f"--set {key}: not a top-level recipe field "
                                     f"({sorted(set(d) - set(_SECTIONS))})")
                d[section] = value
            elif section not in _SECTIONS or sub not in d[section]:
                raise ValueError(f"--set {key}: the recipe has no such key (sections "
                                 f"{list(_SECTIONS)}; keys of {section!r}: "
                                 f"{sorted(d.get(section, {}))})")
            else:
                d[section][sub] = value
        if d["phase"] not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {d['phase']!r}")
        return Recipe.from_dict(d)


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read a YAML recipe.

    Raises:
        FileNotFoundError, ValueError: missing file or invalid content.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"recipe not found: {p}")
    data = yaml.safe_load(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a recipe must be a YAML mapping")
    return Recipe.from_dict(data)


def builtin_recipe(name: str) -> Path:
    """Path of a recipe shipped in vcesdk.training.recipes (name without .yaml)."""
    return Path(__file__).resolve().parent / "recipes" / f"{name}.yaml"
