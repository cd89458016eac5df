"""The model bundle: a folder with ``manifest.json``, the model files and their SHA-256.

The manifest carries everything preprocessing needs, so training and deployment cannot
disagree: input windows (channels), value scaling, slices per window, padding multiples,
resampling, the output mapping back to HU, blending and stride, phase and method, and the
SHA-256 of every file. :func:`load_bundle` verifies all of it before anything runs.

Schema version 1 (keys marked * are required)::

    schema_version*: 1
    name*, phase* ("ap" | "pvp" | "dp"), method*, description, demo (bool), clinical_use (bool)
    input*:  channels* [{name, level, width}], value_range [-1, 1],
             window* {slices*, height (null = whole plane), width (null = whole plane)},
             multiple_of* [d, h, w], resample {spacing_mm [z, y, x]} | null, pad_hu,
             orientation (three letters, default "LPS": the model sees axes in this order)
    output*: channels*, channel*, hu_range* [lo, hi],
             compose* ("replace" | "add_difference" | "add_residual"),
             difference_floor_hu (null | number: the added HU are clamped below at this)
    inference*: stride* [sd, sh, sw] (null = whole plane), blend* ("mean" | "gaussian"),
                batch_size
    files*:  {file name: {sha256*, role* ("model" | "weights" | ...), format, precision,
              parity {max_abs_hu, tolerance_hu}, ...}}
    network, build, training: free-form provenance, except the optional
             network.flops_per_window {flops*, window* [d, h, w], linear_in_voxels, counter}:
             FLOPs of one forward pass on one window of that size, counted at export (see
             :func:`window_flops`)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import BundleError
from .intensity import Window, windows_from_manifest
from .volume import is_orientation_code

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

_MODELS = Path(__file__).resolve().parent / "models"
#: The bundled demo models, one per contrast phase (arterial, portal venous, delayed):
#: pix2pix3D trained on digital phantoms. Demonstrations, not for clinical use.
#: ``vcesdk synthesize`` without ``--model`` runs all three. Re-exported as
#: ``vcesdk.DEFAULT_BUNDLES``.
DEFAULT_BUNDLES: tuple[Path, ...] = tuple(_MODELS / f"demo_{p}" for p in ("ap", "pvp", "dp"))
#: The portal-venous demo model (the one-phase default of :class:`vcesdk.Synthesizer`);
#: re-exported as ``vcesdk.DEFAULT_BUNDLE``.
DEFAULT_BUNDLE: Path = _MODELS / "demo_pvp"
PHASES: tuple[str, ...] = ("ap", "pvp", "dp")
COMPOSE_MODES: tuple[str, ...] = ("replace", "add_difference", "add_residual")
BLENDS: tuple[str, ...] = ("mean", "gaussian")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise BundleError(msg)


def _get(d: dict, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise BundleError(f"manifest: missing {where}{key}")
    return d[key]


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A verified model bundle.

    Attributes:
        path: the bundle folder.
        manifest: the parsed manifest.json.
        windows: the input channel windows.
        window: (d, h, w) window size; h or w None = the whole (padded) plane.
        stride: (sd, sh, sw); None on an axis whose window is the whole plane.
        multiple_of: (d, h, w) the network's size divisors; inputs are padded to them.
        resample_mm: (z, y, x) spacing the model runs at, or None (native grid).
        output_hu: (lo, hi) HU that the output range [-1, 1] maps to.
        compose: "replace" (output is the sCECT), "add_difference" (sCECT = input +
            (output - input) where the input is inside output_hu, + 0 outside it, computed on
            the model grid) or
            "add_residual" (the output is the enhancement sCECT - NCCT in HU; sCECT = input +
            output brought to the input's grid).
        difference_floor_hu: for the add_* modes, the added HU are clamped to at least this
            (0: enhancement only raises attenuation, as iodine does); None = no clamp.
        orientation: axis orientation code the model expects ("LPS").
    """

    path: Path
    manifest: dict
    windows: tuple[Window, ...]
    window: tuple[int, int | None, int | None]
    stride: tuple[int, int | None, int | None]
    multiple_of: tuple[int, int, int]
    resample_mm: tuple[float, float, float] | None
    output_hu: tuple[float, float]
    output_channel: int
    compose: str
    blend: str
    batch_size: int
    pad_hu: float
    difference_floor_hu: float | None = None
    orientation: str = "LPS"
    auxiliary: tuple["AuxiliaryOutput", ...] = ()

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def phase(self) -> str:
        return str(self.manifest["phase"])

    @property
    def model_formats(self) -> set[str]:
        """Formats of the bundle's model files ("onnx", "torchscript", "tensorrt", ...)."""
        return {str(m.get("format")) for m in self.manifest["files"].values()
                if m.get("role") == "model"}

    def file(self, role: str = "model", fmt: str | None = None) -> Path:
        """Path of the first file with this role (and format).

        Raises:
            BundleError: no such file in the manifest.
        """
        for name, meta in self.manifest["files"].items():
            if meta.get("role") == role and (fmt is None or meta.get("format") == fmt):
                return self.path / name
        raise BundleError(f"bundle {self.path} has no {fmt or ''} {role} file".replace("  ", " "))


