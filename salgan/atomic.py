"""Replacing an output file or folder so that a failed or killed run never leaves half of one."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Yield a handle on a new temporary file beside ``path``; when the block succeeds the file is synced
    and renamed over ``path``, otherwise removed.

    The temporary name is random and created exclusively (mkstemp), so it never follows a planted
    symlink or collides with another writer; the result gets the usual umask permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """``path`` holds ``data`` (text is UTF-8) or, after a failure, what it held before."""
    with atomic_file(path, "w" if isinstance(data, str) else "wb") as handle:
        handle.write(data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(output: str | Path) -> Iterator[Path]:
    """Yield a fresh sibling of ``output``; when the block succeeds it replaces ``output`` by rename.

    On an error the sibling is removed and ``output`` stays exactly as it was. The sibling lives beside
    ``output`` (same file system, so the rename is atomic) and is made with mkdir, not mkdtemp, so the
    result gets the usual umask permissions rather than 0700. Leftovers of a killed run are removed first.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(output)
    stage = output.with_name(f".{output.name}.tmp-{uuid.uuid4().hex[:8]}")
    stage.mkdir()
    try:
        yield stage
        _swap(stage, output)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # already gone after a successful swap


def _swap(stage: Path, output: Path) -> None:
    """Two renames; the old folder is put back if the second one fails."""
    if not output.exists():
        os.rename(stage, output)
        return
    old = output.with_name(f".{output.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(output, old)
    try:
        os.rename(stage, output)
    except OSError:
        os.rename(old, output)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(output: Path) -> None:
    """Staging and old folders a killed run left beside ``output`` (never ``output`` itself)."""
    pattern = re.compile(rf"\.{re.escape(output.name)}\.(tmp|old)-\w+")
    for leftover in output.parent.glob(f".{output.name}.*-*"):
        if leftover.is_dir() and pattern.fullmatch(leftover.name):
            log.info("removing %s, left by an interrupted run", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
