"""Replacing a whole output folder so that a failed or killed run never leaves half of one."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


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
