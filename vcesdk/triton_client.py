"""The ``Triton`` provider: a :class:`~vcesdk.runtime.Synthesizer` whose windows run on a Triton
Inference Server.

``Synthesizer(bundle, providers=["Triton"], triton_url="grpc://host:8001")`` (or
``http://host:8000``; CLI ``--providers Triton --triton-url URL``) keeps everything but the
model on the client, as local providers do: reading, resampling, windowing, stitching,
composition and DICOM. Each window batch is one inference request through ``tritonclient``
(gRPC or HTTP; one client per thread). Before the first window the client:

* finds the model (``triton_model``; default the first ready one of ``<bundle>_python``,
  ``<bundle>_onnx``, ``<bundle>_trt``, ``<bundle>_libtorch``, the names ``vcesdk triton``
  writes) and pins its version (``triton_model_version``; default the newest ready one), and
  names both in :attr:`TritonBackend.name` (``Triton:<model>/<version>@<url>``);
* checks the server's model config against the bundle manifest: one input and one output,
  their names, FP32, dims (C, d, h, w) with -1 for whole-plane axes, a batch dimension, and
  the ``vcesdk_source_sha256`` parameter ``vcesdk triton`` writes (the sha256 of the bundle
  model file the served model was made from). Any difference is one
  :class:`~vcesdk.errors.BundleError` naming both values.

Shared memory (``triton_shared_memory``; CLI ``--triton-shared-memory``): "auto" (default)
passes window batches through POSIX system shared memory (``/dev/shm``) when the URL's host is
a loopback address (127.0.0.1, ``localhost``, ::1), over the network otherwise; "system" always
uses it; "off" never does. Each request in flight has its own input and output region (a pool:
one pair per concurrently running client thread), sized for :attr:`TritonBackend.max_batch_size`
windows of the current shape and grown (unregistered, destroyed, recreated) when a larger window
arrives; regions are named ``vcesdk_<pid>_<thread id>_<uuid>_{in,out}``, registered with the
server, and unregistered and unlinked by :meth:`TritonBackend.close` (also when the backend is
garbage collected or the interpreter exits). Before the first window a small probe region is
registered and unregistered: with "auto", a failure there (the server is on another host behind
a tunnel, runs in a container without the host's IPC namespace, or ``/dev/shm`` is missing) or
later (``/dev/shm`` too full for a larger window) logs one warning and the tensors go over the
network instead -- never to local execution; with "system" it is one
:class:`~vcesdk.errors.TritonError`. :attr:`TritonBackend.name` ends in ``+shm`` while shared
memory is in use. Shared-memory registrations go through the same retry path as requests, and
a server that lost its registrations (restarted) gets them again.

Failures: a request that fails because the server cannot be reached (connection refused,
gRPC UNAVAILABLE / DEADLINE_EXCEEDED, HTTP 502-504) is retried with exponential backoff
(0.1 s doubling, at most 2 s apart) until ``timeout_s`` (default
:data:`DEFAULT_TIMEOUT_S`) has passed since the request began; then, or at once for any other
error, one :class:`~vcesdk.errors.TritonError` is raised. The synthesis stops, nothing is
written, and nothing ever runs locally instead.

Importing this module needs no tritonclient; opening a backend does
(``pip install 'vcesdk[serve]'``).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import threading
import time
import uuid
import weakref
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import numpy as np

from .bundle import Bundle
from .errors import BundleError, MissingDependencyError, ProviderError, TritonError

_logger = logging.getLogger(__name__)

TRITON = "Triton"
"""The provider name."""
DEFAULT_TIMEOUT_S = 30.0
"""How long one request may keep retrying an unreachable server, seconds."""
MODEL_SUFFIXES: tuple[str, ...] = ("python", "onnx", "trt", "libtorch")
"""Model-name suffixes ``vcesdk triton`` writes, in the order the client looks for them."""
INSTALL_CLIENT = "pip install 'vcesdk[serve]' (tritonclient[grpc,http])"
# Triton's (input, output) tensor names per platform / backend; libtorch names by position
_TENSOR_NAMES = {"pytorch_libtorch": ("INPUT__0", "OUTPUT__0")}
_RETRY_GRPC = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"}
_RETRY_HTTP = {"502", "503", "504"}
SHARED_MEMORY_MODES: tuple[str, ...] = ("auto", "system", "off")
"""``triton_shared_memory`` values (see the module docstring)."""
SHM_PREFIX = "vcesdk_"
"""Name prefix of vcesdk's shared-memory regions (the files ``/dev/shm/vcesdk_*``)."""
SHM_SUFFIX = "+shm"
"""Ending of :attr:`TritonBackend.name` while window batches go through shared memory."""
_SHM_DIR = "/dev/shm"
_SHM_LOST = ("Unable to find system shared memory region", "Unable to find shared memory region")


