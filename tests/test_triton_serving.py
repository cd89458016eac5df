"""Triton as the scale-out engine (#19): a ``--platform python`` repository loaded by a real
tritonserver (the nvidia-pytriton wheel's, started by vcesdk on 127.0.0.1 with free ports, one
per module), the ``Triton`` provider of Synthesizer against it over gRPC and HTTP, concurrent
clients, a server stopped mid-run, a model that does not match the manifest."""
from __future__ import annotations

import concurrent.futures
import multiprocessing
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

@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_matches_local_onnxruntime(server, sample, local_result, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    syn = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, providers=["Triton"], triton_url=url)
    assert syn.provider == f"Triton:{GOOD}/1@{url}"
    out = syn.synthesize(sample)
    assert out.shape == sample.shape and out.hu.dtype == np.float32
    diff = float(np.abs(out.hu - local_result).max())
    assert diff <= 0.5, f"Triton ({protocol}) differs from local ONNX Runtime by {diff} HU"
    assert syn.last_latency is not None and syn.last_latency.backend == syn.provider


def test_eight_threads_identical(server, sample, local_result):
    syn = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, providers=["Triton"],
                             triton_url=server.grpc_url)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: syn.synthesize(sample).hu, range(8)))
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    assert float(np.abs(outs[0] - local_result).max()) <= 0.5


def _synthesize_in_process(url: str) -> bytes:
    from vcesdk.data import sample_ct

    vol = vcesdk.read_volume(sample_ct())
    syn = vcesdk.Synthesizer(vcesdk.DEFAULT_BUNDLE, providers=["Triton"], triton_url=url)
    return syn.synthesize(vol).hu.tobytes()


def test_eight_processes_identical(server, sample, local_result):
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(8, mp_context=ctx) as pool:
        outs = list(pool.map(_synthesize_in_process, [server.http_url, server.grpc_url] * 4))
    assert len(set(outs)) == 1
    got = np.frombuffer(outs[0], dtype=np.float32).reshape(sample.shape)
    assert float(np.abs(got - local_result).max()) <= 0.5


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


def test_cli_synthesize_with_triton(server, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "vcesdk.cli", "synthesize", "--sample", "-o", str(out),
             "--model", str(vcesdk.DEFAULT_BUNDLE), "-q",
         "--format", "nifti", "--providers", "Triton", "--triton-url", server.http_url],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert list(out.rglob("*.nii.gz"))
    assert f"Triton:{GOOD}/1@{server.http_url}" in proc.stdout + "".join(
        p.read_text() for p in out.rglob("*.json"))
