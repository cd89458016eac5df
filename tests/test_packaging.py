"""Install targets from the project's metadata (pyproject.toml): no target ever requires both
ONNX Runtime wheels (onnxruntime and onnxruntime-gpu install the same ``onnxruntime`` module
over each other), the targets the README's commands install have exactly one, and torch is
bounded wherever it is required."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORT = {"onnxruntime", "onnxruntime-gpu"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace(
        "_", "-")


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _resolve(project: dict, extras: tuple[str, ...]) -> list[str]:
    """Requirements of ``pip install .[extras]``: core plus each extra, self-references
    (``vcesdk[a,b]``) expanded recursively."""
    out = list(project["dependencies"])
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in project["optional-dependencies"][extra]:
            m = re.match(r"\s*vcesdk\[([^\]]+)\]", req)
            if m:
                todo += [e.strip() for e in m.group(1).split(",")]
            else:
                out.append(req)
    return out


def test_no_install_target_combines_cpu_and_gpu_onnxruntime(project):
    extras = list(project["optional-dependencies"])
    targets = [()] + [(e,) for e in extras]
    for target in targets:
        names = {_name(r) for r in _resolve(project, target)}
        assert not ORT <= names, f"pip install .[{','.join(target)}] requires both {ORT}"
    # the core carries neither: the CPU wheel could not come back over onnxruntime-gpu on a
    # reinstall of vcesdk
    assert not ORT & {_name(r) for r in project["dependencies"]}
    # the README's two commands: `.[cpu]` and `.[dev]` each bring exactly the CPU wheel, `.[gpu]`
    # exactly the GPU one
    for target, wheel in ((("cpu",), "onnxruntime"), (("dev",), "onnxruntime"),
                          (("gpu",), "onnxruntime-gpu")):
        assert ORT & {_name(r) for r in _resolve(project, target)} == {wheel}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert 'python -m pip install ".[cpu]" && vcesdk synthesize --sample' in readme
    assert 'python -m pip install torch==2.13.0 -e ".[dev]" && python -m pytest' in readme


def test_torch_is_bounded_wherever_it_is_required(project):
    for extra, reqs in project["optional-dependencies"].items():
        for req in reqs:
            if _name(req) == "torch":
                assert re.search(r"<\s*2\.14", req), f"{extra}: unbounded {req!r}"
