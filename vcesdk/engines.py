"""TensorRT engine facts: optimisation profiles, the sidecar that ties an engine to the GPU and
TensorRT build that made it, the compatibility check and the ONNX Runtime GPU provider
options. The backends that run engines are in :mod:`vcesdk.backends.tensorrt`.

A TensorRT engine (``.engine``, the plan file trtexec and Triton read) only runs on the GPU
architecture (compute capability) and TensorRT version that built it. vcesdk never writes
anything into the engine file itself; it writes a JSON *sidecar* beside it
(``model.engine.json``) recording the GPU name, compute capability, TensorRT and CUDA
versions, precision and profiles, and refuses a mismatched engine with a message that says
what to rebuild (``vcesdk build-engine BUNDLE``).

Nothing here imports TensorRT, torch or CUDA at module import time.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from .bundle import Bundle, round_up
from .errors import BundleError, MissingDependencyError, ProviderError

MODEL_INPUT = "ncct"
"""Name of the model input tensor in every exported graph (ONNX, TensorRT)."""
MODEL_OUTPUT = "scect"
"""Name of the model output tensor in every exported graph (ONNX, TensorRT)."""
SIDECAR_SUFFIX = ".json"

# In-plane extent (model-grid pixels) an engine profile covers when the bundle's windows are
# whole planes: optimised for 256 (a 512-pixel, ~0.7-1 mm slice resampled to 2 mm is 180-256)
# and valid up to 512; rounded up to the network's multiples.
DEFAULT_PLANE: tuple[int, int, int] = (64, 256, 512)

INSTALL_TENSORRT = ("install NVIDIA TensorRT for your CUDA version (x86_64 Linux: "
                    "'pip install tensorrt'; Jetson: it comes with JetPack) on a machine with "
                    "an NVIDIA GPU, plus 'pip install \"vcesdk[gpu]\"'")


def import_tensorrt():
    """The ``tensorrt`` module.

    Raises:
        MissingDependencyError: TensorRT is not installed (the message says how to install).
    """
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingDependencyError(f"TensorRT is not installed (import tensorrt failed: "
                                     f"{exc}); {INSTALL_TENSORRT}") from None
    return tensorrt


def tensorrt_version(trt: Any = None) -> tuple[int, int]:
    """(major, minor) of a TensorRT module's ``__version__`` ("10.3.0.26" -> (10, 3)).

    Args:
        trt: the ``tensorrt`` module (default: imported with :func:`import_tensorrt`).
    """
    return parse_version(str((trt or import_tensorrt()).__version__))


def parse_version(text: str) -> tuple[int, int]:
    """(major, minor) of a dotted version string ("8.5.2.2" -> (8, 5)).

    Raises:
        BundleError: no leading number.
    """
    m = re.match(r"\s*(\d+)(?:\.(\d+))?", str(text))
    if not m:
        raise BundleError(f"cannot read a version number from {text!r}")
    return int(m.group(1)), int(m.group(2) or 0)


_CUDA_IN_DEB = re.compile(r"\+cuda(\d+(?:\.\d+)?)")
_TRT_WHEEL = re.compile(r"^tensorrt[-_]cu(\d+)(?:[-_]|$)", re.IGNORECASE)


def tensorrt_cuda_version(distributions: Sequence[str] | None = None,
                          deb_versions: Sequence[str] | None = None,
                          cuda_home: str | Path | None = None) -> tuple[str, str]:
    """The CUDA version TensorRT was built for, and where that fact came from.

    TensorRT's Python module does not report its CUDA version, so it is read from how
    TensorRT was installed, first match wins:

    1. pip: the wheel names carry the CUDA major (``tensorrt-cu12``, ``tensorrt_cu13_libs``;
       NVIDIA/TensorRT ``python/packaging``: ``##CUDA_MAJOR##`` in the package name) -> "12".
    2. Debian packages (JetPack, NVIDIA's apt repository): ``libnvinfer*`` versions end in
       ``+cudaX.Y`` (e.g. ``8.5.2-1+cuda11.4``) -> "11.4".
    3. the CUDA toolkit TensorRT runs on: ``$CUDA_HOME/version.json`` (``cuda.version``) or
       ``version.txt`` ("CUDA Version 11.4.315") -> "11.4".

    Args:
        distributions: installed Python distribution names (default: importlib.metadata).
        deb_versions: versions of installed ``libnvinfer*`` Debian packages (default:
            ``dpkg-query``, where present).
        cuda_home: CUDA toolkit folder (default ``$CUDA_HOME`` or ``/usr/local/cuda``).

    Returns:
        (version, source): e.g. ("12", "pip tensorrt-cu12"), or ("unknown", "not found").
    """
    if distributions is None:
        from importlib import metadata

        distributions = [d.metadata.get("Name", "") or "" for d in metadata.distributions()]
    for name in sorted(distributions):
        m = _TRT_WHEEL.match(name)
        if m:
            return m.group(1), f"pip {name}"
    if deb_versions is None:
        deb_versions = _dpkg_versions("libnvinfer*")
    for v in deb_versions:
        m = _CUDA_IN_DEB.search(v)
        if m:
            return m.group(1), f"dpkg libnvinfer {v}"
    home = Path(cuda_home or os.environ.get("CUDA_HOME") or "/usr/local/cuda")
    try:
        info = json.loads((home / "version.json").read_text(encoding="utf-8"))
        full = str(info["cuda"]["version"])
        return ".".join(full.split(".")[:2]), f"{home / 'version.json'}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        m = re.search(r"CUDA Version (\d+\.\d+)", (home / "version.txt").read_text())
        if m:
            return m.group(1), f"{home / 'version.txt'}"
    except OSError:
        pass
    return "unknown", "not found"


def _dpkg_versions(pattern: str) -> list[str]:
    """Versions of installed Debian packages matching `pattern` ([] without dpkg)."""
    import shutil
    import subprocess

    if shutil.which("dpkg-query") is None:
        return []
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}\\n", pattern],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def local_gpu_environment(device: int = 0) -> dict[str, str]:
    """GPU name, compute capability ("8.6"), TensorRT version and the CUDA version TensorRT
    was built for, of this machine; no PyTorch needed.

    The GPU is queried through the CUDA driver (:mod:`vcesdk.cuda_driver`), the CUDA version
    with :func:`tensorrt_cuda_version` (``cuda_source`` says where it was read).

    Raises:
        MissingDependencyError: TensorRT, the NVIDIA driver or a CUDA GPU is missing.
    """
    trt = import_tensorrt()
    from .cuda_driver import device_properties

    name, cc = device_properties(device)
    cuda, source = tensorrt_cuda_version()
    return {"gpu_name": name, "compute_capability": cc, "tensorrt": str(trt.__version__),
            "cuda": cuda, "cuda_source": source}


def engine_profiles(bundle: Bundle, max_batch: int | None = None,
                    plane: Sequence[int] | None = None) -> dict[str, dict[str, list[int]]]:
    """TensorRT optimisation profile for the windows a bundle's runtime feeds its model.

    Args:
        bundle: the bundle (window slices, fixed or whole-plane height/width, multiples,
            input channels, batch size).
        max_batch: largest batch (default: the manifest's inference.batch_size); the profile
            covers 1..max_batch with the manifest's batch size as optimum.
        plane: (min, opt, max) in-plane size in model-grid pixels for whole-plane windows
            (default :data:`DEFAULT_PLANE`), each rounded up to the network's multiple.

    Returns:
        {input name: {"min": [B, C, d, h, w], "opt": [...], "max": [...]}}.

    Raises:
        BundleError: max_batch below 1 or plane not increasing.
    """
    c = len(bundle.windows)
    d = bundle.window[0]
    b_opt = max(1, bundle.batch_size)
    b_max = b_opt if max_batch is None else int(max_batch)
    if b_max < 1:
        raise BundleError(f"engine profile: max_batch must be >= 1, got {max_batch}")
    b_opt = min(b_opt, b_max)
    lo, opt, hi = plane or DEFAULT_PLANE
    if not lo <= opt <= hi:
        raise BundleError(f"engine profile: plane sizes must be min <= opt <= max, got "
                          f"{tuple(plane or ())}")
    dims = []
    for axis in (1, 2):
        m = bundle.multiple_of[axis]
        fixed = bundle.window[axis]
        dims.append((fixed, fixed, fixed) if fixed else
                    (round_up(lo, m), round_up(opt, m), round_up(hi, m)))
    return {MODEL_INPUT: {
        "min": [1, c, d, dims[0][0], dims[1][0]],
        "opt": [b_opt, c, d, dims[0][1], dims[1][1]],
        "max": [b_max, c, d, dims[0][2], dims[1][2]]}}


def shape_in_profile(shape: Sequence[int], profile: Mapping[str, Sequence[int]]) -> bool:
    """Whether a (B, C, d, h, w) input shape lies inside a {"min", "max"} profile."""
    return len(shape) == len(profile["min"]) and all(
        lo <= s <= hi for s, lo, hi in zip(shape, profile["min"], profile["max"]))


def shape_text(shape: Sequence[int]) -> str:
    """(1, 3, 8, 64, 64) -> "1x3x8x64x64", the shape syntax of trtexec and ONNX Runtime."""
    return "x".join(str(int(v)) for v in shape)


ENGINE_CACHE_ENV = "VCESDK_ENGINE_CACHE"
"""Environment variable naming the folder under which ONNX Runtime's TensorRT EP caches
engines (default ``$XDG_CACHE_HOME/vcesdk/ort-tensorrt`` or ``~/.cache/vcesdk/ort-tensorrt``)."""


def default_engine_cache(bundle: Bundle) -> Path:
    """Where ONNX Runtime's TensorRT execution provider caches the engines it builds for
    `bundle` by default: ``<root>/<bundle name>-<first 12 hex of the ONNX file's SHA-256>``,
    root ``$VCESDK_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/vcesdk/ort-tensorrt``, else
    ``~/.cache/vcesdk/ort-tensorrt``. One folder per ONNX file, so a changed model never
    reuses a stale engine; ONNX Runtime itself keys cached engines by GPU and TensorRT version.
    The folder is created by ONNX Runtime on first use.
    """
    root = os.environ.get(ENGINE_CACHE_ENV)
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(base) / "vcesdk" / "ort-tensorrt")
    onnx_meta = next((m for m in bundle.manifest.get("files", {}).values()
                      if m.get("role") == "model" and m.get("format") == "onnx"), {})
    digest = str(onnx_meta.get("sha256", "nosha"))[:12]
    return Path(root) / f"{bundle.name}-{digest}"


def ort_provider_options(bundle: Bundle, providers: Sequence[str], fp16: bool = False,
                         engine_cache: str | os.PathLike | None = None,
                         workspace_gb: float | None = None, device_id: int = 0
                         ) -> list[dict[str, str]]:
    """ONNX Runtime provider options, one dict per provider in `providers`.

    TensorRT EP (``TensorrtExecutionProvider``; option names from ONNX Runtime's TensorRT EP
    documentation): profile shapes from :func:`engine_profiles` (``trt_profile_min_shapes``
    etc., so one engine serves every window of the bundle instead of one rebuild per plane
    size), ``trt_fp16_enable``, ``trt_engine_cache_enable``/``trt_engine_cache_path`` (always
    on: engines are built once and reused across processes; default folder
    :func:`default_engine_cache`), ``trt_max_workspace_size`` in bytes. CUDA EP:
    ``device_id``. Others: no options. :class:`vcesdk.Synthesizer` applies these TensorRT EP
    options by default; a user's ``provider_options`` entries override them key by key.

    Args:
        bundle: the bundle (profiles and the default cache folder come from it).
        providers: ONNX Runtime provider names.
        fp16: allow fp16 kernels in the TensorRT EP.
        engine_cache: engine cache folder (default :func:`default_engine_cache`).
        workspace_gb: TensorRT builder workspace, GiB (default: ONNX Runtime's).
        device_id: CUDA device ordinal.

    Raises:
        ProviderError: fp16, engine_cache or workspace_gb given but no TensorRT provider in
            the list (these options would silently do nothing).
    """
    trt_name = "TensorrtExecutionProvider"
    if (fp16 or engine_cache or workspace_gb) and trt_name not in providers:
        raise ProviderError("fp16, engine cache and workspace are TensorRT execution provider "
                            "options; add TensorrtExecutionProvider to the providers")
    out: list[dict[str, str]] = []
    for p in providers:
        opts: dict[str, str] = {}
        if p == trt_name:
            prof = engine_profiles(bundle)[MODEL_INPUT]
            cache = engine_cache or default_engine_cache(bundle)
            opts.update({"device_id": str(device_id),
                         "trt_profile_min_shapes": f"{MODEL_INPUT}:{shape_text(prof['min'])}",
                         "trt_profile_opt_shapes": f"{MODEL_INPUT}:{shape_text(prof['opt'])}",
                         "trt_profile_max_shapes": f"{MODEL_INPUT}:{shape_text(prof['max'])}",
                         "trt_fp16_enable": "True" if fp16 else "False",
                         "trt_engine_cache_enable": "True",
                         "trt_engine_cache_path": str(cache)})
            if workspace_gb:
                opts["trt_max_workspace_size"] = str(int(float(workspace_gb) * (1 << 30)))
        elif p == "CUDAExecutionProvider":
            opts["device_id"] = str(device_id)
        out.append(opts)
    return out


def sidecar_path(engine: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def make_sidecar(engine_name: str, env: Mapping[str, str], precision: str,
                 profiles: Mapping[str, Any], builder: str) -> dict[str, Any]:
    """The sidecar record of a freshly built engine (see the module docstring).

    Args:
        engine_name: the engine file's name.
        env: :func:`local_gpu_environment` of the building machine; ``cuda`` is the CUDA
            version TensorRT was built for (not PyTorch's).
        precision: "fp32", "fp16" or "int8".
        profiles: {input: {"min", "opt", "max"}} shapes the engine accepts.
        builder: "tensorrt-python", "torch-tensorrt" or "trtexec".
    """
    side = {"engine": engine_name, "gpu_name": env["gpu_name"],
            "compute_capability": env["compute_capability"], "tensorrt": env["tensorrt"],
            "cuda": env["cuda"], "precision": precision, "profiles": dict(profiles),
            "builder": builder, "input": MODEL_INPUT, "output": MODEL_OUTPUT}
    if env.get("cuda_source"):
        side["cuda_source"] = env["cuda_source"]  # where TensorRT's CUDA version was read
    return side


def check_engine_compatible(sidecar: Mapping[str, Any], local: Mapping[str, str],
                            bundle_path: str | Path = "BUNDLE") -> None:
    """Refuse an engine built for another GPU architecture, TensorRT version or CUDA major.

    An engine runs only where its compute capability and TensorRT version match (TensorRT's
    default, non-version-compatible build); a different GPU model of the same compute
    capability is accepted.

    Raises:
        BundleError: a mismatch; the message lists what differs and the rebuild command.
    """
    diffs = []
    if str(sidecar.get("compute_capability")) != str(local.get("compute_capability")):
        diffs.append(f"compute capability {sidecar.get('compute_capability')} (engine) vs "
                     f"{local.get('compute_capability')} (here)")
    # trtexec prints major.minor.patch, the Python module major.minor.patch.build
    if _release(sidecar.get("tensorrt")) != _release(local.get("tensorrt")):
        diffs.append(f"TensorRT {sidecar.get('tensorrt')} (engine) vs {local.get('tensorrt')} "
                     f"(here)")
    built_cuda = str(sidecar.get("cuda", "")).split(".")[0]
    here_cuda = str(local.get("cuda", "")).split(".")[0]
    if built_cuda != here_cuda:
        diffs.append(f"CUDA {sidecar.get('cuda')} (engine) vs {local.get('cuda')} (here)")
    if diffs:
        raise BundleError(
            f"TensorRT engine {sidecar.get('engine', '?')} was built on {sidecar.get('gpu_name')}"
            f" and cannot run on this {local.get('gpu_name')}: {'; '.join(diffs)}. Rebuild it "
            f"on this machine: vcesdk build-engine {bundle_path}")


def _release(version: Any) -> tuple[str, ...]:
    """"10.3.0.26" -> ("10", "3", "0"): the part of a TensorRT version an engine is tied to."""
    return tuple(str(version).split(".")[:3])


def checked_sidecar(model: Path, bundle_path: str | Path, rebuild: str, device: int = 0
                    ) -> dict[str, Any]:
    """The sidecar of an engine-holding model file, checked against this machine.

    Args:
        model: the .engine / .ep file; its sidecar is ``<file>.json``.
        bundle_path: the bundle, named in the rebuild message.
        rebuild: the command that rebuilds the file, for the missing-sidecar message.
        device: CUDA device index the engine will run on.

    Raises:
        BundleError: no sidecar, or an engine built for another GPU / TensorRT / CUDA.
        MissingDependencyError: TensorRT, the NVIDIA driver or a CUDA GPU is missing.
    """
    side = sidecar_path(model)
    if not side.is_file():
        raise BundleError(f"{model.name} has no sidecar {side.name}; rebuild it: {rebuild}")
    sidecar = json.loads(side.read_text(encoding="utf-8"))
    check_engine_compatible(sidecar, local_gpu_environment(device), bundle_path)
    return sidecar
