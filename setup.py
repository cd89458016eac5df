"""Builds the native extension vcesdk._C and maps training/ and export/ into the vcesdk package.

Everything else (metadata, dependencies, entry points) lives in pyproject.toml.
"""
import sys
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup


def _openmp_flags() -> tuple[list[str], list[str]]:
    if sys.platform == "win32":
        return ["/openmp"], []
    if sys.platform == "darwin":  # Apple clang needs libomp from Homebrew
        return ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
    return ["-fopenmp"], ["-fopenmp"]


_compile, _link = _openmp_flags()

ext_modules = [
    Pybind11Extension(
        "vcesdk._C",
        sorted(glob("csrc/**/*.cpp", recursive=True)),
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3", *_compile] if sys.platform != "win32" else ["/O2", *_compile],
        extra_link_args=_link,
    )
]

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    packages=[
        "vcesdk",
        "vcesdk.backends",
        "vcesdk.io",
        "vcesdk.models",
        "vcesdk.models.demo_ap",
        "vcesdk.models.demo_pvp",
        "vcesdk.models.demo_dp",
        "vcesdk.data",
        "vcesdk.training",
        "vcesdk.training.methods",
        "vcesdk.training.recipes",
        "vcesdk.export",
    ],
    package_dir={
        "vcesdk": "vcesdk",
        "vcesdk.training": "training",
        "vcesdk.training.methods": "training/methods",
        "vcesdk.training.recipes": "training/recipes",
        "vcesdk.export": "export",
    },
    package_data={
        # the three demo bundles (vcesdk.DEFAULT_BUNDLES), one per contrast phase
        "vcesdk.models.demo_ap": ["manifest.json", "*.onnx", "*.pt"],
        "vcesdk.models.demo_pvp": ["manifest.json", "*.onnx", "*.pt"],
        "vcesdk.models.demo_dp": ["manifest.json", "*.onnx", "*.pt"],
        # the embedded sample CT (vcesdk.data): TotalSegmentator test files, Apache-2.0
        "vcesdk.data": ["sample/*.nii.gz", "sample/*.json", "sample/LICENSE",
                        "sample/ATTRIBUTION.md"],
        "vcesdk.training.recipes": ["*.yaml"],
    },
)
