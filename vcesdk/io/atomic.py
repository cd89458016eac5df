"""Atomic output: write into a temporary sibling, then rename into place."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import VolumeWriteError


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, is_dir: bool, overwrite: bool = False,
                  suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, on error delete it
    (and the folders of `path` this call created, when they are empty).

    Args:
        path: final file or folder.
        is_dir: the yielded temporary path is an (empty, existing) folder; otherwise a file
            path that does not exist yet.
        overwrite: replace an existing `path`; otherwise an existing path is refused before
            anything is written.
        suffix: suffix for the temporary file (writers that pick the format by extension).

    Raises:
        VolumeWriteError: `path` exists and not `overwrite`, or its folder cannot be created.
    """
    final = Path(path)
    if final.exists() and not overwrite:
        raise VolumeWriteError(f"output already exists: {final} (choose another path or "
                               f"pass overwrite)")
    parent = final.parent
    # folders this call creates, deepest first: removed again (when empty) on an error, so a
    # failed job leaves nothing behind, not even the folders of its output path
    created = []
    p = parent.absolute()
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VolumeWriteError(f"cannot create output folder {parent}: {exc.strerror}") from None
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the output gets the usual permissions
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".partial{suffix}",
                                    dir=parent)
        os.close(fd)
        os.unlink(name)
        tmp = Path(name)
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise VolumeWriteError(f"output appeared while writing: {final}")
            old = final.with_name(f".{final.name}.replaced")
            _remove(old)
            final.rename(old)
            tmp.rename(final)
            _remove(old)
        else:
            tmp.rename(final)
    except BaseException:
        _remove(tmp)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: another writer may have used it meanwhile
        raise
