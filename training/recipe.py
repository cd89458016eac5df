"""Training recipes: read from YAML, checked section by section against typed configs, stored
resolved (every default filled in) with every checkpoint and bundle.

The fixed sections are the dataclasses below (:class:`DataConfig`, :class:`ModelIOConfig`,
:class:`TrainConfig`, :class:`InferenceConfig`); ``loss`` and ``optim`` are the method's own
(``Method.Loss`` / ``Method.Optim`` in :mod:`vcesdk.training.methods`); ``generator`` and
``discriminator`` configs are the keyword arguments of the registered network classes. A key
that is not declared is a :class:`~vcesdk.errors.RecipeError` naming the valid ones.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Any, Sequence

from vcesdk.bundle import BLENDS, COMPOSE_MODES, PHASES  # what a bundle can declare
from vcesdk.errors import RecipeError

from .data import TARGETS
from .methods import method_class
from .methods.base import AMP_MODES
from .registry import DISCRIMINATORS, GENERATORS

_SECTIONS = ("generator", "discriminator", "data", "model_io", "optim", "loss", "train",
             "inference")
DEVICES = ("auto", "cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``data``: the phantom training set (or the window crop of a ``--data`` folder).

    Attributes:
        kind: "phantom".
        shape: phantom volume [D, H, W] voxels.
        spacing_mm: voxel size [z, y, x] mm.
        noise_hu: image noise SD, HU.
        n_train, n_val: training / validation patients (a ``--data`` folder's last n_val
            patients validate).
        seed: first phantom seed (validation seeds start 100,000 higher).
        crop: training window [d, h, w] voxels.
        noise_free_target: train against the phase's noise-free image, which only a
            simulation knows (the generated phantoms; ``<phase>_clean.nii.gz`` in a ``vcesdk-data
            phantoms`` folder), as denoisers are trained on simulated noise. The input NCCT
            keeps its noise and validation scores the noisy phase, as ``vcesdk-eval`` does. A
            noisy target asks for the same mean but carries the second scan's independent
            noise: a network learns to remove the NCCT's noise far more slowly from it.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    crop: tuple[int, int, int]
    kind: str = "phantom"
    noise_hu: float = 15.0
    n_train: int = 8
    n_val: int = 2
    seed: int = 0
    noise_free_target: bool = False


@dataclasses.dataclass(frozen=True)
class ModelIOConfig:
    """``model_io``: input windows ([{name, level, width}], HU), the output HU range [lo, hi]
    and the target ("image": the phase in its window, as the papers; "residual": phase - NCCT
    in HU; "windows": the phase under every input window)."""

    windows: tuple[dict, ...]
    hu_range: tuple[float, float]
    target: str = "image"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``train``: the loop.

    Attributes:
        steps, batch_size: optimisation steps and windows per step (the global batch under
            torchrun, split over the processes).
        val_every, ckpt_every: validate / checkpoint every this many steps (0: only at the
            end).
        seed: seeds the networks' initialisation and the window sampling.
        device: "auto" (CUDA when available, else CPU), "cpu" or "cuda" (``--device``).
        amp: mixed precision, "off", "bf16" or "fp16" (torch.autocast; fp16 with a
            GradScaler).
        workers: DataLoader worker processes drawing the training windows (0: in the main
            process); the windows are the same for any number.
    """

    steps: int
    batch_size: int
    val_every: int = 0
    ckpt_every: int = 0
    seed: int = 0
    device: str = "auto"
    amp: str = "off"
    workers: int = 0


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """``inference``: what the bundle declares for the runtime: window_slices, stride
    [sd, sh|null, sw|null], blend, batch_size, resample_mm [z, y, x] | null, compose
    ("replace", "add_difference", "add_residual"), difference_floor_hu (lower bound of the
    added HU, or null) and auxiliary_outputs."""

    window_slices: int
    stride: tuple
    blend: str = "mean"
    batch_size: int = 2
    resample_mm: tuple | None = None
    compose: str = "replace"
    difference_floor_hu: float | None = None
    auxiliary_outputs: tuple = ()


