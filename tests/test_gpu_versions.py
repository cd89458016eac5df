"""The GPU deployment paths per TensorRT / torch-tensorrt version, tested without a GPU: the
trtexec command lines (8.5, 8.6, 10.x, 11.x), the Python builder's flags and typing (a fake
``tensorrt`` module shaped like each release), the torch-tensorrt compile and save arguments
(parameter lists as in pytorch/TensorRT's release tags), TensorRT's CUDA version in the
sidecar, ``build-engine`` without PyTorch, the ONNX Runtime TensorRT EP defaults and the
Jetson build script run against a fake trtexec."""
from __future__ import annotations

import ctypes
import json
import os
import stat
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import vcesdk
from vcesdk.bundle import load_bundle
from vcesdk.engines import check_engine_compatible, tensorrt_cuda_version
from vcesdk.errors import BundleError, MissingDependencyError

PROF = {"ncct": {"min": [1, 3, 8, 64, 64], "opt": [2, 3, 8, 256, 256],
                 "max": [2, 3, 8, 512, 512]}}
SHAPES = ["--minShapes=ncct:1x3x8x64x64", "--optShapes=ncct:2x3x8x256x256",
          "--maxShapes=ncct:2x3x8x512x512"]


@pytest.fixture(scope="module")
def demo():
    return load_bundle(vcesdk.DEFAULT_BUNDLE)


# ---- trtexec ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version, tail", [
    ("8.5.2", ["--buildOnly", "--fp16"]),        # JetPack 5: no --skipInference before 8.6
    ("8.6.1", ["--skipInference", "--fp16"]),
    ("10.3.0", ["--skipInference", "--fp16"]),
    ((10, 16), ["--skipInference", "--fp16"]),
    ("11.1.0", ["--skipInference"]),            # trtexec 11 has no --fp16: strongly typed
])
def test_trtexec_command_per_tensorrt_version(version, tail):
    from vcesdk.export.tensorrt_export import trtexec_command

    cmd = trtexec_command("model.onnx", "model.engine", PROF, "fp16", 2, version)
    assert cmd == ["trtexec", "--onnx=model.onnx", "--saveEngine=model.engine", *SHAPES,
                   "--memPoolSize=workspace:2048", *tail]
    fp32 = trtexec_command("model.onnx", "model.engine", PROF, "fp32", 0.5, version)
    assert "--fp16" not in fp32 and fp32[6] == "--memPoolSize=workspace:512"
    with pytest.raises(BundleError, match="int8 engines are calibrated where they are built"):
        trtexec_command("m.onnx", "m.engine", PROF, "int8", 2, version)


def test_autocast_command_is_modelopts_documented_cli():
    from vcesdk.export.tensorrt_export import autocast_command

    assert autocast_command("model.onnx", "model.fp16.onnx") == [
        "python3", "-m", "modelopt.onnx.autocast", "--onnx_path", "model.onnx",
        "--output_path", "model.fp16.onnx", "--low_precision_type", "fp16", "--keep_io_types"]


# ---- Python builder ------------------------------------------------------------------------

def test_build_plan_per_tensorrt_version():
    from vcesdk.export.tensorrt_export import build_plan

    p = build_plan("8.5.2.2", "fp16")
    assert (p.network_flags, p.builder_flags, p.calibrator, p.mixed_precision_onnx) == \
        (("EXPLICIT_BATCH",), ("FP16",), False, False)
    p = build_plan("8.6.1", "int8")
    assert (p.network_flags, p.builder_flags, p.calibrator) == \
        (("EXPLICIT_BATCH",), ("FP16", "INT8"), True)
    p = build_plan("10.3.0.26", "int8")  # explicit batch is the default from 10
    assert (p.network_flags, p.builder_flags, p.calibrator) == ((), ("FP16", "INT8"), True)
    assert build_plan("10.16.0", "fp32").builder_flags == ()
    p = build_plan("11.0.0", "fp16")  # strongly typed: no precision flags, fp16 from the ONNX
    assert (p.network_flags, p.builder_flags, p.calibrator, p.mixed_precision_onnx) == \
        ((), (), False, True)
    assert build_plan("11.1", "fp32") == build_plan((11, 1), "fp32")
    assert not build_plan("11.1", "fp32").mixed_precision_onnx
    with pytest.raises(MissingDependencyError, match=r"TensorRT 11.1 removed implicit INT8 "
                                                     r"calibration.*8.6-10.x"):
        build_plan("11.1.0", "int8")


class _Enum:
    def __init__(self, **members):
        self.__dict__.update(members)