@dataclasses.dataclass(frozen=True)
class TritonEndpoint:
    """A parsed ``triton_url``.

    Attributes:
        protocol: "grpc" or "http".
        address: "host:port" as tritonclient takes it.
    """

    protocol: str
    address: str

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.address}"

    @property
    def host(self) -> str:
        """The host without port or IPv6 brackets."""
        return self.address.rsplit(":", 1)[0].strip("[]")

    @property
    def is_local(self) -> bool:
        """Whether the host is this machine by name: ``localhost`` or a loopback address."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_url(url: str | None) -> TritonEndpoint:
    """``grpc://host:port`` or ``http://host:port`` (default ports 8001 and 8000).

    Raises:
        ProviderError: no URL, another scheme, or no host.
    """
    if not url:
        raise ProviderError("the Triton provider needs triton_url (CLI --triton-url), e.g. "
                            "grpc://127.0.0.1:8001 or http://127.0.0.1:8000")
    parsed = urlparse(url)
    if parsed.scheme not in ("grpc", "http") or not parsed.hostname:
        raise ProviderError(f"triton_url must be grpc://HOST:PORT or http://HOST:PORT, got "
                            f"{url!r}")
    if parsed.path not in ("", "/") or parsed.query:
        raise ProviderError(f"triton_url takes no path or query, got {url!r}")
    port = parsed.port or (8001 if parsed.scheme == "grpc" else 8000)
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return TritonEndpoint(parsed.scheme, f"{host}:{port}")


def _client_module(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
    except (ImportError, RuntimeError):  # tritonclient.http raises RuntimeError without gevent
        raise MissingDependencyError(f"the Triton provider over {protocol} needs tritonclient"
                                     f"[{protocol}]: {INSTALL_CLIENT}") from None
    return mod


def _shm_module() -> Any:
    try:
        import tritonclient.utils.shared_memory as shm
    except ImportError:
        raise MissingDependencyError(f"Triton system shared memory needs tritonclient: "
                                     f"{INSTALL_CLIENT}") from None
    return shm


class _RegionsLost(ConnectionError):
    """The server no longer knows a region (it restarted): register again and retry."""


def _retryable(exc: BaseException) -> bool:
    """Whether a failed call may succeed later (the server is unreachable or restarting)."""
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    status = str(getattr(exc, "status", lambda: None)() or "")
    if status in _RETRY_GRPC or status in _RETRY_HTTP:
        return True
    text = str(exc)
    return any(s in text for s in ("failed to connect", "Connection refused",
                                   "connection refused", "Socket closed", "UNAVAILABLE",
                                   "Broken pipe", "Connection reset"))


def expected_io(bundle: Bundle, platform_or_backend: str) -> tuple[tuple[str, list[int]],
                                                                   tuple[str, list[int]]]:
    """((input name, dims), (output name, dims)) a server model of `bundle` must have: the
    dims without the batch dimension, -1 for whole-plane axes (as ``vcesdk triton`` writes)."""
    from .engines import MODEL_INPUT, MODEL_OUTPUT  # torch-free

    names = _TENSOR_NAMES.get(platform_or_backend, (MODEL_INPUT, MODEL_OUTPUT))
    d, h, w = bundle.window
    spatial = [int(d), int(h or -1), int(w or -1)]
    c_out = int(bundle.manifest["output"]["channels"])
    return (names[0], [len(bundle.windows), *spatial]), (names[1], [c_out, *spatial])


def _source_sha256(bundle: Bundle) -> set[str]:
    """sha256 of every model file of the bundle (the manifest's)."""
    return {str(meta["sha256"]) for meta in bundle.manifest.get("files", {}).values()
            if meta.get("role") == "model"}


def check_model_config(bundle: Bundle, config: dict, model: str) -> None:
    """Refuse a server model that does not run `bundle`'s model.

    Args:
        bundle: the verified bundle.
        config: the server's model config as JSON (``get_model_config(..., as_json=True)``,
            unwrapped from ``{"config": ...}``).
        model: the model's name (for messages).

    Raises:
        BundleError: the first difference, naming the expected and the served value.
    """
    def refuse(what: str) -> BundleError:
        return BundleError(f"Triton model {model!r} does not serve bundle {bundle.name}: "
                           f"{what}")

    kind = config.get("backend") or config.get("platform") or ""
    if int(config.get("max_batch_size", 0) or 0) < 1:
        raise refuse("it has no batch dimension (max_batch_size 0); write it with vcesdk "
                     "triton")
    (in_name, in_dims), (out_name, out_dims) = expected_io(bundle, kind)
    for side, want_name, want_dims in (("input", in_name, in_dims),
                                       ("output", out_name, out_dims)):
        tensors = config.get(side, [])
        if len(tensors) != 1:
            raise refuse(f"expected one {side} tensor, the server has {len(tensors)}")
        t = tensors[0]
        dims = [int(x) for x in t.get("dims", [])]
        dtype = t.get("data_type", "")
        if t.get("name") != want_name:
            raise refuse(f"{side} is named {t.get('name')!r}, the manifest's is {want_name!r}")
        if dtype != "TYPE_FP32":
            raise refuse(f"{side} {want_name} is {dtype}, expected TYPE_FP32")
        if dims != want_dims:
            raise refuse(f"{side} {want_name} has dims {dims} (without the batch), the "
                         f"manifest's window gives {want_dims}")
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    served = params.get("vcesdk_source_sha256")
    if served is None:
        raise refuse("its config has no vcesdk_source_sha256 parameter, so nothing shows it "
                     "was made from this bundle; write the repository with vcesdk triton")
    if served not in _source_sha256(bundle):
        raise refuse(f"it was made from a model file with sha256 {served[:12]}..., which is "
                     f"not one of the bundle's model files")


def _shm_room(need: int) -> None:
    """Raise OSError when ``/dev/shm`` has less than `need` bytes free: a region larger than
    the room left would be created (sparse) but kill the process with SIGBUS when written."""
    try:
        st = os.statvfs(_SHM_DIR)
    except OSError:
        return  # no /dev/shm (not Linux): creating the region says whether it works
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise OSError(f"{_SHM_DIR} has {free / 2**20:.1f} MiB free, the window batch needs "
                      f"{need / 2**20:.1f} MiB")


class _Region:
    """One system shared-memory region of this process: tritonclient's handle and its name
    (``vcesdk_<pid>_<thread id>_<uuid>_<tag>``; key ``/<name>``, the file ``/dev/shm/<name>``).
    """

    def __init__(self, shm: Any, tag: str, byte_size: int) -> None:
        self.name = (f"{SHM_PREFIX}{os.getpid()}_{threading.get_ident()}_"
                     f"{uuid.uuid4().hex[:12]}_{tag}")
        self.key = "/" + self.name
        self.byte_size = int(byte_size)
        self._shm = shm
        try:
            self.handle = shm.create_shared_memory_region(self.name, self.key, self.byte_size,
                                                          create_only=True)
        except Exception as exc:  # noqa: BLE001 - SharedMemoryException, OSError
            cause = exc.__cause__ or exc
            raise OSError(f"cannot create shared memory {self.key} ({self.byte_size} bytes): "
                          f"{cause}") from None

    def write(self, array: np.ndarray) -> None:
        self._shm.set_shared_memory_region(self.handle, [array])

    def read(self, shape: Sequence[int]) -> np.ndarray:
        """A copy of the first prod(shape) float32 values (no view outlives the call, so the
        region can always be destroyed)."""
        view = self._shm.get_contents_as_numpy(self.handle, np.float32, list(shape))
        try:
            return np.array(view, dtype=np.float32, copy=True)
        finally:
            del view

    def destroy(self) -> None:
        try:
            self._shm.destroy_shared_memory_region(self.handle)
        except Exception as exc:  # noqa: BLE001 - never raise while cleaning up
            _logger.warning("could not destroy shared memory %s: %s", self.key, exc)


_PAIR_FIELD = {"in": "inp", "out": "out"}


@dataclasses.dataclass
class _Pair:
    """The input and output region one request in flight uses."""

    inp: _Region | None = None
    out: _Region | None = None
    registered: bool = True   # False once the server said it lost them (it restarted)


class _ShmPool:
    """Every shared-memory region of one backend in one process, and the free pairs; holds no
    reference to the backend, so that :func:`_release_pool` can run when it is collected."""

    def __init__(self, endpoint: TritonEndpoint, mod: Any, shm: Any) -> None:
        self.endpoint, self.mod, self.shm = endpoint, mod, shm
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.free: list[_Pair] = []
        self.regions: dict[str, _Region] = {}
        self.registered: set[str] = set()

    def create(self, tag: str, byte_size: int) -> _Region:
        region = _Region(self.shm, tag, byte_size)
        with self.lock:
            self.regions[region.name] = region
        return region

    def forget(self, region: _Region) -> None:
        """Destroy `region` (after it was unregistered)."""
        with self.lock:
            self.regions.pop(region.name, None)
            self.registered.discard(region.name)
        region.destroy()

    def take(self) -> _Pair:
        with self.lock:
            return self.free.pop() if self.free else _Pair()

    def give_back(self, pair: _Pair) -> None:
        with self.lock:
            if all(r is None or r.name in self.regions for r in (pair.inp, pair.out)):
                self.free.append(pair)


# seconds a released pool spends unregistering its regions, and one call's deadline (at exit
# too: eight processes leaving at once on a 2-core host took a 2 s gRPC call past its deadline,
# tests/test_triton_serving.py::test_eight_processes_identical); no call starts after it
RELEASE_TIMEOUT_S = 5.0


def _unregister_quietly(client: Any, name: str, **kw: Any) -> None:
    """Unregister region `name` from the server (`kw`: the client call's options, e.g. a gRPC
    ``client_timeout``), ignoring any failure (best-effort cleanup: :func:`_release_pool`
    unlinks the files at the latest)."""
    try:
        client.unregister_system_shared_memory(name, **kw)
    except Exception:  # noqa: BLE001 - tritonclient raises several kinds
        _logger.debug("could not unregister shared memory %s", name)


def _release_pool(pool: _ShmPool) -> None:
    """Unlink every region of `pool`, then unregister each from the server (best effort, for
    :data:`RELEASE_TIMEOUT_S` at most; a failed call does not stop the others).
    Runs once: from :meth:`TritonBackend.close`, when the backend is garbage collected, or at
    interpreter exit; in a forked child it leaves the parent's regions alone."""
    if os.getpid() != pool.pid:
        return
    with pool.lock:
        regions = list(pool.regions.values())
        registered = sorted(pool.registered)
        pool.regions.clear()
        pool.registered.clear()
        pool.free.clear()
    for region in regions:  # the files first: nothing stays in /dev/shm whatever the server
        region.destroy()     # does (it keeps its own mapping until it unregisters)
    if registered:
        client = None
        try:
            if pool.endpoint.protocol == "grpc":
                client = pool.mod.InferenceServerClient(pool.endpoint.address)
                kw: dict = {"client_timeout": RELEASE_TIMEOUT_S}
            else:
                client = pool.mod.InferenceServerClient(pool.endpoint.address,
                                                        connection_timeout=RELEASE_TIMEOUT_S,
                                                        network_timeout=RELEASE_TIMEOUT_S)
                kw = {}
            deadline = time.monotonic() + RELEASE_TIMEOUT_S
            for name in registered:  # one failed call must not leave the others registered
                if time.monotonic() > deadline:
                    break
                _unregister_quietly(client, name, **kw)
        except Exception as exc:  # noqa: BLE001 - the server may be gone; the files still go
            _logger.debug("Triton %s: could not unregister shared memory: %s",
                          pool.endpoint.url, exc)
        finally:
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001
                    pass


class TritonBackend:
    """Runs window batches on one model of a Triton server (see the module docstring).

    Args:
        bundle: the verified bundle whose model the server must serve.
        url: ``grpc://host:port`` or ``http://host:port``.
        model: model name (default: found as the module docstring says).
        version: model version (default: the newest ready one).
        timeout_s: how long one request may retry an unreachable server, seconds.
        shared_memory: "auto" (default: system shared memory when the URL's host is a
            loopback address), "system" (always) or "off" (never); see the module docstring.

    Attributes:
        name: ``Triton:<model>/<version>@<url>``, with ``+shm`` at the end while window
            batches go through system shared memory.
        model, version, endpoint: what it talks to.
        max_batch_size: the model's max_batch_size; larger batches are split.
        shared_memory: the mode asked for.

    Raises:
        ProviderError: a bad URL or shared-memory mode; no model of the bundle on the server.
        BundleError: the server's model config does not match the manifest.
        TritonError: the server did not answer within `timeout_s`; "system" shared memory
            that the server cannot use.
        MissingDependencyError: tritonclient is not installed.
    """

    def __init__(self, bundle: Bundle, url: str, model: str | None = None,
                 version: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 shared_memory: str = "auto") -> None:
        if timeout_s <= 0:
            raise ProviderError(f"the Triton timeout must be > 0 s, got {timeout_s}")
        if shared_memory not in SHARED_MEMORY_MODES:
            raise ProviderError(f"triton_shared_memory must be one of "
                                f"{', '.join(SHARED_MEMORY_MODES)}, got {shared_memory!r}")
        self.shared_memory = shared_memory
        self._shm_pool: _ShmPool | None = None
        self._finalizers: list[weakref.finalize] = []
        self._closed = False
        self._shm_warned = False
        self.bundle = bundle
        self.endpoint = parse_url(url)
        self.timeout_s = float(timeout_s)
        self._mod = _client_module(self.endpoint.protocol)
        self._local = threading.local()
        try:
            self._open(model, version)
        except BaseException:
            self.close()  # no connection or region outlives a refused backend
            raise
        _logger.info("bundle %s runs on %s", bundle.name, self.name)

    def _open(self, model: str | None, version: str | None) -> None:
        self._call("reach the server", lambda: self._client().is_server_live())
        self.model = model or self._find_model()
        self.version = version or self._newest_version()
        if not self._call("ask for the model", lambda: self._client().is_model_ready(
                self.model, self.version)):
            raise ProviderError(f"Triton model {self.model!r} version {self.version} is not "
                                f"ready on {self.endpoint.url}")
        config = self._call("read the model config", lambda: self._client().get_model_config(
            self.model, self.version, **self._json_kw()))
        config = config.get("config", config)
        check_model_config(self.bundle, config, self.model)
        self.max_batch_size = int(config["max_batch_size"])
        in_cfg, out_cfg = config["input"][0], config["output"][0]
        self._input, self._output = str(in_cfg["name"]), str(out_cfg["name"])
        self._out_channels = int(out_cfg["dims"][0])
        self._base_name = f"{TRITON}:{self.model}/{self.version}@{self.endpoint.url}"
        if self.shared_memory == "system" or (self.shared_memory == "auto"
                                              and self.endpoint.is_local):
            self._start_shared_memory()

    @property
    def name(self) -> str:
        return self._base_name + (SHM_SUFFIX if self._shm_pool is not None else "")

    @property
    def uses_shared_memory(self) -> bool:
        """Whether window batches go through system shared memory now."""
        return self._shm_pool is not None

    def close(self) -> None:
        """Unregister and unlink every shared-memory region, close this thread's client; the
        backend runs nothing afterwards. Idempotent."""
        self._closed = True
        self._shm_pool = None
        for fin in self._finalizers:
            fin()
        self._drop_client()

    # -- system shared memory ---------------------------------------------------------------

    def _new_pool(self) -> _ShmPool:
        pool = _ShmPool(self.endpoint, self._mod, _shm_module())
        self._finalizers.append(weakref.finalize(self, _release_pool, pool))
        return pool

    def _shm_unavailable(self, reason: str) -> None:
        """"system": one TritonError; "auto": one warning, tensors go over the network."""
        if self.shared_memory == "system":
            raise TritonError(f"Triton server {self.endpoint.url} cannot use system shared "
                              f"memory (triton_shared_memory='system'): {reason}. The server "
                              f"must run on this host and see its {_SHM_DIR} (a container "
                              f"needs --ipc=host); pass triton_shared_memory='off' "
                              f"(--triton-shared-memory off) to send tensors over the network")
        if not self._shm_warned:
            self._shm_warned = True
            _logger.warning("Triton %s: system shared memory unavailable (%s); window batches "
                            "go over the network instead (triton_shared_memory='off' asks for "
                            "that without trying)", self.endpoint.url, reason)
        self._shm_pool = None  # its regions are released on close / collection / exit

    def _start_shared_memory(self) -> None:
        """Register and unregister a small probe region: whether the server maps this host's
        shared memory."""
        pool = self._new_pool()
        probe = None
        try:
            probe = pool.create("probe", 64)
            self._call(f"register shared memory {probe.key}",
                       lambda: self._client().register_system_shared_memory(
                           probe.name, probe.key, probe.byte_size))
            pool.registered.add(probe.name)
            self._call(f"unregister shared memory {probe.key}",
                       lambda: self._client().unregister_system_shared_memory(probe.name))
            pool.registered.discard(probe.name)
        except (TritonError, OSError) as exc:
            release = self._finalizers.pop()
            release()  # nothing of the probe is left
            self._shm_unavailable(str(exc))
            return
        pool.forget(probe)
        self._shm_pool = pool

    def _acquire(self, shape: tuple[int, ...]) -> _Pair | None:
        """A pair of regions for one request of `shape`, registered and large enough for
        :attr:`max_batch_size` windows of this shape; None when shared memory is off (or,
        with "auto", has just failed)."""
        pool = self._shm_pool
        if pool is None:
            return None
        if pool.pid != os.getpid():  # a forked child: its own regions, the parent's untouched
            pool = self._shm_pool = self._new_pool()
        window = int(np.prod(shape[1:]))
        need = {"in": self.max_batch_size * window * 4,
                "out": self.max_batch_size * self._out_channels * int(np.prod(shape[2:])) * 4}
        pair = pool.take()
        have = {"in": pair.inp, "out": pair.out}
        small = [tag for tag in need if have[tag] is None or have[tag].byte_size < need[tag]]
        if not small:
            return pair
        try:
            _shm_room(sum(need[tag] for tag in small))
            for tag in small:
                old = have[tag]
                if old is not None:  # grow: unregister and destroy, then a larger one
                    setattr(pair, _PAIR_FIELD[tag], None)
                    if old.name in pool.registered:
                        self._call(f"unregister shared memory {old.key}",
                                   lambda: self._client().unregister_system_shared_memory(
                                       old.name))
                    pool.forget(old)
                region = pool.create(tag, need[tag])
                setattr(pair, _PAIR_FIELD[tag], region)
                self._call(f"register shared memory {region.key}",
                           lambda: self._client().register_system_shared_memory(
                               region.name, region.key, region.byte_size))
                pool.registered.add(region.name)
            return pair
        except (TritonError, OSError) as exc:
            for region in (pair.inp, pair.out):
                if region is not None:
                    if region.name in pool.registered:
                        _unregister_quietly(self._client(), region.name)
                    pool.forget(region)
            self._shm_unavailable(str(exc))
            return None

    def _register_again(self, client: Any, pair: _Pair) -> None:
        """Register both regions of `pair` again (the server lost them: it restarted)."""
        for region in (pair.inp, pair.out):
            _unregister_quietly(client, region.name)  # not registered: what we expect
            client.register_system_shared_memory(region.name, region.key, region.byte_size)
        pair.registered = True

    # -- plumbing ---------------------------------------------------------------------------

    def _json_kw(self) -> dict:
        return {"as_json": True} if self.endpoint.protocol == "grpc" else {}

    def _client(self) -> Any:
        """This thread's client (tritonclient's clients are not shared between threads)."""
        client = getattr(self._local, "client", None)
        if client is None:
            try:
                client = self._mod.InferenceServerClient(self.endpoint.address)
            except Exception as exc:  # noqa: BLE001 - tritonclient raises several kinds
                raise TritonError(f"cannot open a Triton client for {self.endpoint.url}: "
                                  f"{exc}") from None
            self._local.client = client
        return client

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """`fn()`, retried with backoff while the server is unreachable, up to timeout_s.

        Raises:
            TritonError: timeout, or an error that retrying cannot fix.
        """
        start = time.monotonic()
        delay, attempts = 0.1, 0
        while True:
            attempts += 1
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised as one error
                elapsed = time.monotonic() - start
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(
                    exc).__name__
                if not _retryable(exc):
                    raise TritonError(f"Triton server {self.endpoint.url} failed to {what}: "
                                      f"{first}") from None
                if elapsed + delay > self.timeout_s:
                    raise TritonError(f"Triton server {self.endpoint.url} unreachable: could "
                                      f"not {what} within {self.timeout_s:g} s ({attempts} "
                                      f"attempts; last: {first}); nothing runs locally "
                                      f"instead") from None
                _logger.warning("Triton %s: %s; retrying in %.1f s", self.endpoint.url,
                                first, delay)
                self._drop_client()  # fn asks for a fresh client (self._client()) each call
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    def _find_model(self) -> str:
        index = self._call("list its models", lambda: self._client().get_model_repository_index(
            **self._json_kw()))
        models = index.get("models", []) if isinstance(index, dict) else index
        ready = {m["name"] for m in models if m.get("state") == "READY"}
        for suffix in MODEL_SUFFIXES:
            name = f"{self.bundle.name}_{suffix}"
            if name in ready:
                return name
        listed = ", ".join(sorted(m["name"] for m in models)) or "none"
        raise ProviderError(f"no ready model of bundle {self.bundle.name} on "
                            f"{self.endpoint.url} (looked for "
                            f"{', '.join(f'{self.bundle.name}_{s}' for s in MODEL_SUFFIXES)}; "
                            f"it has {listed}); pass triton_model (--triton-model)")

    def _newest_version(self) -> str:
        meta = self._call("read the model metadata", lambda: self._client().get_model_metadata(
            self.model, **self._json_kw()))
        versions = [str(v) for v in meta.get("versions", [])]
        if not versions:
            raise ProviderError(f"Triton model {self.model!r} has no ready version on "
                                f"{self.endpoint.url}")
        return max(versions, key=lambda v: int(v) if v.isdigit() else -1)

    # -- the Backend protocol ---------------------------------------------------------------

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (B, C, d, h, w) -> float32 (B, C', d, h, w), in requests of at most
        :attr:`max_batch_size` windows.

        Raises:
            TritonError: the server failed or was unreachable for `timeout_s`.
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outs = [self._infer(batch[i:i + self.max_batch_size])
                for i in range(0, len(batch), self.max_batch_size)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if self._closed:
            raise TritonError(f"the Triton backend {self.name} was closed")
        pair = self._acquire(batch.shape)

        def once() -> np.ndarray:
            client = self._client()
            inp = self._mod.InferInput(self._input, list(batch.shape), "FP32")
            out = self._mod.InferRequestedOutput(self._output)
            if pair is None:
                inp.set_data_from_numpy(batch)
                result = client.infer(self.model, [inp], model_version=self.version,
                                      outputs=[out])
                return result.as_numpy(self._output)
            if not pair.registered:
                self._register_again(client, pair)
            pair.inp.write(batch)
            inp.set_shared_memory(pair.inp.name, batch.nbytes)
            out.set_shared_memory(pair.out.name, pair.out.byte_size)
            try:
                result = client.infer(self.model, [inp], model_version=self.version,
                                      outputs=[out])
            except Exception as exc:  # noqa: BLE001 - only a lost region is handled here
                if any(m in str(exc) for m in _SHM_LOST):
                    pair.registered = False
                    raise _RegionsLost(str(exc)) from None
                raise
            tensor = result.get_output(self._output)
            shape = [int(x) for x in (tensor["shape"] if isinstance(tensor, dict)
                                      else tensor.shape)]
            if int(np.prod(shape)) * 4 > pair.out.byte_size:
                raise TritonError(f"Triton model {self.model} returned shape {shape}, larger "
                                  f"than its shared memory region")
            return pair.out.read(shape)

        try:
            out = self._call(f"run model {self.model}", once)
        finally:
            if pair is not None and self._shm_pool is not None:
                self._shm_pool.give_back(pair)
        if out is None or out.shape[0] != batch.shape[0] or out.shape[2:] != batch.shape[2:]:
            raise TritonError(f"Triton model {self.model} returned shape "
                              f"{None if out is None else out.shape} for a batch of "
                              f"{batch.shape}")
        return np.asarray(out, dtype=np.float32)


# ---- registration hook -------------------------------------------------------------------
# The runtime calls these two; they are the whole surface a backend registry needs.

def is_triton(providers: Sequence[str] | None) -> bool:
    """Whether a provider request asks for Triton.

    Raises:
        ProviderError: Triton listed with other providers (it runs alone: a remote server is
            never paired with a silent local fallback).
    """
    if providers is None or TRITON not in providers:
        return False
    others = [p for p in providers if p != TRITON]
    if others:
        raise ProviderError(f"the Triton provider runs alone, not with {', '.join(others)}: "
                            f"vcesdk never falls back from a server to local execution")
    return True


def open_triton(bundle: Bundle, triton_url: str | None, model: str | None = None,
                version: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                shared_memory: str = "auto") -> TritonBackend:
    """The :class:`TritonBackend` for ``providers=["Triton"]`` (see the class)."""
    return TritonBackend(bundle, triton_url or "", model, version, timeout_s, shared_memory)


__all__ = ["DEFAULT_TIMEOUT_S", "MODEL_SUFFIXES", "SHARED_MEMORY_MODES", "SHM_PREFIX",
           "SHM_SUFFIX", "TRITON", "TritonBackend", "TritonEndpoint", "check_model_config",
           "expected_io", "is_triton", "open_triton", "parse_url"]
