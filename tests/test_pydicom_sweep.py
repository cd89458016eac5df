"""Every file pydicom ships as test data (and pydicom-data's, where installed) through
``vcesdk inspect`` and ``vcesdk synthesize``, in process (issue #17): each ends either in an
output (inspect: a volume line; synthesize: report.json and the scect_* volumes) or in exactly
one ``vcesdk: error:`` line with nothing written, never in a traceback.

The files are read where pydicom keeps them, as a user would name them: a DICOM file reads its
own series from the folder beside it. pydicom's files are mostly not CT (MR, RT, SR,
secondary capture, DICOMDIR, truncated, no meta header, JSON and text); the few CT ones are
single slices, small series with gaps or mixed orientation, and JPEG 2000.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import vcesdk
from vcesdk.cli import main


def _sweep_files() -> list[tuple[str, Path, bool]]:
    """(name, path, external) of the files pydicom's get_testdata_files() returns, found
    without downloading: pydicom's own test_files, each installed external source
    (pydicom-data), and files pydicom already downloaded into its cache (external)."""
    from pydicom.data import data_manager as dm

    found, seen = [], set()

    def add(name: str, path: Path, external: bool) -> None:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            found.append((name, path, external))

    root = Path(dm.DATA_ROOT) / "test_files"
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix != ".py":
            add(f"pydicom/{p.relative_to(root).as_posix()}", p, False)
    for source_name, source in dm.external_data_sources().items():
        for f in sorted(source.get_paths("**/*", dm.DataTypes.DATASET)):
            if not f.endswith(".py"):
                add(f"{source_name}/{Path(f).name}", Path(f), True)
    cache = Path(dm.get_data_dir())
    for name in sorted(dm.get_url_map()):
        if (cache / name).is_file():
            add(f"pydicom-cache/{name}", cache / name, True)
    return found


def _params(slow_external: bool) -> list:
    """One pytest param (name, path) per file, named by source and relative path."""
    return [pytest.param(name, path, id=name,
                         marks=[pytest.mark.slow] if slow_external and external else [])
            for name, path, external in FILES]


FILES = _sweep_files()
# pydicom's CT files that form a volume (single slices, one regular 5-slice series, JPEG 2000):
# they must come out, so the sweep cannot pass by refusing everything
READS = {"pydicom/CT_small.dcm", "pydicom/693_J2KI.dcm", "pydicom/J2K_pixelrep_mismatch.dcm",
         *(f"pydicom/dicomdirtests/98892001/CT5N/{n}" for n in (2062, 2392, 2693, 3023, 3353))}
# J2K_pixelrep_mismatch.dcm is 22 degrees oblique: synthesize refuses it (--oblique refuse)
SYNTHESIZES = READS - {"pydicom/J2K_pixelrep_mismatch.dcm"}


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in process; any exception but a VcesdkError escapes and fails the test."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse: the sweep's command lines are all valid
        pytest.fail(f"argparse exited ({exc.code}): {capsys.readouterr().err}")
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _assert_one_error_line(err: str) -> None:
    lines = [line for line in err.splitlines()
             if line.strip() and not line.startswith(("vcesdk: warning:", "note:"))]
    assert len(lines) == 1 and lines[0].startswith("vcesdk: error:"), err
    # a named file is always in its own folder: when it cannot be used, the error says why
    # (not CT, no plane position, unreadable), not that its series or any image is missing
    assert not re.match(r"vcesdk: error: (series \S+ not in |no DICOM images in )", lines[0]), \
        lines[0]


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_sweep_finds_pydicoms_test_files():
    names = {name for name, _, _ in FILES}
    assert len(FILES) >= 150  # pydicom 3.0 ships 176
    assert READS | {"pydicom/MR_small.dcm", "pydicom/rtplan.dcm",
                    "pydicom/dicomdirtests/DICOMDIR"} <= names


@pytest.mark.parametrize("name, path", _params(slow_external=False))
def test_inspect(name, path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a stray relative write would land here
    before = _listing(path.parent)
    rc, out, err = _cli(["inspect", str(path)], capsys)
    if name in READS:
        assert rc == 0, err
    if rc == 0:
        assert "volume: " in out and "contrast: " in out, out
        assert "vcesdk: error:" not in err
    else:
        _assert_one_error_line(err)
    assert _listing(tmp_path) == []
    assert _listing(path.parent) == before


# pydicom-data's and downloaded files are larger CT: their synthesis is marked slow
@pytest.mark.parametrize("name, path", _params(slow_external=True))
def test_synthesize(name, path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = _listing(path.parent)
    out_dir = tmp_path / "out"
    rc, out, err = _cli(["synthesize", str(path), "-o", str(out_dir), "--format", "nifti",
                         "-q"], capsys)
    if name in SYNTHESIZES:
        assert rc == 0, err
    if rc == 0:
        assert "vcesdk: error:" not in err
        report = json.loads((out_dir / "report.json").read_text())
        written = sorted(f.name for f in out_dir.glob("scect_*.nii.gz"))
        assert written and written == sorted(e["output"] for e in report["phases"])
        for name in written:
            assert vcesdk.read_volume(out_dir / name).shape == tuple(report["shape"])
        assert _listing(tmp_path) == ["out"]  # no temporary sibling left behind
    else:
        _assert_one_error_line(err)
        assert not out_dir.exists()
        assert _listing(tmp_path) == []
    assert _listing(path.parent) == before