@dataclasses.dataclass(frozen=True)
class AuxiliaryOutput:
    """An extra output channel a bundle declares besides the image (``output.auxiliary``),
    e.g. MAN-GAN's predicted subtraction map (000).

    Attributes:
        name: short name ("subtraction"); the runtime writes it as ``<name>_<phase>``.
        channel: output channel index.
        hu_range: (lo, hi) HU that model values [-1, 1] map to.
        description: what it is, for series descriptions and reports.
    """

    name: str
    channel: int
    hu_range: tuple[float, float]
    description: str = ""


def auxiliary_from_manifest(out: dict) -> tuple[AuxiliaryOutput, ...]:
    """The :class:`AuxiliaryOutput` list of a manifest's ``output`` section (may be absent).

    Raises:
        BundleError: malformed entry, channel out of range or reused, or a duplicate name.
    """
    items = out.get("auxiliary") or []
    _require(isinstance(items, list), "manifest: output.auxiliary must be a list")
    result: list[AuxiliaryOutput] = []
    used = {out.get("channel")}
    for i, a in enumerate(items):
        where = f"output.auxiliary[{i}]"
        _require(isinstance(a, dict), f"manifest: {where} must be an object")
        name, ch, hr = a.get("name"), a.get("channel"), a.get("hu_range")
        _require(isinstance(name, str) and name.isidentifier(),
                 f"manifest: {where}.name must be a plain name, got {name!r}")
        _require(isinstance(ch, int) and 0 <= ch < int(out.get("channels", 1))
                 and ch not in used,
                 f"manifest: {where}.channel {ch!r} must be an unused index below "
                 f"output.channels")
        _require(isinstance(hr, list) and len(hr) == 2 and all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in hr) and hr[0] < hr[1],
            f"manifest: {where}.hu_range must be [low, high], got {hr!r}")
        used.add(ch)
        result.append(AuxiliaryOutput(name, ch, (float(hr[0]), float(hr[1])),
                                      str(a.get("description", ""))))
    _require(len({a.name for a in result}) == len(result),
             "manifest: output.auxiliary names must be unique")
    return tuple(result)


