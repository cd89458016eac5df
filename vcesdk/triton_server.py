"""A real Triton Inference Server for a vcesdk model repository, started by vcesdk.

The ``nvidia-pytriton`` wheel (the ``serve`` extra) ships a CPU/GPU ``tritonserver`` binary with
Triton's Python backend; :class:`TritonServer` runs that binary (never pytriton's own Python
API) on a repository written by ``vcesdk triton BUNDLE --platform python``:

* the Python-backend stub built for the running Python (``pytriton/tritonserver/
  python_backend_stubs/<X.Y>/triton_python_backend_stub``) is copied, with links to the
  backend library and ``triton_python_backend_utils.py``, into a backends folder under vcesdk's
  cache (:func:`backend_directory`; nothing is written into site-packages);
* ``LD_LIBRARY_PATH`` gets the wheel's libraries (``nvidia_pytriton.libs``, and
  ``tritonserver/lib`` and ``tritonserver/external_libs`` in wheels that have them);
* the running Python's ``bin`` folder (the virtual environment) goes first on ``PATH``, so the
  stub's embedded Python finds this environment's packages (numpy, onnxruntime), as pytriton's
  own launcher does.

The server listens on `host` only (127.0.0.1 by default), serves gRPC and HTTP, no metrics.
On a GPU host the NGC container (``nvcr.io/nvidia/tritonserver:<yy.mm>-py3``) serves the same
repository, every platform included; this binary ships only the Python backend, so
:func:`check_repository` refuses repositories with models it cannot load.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Sequence

from .errors import InputError, MissingDependencyError, TritonError

_logger = logging.getLogger(__name__)

INSTALL_SERVE = "pip install 'vcesdk[serve]' (nvidia-pytriton, tritonclient)"
STUB = "triton_python_backend_stub"
# Triton platform -> the backend that loads it (Triton's own mapping).
_PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt",
                      "pytorch_libtorch": "pytorch", "tensorflow_savedmodel": "tensorflow",
                      "tensorflow_graphdef": "tensorflow"}


TritonServerError = TritonError
"""The server could not start, did not become ready, or died
(:class:`vcesdk.errors.TritonError`)."""


@dataclasses.dataclass(frozen=True)
class TritonDistribution:
    """Where the ``nvidia-pytriton`` wheel keeps the server.

    Attributes:
        root: ``site-packages/pytriton/tritonserver``.
        binary: the ``tritonserver`` executable.
        library_dirs: folders for ``LD_LIBRARY_PATH``, existing ones only.
        version: the nvidia-pytriton version.
    """

    root: Path
    binary: Path
    library_dirs: tuple[Path, ...]
    version: str

    @property
    def backends(self) -> list[str]:
        """Backends this build ships (folder names under ``backends/``)."""
        return sorted(p.name for p in (self.root / "backends").iterdir() if p.is_dir())

    def stub(self, python: str | None = None) -> Path:
        """The Python-backend stub for Python `python` ("3.11"; default: the running one).

        Raises:
            MissingDependencyError: the wheel has no stub for that Python.
        """
        python = python or f"{sys.version_info[0]}.{sys.version_info[1]}"
        path = self.root / "python_backend_stubs" / python / STUB
        if not path.is_file():
            have = sorted(p.name for p in (self.root / "python_backend_stubs").iterdir())
            raise MissingDependencyError(f"nvidia-pytriton {self.version} has no Python-backend "
                                         f"stub for Python {python} (has {', '.join(have)})")
        return path


def find_distribution() -> TritonDistribution:
    """The tritonserver of the installed ``nvidia-pytriton`` wheel.

    Raises:
        MissingDependencyError: nvidia-pytriton is not installed, or its binary is missing.
    """
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"the Triton server comes from nvidia-pytriton, which is "
                                     f"not installed: {INSTALL_SERVE}")
    pkg = Path(list(spec.submodule_search_locations)[0])
    root = pkg / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not binary.is_file():
        raise MissingDependencyError(f"nvidia-pytriton is installed but has no tritonserver "
                                     f"binary at {binary} (a wheel for another platform?): "
                                     f"{INSTALL_SERVE}")
    libs = (pkg.parent / "nvidia_pytriton.libs", root / "lib", root / "external_libs")
    try:
        version = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return TritonDistribution(root, binary, tuple(p for p in libs if p.is_dir()), version)


def cache_root() -> Path:
    """vcesdk's cache folder: ``$VCESDK_CACHE``, else ``$XDG_CACHE_HOME/vcesdk``, else
    ``~/.cache/vcesdk``."""
    if os.environ.get("VCESDK_CACHE"):
        return Path(os.environ["VCESDK_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vcesdk"


def backend_directory(dist: TritonDistribution | None = None, cache: Path | None = None
                      ) -> Path:
    """A Triton backends folder whose ``python/`` backend has the stub for the running Python.

    Built once per nvidia-pytriton version and Python version under
    ``<cache>/tritonserver/<version>-py<X.Y>/backends`` (default cache :func:`cache_root`): the
    stub is copied, the backend library and ``triton_python_backend_utils.py`` are linked (or
    copied where links are not possible). Built in a temporary folder and renamed into place,
    so concurrent callers never see half a folder.

    Returns:
        The backends folder for ``--backend-directory``.

    Raises:
        MissingDependencyError: no nvidia-pytriton, or no stub for this Python.
    """
    dist = dist or find_distribution()
    stub = dist.stub()
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    top = (cache or cache_root()) / "tritonserver" / f"{dist.version}-py{py}"
    target = top / "backends"
    if (target / "python" / STUB).is_file():
        return target
    top.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".backends-", dir=top))
    try:
        for backend in dist.backends:
            src = dist.root / "backends" / backend
            dst = tmp / backend
            dst.mkdir()
            for f in src.iterdir():
                try:
                    (dst / f.name).symlink_to(f)
                except OSError:
                    shutil.copy2(f, dst / f.name)
        shutil.copy2(stub, tmp / "python" / STUB)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "python" / STUB).is_file():  # not another caller's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def server_environment(dist: TritonDistribution, base: dict[str, str] | None = None
                       ) -> dict[str, str]:
    """The environment tritonserver and its Python stubs need (see the module docstring)."""
    env = dict(os.environ if base is None else base)
    libs = [str(p) for p in dist.library_dirs]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    return env


def repository_models(repo: str | os.PathLike) -> dict[str, str]:
    """Model name -> the backend that loads it, for every ``*/config.pbtxt`` in `repo`.

    Raises:
        InputError: `repo` is not a folder, or holds no model.
        MissingDependencyError: tritonclient (Triton's config schema) is not installed.
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise InputError(f"Triton model repository not found: {repo}")
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as pb
    except ImportError:
        raise MissingDependencyError(f"reading config.pbtxt needs tritonclient: "
                                     f"{INSTALL_SERVE}") from None
    models: dict[str, str] = {}
    for cfg_path in sorted(repo.glob("*/config.pbtxt")):
        cfg = text_format.Parse(cfg_path.read_text(encoding="utf-8"), pb.ModelConfig())
        models[cfg_path.parent.name] = cfg.backend or _PLATFORM_BACKENDS.get(cfg.platform,
                                                                             cfg.platform)
    if not models:
        raise InputError(f"{repo} holds no model (no */config.pbtxt); write one with "
                         f"vcesdk triton BUNDLE -o {repo} --platform python")
    return models


def check_repository(repo: str | os.PathLike, dist: TritonDistribution,
                     models: Sequence[str] | None = None) -> list[str]:
    """The models to load from `repo`: `models` (default all), each one this server build
    has the backend for.

    Raises:
        InputError: a named model is not in the repository, or a model needs a backend this
            build lacks (the message names the backends it has and the NGC container).
    """
    found = repository_models(repo)
    chosen = list(models) if models else list(found)
    for name in chosen:
        if name not in found:
            raise InputError(f"model {name!r} is not in {repo}; it has {', '.join(found)}")
    have = set(dist.backends)
    bad = [f"{n} ({found[n]})" for n in chosen if found[n] not in have]
    if bad:
        loadable = [n for n in found if found[n] in have]
        hint = (f"; load only {', '.join(loadable)} with --model" if loadable else
                "; write the repository with --platform python")
        raise InputError(f"this tritonserver (nvidia-pytriton {dist.version}) has only the "
                         f"{', '.join(sorted(have))} backend, and {', '.join(bad)} needs "
                         f"another; serve the repository with the NGC tritonserver container"
                         f"{hint}")
    return chosen


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TritonServer:
    """A tritonserver process serving one repository on `host`.

    Use as a context manager, or :meth:`start` / :meth:`wait_ready` / :meth:`stop`::

        with TritonServer(repo) as server:
            syn = Synthesizer(bundle, providers=["Triton"], triton_url=server.grpc_url)

    Args:
        repo: a model repository (see :func:`check_repository`).
        grpc_port, http_port: ports (default: free ones).
        host: address to listen on (127.0.0.1: this machine only).
        models: models to load (default: all in the repository).
        log: where the server's output goes (default: inherited stdout/stderr).
        extra_args: more tritonserver arguments.

    Attributes:
        grpc_url, http_url: ``grpc://host:port`` and ``http://host:port``.
        process: the server process once started.

    Raises:
        MissingDependencyError: nvidia-pytriton is not installed.
        InputError: an unloadable repository (see :func:`check_repository`).
    """

    def __init__(self, repo: str | os.PathLike, grpc_port: int | None = None,
                 http_port: int | None = None, host: str = "127.0.0.1",
                 models: Sequence[str] | None = None, log: IO | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.dist = find_distribution()
        self.repo = Path(repo).resolve()
        self.models = check_repository(self.repo, self.dist, models)
        self.host = host
        self.grpc_port = int(grpc_port or free_port(host))
        self.http_port = int(http_port or free_port(host))
        if self.grpc_port == self.http_port:
            raise InputError(f"gRPC and HTTP need two ports, got {self.grpc_port} for both")
        self.log = log
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def command(self) -> list[str]:
        """The tritonserver command line."""
        cmd = [str(self.dist.binary), f"--model-repository={self.repo}",
               f"--backend-directory={backend_directory(self.dist)}",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
               f"--http-address={self.host}", f"--http-port={self.http_port}",
               "--allow-metrics=false", "--allow-gpu-metrics=false",
               "--model-control-mode=explicit", "--exit-on-error=true",
               "--strict-readiness=true"]
        cmd += [f"--load-model={m}" for m in self.models]
        return cmd + self.extra_args

    def start(self) -> "TritonServer":
        """Start the process (in its own process group, so :meth:`stop` ends its stubs too).

        Raises:
            TritonServerError: the binary could not be started.
        """
        if self.process is not None:
            raise TritonServerError("this TritonServer was started already")
        cmd = self.command()
        _logger.info("starting %s", " ".join(cmd))
        try:
            self.process = subprocess.Popen(cmd, env=server_environment(self.dist),
                                            stdout=self.log, stderr=subprocess.STDOUT
                                            if self.log is not None else None,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise TritonServerError(f"could not start {cmd[0]}: {exc}") from None
        return self

    def ready(self) -> bool:
        """Whether the server answers ``GET /v2/health/ready`` with 200 (every model loaded)."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until :meth:`ready`.

        Raises:
            TritonServerError: the process exited, or `timeout_s` passed (it is stopped).
        """
        if self.process is None:
            raise TritonServerError("the server was not started")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                self.process = None
                raise TritonServerError(f"tritonserver exited with status {code} before it "
                                        f"was ready (its log says why)")
            if self.ready():
                _logger.info("tritonserver ready: %s, %s", self.grpc_url, self.http_url)
                return
            time.sleep(0.25)
        self.stop()
        raise TritonServerError(f"tritonserver was not ready within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Stop the server and its children: SIGINT to its process group (Triton unloads
        models and exits), SIGKILL after `timeout_s`.

        Returns:
            The exit status, or None when it was not running.
        """
        proc, self.process = self.process, None
        if proc is None:
            return None
        for sig, wait in ((signal.SIGINT, timeout_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # stubs left behind by a killed server
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.returncode

    def __enter__(self) -> "TritonServer":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["INSTALL_SERVE", "TritonDistribution", "TritonServer", "TritonServerError",
           "backend_directory", "cache_root", "check_repository", "find_distribution",
           "free_port", "repository_models", "server_environment"]
