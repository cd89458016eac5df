"""Starting a real tritonserver (the nvidia-pytriton wheel's, via vcesdk.triton_server) for a
test module: 127.0.0.1 only, free ports, readiness waited for with a timeout, the server and
its Python-backend stubs stopped afterwards (one process group)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import pytest

READY_TIMEOUT_S = 120.0


def need_server() -> None:
    """Skip (with the reason) where the serve extra is not installed."""
    pytest.importorskip("tritonclient.grpc", reason="needs the serve extra (tritonclient)")
    pytest.importorskip("tritonclient.http", reason="needs the serve extra (tritonclient[http])")
    from vcesdk.errors import MissingDependencyError
    from vcesdk.triton_server import find_distribution

    try:
        find_distribution().stub()
    except MissingDependencyError as exc:
        pytest.skip(f"no tritonserver here: {exc}")


def write_python_repository(out: Path, **kw) -> Path:
    """A ``--platform python`` repository of the demo bundle with CPU instances."""
    import vcesdk
    from vcesdk.export.triton import write_triton_repository

    return write_triton_repository(vcesdk.DEFAULT_BUNDLE, out, platforms=["python"],
                                   kind="KIND_CPU", **kw)


@contextlib.contextmanager
def running_server(repo: Path, log_path: Path) -> Iterator["object"]:
    """A started, ready :class:`vcesdk.triton_server.TritonServer`; stopped on exit. Its log
    goes to `log_path`, whose tail is shown if it does not become ready."""
    from vcesdk.triton_server import TritonServer

    with open(log_path, "w", encoding="utf-8") as log:
        server = TritonServer(repo, host="127.0.0.1", log=log)
        server.start()
        try:
            try:
                server.wait_ready(READY_TIMEOUT_S)
            except Exception:
                log.flush()
                tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
                pytest.fail(f"tritonserver did not become ready:\n{tail}")
            yield server
        finally:
            server.stop()