def validate_manifest(m: Any) -> dict:
    """Check a parsed manifest against schema version 1; return it.

    Raises:
        BundleError: with the first problem found (missing key, wrong type or value).
    """
    _require(isinstance(m, dict), "manifest: top level must be a JSON object")
    version = _get(m, "schema_version", "")
    _require(version == SCHEMA_VERSION,
             f"manifest: schema_version {version!r} is not supported (this vcesdk reads "
             f"{SCHEMA_VERSION}); upgrade vcesdk or re-export the bundle")
    for key in ("name", "method"):
        _require(isinstance(_get(m, key, ""), str) and m[key], f"manifest: {key} must be a "
                                                              f"non-empty string")
    _require(_get(m, "phase", "") in PHASES,
             f"manifest: phase must be one of {PHASES}, got {m.get('phase')!r}")
    inp = _get(m, "input", "")
    windows_from_manifest(_get(inp, "channels", "input."))
    win = _get(inp, "window", "input.")
    slices = _get(win, "slices", "input.window.")
    _require(isinstance(slices, int) and slices >= 1,
             f"manifest: input.window.slices must be a positive integer, got {slices!r}")
    for key in ("height", "width"):
        v = win.get(key)
        _require(v is None or (isinstance(v, int) and v >= 1),
                 f"manifest: input.window.{key} must be null or a positive integer, got {v!r}")
    mult = _get(inp, "multiple_of", "input.")
    _require(isinstance(mult, list) and len(mult) == 3 and all(isinstance(v, int) and v >= 1
                                                               for v in mult),
             f"manifest: input.multiple_of must be three positive integers, got {mult!r}")
    res = inp.get("resample")
    if res is not None:
        sp = _get(res, "spacing_mm", "input.resample.")
        _require(isinstance(sp, list) and len(sp) == 3 and all(
            isinstance(v, (int, float)) and v > 0 for v in sp),
            f"manifest: input.resample.spacing_mm must be three positive numbers, got {sp!r}")
    orient = inp.get("orientation", "LPS")
    _require(is_orientation_code(orient),
             f"manifest: input.orientation must be three letters like 'LPS', got {orient!r}")
    out = _get(m, "output", "")
    hr = _get(out, "hu_range", "output.")
    _require(isinstance(hr, list) and len(hr) == 2
             and all(isinstance(v, (int, float)) and math.isfinite(v) for v in hr)
             and hr[0] < hr[1],
             f"manifest: output.hu_range must be [low, high], got {hr!r}")
    _require(_get(out, "compose", "output.") in COMPOSE_MODES,
             f"manifest: output.compose must be one of {COMPOSE_MODES}, got {out['compose']!r}")
    floor = out.get("difference_floor_hu")
    _require(floor is None or isinstance(floor, (int, float)),
             f"manifest: output.difference_floor_hu must be null or a number, got {floor!r}")
    nch, ch = _get(out, "channels", "output."), _get(out, "channel", "output.")
    _require(isinstance(nch, int) and isinstance(ch, int) and 0 <= ch < nch,
             f"manifest: output.channel {ch!r} must index output.channels {nch!r}")
    auxiliary_from_manifest(out)
    inf = _get(m, "inference", "")
    stride = _get(inf, "stride", "inference.")
    _require(isinstance(stride, list) and len(stride) == 3 and isinstance(stride[0], int)
             and stride[0] >= 1 and all(v is None or (isinstance(v, int) and v >= 1)
                                        for v in stride),
             f"manifest: inference.stride must be [sd, sh|null, sw|null], got {stride!r}")
    _require(_get(inf, "blend", "inference.") in BLENDS,
             f"manifest: inference.blend must be one of {BLENDS}, got {inf['blend']!r}")
    bs = inf.get("batch_size", 1)
    _require(isinstance(bs, int) and not isinstance(bs, bool) and bs >= 1,
             f"manifest: inference.batch_size must be a positive integer, got {bs!r}")
    pad = inp.get("pad_hu", -1024.0)
    _require(isinstance(pad, (int, float)) and not isinstance(pad, bool)
             and math.isfinite(pad), f"manifest: input.pad_hu must be a number, got {pad!r}")
    _validate_flops(m.get("network"))
    files = _get(m, "files", "")
    _require(isinstance(files, dict) and files, "manifest: files must list the model files")
    for name, meta in files.items():
        _require(isinstance(name, str) and "/" not in name and "\\" not in name
                 and name not in ("", ".", "..", MANIFEST),
                 f"manifest: file name {name!r} must be a plain file name in the bundle")
        sha = _get(meta, "sha256", f"files.{name}.")
        _require(isinstance(sha, str) and len(sha) == 64,
                 f"manifest: files.{name}.sha256 must be 64 hex digits")
        _get(meta, "role", f"files.{name}.")
    _require(any(meta.get("role") == "model" for meta in files.values()),
             "manifest: no file has role 'model'")
    return m


def _validate_flops(network: Any) -> None:
    """Check the optional ``network.flops_per_window`` (absent in bundles exported before it).

    Raises:
        BundleError: the entry is present and malformed.
    """
    if not isinstance(network, dict) or network.get("flops_per_window") is None:
        return
    e = network["flops_per_window"]
    where = "manifest: network.flops_per_window"
    _require(isinstance(e, dict), f"{where} must be an object, got {e!r}")
    f, win = e.get("flops"), e.get("window")
    _require(isinstance(f, int) and not isinstance(f, bool) and f >= 0,
             f"{where}.flops must be a non-negative integer, got {f!r}")
    _require(isinstance(win, list) and len(win) == 3 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in win),
        f"{where}.window must be three positive integers [d, h, w], got {win!r}")
    lin = e.get("linear_in_voxels", False)
    _require(isinstance(lin, bool), f"{where}.linear_in_voxels must be true or false, got "
                                    f"{lin!r}")


