"""Deployment: TensorRT profiles, engine sidecars and their compatibility check, ONNX Runtime
GPU provider options, the Jetson build path, the TensorRT paths' errors where TensorRT is
absent (and the real builds where it is present), several phases in one call, the benchmark
command and the Triton model repository."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vcesdk
from vcesdk.backends.tensorrt import tensorrt_engine_available
from vcesdk.bundle import load_bundle
from vcesdk.engines import check_engine_compatible, engine_profiles, ort_provider_options
from vcesdk.errors import BundleError, MissingDependencyError, ProviderError

HAVE_TRT = tensorrt_engine_available()
NO_TRT_REASON = ("TensorRT engines need the tensorrt package and a CUDA GPU (install TensorRT "
                 "and 'vcesdk[gpu]' on a GPU machine)")


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vcesdk.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo():
    return load_bundle(vcesdk.DEFAULT_BUNDLE)


@pytest.fixture(scope="module")
def ts_bundle(tmp_path_factory, abdomen_volume):
    """The demo model re-exported with ONNX + TorchScript (both parity-checked)."""
    pytest.importorskip("torch", reason="exports need the export extra")
    from vcesdk.export import export_bundle
    from vcesdk.export.bundle_writer import checkpoint_from_bundle

    out = tmp_path_factory.mktemp("ts") / "bundle"
    return export_bundle(checkpoint_from_bundle(vcesdk.DEFAULT_BUNDLE), out, abdomen_volume,
                         demo=True, formats="onnx,torchscript", max_parity_windows=2)


def _copy_bundle(src: Path, dst: Path, **manifest_changes) -> Path:
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    for key, value in manifest_changes.items():
        m[key] = value
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


# ---- profiles, sidecars, provider options -------------------------------------------------

def test_engine_profile_covers_the_runtime_windows(demo):
    # demo: 3 channels, 8-slice whole-plane windows, multiples (8, 16, 16), batch size 2
    assert demo.window == (8, None, None) and demo.batch_size == 2
    prof = engine_profiles(demo)["ncct"]
    assert prof == {"min": [1, 3, 8, 64, 64], "opt": [2, 3, 8, 256, 256],
                    "max": [2, 3, 8, 512, 512]}
    assert engine_profiles(demo, max_batch=8, plane=(40, 200, 300))["ncct"] == {
        "min": [1, 3, 8, 48, 48], "opt": [2, 3, 8, 208, 208], "max": [8, 3, 8, 304, 304]}
    with pytest.raises(BundleError, match="min <= opt <= max"):
        engine_profiles(demo, plane=(256, 64, 512))
    # every window the runtime feeds for a real 512 x 512 CT lies inside the default profile
    from vcesdk.engines import shape_in_profile
    from vcesdk.planning import plan_windows

    padded, window, _ = plan_windows(demo, (60, 250, 250))
    assert shape_in_profile((2, 3, *window), prof) and window == (8, 256, 256)
    assert not shape_in_profile((2, 3, 8, 528, 528), prof)


SIDE = {"engine": "model.engine", "gpu_name": "NVIDIA A10", "compute_capability": "8.6",
        "tensorrt": "10.3.0", "cuda": "12.4"}


def test_engine_compatibility_check_names_what_differs():
    check_engine_compatible(SIDE, {**SIDE, "cuda": "12.6"})  # same major CUDA: fine
    check_engine_compatible(SIDE, {**SIDE, "gpu_name": "NVIDIA A40"})  # same sm_86: fine
    with pytest.raises(BundleError, match=r"built on NVIDIA A10 and cannot run on this "
                                          r"NVIDIA H100.*compute capability 8.6 \(engine\) vs "
                                          r"9.0 \(here\).*vcesdk build-engine /b"):
        check_engine_compatible(SIDE, {**SIDE, "gpu_name": "NVIDIA H100",
                                       "compute_capability": "9.0"}, "/b")
    with pytest.raises(BundleError, match=r"TensorRT 10.3.0 \(engine\) vs 10.7.0 \(here\)"):
        check_engine_compatible(SIDE, {**SIDE, "tensorrt": "10.7.0"})
    with pytest.raises(BundleError, match=r"CUDA 12.4 \(engine\) vs 13.0 \(here\)"):
        check_engine_compatible(SIDE, {**SIDE, "cuda": "13.0"})


def test_tensorrt_execution_provider_options(demo, tmp_path):
    opts = ort_provider_options(demo, ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                       "CPUExecutionProvider"], fp16=True,
                                engine_cache=str(tmp_path), workspace_gb=2)
    assert opts[0] == {
        "device_id": "0", "trt_profile_min_shapes": "ncct:1x3x8x64x64",
        "trt_profile_opt_shapes": "ncct:2x3x8x256x256",
        "trt_profile_max_shapes": "ncct:2x3x8x512x512", "trt_fp16_enable": "True",
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(tmp_path),
        "trt_max_workspace_size": str(2 << 30)}
    assert opts[1] == {"device_id": "0"} and opts[2] == {}
    with pytest.raises(ProviderError, match="add TensorrtExecutionProvider"):
        ort_provider_options(demo, ["CPUExecutionProvider"], fp16=True)


def test_provider_choice_follows_the_bundle_files(demo, abdomen_volume):
    # the demo bundle has no TorchScript file: TorchScript is skipped, CPU is taken
    syn = vcesdk.Synthesizer(demo, providers=["TorchScript", "CPUExecutionProvider"],
                             provider_options={"CPUExecutionProvider": {}})
    assert syn.provider == "CPUExecutionProvider"
    with pytest.raises(ProviderError, match="none of TensorRTEngine is available"):
        vcesdk.Synthesizer(demo, providers=["TensorRTEngine"])
    with pytest.raises(ProviderError, match="unknown execution provider 'TensorRT'.*"
                                            "TensorRTEngine"):
        vcesdk.Synthesizer(demo, providers=["TensorRT"])
    with pytest.raises(ProviderError, match="not among the providers"):
        vcesdk.Synthesizer(demo, providers=["CPUExecutionProvider"],
                           provider_options={"CUDAExecutionProvider": {}})


def test_engine_without_sidecar_is_refused(tmp_path):
    from vcesdk.backends import TensorrtEngineBackend

    (tmp_path / "model.engine").write_bytes(b"\x00" * 64)
    with pytest.raises(BundleError, match="has no sidecar model.engine.json; rebuild it: "
                                          "vcesdk build-engine"):
        TensorrtEngineBackend(tmp_path / "model.engine", tmp_path)


def test_trtexec_command_and_int8_refusal():
    from vcesdk.export.tensorrt_export import trtexec_command

    prof = {"ncct": {"min": [1, 3, 8, 64, 64], "opt": [2, 3, 8, 256, 256],
                     "max": [2, 3, 8, 512, 512]}}
    # per TensorRT version: tests/test_gpu_versions.py
    assert trtexec_command("model.onnx", "model.engine", prof, "fp16", 2, "10.3") == [
        "trtexec", "--onnx=model.onnx", "--saveEngine=model.engine",
        "--minShapes=ncct:1x3x8x64x64", "--optShapes=ncct:2x3x8x256x256",
        "--maxShapes=ncct:2x3x8x512x512", "--memPoolSize=workspace:2048", "--skipInference",
        "--fp16"]
    with pytest.raises(BundleError, match="int8 engines are calibrated where they are built"):
        trtexec_command("m.onnx", "m.engine", prof, "int8")


def test_calibration_windows_are_cut_to_the_profile_shape():
    from vcesdk.export.tensorrt_export import fit_windows

    w = np.arange(3 * 2 * 8 * 6 * 10, dtype=np.float32).reshape(3, 2, 8, 6, 10)
    batches = fit_windows(w, (2, 2, 8, 8, 8), pad_values=(-1.0, -0.5))
    assert len(batches) == 1 and batches[0].shape == (2, 2, 8, 8, 8)  # 3rd window dropped
    b = batches[0]
    np.testing.assert_array_equal(b[:, :, :, 1:7, :], w[:2, :, :, :, 1:9])  # centre crop/pad
    assert (b[:, 0, :, 0] == -1.0).all() and (b[:, 1, :, 7] == -0.5).all()


# ---- export paths --------------------------------------------------------------------------

@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here: the real build runs instead")
def test_tensorrt_export_without_tensorrt_says_what_to_install(abdomen_path, tmp_path):
    proc = _cli("export", str(vcesdk.DEFAULT_BUNDLE), "-o", str(tmp_path / "b"), "--format",
                "onnx,tensorrt", "--half", "--parity-input", str(abdomen_path))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "TensorRT is not installed" in proc.stderr and "pip install tensorrt" in proc.stderr
    assert not (tmp_path / "b").exists()
    proc = _cli("build-engine", str(vcesdk.DEFAULT_BUNDLE), "--parity-input", str(abdomen_path))
    assert proc.returncode == 1 and "TensorRT is not installed" in proc.stderr
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        from vcesdk.export.tensorrt_export import build_engine

        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", {})


def test_export_flags_are_checked(abdomen_path, tmp_path):
    base = ["export", str(vcesdk.DEFAULT_BUNDLE), "-o", str(tmp_path / "b"), "--parity-input",
            str(abdomen_path)]
    for extra, msg in ((["--format", "onnx", "--half"], "--half applies to tensorrt"),
                       (["--format", "tensorrt"], "use --format onnx,tensorrt"),
                       (["--format", "onnx", "--target", "jetson"], "add tensorrt"),
                       (["--format", "onnx,tensorrt", "--int8"], "--int8 needs --calib"),
                       (["--format", "onnx,torch_tensorrt", "--int8", "--calib", "x"],
                        "--int8 is offered for tensorrt only")):
        proc = _cli(*base, *extra, timeout=120)
        assert proc.returncode == 1 and msg in proc.stderr, (extra, proc.stderr)
    assert not (tmp_path / "b").exists()


def test_jetson_target_writes_onnx_profiles_and_build_command(abdomen_path, abdomen_volume,
                                                              tmp_path):
    out = tmp_path / "jetson"
    proc = _cli("export", str(vcesdk.DEFAULT_BUNDLE), "-o", str(out), "--format",
                "onnx,tensorrt", "--half", "--target", "jetson", "--parity-input",
                str(abdomen_path), "--demo")
    assert proc.returncode == 0, proc.stderr
    b = load_bundle(out)  # every file checksummed, the build script included
    m = b.manifest
    assert set(m["files"]) == {"model.onnx", "build_engine.sh", "generator.pt"}
    assert m["files"]["build_engine.sh"]["role"] == "build-script"
    plan = m["engine_build"]
    assert plan["target"] == "jetson" and plan["precision"] == "fp16"
    assert plan["profiles"] == engine_profiles(b)
    script = (out / "build_engine.sh").read_text()
    assert ('"$TRTEXEC" --onnx=model.onnx --saveEngine=model.engine '
            "--minShapes=ncct:1x3x8x64x64 --optShapes=ncct:2x3x8x256x256 "
            "--maxShapes=ncct:2x3x8x512x512 --memPoolSize=workspace:4096 --skipInference "
            "--fp16") in script  # the 8.6-10.x branch; the script run: test_gpu_versions
    assert m["files"]["model.onnx"]["parity"]["max_abs_hu"] <= 0.5
    # the bundle still runs here on its ONNX file
    res = vcesdk.Synthesizer(out).synthesize(abdomen_volume)
    assert res.shape == abdomen_volume.shape


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason=NO_TRT_REASON)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_build_parity_and_runtime(precision, abdomen_volume, tmp_path):
    from vcesdk.export import export_bundle
    from vcesdk.export.bundle_writer import checkpoint_from_bundle
    from vcesdk.formats import TOLERANCE_HU

    out = export_bundle(checkpoint_from_bundle(vcesdk.DEFAULT_BUNDLE), tmp_path / "b",
                        abdomen_volume, formats="onnx,tensorrt",
                        options={"tensorrt": {"precision": precision}})
    m = json.loads((out / "manifest.json").read_text())
    eng = m["files"]["model.engine"]
    assert eng["precision"] == precision
    assert eng["parity"]["max_abs_hu"] <= TOLERANCE_HU[precision]
    side = json.loads((out / "model.engine.json").read_text())
    assert side["compute_capability"] and side["tensorrt"] and side["profiles"]["ncct"]
    trt = vcesdk.Synthesizer(out, providers=["TensorRTEngine"])
    cpu = vcesdk.Synthesizer(out, providers=["CPUExecutionProvider"])
    assert trt.provider == "TensorRTEngine"
    np.testing.assert_allclose(trt.synthesize(abdomen_volume).hu,
                               cpu.synthesize(abdomen_volume).hu,
                               atol=2 * TOLERANCE_HU[precision])
    # an engine whose sidecar names another GPU is refused with the rebuild command
    side["compute_capability"] = "1.0"
    (out / "model.engine.json").write_text(json.dumps(side))
    with pytest.raises(BundleError):  # checksum of the sidecar no longer matches
        vcesdk.Synthesizer(out, providers=["TensorRTEngine"])


@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in __import__("onnxruntime")
                    .get_available_providers(), reason="onnxruntime-gpu with a CUDA GPU needed")
def test_cuda_execution_provider_matches_cpu(abdomen_volume):
    gpu = vcesdk.Synthesizer(providers=["CUDAExecutionProvider"])
    cpu = vcesdk.Synthesizer(providers=["CPUExecutionProvider"])
    assert gpu.provider == "CUDAExecutionProvider"
    np.testing.assert_allclose(gpu.synthesize(abdomen_volume).hu,
                               cpu.synthesize(abdomen_volume).hu, atol=1.0)


# ---- several phases, benchmark, Triton ---------------------------------------------------

def test_several_bundles_give_one_series_per_phase(lung1_path, tmp_path):
    ap = _copy_bundle(Path(vcesdk.DEFAULT_BUNDLE), tmp_path / "ap", phase="ap")
    out = tmp_path / "out"
    proc = _cli("synthesize", str(lung1_path), "-o", str(out), "--format", "nifti",
                "--model", str(vcesdk.DEFAULT_BUNDLE), "--model", str(ap), "-q")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert [p["phase"] for p in report["phases"]] == ["pvp", "ap"]
    for phase in ("pvp", "ap"):
        vol = vcesdk.read_volume(out / f"scect_{phase}.nii.gz")
        assert vol.shape == (48, 512, 512)
    png = Image.open(out / "preview.png")  # one preview, a row per phase
    assert png.format == "PNG" and png.height == 2 * 256 + 8
    assert [p["preview"] for p in report["phases"]] == ["preview.png"] * 2
    # same weights: the two series are identical
    np.testing.assert_array_equal(vcesdk.read_volume(out / "scect_ap.nii.gz").hu,
                                  vcesdk.read_volume(out / "scect_pvp.nii.gz").hu)
    proc = _cli("synthesize", str(lung1_path), "-o", str(tmp_path / "dup"), "--model",
                str(vcesdk.DEFAULT_BUNDLE), "--model", str(vcesdk.DEFAULT_BUNDLE))
    assert proc.returncode == 1 and "same phase" in proc.stderr
    assert not (tmp_path / "dup").exists()


def test_fit_slices_keeps_geometry(lung1_path):
    from vcesdk.benchmark import fit_slices

    vol = vcesdk.read_volume(lung1_path)
    cut = fit_slices(vol, 20)
    assert cut.shape == (20, 512, 512)
    np.testing.assert_array_equal(cut.hu, vol.hu[14:34])
    assert cut.origin_xyz_mm[2] == pytest.approx(vol.origin_xyz_mm[2] + 14 * vol.spacing_zyx_mm[0]
                                             * vol.direction[2, 2])
    longer = fit_slices(vol, 100)
    assert longer.shape == (100, 512, 512)
    np.testing.assert_array_equal(longer.hu[48:96], vol.hu[::-1])
    np.testing.assert_array_equal(longer.hu[96:], vol.hu[:4])


def test_benchmark_reports_onnx_and_torchscript(ts_bundle, lung1_path, tmp_path):
    out = tmp_path / "bench.json"
    proc = _cli("benchmark", str(ts_bundle), "--input", str(lung1_path), "--slices", "16",
                "--repeats", "2", "--warmup", "1", "--write-format", "nifti", "--json",
                str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert set(report["backends"]) == {"CPUExecutionProvider", "TorchScript"}
    for name, e in report["backends"].items():
        assert e["slices"] == 16 and e["passes"] == 2
        assert 0 < e["model_ms_per_slice_median"] < e["ms_per_slice_median"] \
            <= e["ms_per_slice_p90"]
        assert 0.0 < e["outside_model_fraction"] < 1.0
        assert e["peak_rss_mb"] > 100  # a 16 x 512 x 512 float32 volume alone is 16 MB
        assert e["throughput_slices_per_s"] == pytest.approx(
            1e3 / e["ms_per_slice_median"], rel=0.35)
        assert set(e["stages_ms_per_slice"]) == {"read", "prepare", "model", "stitch",
                                                 "compose", "write"}
        # CPU backends: the GPU memory field is there and null, with the reason
        assert "peak_gpu_mb" in e and e["peak_gpu_mb"] is None
        assert e["gpu_memory"] == {"peak_mb": None, "method": None, "device": None,
                                   "reason": f"{name} runs on the CPU"}
    assert report["backends"]["TorchScript"]["provider"] == "TorchScript:cpu"
    assert "GPU MB" in proc.stdout
    assert "the bundle has no tensorrt file" in report["skipped"]["TensorRTEngine"]
    assert "CPUExecutionProvider" in proc.stdout and "TorchScript" in proc.stdout


def test_gpu_memory_probe_reports_the_sampled_peak_above_the_baseline():
    """Driver-level probe (ONNX Runtime's CUDA provider): a fake cuMemGetInfo that reads
    1000 MB before the session, then 1100, 1600, 1250 MB: the peak is 600 MB above it."""
    import threading

    from vcesdk.benchmark import GpuMemoryProbe

    levels = [1000.0, 1100.0, 1600.0, 1250.0]
    drained = threading.Event()

    def read() -> float:
        if len(levels) > 1:
            return levels.pop(0)
        drained.set()
        return levels[0]

    probe = GpuMemoryProbe("CUDAExecutionProvider", read_used_mb=read, interval_s=0.001)
    assert probe.on_gpu and probe.method.startswith("cuMemGetInfo sampled every 1 ms")
    probe.start()
    assert drained.wait(10)
    out = probe.stop()
    assert out == {"peak_mb": 600.0, "method": probe.method, "device": 0, "reason": None}
    # TensorRT engines and torch-tensorrt are measured at the driver too; torch backends not
    assert GpuMemoryProbe("TorchTensorRT").method.startswith("cuMemGetInfo")
    assert GpuMemoryProbe("TensorRTEngine").method.startswith("cuMemGetInfo")
    assert GpuMemoryProbe("AOTInductor:cuda").method == "torch.cuda.max_memory_allocated"
    cpu = GpuMemoryProbe("AOTInductor")
    cpu.start()
    assert not cpu.on_gpu and cpu.stop()["reason"] == "AOTInductor runs on the CPU"


@pytest.mark.skipif(__import__("importlib").util.find_spec("torch") is None,
                    reason="needs torch")
def test_gpu_memory_probe_without_a_gpu_reports_null_with_the_reason():
    import torch

    from vcesdk.benchmark import GpuMemoryProbe

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    probe = GpuMemoryProbe("TorchScript:cuda")
    probe.start()
    out = probe.stop()
    assert out["peak_mb"] is None and out["method"] == "torch.cuda.max_memory_allocated"
    assert out["reason"].startswith("GPU memory could not be read: ")


# ---- Triton -------------------------------------------------------------------------------

def _parse_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    return text_format.Parse(path.read_text(), pb.ModelConfig()), pb


def _check_common(cfg, pb, name: str, platform: str, in_name: str, out_name: str) -> None:
    assert cfg.name == name and cfg.platform == platform and cfg.max_batch_size == 4
    assert len(cfg.input) == 1 and len(cfg.output) == 1
    assert cfg.input[0].name == in_name and cfg.input[0].data_type == pb.TYPE_FP32
    assert list(cfg.input[0].dims) == [3, 8, -1, -1]
    assert cfg.output[0].name == out_name and cfg.output[0].data_type == pb.TYPE_FP32
    assert list(cfg.output[0].dims) == [1, 8, -1, -1]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert len(cfg.instance_group) == 1
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert cfg.instance_group[0].count == 1
    assert cfg.parameters["vcesdk_phase"].string_value == "pvp"
    assert cfg.parameters["vcesdk_manifest"].string_value == "vcesdk_manifest.json"


def test_triton_repository_onnx_and_libtorch(ts_bundle, tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="the Triton writer needs tritonclient")
    from vcesdk.bundle import sha256_file

    repo = tmp_path / "repo"
    proc = _cli("triton", str(ts_bundle), "-o", str(repo), "--platform",
                "onnxruntime_onnx,pytorch_libtorch", timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((ts_bundle / "manifest.json").read_text())
    name = m["name"]
    cfg, pb = _parse_config(repo / f"{name}_onnx" / "config.pbtxt")
    _check_common(cfg, pb, f"{name}_onnx", "onnxruntime_onnx", "ncct", "scect")
    assert sha256_file(repo / f"{name}_onnx" / "1" / "model.onnx") == \
        m["files"]["model.onnx"]["sha256"]
    cfg, pb = _parse_config(repo / f"{name}_libtorch" / "config.pbtxt")
    _check_common(cfg, pb, f"{name}_libtorch", "pytorch_libtorch", "INPUT__0", "OUTPUT__0")
    assert sha256_file(repo / f"{name}_libtorch" / "1" / "model.pt") == \
        m["files"]["model.ts"]["sha256"]
    assert json.loads((repo / f"{name}_onnx" / "vcesdk_manifest.json").read_text()) == m
    # the ONNX graph's tensor names are the ones the config declares
    import onnx

    g = onnx.load(str(repo / f"{name}_onnx" / "1" / "model.onnx")).graph
    assert [i.name for i in g.input] == ["ncct"] and [o.name for o in g.output] == ["scect"]


def test_triton_tensorrt_plan(tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="the Triton writer needs tritonclient")
    from vcesdk.export.triton import write_triton_repository

    # a bundle without an engine: config + the ONNX file + the trtexec build for the server
    repo = write_triton_repository(vcesdk.DEFAULT_BUNDLE, tmp_path / "r1",
                                   platforms=["tensorrt_plan"])
    model = repo / "vcesdk-demo-pvp_trt"
    cfg, pb = _parse_config(model / "config.pbtxt")
    _check_common(cfg, pb, "vcesdk-demo-pvp_trt", "tensorrt_plan", "ncct", "scect")
    script = (model / "build_plan.sh").read_text()
    assert ("--saveEngine=1/model.plan --minShapes=ncct:1x3x8x64x64 "
            "--optShapes=ncct:2x3x8x256x256 --maxShapes=ncct:4x3x8x512x512") in script
    assert (model / "model.onnx").is_file() and (model / "1").is_dir()
    # a bundle with an engine: the plan is that engine; its profile must allow the batch
    from vcesdk.export.bundle_writer import _write_manifest

    b = _copy_bundle(Path(vcesdk.DEFAULT_BUNDLE), tmp_path / "eng")
    (b / "model.engine").write_bytes(b"engine-bytes")
    side = {**SIDE, "precision": "fp16", "profiles": {"ncct": {
        "min": [1, 3, 8, 64, 64], "opt": [2, 3, 8, 256, 256], "max": [2, 3, 8, 512, 512]}}}
    (b / "model.engine.json").write_text(json.dumps(side))
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["model.engine"] = {"role": "model", "format": "tensorrt", "precision": "fp16"}
    m["files"]["model.engine.json"] = {"role": "sidecar", "format": "json"}
    _write_manifest(b, m)
    with pytest.raises(BundleError, match="batches up to 2, below max_batch_size 4"):
        write_triton_repository(b, tmp_path / "r2", platforms=["tensorrt_plan"])
    assert not (tmp_path / "r2").exists()
    repo = write_triton_repository(b, tmp_path / "r3", platforms=["tensorrt_plan"],
                                   max_batch_size=2)
    plan = repo / "vcesdk-demo-pvp_trt" / "1" / "model.plan"
    assert plan.read_bytes() == b"engine-bytes"
    cfg, _ = _parse_config(repo / "vcesdk-demo-pvp_trt" / "config.pbtxt")
    assert cfg.max_batch_size == 2
    with pytest.raises(vcesdk.errors.InputError, match="did you mean 'tensorrt_plan'"):
        write_triton_repository(b, tmp_path / "r4", platforms=["tensorrt_pln"])
    with pytest.raises(vcesdk.errors.InputError, match="GPU only"):
        write_triton_repository(b, tmp_path / "r5", platforms=["tensorrt_plan"],
                                kind="KIND_CPU", max_batch_size=2)
