"""Shared fixtures. Real CT comes from ../shared/data/ct (never copied into the repository);
a missing file fails the test with the path, it does not skip."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CT = Path(os.environ.get("VCESDK_SHARED_CT", ROOT.parent / "shared" / "data" / "ct"))

LUNG1 = "pyradiomics_lung1/lung1_image.nrrd"
ABDOMEN = "totalseg_abdomen_native/example_ct.nii.gz"
HCC_DICOM = "hcc048_portal_venous/dicom"
CHEST_CTA = "totalseg_chest_cta"
HCC_SLICES = 8  # slices of hcc048 copied for tests that break a series


def shared(rel: str) -> Path:
    p = SHARED_CT / rel
    if not p.exists():
        pytest.fail(f"shared test data missing: {p} (set VCESDK_SHARED_CT or place ../shared "
                    f"beside the repository)")
    return p


@pytest.fixture(scope="session")
def lung1_path() -> Path:
    return shared(LUNG1)


@pytest.fixture(scope="session")
def abdomen_path() -> Path:
    return shared(ABDOMEN)


@pytest.fixture(scope="session")
def hcc_dicom_dir() -> Path:
    return shared(HCC_DICOM)


@pytest.fixture(scope="session")
def hcc_volume(hcc_dicom_dir):
    import vcesdk

    return vcesdk.read_volume(hcc_dicom_dir)


@pytest.fixture(scope="session")
def abdomen_volume(abdomen_path):
    import vcesdk

    return vcesdk.read_volume(abdomen_path)


@pytest.fixture(scope="session")
def hcc_files(hcc_dicom_dir):
    """The first HCC_SLICES files of the real hcc048 series, in slice order."""
    import pydicom

    import vcesdk

    vol = vcesdk.read_volume(hcc_dicom_dir)
    by_sop = {}
    for f in sorted(hcc_dicom_dir.iterdir()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        by_sop[str(ds.SOPInstanceUID)] = f
    return [by_sop[str(h.SOPInstanceUID)] for h in vol.source_headers[:HCC_SLICES]]


@pytest.fixture
def series(hcc_files, tmp_path):
    """A fresh copy of HCC_SLICES real CT slices to break."""
    d = tmp_path / "series"
    d.mkdir()
    for i, f in enumerate(hcc_files):
        shutil.copy2(f, d / f"s{i:02d}.dcm")
    return d


@pytest.fixture
def deterministic():
    """Training tests run seeded, deterministic kernels on a fixed thread count (2, the CI
    machine's cores), so a rerun on one machine gives the same figures; their assertions keep
    margins for other CPUs' floating-point kernels."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)
