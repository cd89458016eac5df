"""Shared fixtures. Real CT comes from ../shared/data/ct (never copied into the repository);
a missing file fails the test with the path, it does not skip."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CT = Path(os.environ.get("VCESDK_SHARED_CT", ROOT.parent / "shared" / "data" / "ct"))

LUNG1 = "pyradiomics_lung1/lung1_image.nrrd"
ABDOMEN = "totalseg_abdomen_native/example_ct.nii.gz"
HCC_DICOM = "hcc048_portal_venous/dicom"


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
