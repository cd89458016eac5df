"""Triton as the scale-out engine (#19): a ``--platform python`` repository loaded by a real
tritonserver (the nvidia-pytriton wheel's, started by vcesdk on 127.0.0.1 with free ports, one
per module), the ``Triton`` provider of Synthesizer against it over gRPC and HTTP, with and
without system shared memory, concurrent clients, a server stopped mid-run, a model that does
not match the manifest; no shared-memory region is left in /dev/shm or on the server."""
from __future__ import annotations

import concurrent.futures
import gc
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import vcesdk
from vcesdk.errors import BundleError, InputError, ProviderError, TritonError

from triton_server import need_server, running_server, write_python_repository

GOOD = "vcesdk-demo-pvp_python"
SHM = Path("/dev/shm")


def _shm_files(pid: int | None = None) -> list[str]:
    """vcesdk's regions of process `pid` (default this one) in /dev/shm."""
    return sorted(p.name for p in SHM.glob(f"vcesdk_{os.getpid() if pid is None else pid}_*"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True




def _server_regions(server) -> list[str]:
    """Names of the system shared-memory regions registered with `server`."""
    import tritonclient.http as http

    client = http.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        return sorted(r["name"] for r in client.get_system_shared_memory_status())
    finally:
        client.close()


def _config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    return text_format.Parse(path.read_text(), pb.ModelConfig())


def _write_config(path: Path, cfg) -> None:
    from google.protobuf import text_format

    path.write_text(text_format.MessageToString(cfg))


@pytest.fixture(scope="module")
def sample():
    from vcesdk.data import sample_ct

    return vcesdk.read_volume(sample_ct())


@pytest.fixture(scope="module")
def local_result(sample):
    return vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE,
                              providers=["CPUExecutionProvider"]).synthesize(sample).hu


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: the demo model, and two copies that must be refused (a
    served model made from another file; an input named otherwise)."""
    need_server()
    root = tmp_path_factory.mktemp("triton")
    repo = write_python_repository(root / "repo")
    for bad in ("wrong_sha", "wrong_input"):
        shutil.copytree(repo / GOOD, repo / bad)
        cfg = _config(repo / bad / "config.pbtxt")
        cfg.name = bad
        if bad == "wrong_sha":
            cfg.parameters["vcesdk_source_sha256"].string_value = "0" * 64
        else:
            cfg.input[0].name = "x"
        _write_config(repo / bad / "config.pbtxt", cfg)
    with running_server(repo, root / "server.log") as srv:
        yield srv


# ---- the repository (no server) ------------------------------------------------------------

def test_python_platform_repository(tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="the Triton writer needs tritonclient")
    from vcesdk.bundle import sha256_file

    repo = write_python_repository(tmp_path / "r", max_batch_size=8, dynamic_batching=False)
    model = repo / GOOD
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()) \
        == ["1/model.onnx", "1/model.py", "config.pbtxt", "vcesdk_manifest.json"]
    cfg = _config(model / "config.pbtxt")
    assert cfg.backend == "python" and cfg.platform == "" and cfg.max_batch_size == 8
    assert not cfg.HasField("dynamic_batching")
    assert [cfg.input[0].name, list(cfg.input[0].dims)] == ["ncct", [3, 8, -1, -1]]
    assert [cfg.output[0].name, list(cfg.output[0].dims)] == ["scect", [1, 8, -1, -1]]
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
    onnx = vcesdk.load_bundle(vcesdk.DEFAULT_BUNDLE).file("model", "onnx")
    assert cfg.parameters["vcesdk_source_sha256"].string_value == sha256_file(onnx)
    assert sha256_file(model / "1" / "model.onnx") == sha256_file(onnx)
    # dynamic batching is on by default
    on = write_python_repository(tmp_path / "r2")
    assert _config(on / GOOD / "config.pbtxt").dynamic_batching.max_queue_delay_microseconds \
        == 100


def test_python_model_batching_and_device(tmp_path):
    """model.py without a server: requests concatenated, split back in order; a GPU instance
    without the CUDA provider is refused in so many words."""
    from vcesdk.export import triton_python_model as m

    parts = m.split_batches(np.arange(5)[:, None], [2, 1, 2])
    assert [p[:, 0].tolist() for p in parts] == [[0, 1], [2], [3, 4]]
    with pytest.raises(RuntimeError, match="returned 4 windows for 5 requested"):
        m.split_batches(np.zeros((4, 1)), [2, 3])
    assert m.session_providers("CPU", 0, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert m.session_providers("GPU", 1, ["CUDAExecutionProvider", "CPUExecutionProvider"]) \
        == [("CUDAExecutionProvider", {"device_id": 1})]
    with pytest.raises(RuntimeError, match="KIND_GPU .device 0. but this onnxruntime build "
                                           "has no CUDAExecutionProvider"):
        m.session_providers("GPU", 0, ["CPUExecutionProvider"])


def test_server_refuses_a_repository_it_cannot_load(tmp_path):
    need_server()
    from vcesdk.export.triton import write_triton_repository
    from vcesdk.triton_server import TritonServer

    repo = write_triton_repository(vcesdk.DEFAULT_BUNDLE, tmp_path / "r",
                                   platforms=["onnxruntime_onnx", "python"], kind="KIND_CPU")
    with pytest.raises(InputError, match=r"has only the python backend, and "
                                         r"vcesdk-demo-pvp_onnx \(onnxruntime\) needs another; "
                                         r"serve the repository with the NGC tritonserver "
                                         r"container; load only vcesdk-demo-pvp_python"):
        TritonServer(repo)
    assert TritonServer(repo, models=[GOOD]).models == [GOOD]
    with pytest.raises(InputError, match="no model"):
        TritonServer(tmp_path)


def test_provider_arguments_are_checked():
    with pytest.raises(ProviderError, match="runs alone, not with CPUExecutionProvider"):
        vcesdk.Synthesizer(providers=["Triton", "CPUExecutionProvider"],
                           triton_url="grpc://127.0.0.1:1")
    with pytest.raises(ProviderError, match="needs triton_url"):
        vcesdk.Synthesizer(providers=["Triton"])
    with pytest.raises(ProviderError, match="must be grpc://HOST:PORT or http://HOST:PORT"):
        vcesdk.Synthesizer(providers=["Triton"], triton_url="https://127.0.0.1:8000")
    with pytest.raises(ProviderError, match="does not name Triton"):
        vcesdk.Synthesizer(providers=["CPUExecutionProvider"], triton_url="grpc://h:1")
    with pytest.raises(ProviderError, match="does not name Triton"):
        vcesdk.Synthesizer(providers=["CPUExecutionProvider"], triton_shared_memory="off")
    with pytest.raises(ProviderError, match="triton_shared_memory must be one of auto, system, "
                                            "off, got 'cuda'"):
        vcesdk.Synthesizer(providers=["Triton"], triton_url="grpc://127.0.0.1:1",
                           triton_shared_memory="cuda")


@pytest.mark.parametrize("url, local", [
    ("grpc://127.0.0.1:8001", True), ("http://localhost:8000", True),
    ("grpc://[::1]:8001", True), ("http://127.0.0.2", True), ("grpc://LocalHost", True),
    ("grpc://10.0.0.7:8001", False), ("http://triton.example:8000", False),
    ("grpc://[2001:db8::1]:8001", False),
])
def test_same_host_urls(url, local):
    """"auto" shared memory is for these hosts only."""
    from vcesdk.triton_client import parse_url

    assert parse_url(url).is_local is local


def test_unreachable_server_is_one_error_within_the_timeout():
    pytest.importorskip("tritonclient.grpc", reason="needs tritonclient")
    from vcesdk.triton_server import free_port

    t0 = time.monotonic()
    with pytest.raises(TritonError, match=r"unreachable: could not reach the server within "
                                          r"1\.5 s \(\d+ attempts; .*nothing runs locally"):
        vcesdk.Synthesizer(providers=["Triton"], triton_timeout_s=1.5,
                           triton_url=f"grpc://127.0.0.1:{free_port()}")
    assert time.monotonic() - t0 < 10  # backoff stops at the stated timeout


# ---- against the server ------------------------------------------------------------------

@pytest.mark.parametrize("shared_memory", ["auto", "off"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_matches_local_onnxruntime(server, sample, local_result, protocol,
                                          shared_memory):
    """Over gRPC and HTTP, through shared memory ("auto" on 127.0.0.1: one input and one
    output region, registered with the server while the windows run, gone from the server and
    /dev/shm once the Synthesizer is closed) or over the network ("off": no region at all)."""
    url = server.grpc_url if protocol == "grpc" else server.http_url
    before = set(_server_regions(server))
    syn = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, providers=["Triton"], triton_url=url,
                             triton_shared_memory=shared_memory)
    shm = shared_memory == "auto"
    assert syn.provider == f"Triton:{GOOD}/1@{url}" + ("+shm" if shm else "")
    seen: list[set[str]] = []
    out = syn.synthesize(sample, progress=lambda done, total: seen.append(
        set(_server_regions(server)) - before))
    assert out.shape == sample.shape and out.hu.dtype == np.float32
    diff = float(np.abs(out.hu - local_result).max())
    assert diff <= 0.5, f"Triton ({protocol}) differs from local ONNX Runtime by {diff} HU"
    assert syn.last_latency is not None and syn.last_latency.backend == syn.provider
    ours = seen[-1]
    if shm:
        prefix = f"vcesdk_{os.getpid()}_"
        assert len(ours) == 2 and all(n.startswith(prefix) for n in ours), seen
        assert sorted(n.rsplit("_", 1)[1] for n in ours) == ["in", "out"]
        assert all(s == ours for s in seen[1:]), "regions changed between batches"
        assert ours <= set(_shm_files())
    else:
        assert not any(seen) and not _shm_files()
    syn.close()
    syn.close()  # idempotent
    assert not ours & set(_server_regions(server))
    gc.collect()
    assert _shm_files() == []
    with pytest.raises(TritonError, match="was closed"):
        syn.predict_windows(np.zeros((1, 3, 8, 32, 32), np.float32))


def test_shared_memory_regions_grow(server):
    """A larger window than the regions hold: they are unregistered, destroyed and recreated
    larger (sized for max_batch_size windows); results equal the local ones; a Synthesizer
    collected without close() leaves nothing either."""
    local = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, providers=["CPUExecutionProvider"])
    syn = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, providers=["Triton"],
                             triton_url=server.grpc_url, triton_shared_memory="system")
    rng = np.random.default_rng(0)
    sizes = []
    for shape in [(1, 3, 8, 32, 32), (2, 3, 8, 32, 32), (3, 3, 8, 64, 64), (1, 3, 8, 32, 32)]:
        batch = rng.uniform(-1, 1, shape).astype(np.float32)
        got = syn.predict_windows(batch)
        np.testing.assert_allclose(got, local.predict_windows(batch), atol=1e-4)
        ours = [n for n in _server_regions(server) if n.startswith(f"vcesdk_{os.getpid()}_")]
        assert len(ours) == 2 and sorted(_shm_files()) == sorted(ours)
        sizes.append({n.rsplit("_", 1)[1]: (SHM / n).stat().st_size for n in ours})
    window, window_out = 3 * 8 * 32 * 32 * 4, 8 * 32 * 32 * 4
    assert sizes[0] == sizes[1] == {"in": 4 * window, "out": 4 * window_out}  # max_batch_size 4
    assert sizes[2] == sizes[3] == {"in": 16 * window, "out": 16 * window_out}
    # a server that lost the registrations (restarted) gets them again
    import tritonclient.http as http

    client = http.InferenceServerClient(server.http_url.removeprefix("http://"))
    for name in ours:
        client.unregister_system_shared_memory(name)
    client.close()
    batch = rng.uniform(-1, 1, (1, 3, 8, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(syn.predict_windows(batch), local.predict_windows(batch),
                               atol=1e-4)
    assert sorted(n for n in _server_regions(server) if n in ours) == sorted(ours)
    del syn
    gc.collect()
    assert _shm_files() == []
    assert not [n for n in _server_regions(server) if n.startswith(f"vcesdk_{os.getpid()}_")]


def _refuse_registration(monkeypatch, protocol):
    mod = pytest.importorskip(f"tritonclient.{protocol}")
    from tritonclient.utils import InferenceServerException

    def refuse(self, name, key, byte_size, *a, **kw):
        raise InferenceServerException(f"Unable to open shared memory region: '{key}'")

    monkeypatch.setattr(mod.InferenceServerClient, "register_system_shared_memory", refuse)


def test_system_shared_memory_refused_is_one_error(server, monkeypatch):
    """A server that cannot map this host's /dev/shm (another host behind a tunnel, a
    container without --ipc=host): "system" is one TritonError, and no region is left."""
    _refuse_registration(monkeypatch, "grpc")
    with pytest.raises(TritonError, match=r"cannot use system shared memory "
                                          r"\(triton_shared_memory='system'\): .*Unable to open "
                                          r"shared memory region.* pass "
                                          r"triton_shared_memory='off'"):
        vcesdk.Synthesizer(providers=["Triton"], triton_url=server.grpc_url,
                           triton_shared_memory="system")
    gc.collect()
    assert _shm_files() == []


def test_auto_shared_memory_refused_falls_back_to_the_network(server, sample, local_result,
                                                              monkeypatch, caplog):
    """"auto" with a server that cannot map the regions: one warning, the tensors go over the
    network (the server still runs every window; nothing runs locally)."""
    _refuse_registration(monkeypatch, "http")
    with caplog.at_level(logging.WARNING, logger="vcesdk.triton_client"):
        with vcesdk.Synthesizer(providers=["Triton"], triton_url=server.http_url) as syn:
            assert syn.provider == f"Triton:{GOOD}/1@{server.http_url}"
            out = syn.synthesize(sample).hu
    warned = [r for r in caplog.records if "shared memory unavailable" in r.getMessage()]
    assert len(warned) == 1 and "over the network instead" in warned[0].getMessage()
    assert float(np.abs(out - local_result).max()) <= 0.5
    assert _shm_files() == []


def test_eight_threads_identical(server, sample, local_result):
    syn = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, providers=["Triton"],
                             triton_url=server.grpc_url)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: syn.synthesize(sample).hu, range(8)))
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    assert float(np.abs(outs[0] - local_result).max()) <= 0.5
    assert syn.provider.endswith("+shm")
    assert 2 <= len(_shm_files()) <= 16  # at most one input and one output region a thread
    syn.close()
    assert _shm_files() == []


def _synthesize_in_process(url: str) -> tuple[int, bytes]:
    from vcesdk.data import sample_ct

    vol = vcesdk.read_volume(sample_ct())
    syn = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, providers=["Triton"], triton_url=url)
    return os.getpid(), syn.synthesize(vol).hu.tobytes()


def test_eight_processes_identical(server, sample, local_result):
    """Eight processes, half over gRPC and half over HTTP: identical results; the workers
    never call close(), and none of their regions is left in /dev/shm or on the server (only
    this test's workers are looked at: a process killed elsewhere on the machine may have left
    its own)."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(8, mp_context=ctx) as pool:
        results = list(pool.map(_synthesize_in_process, [server.http_url, server.grpc_url] * 4))
    workers = {pid for pid, _ in results}
    outs = {out for _, out in results}
    assert len(outs) == 1
    got = np.frombuffer(outs.pop(), dtype=np.float32).reshape(sample.shape)
    assert float(np.abs(got - local_result).max()) <= 0.5
    assert not any(_alive(pid) for pid in workers)
    assert [f for pid in sorted(workers) for f in _shm_files(pid)] == []
    assert [n for n in _server_regions(server) if int(n.split("_")[1]) in workers] == []