def window_flops(bundle: "Bundle", window: tuple[int, int, int] | list[int]) -> float | None:
    """FLOPs of one forward pass of the bundle's network on one window, from the manifest's
    ``network.flops_per_window`` (counted once at export, see :mod:`vcesdk.export.flops`).

    Args:
        bundle: a loaded bundle.
        window: (d, h, w) window the model runs at, voxels (the padded plane for a
            whole-plane bundle: :attr:`vcesdk.runtime.LatencyReport.window`).

    Returns:
        The count at that window: the stored one when the window is the one it was counted
        at, else scaled by the ratio of window voxels when the export found the count linear
        in voxels (``linear_in_voxels``); None when the manifest has no count or it cannot be
        scaled to this window.
    """
    entry = (bundle.manifest.get("network") or {}).get("flops_per_window")
    if entry is None:
        return None
    counted = [int(v) for v in entry["window"]]
    asked = [int(v) for v in window]
    if asked == counted:
        return float(entry["flops"])
    if not entry.get("linear_in_voxels", False):
        return None
    return float(entry["flops"]) * math.prod(asked) / math.prod(counted)


def load_bundle(path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Read, validate and (by default) checksum-verify a bundle folder.

    Args:
        path: the bundle folder (holding manifest.json).
        verify: check the SHA-256 of every listed file (never skip this for untrusted input).

    Returns:
        The verified :class:`Bundle`.

    Raises:
        BundleError: missing folder or manifest, invalid JSON or schema, missing file, or a
            file whose SHA-256 differs from the manifest (the bundle was altered).
    """
    p = Path(path)
    mpath = p / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"not a model bundle: {p} has no {MANIFEST}")
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath}: invalid JSON ({exc})") from None
    validate_manifest(m)
    if verify:
        for name, meta in m["files"].items():
            f = p / name
            if not f.is_file():
                raise BundleError(f"bundle {p}: file {name} listed in the manifest is missing")
            digest = sha256_file(f)
            if digest != meta["sha256"]:
                raise BundleError(f"bundle {p}: SHA-256 of {name} is {digest[:12]}..., the "
                                  f"manifest says {meta['sha256'][:12]}...; the file was changed "
                                  f"after export, re-export the bundle")
    return bundle_from_manifest(p, m)


def bundle_from_manifest(path: str | os.PathLike, m: dict) -> Bundle:
    """A :class:`Bundle` from an already validated manifest dict, without reading or checking
    any file (for exporters assembling a bundle; use :func:`load_bundle` for anything
    loaded).
    """
    p = Path(path)
    inp, out, inf = m["input"], m["output"], m["inference"]
    win = inp["window"]
    res = inp.get("resample")
    return Bundle(
        path=p, manifest=m, windows=windows_from_manifest(inp["channels"]),
        window=(int(win["slices"]), win.get("height"), win.get("width")),
        stride=tuple(inf["stride"]),  # type: ignore[arg-type]
        multiple_of=tuple(int(v) for v in inp["multiple_of"]),  # type: ignore[arg-type]
        resample_mm=tuple(float(v) for v in res["spacing_mm"]) if res else None,  # type: ignore
        output_hu=(float(out["hu_range"][0]), float(out["hu_range"][1])),
        output_channel=int(out["channel"]), compose=str(out["compose"]),
        blend=str(inf["blend"]), batch_size=int(inf.get("batch_size", 1)),
        pad_hu=float(inp.get("pad_hu", -1024.0)),
        difference_floor_hu=(None if out.get("difference_floor_hu") is None
                             else float(out["difference_floor_hu"])),
        orientation=str(inp.get("orientation", "LPS")),
        auxiliary=auxiliary_from_manifest(out),
    )


def round_up(n: int, m: int) -> int:
    """``n`` rounded up to a multiple of ``m`` (a bundle's size multiple), both positive."""
    return ((n + m - 1) // m) * m
