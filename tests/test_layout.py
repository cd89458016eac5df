"""Package layout: every vcesdk module imports, vcesdk's import graph has no cycles, the one
format table drives the backend registry, and the runtime imports neither torch nor
vcesdk.export."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vcesdk

PACKAGE_DIR = Path(vcesdk.__file__).resolve().parent
EXTENSION_SUFFIXES = (".so", ".pyd")


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under `root` (package `package`)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_extension(root: Path, package: str, dotted: str) -> bool:
    """Whether `dotted` names a compiled extension module under `root` (e.g. vcesdk._C)."""
    rel = dotted.split(".")[1:]
    if not rel:
        return False
    folder = root.joinpath(*rel[:-1])
    return any(p.name.startswith(rel[-1] + ".") and p.suffix in EXTENSION_SUFFIXES
               for p in folder.glob(rel[-1] + ".*"))


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Static graph of relative imports between the modules under `root`, read with ast
    (imports inside functions count too: a lazy import back is still a circle).

    ``from . import name`` points at the submodule `name` where one exists, else at the
    package's ``__init__``.
    """
    mods = module_names(root, package)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        here = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = here.split(".")
            if node.level > 1:
                base = base[:-(node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in mods:
                    dest = sub
                elif _is_extension(root, package, sub):
                    continue
                else:
                    dest = target
                if dest in mods and dest != mod:
                    graph[mod].add(dest)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def test_cycle_finder_on_a_hand_made_package(tmp_path):
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import x\n")
    (pkg / "a.py").write_text("from .b import y\nx = 1\n")
    (pkg / "b.py").write_text("def f():\n    from .sub.c import z\ny = 2\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from .. import a\nfrom ..a import x as z\n")
    (pkg / "_ext.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (pkg / "d.py").write_text("from . import _ext\n")
    graph = import_graph(pkg, "p")
    assert graph == {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": {"p.sub.c"}, "p.sub": set(),
                     "p.sub.c": {"p.a"}, "p.d": set()}
    assert find_cycle(graph) == ["p.a", "p.b", "p.sub.c", "p.a"]
    (pkg / "b.py").write_text("y = 2\n")
    assert find_cycle(import_graph(pkg, "p")) is None


def test_vcesdk_import_graph_is_acyclic():
    graph = import_graph(PACKAGE_DIR, "vcesdk")
    assert len(graph) >= 25, sorted(graph)  # the walk found the package
    assert {"vcesdk.backends", "vcesdk.backends.onnxruntime", "vcesdk.planning",
            "vcesdk.formats"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
    # the documented direction: runtime -> backends / planning -> formats, bundle; never back
    assert {"vcesdk.backends", "vcesdk.planning"} <= graph["vcesdk.runtime"]
    for low in ("vcesdk.formats", "vcesdk.planning", "vcesdk.bundle", "vcesdk.engines"):
        assert not graph[low] & {"vcesdk.runtime", "vcesdk.backends", "vcesdk.cli"}, low


def test_every_vcesdk_module_imports():
    mods = module_names(PACKAGE_DIR, "vcesdk")
    for name in mods:
        assert importlib.import_module(name).__name__ == name


def test_runtime_imports_neither_torch_nor_export():
    code = ("import sys, vcesdk, vcesdk.runtime, vcesdk.backends, vcesdk.formats, "
            "vcesdk.planning, vcesdk.benchmark\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorrt', "
            "'torch_tensorrt') or m.startswith('vcesdk.export') or m.startswith("
            "'vcesdk.training'))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_backend_module_named_onnxruntime_imports_the_real_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    from vcesdk.backends import onnxruntime as ort_backend

    assert ort_backend.import_onnxruntime() is ort
    assert ort_backend.__name__ == "vcesdk.backends.onnxruntime"
    assert "CPUExecutionProvider" in ort_backend.provider_lists()[1]


def test_registry_and_providers_come_from_the_one_format_table():
    from vcesdk.backends import REGISTRY, family_of, known_providers
    from vcesdk.formats import (
        DEFAULT_PROVIDER_ORDER,
        FILE_PROVIDERS,
        FORMATS,
        provider_device,
        provider_format,
    )

    assert list(REGISTRY) == list(FORMATS)  # one backend family per format, table order
    assert DEFAULT_PROVIDER_ORDER == ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                      "CPUExecutionProvider")
    assert FILE_PROVIDERS == {"TorchScript": "torchscript", "TorchScript:cuda": "torchscript",
                              "AOTInductor": "aoti", "AOTInductor:cuda": "aoti_cuda",
                              "TensorRTEngine": "tensorrt", "TorchTensorRT": "torch_tensorrt"}
    for f in FORMATS.values():
        assert f.file_name == "model" + f.suffix
        assert f.check_provider in f.provider_names
        for p, device in f.providers:
            assert provider_format(p) is f and provider_device(p) == device
            assert family_of(p) is REGISTRY[f.name]
    assert provider_format("OpenVINOExecutionProvider").name == "onnx"
    assert provider_device("OpenVINOExecutionProvider") == "cpu"
    assert [p for p in known_providers() if p in FILE_PROVIDERS] == list(FILE_PROVIDERS)
    engines = [f.name for f in FORMATS.values() if f.engine]
    assert engines == ["tensorrt", "torch_tensorrt"]


def test_triton_platforms_follow_the_format_table():
    from vcesdk.export.triton import PLATFORMS, source_format
    from vcesdk.formats import FORMATS

    assert {p: v[0] for p, v in PLATFORMS.items()} == {
        "onnxruntime_onnx": "onnx", "tensorrt_plan": "tensorrt",
        "pytorch_libtorch": "torchscript"}
    assert all(FORMATS[v[0]].triton_platform == p for p, v in PLATFORMS.items())
    assert [source_format(p) for p in PLATFORMS] == ["onnx", "onnx", "torchscript"]


def test_plan_windows_golden_case():
    from vcesdk.planning import plan_windows

    demo = vcesdk.load_bundle(vcesdk.DEFAULT_BUNDLE)  # window 8 slices, stride 4, multiples
    assert plan_windows(demo, (5, 100, 90)) == ((8, 112, 96), (8, 112, 96), (4, 112, 96))
    assert plan_windows(demo, (21, 64, 64)) == ((24, 64, 64), (8, 64, 64), (4, 64, 64))


def test_thin_input_repeats_its_last_slice_to_the_window():
    from vcesdk.planning import estimate_memory_mb, prepare_model_input

    demo = vcesdk.load_bundle(vcesdk.DEFAULT_BUNDLE)  # resamples to (4, 2, 2) mm
    hu = np.linspace(-1000, 400, 3 * 64 * 64, dtype=np.float32).reshape(3, 64, 64)
    vol = vcesdk.CTVolume(hu=hu, spacing_zyx_mm=(4.0, 2.0, 2.0))
    prep = prepare_model_input(demo, vol)
    assert prep.work.shape == (3, 64, 64)
    assert prep.replicated_slices == 5
    assert prep.channels.shape == (3, 8, 64, 64)
    for z in range(3, 8):
        np.testing.assert_array_equal(prep.channels[:, z], prep.channels[:, 2])
    assert prep.windows().shape == (1, 3, 8, 64, 64)
    # 2 model-grid volumes (input, composed output) + 3 padded input channels + 2 input-grid
    # volumes (output, slab), float32: the stitcher keeps no output volume of its own
    assert estimate_memory_mb(demo, vol) == pytest.approx(
        (2 * 3 * 64 * 64 + 8 * 64 * 64 * 3 + 2 * 3 * 64 * 64) * 4 / 1e6)
