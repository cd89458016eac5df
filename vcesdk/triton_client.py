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
import logging
import threading
import time
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


class TritonBackend:
    """Runs window batches on one model of a Triton server (see the module docstring).

    Args:
        bundle: the verified bundle whose model the server must serve.
        url: ``grpc://host:port`` or ``http://host:port``.
        model: model name (default: found as the module docstring says).
        version: model version (default: the newest ready one).
        timeout_s: how long one request may retry an unreachable server, seconds.

    Attributes:
        name: ``Triton:<model>/<version>@<url>``.
        model, version, endpoint: what it talks to.
        max_batch_size: the model's max_batch_size; larger batches are split.

    Raises:
        ProviderError: a bad URL; no model of the bundle on the server.
        BundleError: the server's model config does not match the manifest.
        TritonError: the server did not answer within `timeout_s`.
        MissingDependencyError: tritonclient is not installed.
    """

    def __init__(self, bundle: Bundle, url: str, model: str | None = None,
                 version: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if timeout_s <= 0:
            raise ProviderError(f"the Triton timeout must be > 0 s, got {timeout_s}")
        self.bundle = bundle
        self.endpoint = parse_url(url)
        self.timeout_s = float(timeout_s)
        self._mod = _client_module(self.endpoint.protocol)
        self._local = threading.local()
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
        check_model_config(bundle, config, self.model)
        self.max_batch_size = int(config["max_batch_size"])
        in_cfg, out_cfg = config["input"][0], config["output"][0]
        self._input, self._output = str(in_cfg["name"]), str(out_cfg["name"])
        self.name = f"{TRITON}:{self.model}/{self.version}@{self.endpoint.url}"
        _logger.info("bundle %s runs on %s", bundle.name, self.name)

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
        def once() -> np.ndarray:
            client = self._client()
            inp = self._mod.InferInput(self._input, list(batch.shape), "FP32")
            inp.set_data_from_numpy(batch)
            out = self._mod.InferRequestedOutput(self._output)
            result = client.infer(self.model, [inp], model_version=self.version,
                                  outputs=[out])
            return result.as_numpy(self._output)

        out = self._call(f"run model {self.model}", once)
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
                version: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
                ) -> TritonBackend:
    """The :class:`TritonBackend` for ``providers=["Triton"]`` (see the class)."""
    return TritonBackend(bundle, triton_url or "", model, version, timeout_s)


__all__ = ["DEFAULT_TIMEOUT_S", "MODEL_SUFFIXES", "TRITON", "TritonBackend", "TritonEndpoint",
           "check_model_config", "expected_io", "is_triton", "open_triton", "parse_url"]
