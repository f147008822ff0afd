"""The images a user names on the command line: files, folders (searched recursively) and glob patterns.

Each becomes a :class:`Job`: the file, and the output stem its results are written under (its path
relative to the folder or the glob's fixed part, without suffix), so that a folder tree of images becomes
the same tree of maps. Only files named like images (:data:`salgan.imaging.IMAGE_SUFFIXES`) are taken from
folders; pipes, sockets and devices are named and skipped (reading one would block forever), as are
inputs whose output name another input already has.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from salgan.imaging import IMAGE_SUFFIXES

GLOB_CHARS = set("*?[")


@dataclass
class Job:
    """One input image and the output stem (relative path without suffix) its results are written to."""

    path: Path
    stem: Path


NOT_REGULAR = "not a regular file (a pipe, socket or device); skipped"


def collect(inputs: list[str], exclude: Path | None = None) -> tuple[list[Job], list[str]]:
    """Jobs for files, directories (recursive, images only, dot-files skipped) and globs; and errors."""
    jobs: list[Job] = []
    errors: list[str] = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_file():
            jobs.append(Job(path, Path(path.stem)))
        elif path.is_dir():
            for found in _walk(path, exclude):
                if found.is_file():
                    jobs.append(Job(found, found.relative_to(path).with_suffix("")))
                else:
                    errors.append(f"{found}: {NOT_REGULAR}")
        elif GLOB_CHARS & set(text):
            base = _glob_base(text)
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
            found = [p for p in matches if p.is_file()]
            if not found:
                errors.append(f"{text}: no files match")
            jobs += [Job(p, _relative(p, base).with_suffix("")) for p in found]
        elif path.exists():
            errors.append(f"{text}: {NOT_REGULAR}")
        else:
            errors.append(f"{text}: no such file or directory")
    return _unique(jobs, errors), errors


def _walk(root: Path, exclude: Path | None) -> Iterator[Path]:
    """Entries named like images under ``root``: regular files to read, and pipes or devices, which the
    caller reports and skips (reading a pipe named like an image would block forever)."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not _same(here / d, exclude))
        for name in sorted(filenames):
            # ._x.jpg AppleDouble files and other dot-files are not images even with an image suffix
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield here / name


def _same(a: Path, b: Path | None) -> bool:
    return b is not None and a.resolve() == b.resolve()


def _glob_base(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard (outputs keep the path below it)."""
    parts = Path(os.path.expanduser(pattern)).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if GLOB_CHARS & set(p))]]
    return Path(*fixed) if fixed else Path(".")


def _relative(path: Path, base: Path) -> Path:
    try:
        return path.relative_to(base)
    except ValueError:
        return Path(path.name)


def _unique(jobs: list[Job], errors: list[str]) -> list[Job]:
    """Drop repeated files; two inputs with one stem (a.jpg, a.png) keep their suffix in the output name."""
    seen: set[Path] = set()
    distinct = []
    for job in jobs:
        if job.path.resolve() not in seen:
            seen.add(job.path.resolve())
            distinct.append(job)
    jobs = distinct
    counts: dict[Path, int] = {}
    for job in jobs:
        counts[job.stem] = counts.get(job.stem, 0) + 1
    for job in jobs:
        if counts[job.stem] > 1:
            job.stem = job.stem.with_name(job.path.name)
    taken: set[Path] = set()
    unique = []
    for job in jobs:
        if job.stem in taken:
            errors.append(f"{job.path}: output name {job.stem}.png is already used by another input; skipped")
            continue
        taken.add(job.stem)
        unique.append(job)
    return unique