_FIXED = {"data": DataConfig, "model_io": ModelIOConfig, "train": TrainConfig,
          "inference": InferenceConfig}


def _plain(v: Any) -> Any:
    """Tuples -> lists, recursively (the stored recipe is plain YAML / JSON)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def check_section(cls: type, values: dict, where: str) -> dict:
    """Check a recipe section against its dataclass and fill in the defaults.

    Args:
        cls: the section's dataclass.
        values: the section as read.
        where: the section's name for messages ("loss", "train", ...).

    Returns:
        The resolved section as a plain dict (every field of ``cls``).

    Raises:
        RecipeError: unknown keys (the message lists the valid ones), missing required keys,
            or a value that is not of the field's declared type.
    """
    if not isinstance(values, dict):
        raise RecipeError(f"recipe section {where!r} must be a mapping, got "
                          f"{type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise RecipeError(f"recipe section {where!r}: unknown key(s) {unknown}; valid keys: "
                          f"{sorted(fields)}")
    missing = sorted(n for n, f in fields.items() if n not in values
                     and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise RecipeError(f"recipe section {where!r}: missing key(s) {missing}")
    typed = {name: _coerce(values[name], str(fields[name].type), f"{where}.{name}")
             for name in values}
    try:
        resolved = cls(**typed)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"recipe section {where!r}: {exc}") from None
    return _plain(dataclasses.asdict(resolved))


def _coerce(value: Any, annotation: str, key: str) -> Any:
    """``value`` as the type a config field declares (its annotation as written: "float",
    "int", "bool", "str", "tuple[...]", with "| None"); numbers written as strings (YAML 1.1
    reads ``1e-4`` as a string) become numbers.

    Raises:
        RecipeError: the value cannot be that type.
    """
    kinds = [a.strip() for a in annotation.split("|")]
    if value is None:
        if "None" in kinds:
            return None
        raise RecipeError(f"{key} needs a value ({annotation}), got null")
    kind = kinds[0]
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise ValueError
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "int":
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if kind.startswith("tuple"):
            if not isinstance(value, (list, tuple)):
                raise ValueError
            inner = kind[len("tuple["):-1].split(",")[0].strip() if "[" in kind else "Any"
            if inner in ("int", "float"):
                return tuple(_coerce(v, inner, key) for v in value)
            return tuple(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{key} must be {annotation}, got {value!r}") from None
    return value


def _constructor_params(table: dict, name: str) -> dict[str, inspect.Parameter]:
    """The keyword parameters of registered network ``name`` (its config keys)."""
    params = inspect.signature(table[name].__init__).parameters
    return {n: p for n, p in params.items() if n != "self"}


def _check_network(table: dict, kind: str, spec: Any) -> dict:
    if not isinstance(spec, dict) or set(spec) - {"name", "config"} or "name" not in spec:
        raise RecipeError(f"recipe section {kind!r} must be {{name, config}}, got {spec!r}")
    name, cfg = spec["name"], dict(spec.get("config") or {})
    if name not in table:
        raise RecipeError(f"unknown {kind} {name!r}; registered: {', '.join(sorted(table))}")
    params = _constructor_params(table, name)
    valid = sorted(params)
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise RecipeError(f"{kind}.config of {name!r}: unknown key(s) {unknown}; valid keys: "
                          f"{valid}")
    return {"name": name, "config": _plain(cfg)}


def _check_choices(r: dict) -> None:
    """Values with a fixed set of choices or a range."""
    io, inf, t, data = r["model_io"], r["inference"], r["train"], r["data"]
    choices = [("model_io.target", io["target"], TARGETS),
               ("inference.compose", inf["compose"], COMPOSE_MODES),
               ("inference.blend", inf["blend"], BLENDS),
               ("train.device", t["device"], DEVICES), ("train.amp", t["amp"], AMP_MODES)]
    for key, value, valid in choices:
        if value not in valid:
            raise RecipeError(f"{key} must be one of {valid}, got {value!r}")
    for key, value, low in (("train.steps", t["steps"], 0), ("train.batch_size",
                            t["batch_size"], 1), ("train.workers", t["workers"], 0),
                            ("train.val_every", t["val_every"], 0),
                            ("train.ckpt_every", t["ckpt_every"], 0),
                            ("inference.window_slices", inf["window_slices"], 1)):
        if value < low:
            raise RecipeError(f"{key} must be >= {low}, got {value}")
    for key in ("shape", "spacing_mm", "crop"):
        if len(data[key]) != 3 or min(data[key]) <= 0:
            raise RecipeError(f"data.{key} must be 3 positive numbers (z, y, x), got "
                              f"{data[key]}")
    if len(io["hu_range"]) != 2 or io["hu_range"][0] >= io["hu_range"][1]:
        raise RecipeError(f"model_io.hu_range must be [low, high], got {io['hu_range']}")
    for i, w in enumerate(io["windows"]):
        if not isinstance(w, dict) or {"level", "width"} - set(w) or float(w["width"]) <= 0:
            raise RecipeError(f"model_io.windows[{i}] must be {{name, level, width > 0}}, got "
                              f"{w!r}")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A training recipe, every section checked and resolved (see the module docstring).

    Attributes:
        name: recipe name (becomes the bundle name).
        method: registered method, e.g. "pix2pix3d".
        phase: target phase, "ap" | "pvp" | "dp".
        paper: the seed the settings come from.
        generator / discriminator: {"name": registry name, "config": constructor kwargs}.
        data, model_io, train, inference: the fixed sections (:class:`DataConfig`, ...).
        optim, loss: the method's ``Optim`` / ``Loss`` sections.
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
        """Build from a dict, checking every section (unknown or missing keys are errors).

        Raises:
            RecipeError: names the missing or unexpected keys and the valid ones.
        """
        if not isinstance(d, dict):
            raise RecipeError("a recipe must be a mapping")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(fields - set(d) - {"discriminator"})
        extra = sorted(set(d) - fields)
        if missing or extra:
            raise RecipeError(f"recipe keys: missing {missing}, unexpected {extra}; valid "
                              f"keys: {sorted(fields)}")
        if d["phase"] not in PHASES:
            raise RecipeError(f"phase must be one of {PHASES}, got {d['phase']!r}")
        try:
            method = method_class(d["method"])
        except ValueError as exc:
            raise RecipeError(str(exc)) from None
        out = {k: d[k] for k in ("name", "method", "phase", "paper")}
        out["generator"] = _check_network(GENERATORS, "generator", d["generator"])
        disc = d.get("discriminator") or {}
        out["discriminator"] = (_check_network(DISCRIMINATORS, "discriminator", disc)
                                if disc else {})
        train = dict(d["train"] or {})
        if train.get("amp") is False:   # YAML 1.1 reads a bare `off` as false
            train["amp"] = "off"
        sections = {**d, "train": train}
        for section, klass in {**_FIXED, "loss": method.Loss, "optim": method.Optim}.items():
            out[section] = check_section(klass, sections[section] or {}, section)
        if method.NEEDS_DISCRIMINATOR and not out["discriminator"]:
            raise RecipeError(f"method {d['method']!r} trains a discriminator: the recipe's "
                              f"discriminator section needs {{name, config}}")
        _check_choices(out)
        return cls(**out)

    def with_overrides(self, steps: int | None = None, phase: str | None = None,
                       sets: Sequence[str] = ()) -> "Recipe":
        """A copy with command-line overrides applied (the copy is what checkpoints store).

        Args:
            steps: replaces train.steps (--max-steps).
            phase: replaces phase ("ap" | "pvp" | "dp"); a name ending in "-<old phase>" gets
                the new phase as its suffix, so bundles stay distinguishable.
            sets: "KEY=VALUE" items (--set), KEY a top-level field ("name"), "section.key"
                ("optim.decay_every") or "generator.config.key"; VALUE is read as YAML
                (numbers, lists).

        Raises:
            RecipeError: unknown phase, malformed item, or a key the recipe does not declare.
        """
        import yaml

        d = self.to_dict()
        if steps is not None:
            d["train"]["steps"] = int(steps)
        if phase is not None:
            if phase not in PHASES:
                raise RecipeError(f"phase must be one of {PHASES}, got {phase!r}")
            if d["name"].endswith(f"-{d['phase']}") and phase != d["phase"]:
                d["name"] = d["name"][: -len(d["phase"])] + phase
            d["phase"] = phase
        for item in sets:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise RecipeError(f"--set wants KEY=VALUE, got {item!r}")
            value = yaml.safe_load(raw)
            parts = key.split(".")
            if len(parts) == 1:
                if key not in d or key in _SECTIONS:
                    raise RecipeError(f"--set {key}: not a top-level recipe field "
                                      f"({sorted(set(d) - set(_SECTIONS))})")
                d[key] = value
                continue
            if parts[0] not in _SECTIONS:
                raise RecipeError(f"--set {key}: no section {parts[0]!r} (sections "
                                  f"{list(_SECTIONS)})")
            target = d[parts[0]]
            for p in parts[1:-1]:
                target = target.setdefault(p, {}) if isinstance(target, dict) else None
                if target is None:
                    raise RecipeError(f"--set {key}: {p!r} is not a mapping")
            target[parts[-1]] = value   # checked with the whole recipe below
        return Recipe.from_dict(d)


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and check a YAML recipe.

    Raises:
        RecipeError: no such file, or invalid content (the message names the section, the key and the valid
            keys).
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: a recipe must be a YAML mapping")
    try:
        return Recipe.from_dict(data)
    except RecipeError as exc:
        raise RecipeError(f"{p}: {exc}") from None


# what a checkpoint's networks, optimisers and data depend on: a resume must not change them
# (train and inference may change: more steps, another device, another export)
RESUME_SECTIONS = ("method", "phase", "generator", "discriminator", "data", "model_io", "optim",
                   "loss")


def _network_defaults(table: dict, spec: dict) -> dict:
    """``spec`` with every constructor default of its registered network filled in."""
    if not spec:
        return {}
    cfg = {n: _plain(p.default) for n, p in _constructor_params(table, spec["name"]).items()
           if p.default is not inspect.Parameter.empty}
    return {"name": spec["name"], "config": {**cfg, **spec["config"]}}


def recipe_changes(stored: Recipe, current: Recipe,
                   sections: Sequence[str] = RESUME_SECTIONS) -> list[str]:
    """What ``current`` changes against ``stored`` in ``sections``, one "section.key: old ->
    new" line per changed value (network configs compared with their defaults filled in).
    Empty when nothing changed."""
    changes = []
    for section in sections:
        a, b = getattr(stored, section), getattr(current, section)
        if section in ("generator", "discriminator"):
            table = GENERATORS if section == "generator" else DISCRIMINATORS
            a, b = _network_defaults(table, a), _network_defaults(table, b)
            if a.get("name") != b.get("name"):
                changes.append(f"{section}.name: {a.get('name')} -> {b.get('name')}")
                continue
            a, b, section = a.get("config", {}), b.get("config", {}), f"{section}.config"
        if not isinstance(a, dict):
            if a != b:
                changes.append(f"{section}: {a!r} -> {b!r}")
            continue
        changes += [f"{section}.{k}: {a.get(k)!r} -> {b.get(k)!r}"
                    for k in sorted(set(a) | set(b)) if _plain(a.get(k)) != _plain(b.get(k))]
    return changes


def builtin_recipe(name: str) -> Path:
    """Path of a recipe shipped in vcesdk.training.recipes (name without .yaml)."""
    return Path(__file__).resolve().parent / "recipes" / f"{name}.yaml"