@pytest.mark.parametrize("model, message", [
    ("wrong_sha", r"Triton model 'wrong_sha' does not serve bundle vcesdk-demo-pvp: it was "
                  r"made from a model file with sha256 000000000000\.\.\., which is not one "
                  r"of the bundle's model files"),
    ("wrong_input", r"Triton model 'wrong_input' does not serve bundle vcesdk-demo-pvp: input "
                    r"is named 'x', the manifest's is 'ncct'"),
])
def test_mismatched_model_is_refused(server, model, message):
    with pytest.raises(BundleError, match=message):
        vcesdk.Synthesizer(providers=["Triton"], triton_url=server.grpc_url,
                           triton_model=model)


def test_unknown_model_is_refused(server):
    with pytest.raises(TritonError, match=r"failed to read the model metadata: .*unknown model: "
                                          r"'nope'"):
        vcesdk.Synthesizer(providers=["Triton"], triton_url=server.http_url,
                           triton_model="nope")


def test_server_stopped_mid_run_one_error_nothing_written(tmp_path):
    """The CLI runs against its own server, which is killed once it has answered a first
    window batch (Triton's graceful stop keeps serving in-flight clients for its exit
    timeout): one error line, exit status 1, no output folder."""
    need_server()
    import tritonclient.http as http

    repo = write_python_repository(tmp_path / "repo", max_batch_size=1,
                                   dynamic_batching=False)
    out = tmp_path / "out"
    with running_server(repo, tmp_path / "server.log") as srv:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vcesdk.cli", "synthesize", "--sample", "-o", str(out),
             "--model", str(vcesdk.DEFAULT_BUNDLE),
             "-q", "--format", "nifti", "--providers", "Triton", "--triton-url",
             srv.grpc_url, "--triton-timeout", "3"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = http.InferenceServerClient(srv.http_url.removeprefix("http://"))
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            stats = client.get_inference_statistics(GOOD)["model_stats"][0]
            done = int(stats["inference_stats"]["success"]["count"])
            if done >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None and done >= 1, "the run ended before the server was stopped"
        srv.stop(timeout_s=0.0)  # hard stop (SIGKILL): a crashed or switched-off server
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, (stdout, stderr)
    errors = [line for line in stderr.splitlines() if line.startswith("vcesdk: error:")]
    assert len(errors) == 1, stderr
    assert "unreachable: could not run model vcesdk-demo-pvp_python within 3 s" in errors[0]
    assert "nothing runs locally instead" in errors[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp left
    assert _shm_files(proc.pid) == []  # its shared memory went with it, server or not


def test_cli_synthesize_with_triton(server, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vcesdk.cli", "synthesize", "--sample", "-o", str(out),
             "--model", str(vcesdk.DEFAULT_BUNDLE), "-q",
         "--format", "nifti", "--providers", "Triton", "--triton-url", server.http_url,
         "--triton-shared-memory", "system"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert list(out.rglob("*.nii.gz"))
    assert f"Triton:{GOOD}/1@{server.http_url}+shm" in stdout + "".join(
        p.read_text() for p in out.rglob("*.json"))
    assert _shm_files(proc.pid) == []
    assert not [n for n in _server_regions(server) if n.startswith(f"vcesdk_{proc.pid}_")]