def _fake_tensorrt(version: str, calls: list) -> types.ModuleType:
    """A ``tensorrt`` module with the members its release has (NVIDIA/TensorRT pyCore.cpp):
    8.x/10.x: EXPLICIT_BATCH (not 11), BuilderFlag FP16/INT8 (not 11), the calibrator API."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    net_flags = {"STRONGLY_TYPED": 0} if major >= 11 else {"EXPLICIT_BATCH": 0,
                                                           "STRONGLY_TYPED": 1}
    trt.NetworkDefinitionCreationFlag = _Enum(**net_flags)
    trt.BuilderFlag = _Enum(**({"TF32": 7} if major >= 11 else
                               {"FP16": 0, "INT8": 1, "TF32": 7}))
    trt.MemoryPoolType = _Enum(WORKSPACE=0)

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Profile:
        def set_shape(self, name, *shapes):
            calls.append(("profile", name, shapes))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("workspace", size))

        def add_optimization_profile(self, p):
            calls.append(("add_profile",))

        def set_flag(self, flag):
            calls.append(("set_flag", flag))

        if major < 11:
            def set_calibration_profile(self, p):
                calls.append(("calibration_profile",))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"engine-" + version.encode()

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls.append(("parse", Path(path).name, Path(path).is_file()))
            return True

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    return trt


ENV = {"gpu_name": "NVIDIA A10", "compute_capability": "8.6", "cuda": "12",
       "cuda_source": "pip tensorrt-cu12"}


@pytest.fixture
def fake_trt(monkeypatch):
    """Install a fake tensorrt of a given version; the GPU query returns ENV."""
    from vcesdk.export import tensorrt_export

    def install(version: str) -> list:
        calls: list = []
        monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(version, calls))
        monkeypatch.setattr(tensorrt_export, "local_gpu_environment",
                            lambda device=0: {**ENV, "tensorrt": version})
        return calls

    return install


@pytest.mark.parametrize("version, precision, net_flags, set_flags", [
    ("8.5.2.2", "fp16", 1 << 0, [0]),       # EXPLICIT_BATCH, FP16
    ("8.6.1.6", "fp32", 1 << 0, []),
    ("10.3.0.26", "fp16", 0, [0]),
    ("11.1.0.106", "fp32", 0, []),           # strongly typed, no precision flag touched
])
def test_python_builder_flags_per_version(fake_trt, tmp_path, version, precision, net_flags,
                                          set_flags):
    from vcesdk.export.tensorrt_export import build_engine

    calls = fake_trt(version)
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    side = build_engine(tmp_path / "model.onnx", tmp_path / "model.engine", PROF, precision, 2)
    assert ("create_network", net_flags) in calls
    assert [c[1] for c in calls if c[0] == "set_flag"] == set_flags
    assert ("workspace", 2 << 30) in calls and ("parse", "model.onnx", True) in calls
    assert ("profile", "ncct", ((1, 3, 8, 64, 64), (2, 3, 8, 256, 256), (2, 3, 8, 512, 512))) \
        in calls
    assert (tmp_path / "model.engine").read_bytes() == b"engine-" + version.encode()
    written = json.loads((tmp_path / "model.engine.json").read_text())
    assert written == side
    assert (side["tensorrt"], side["cuda"], side["cuda_source"], side["precision"],
            side["builder"]) == (version, "12", "pip tensorrt-cu12", precision,
                                 "tensorrt-python")


def test_tensorrt_11_int8_is_refused_before_any_build(fake_trt, tmp_path):
    from vcesdk.export.tensorrt_export import build_engine

    calls = fake_trt("11.0.0")
    with pytest.raises(MissingDependencyError, match="removed implicit INT8 calibration"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", PROF, "int8",
                     calibration=[np.zeros((2, 3, 8, 256, 256), np.float32)])
    assert calls == [] and not (tmp_path / "m.engine").exists()


def test_tensorrt_11_fp16_builds_from_a_modelopt_mixed_precision_onnx(fake_trt, tmp_path,
                                                                      monkeypatch):
    from vcesdk.export.tensorrt_export import build_engine

    calls = fake_trt("11.1.0")
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    monkeypatch.setitem(sys.modules, "modelopt", None)  # not installed: says what to install
    with pytest.raises(MissingDependencyError, match=r"mixed-precision ONNX.*nvidia-modelopt"):
        build_engine(tmp_path / "model.onnx", tmp_path / "model.engine", PROF, "fp16")
    # with ModelOpt AutoCast: converted with float32 I/O kept, built, the by-product removed
    seen = {}

    def convert_to_mixed_precision(onnx_path, low_precision_type, keep_io_types):
        seen.update(onnx_path=onnx_path, low=low_precision_type, keep=keep_io_types)
        import onnx

        return onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))

    autocast = types.ModuleType("modelopt.onnx.autocast")
    autocast.convert_to_mixed_precision = convert_to_mixed_precision
    for name, mod in (("modelopt", types.ModuleType("modelopt")),
                      ("modelopt.onnx", types.ModuleType("modelopt.onnx")),
                      ("modelopt.onnx.autocast", autocast)):
        monkeypatch.setitem(sys.modules, name, mod)
    side = build_engine(tmp_path / "model.onnx", tmp_path / "model.engine", PROF, "fp16")
    assert seen == {"onnx_path": str(tmp_path / "model.onnx"), "low": "fp16", "keep": True}
    assert ("parse", "model.fp16.onnx", True) in calls
    assert [c for c in calls if c[0] == "set_flag"] == []
    assert side["precision"] == "fp16" and not (tmp_path / "model.fp16.onnx").exists()


# ---- torch-tensorrt ------------------------------------------------------------------------

# parameter names of torch_tensorrt.dynamo.compile / torch_tensorrt.save that decide the
# arguments, as in pytorch/TensorRT's release tags (py/torch_tensorrt/dynamo/_compiler.py,
# py/torch_tensorrt/_compile.py)
COMPILE_PARAMS = {
    "2.4": ["inputs", "enabled_precisions"],
    "2.9": ["inputs", "arg_inputs", "enabled_precisions", "use_explicit_typing"],
    "2.12": ["inputs", "arg_inputs", "enabled_precisions", "use_explicit_typing",
             "enable_autocast", "autocast_low_precision_type"],
    "2.13": ["inputs", "arg_inputs", "enable_autocast", "autocast_low_precision_type"],
}
SAVE_PARAMS = {
    "2.4": ["module", "file_path", "output_format", "inputs", "retrace"],        # retrace=False
    "2.9": ["module", "file_path", "output_format", "inputs", "arg_inputs", "kwarg_inputs",
            "retrace", "pickle_protocol", "kwargs"],
    "2.10": ["module", "file_path", "output_format", "inputs", "arg_inputs", "kwarg_inputs",
             "retrace", "pickle_protocol", "kwargs"],                            # retrace=True
    "2.13": ["module", "file_path", "extra_files", "output_format", "inputs", "arg_inputs",
             "kwarg_inputs", "retrace", "use_legacy_exporter", "pickle_protocol",
             "dynamic_shapes", "kwargs"],
}


def test_torch_tensorrt_compile_arguments_per_version():
    torch = pytest.importorskip("torch")
    from vcesdk.export.tensorrt_export import torch_tensorrt_compile_kwargs as kw

    for version in COMPILE_PARAMS:
        assert kw(COMPILE_PARAMS[version], "fp32") == {}
    # 2.13 dropped enabled_precisions: fp16 is autocast (it would otherwise build fp32)
    assert kw(COMPILE_PARAMS["2.13"], "fp16") == {
        "enable_autocast": True, "autocast_low_precision_type": torch.float16}
    assert kw(COMPILE_PARAMS["2.12"], "fp16") == kw(COMPILE_PARAMS["2.13"], "fp16")
    assert kw(COMPILE_PARAMS["2.9"], "fp16") == {
        "enabled_precisions": {torch.float16, torch.float32}, "use_explicit_typing": False}
    assert kw(COMPILE_PARAMS["2.4"], "fp16") == {
        "enabled_precisions": {torch.float16, torch.float32}}
    with pytest.raises(BundleError, match="fp32 or fp16, got 'int8'"):
        kw(COMPILE_PARAMS["2.13"], "int8")


def test_torch_tensorrt_save_keeps_dynamic_shapes_per_version():
    from vcesdk.export.tensorrt_export import torch_tensorrt_save_kwargs as kw

    x, dyn = object(), ({0: "batch"},)
    assert kw(SAVE_PARAMS["2.4"], x, dyn) == {"inputs": [x], "retrace": False}
    for version in ("2.9", "2.10"):  # 2.10 retraces (static) by default: retrace=False
        assert kw(SAVE_PARAMS[version], x, dyn) == {"arg_inputs": [x], "retrace": False}
    assert kw(SAVE_PARAMS["2.13"], x, dyn) == {"arg_inputs": [x], "retrace": False,
                                               "dynamic_shapes": dyn}


# ---- sidecar: TensorRT's CUDA, the GPU without torch ------------------------------------------

def test_tensorrt_cuda_version_sources(tmp_path):
    assert tensorrt_cuda_version(["numpy", "tensorrt_cu12_libs", "tensorrt-cu12"], []) == \
        ("12", "pip tensorrt-cu12")
    assert tensorrt_cuda_version(["tensorrt-cu13-bindings"], []) == \
        ("13", "pip tensorrt-cu13-bindings")
    assert tensorrt_cuda_version([], ["8.5.2-1+cuda11.4"], tmp_path) == \
        ("11.4", "dpkg libnvinfer 8.5.2-1+cuda11.4")
    (tmp_path / "version.json").write_text(json.dumps(
        {"cuda": {"name": "CUDA SDK", "version": "12.6.20240815"}}))
    assert tensorrt_cuda_version([], [], tmp_path) == ("12.6", str(tmp_path / "version.json"))
    (tmp_path / "version.json").unlink()
    (tmp_path / "version.txt").write_text("CUDA Version 11.4.315\n")
    assert tensorrt_cuda_version([], [], tmp_path)[0] == "11.4"
    (tmp_path / "version.txt").unlink()
    assert tensorrt_cuda_version([], [], tmp_path) == ("unknown", "not found")


def test_gpu_environment_needs_no_torch(monkeypatch):
    """build-engine's environment: TensorRT's version and CUDA, the GPU from the CUDA driver;
    importing torch would fail here."""
    from vcesdk import cuda_driver, engines

    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("10.3.0.26", []))
    monkeypatch.setattr(cuda_driver, "device_properties", lambda d=0: ("Orin", "8.7"))
    monkeypatch.setattr(engines, "tensorrt_cuda_version",
                        lambda: ("12.6", "dpkg libnvinfer 10.3.0.30-1+cuda12.6"))
    env = engines.local_gpu_environment()
    assert env == {"gpu_name": "Orin", "compute_capability": "8.7", "tensorrt": "10.3.0.26",
                   "cuda": "12.6", "cuda_source": "dpkg libnvinfer 10.3.0.30-1+cuda12.6"}
    # a trtexec-built sidecar says 10.3.0, the Python module 10.3.0.26: the same release
    check_engine_compatible({**env, "tensorrt": "10.3.0", "cuda": "12"}, env)
    with pytest.raises(BundleError, match=r"TensorRT 10.4.0 \(engine\) vs 10.3.0.26"):
        check_engine_compatible({**env, "tensorrt": "10.4.0"}, env)


class _FakeDriver:
    """libcuda as ctypes calls it: outputs through byref(...)._obj."""

    def __init__(self, ok: bool = True):
        self.ok = ok

    def cuDeviceGet(self, ref, ordinal):
        if ordinal > 0:
            return 101  # CUDA_ERROR_INVALID_DEVICE
        ref._obj.value = ordinal
        return 0

    def cuDeviceGetName(self, buf, size, dev):
        ctypes.memmove(buf, b"NVIDIA H200\0", 12)
        return 0

    def cuDeviceGetAttribute(self, ref, attr, dev):
        ref._obj.value = {75: 9, 76: 0}[attr]
        return 0


def test_cuda_driver_device_query():
    from vcesdk.cuda_driver import device_properties

    assert device_properties(0, _FakeDriver()) == ("NVIDIA H200", "9.0")
    with pytest.raises(MissingDependencyError, match="no CUDA device 1: cuDeviceGet returned "
                                                     "CUDA error 101"):
        device_properties(1, _FakeDriver())


def test_build_engine_command_imports_no_torch(tmp_path, abdomen_path):
    """``vcesdk build-engine`` on a machine without PyTorch: it gets as far as TensorRT."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ImportError('torch is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    proc = subprocess.run([sys.executable, "-m", "vcesdk.cli", "build-engine",
                           str(vcesdk.DEFAULT_BUNDLE), "--parity-input", str(abdomen_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("vcesdk: error: TensorRT is not installed")
    assert "torch is not installed here" not in proc.stderr


# ---- ONNX Runtime TensorRT EP defaults ---------------------------------------------------------

def test_tensorrt_ep_gets_profiles_and_an_engine_cache_by_default(demo, tmp_path, monkeypatch):
    from vcesdk.engines import default_engine_cache
    from vcesdk.backends import default_provider_options

    monkeypatch.setenv("VCESDK_ENGINE_CACHE", str(tmp_path / "cache"))
    sha = demo.manifest["files"]["model.onnx"]["sha256"]
    assert default_engine_cache(demo) == tmp_path / "cache" / f"{demo.name}-{sha[:12]}"
    opts = default_provider_options(demo, ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                           "CPUExecutionProvider"])
    assert opts[0] == {
        "device_id": "0", "trt_profile_min_shapes": "ncct:1x3x8x64x64",
        "trt_profile_opt_shapes": "ncct:2x3x8x256x256",
        "trt_profile_max_shapes": "ncct:2x3x8x512x512", "trt_fp16_enable": "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(default_engine_cache(demo))}
    assert opts[1:] == [{}, {}]
    # the user's keys win, one by one
    mine = default_provider_options(demo, ["TensorrtExecutionProvider"], {
        "TensorrtExecutionProvider": {"trt_engine_cache_path": "/x", "trt_fp16_enable": "True"}})
    assert mine[0]["trt_engine_cache_path"] == "/x" and mine[0]["trt_fp16_enable"] == "True"
    assert mine[0]["trt_profile_max_shapes"] == "ncct:2x3x8x512x512"
    monkeypatch.delenv("VCESDK_ENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_engine_cache(demo).parent == tmp_path / "xdg" / "vcesdk" / "ort-tensorrt"


# ---- the Jetson build script --------------------------------------------------------------------

FAKE_TRTEXEC = """#!/bin/sh
# a stand-in for trtexec: prints the banner and log lines the real one prints (NVIDIA/TensorRT
# samples/common/logging.h, sampleDevice, trtexec.cpp), records its arguments, writes the plan
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v{code}] [b26] # trtexec $*"
case "$*" in *--help*) exit 0;; esac
echo "$@" > "{record}"
echo "[I] Selected Device: Orin"
echo "[I] Compute Capability: 8.7"
echo "[I] TensorRT version: {dotted}"
for a in "$@"; do case "$a" in --saveEngine=*) printf plan > "${{a#--saveEngine=}}";; esac; done
"""
FAKE_PYTHON = """#!/bin/sh
# stands in for python3 -m modelopt.onnx.autocast: copies --onnx_path to --output_path
echo "$@" > "{record}"
while [ $# -gt 0 ]; do case "$1" in --onnx_path) i=$2;; --output_path) o=$2;; esac; shift; done
cp "$i" "$o"
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.parametrize("code, dotted, precision, expect", [
    ("8502", "8.5.2", "fp16", ["--buildOnly", "--fp16"]),
    ("100300", "10.3.0", "fp16", ["--skipInference", "--fp16"]),
    ("110100", "11.1.0", "fp16", ["--skipInference"]),
    ("110100", "11.1.0", "fp32", ["--skipInference"]),
])
def test_jetson_script_finds_trtexec_picks_its_flags_and_writes_the_sidecar(
        tmp_path, code, dotted, precision, expect):
    from vcesdk.export.tensorrt_export import build_script

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.onnx").write_bytes(b"onnx")
    script = _executable(bundle / "build_engine.sh",
                         build_script("model.onnx", "model.engine", PROF, precision, 4))
    assert "/usr/src/tensorrt/bin/trtexec" in script.read_text()
    tools = tmp_path / "tools"
    tools.mkdir()
    _executable(tools / "trtexec", FAKE_TRTEXEC.format(
        code=code, dotted=dotted, record=tmp_path / "trtexec.args"))
    _executable(tools / "python3", FAKE_PYTHON.format(record=tmp_path / "python.args"))
    env = {"PATH": f"{tools}:/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)  # the script cds to its own folder
    assert proc.returncode == 0, proc.stderr
    onnx = "model.fp16.onnx" if precision == "fp16" and code.startswith("11") else "model.onnx"
    assert (tmp_path / "trtexec.args").read_text().split() == [
        f"--onnx={onnx}", "--saveEngine=model.engine", *SHAPES,
        "--memPoolSize=workspace:4096", *expect]
    assert (tmp_path / "python.args").exists() == (onnx == "model.fp16.onnx")
    assert (bundle / "model.engine").read_text() == "plan"
    side = json.loads((bundle / "model.engine.json").read_text())
    assert {k: side[k] for k in ("engine", "gpu_name", "compute_capability", "tensorrt",
                                 "precision", "profiles", "builder", "input", "output")} == {
        "engine": "model.engine", "gpu_name": "Orin", "compute_capability": "8.7",
        "tensorrt": dotted, "precision": precision, "profiles": PROF, "builder": "trtexec",
        "input": "ncct", "output": "scect"}
    assert side["cuda"] and side["cuda_source"]
    # the runtime accepts it on the same device and TensorRT release
    here = {"gpu_name": "Orin", "compute_capability": "8.7", "tensorrt": dotted + ".1",
            "cuda": side["cuda"]}
    check_engine_compatible(side, here)
    # not found anywhere: one clear line, exit 2
    proc = subprocess.run(["sh", str(script)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, timeout=60)
    if not Path("/usr/src/tensorrt/bin/trtexec").exists():
        assert proc.returncode == 2 and "trtexec not found" in proc.stderr
