"""Crash-safe file operations shared by run directories, checkpoints and datasets.

A reader sees the old file or folder or the new one, never a mix: new content is written beside
the target, fsynced, and renamed over it; the parent folder is fsynced afterwards.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flushes a directory's entries (new names, renames) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes `data` to `path` through a fsynced temporary file in the same folder and `os.replace`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def commit_directory(tmp: Path, final: Path, aside: Path) -> None:
    """Renames the finished folder `tmp` to `final`. An existing `final` is first renamed to `aside`
    (a name the owner recognises as disposable) and deleted once the new folder is in place, so a
    crash at any point leaves either the old or the new folder under `final`."""
    replaced = None
    if final.exists():
        os.rename(final, aside)
        replaced = aside
    os.rename(tmp, final)
    fsync_dir(final.parent)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
