"""Content versions: which data and which code a checkpoint, a registered model or a report came from.

A version is a short sha256 over file contents, so it changes exactly when the bytes do, whatever the
path, the clock or the machine. The prepare stage records each split's version in
``data/prepared/report.json``; readers use that record and hash the files only when it is absent (a
prepared tree written by other means).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import salgan

VERSION_CHARS = 16
REPORT_FILE = "report.json"
DATA_VERSION_TAG = "data_version"  # MLflow tag: the val split's version a run's or model version's metrics are on
# The modules whose code decides the trained weights: a change to any of them invalidates a checkpoint.
TRAINING_CORE = ("train.py", "losses.py", "data.py", "checkpoint.py", "distributed.py", "models")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_version(files: list[Path], root: Path) -> str:
    """Version of a set of files: their paths relative to ``root`` and contents, in path order."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()[:VERSION_CHARS]


def split_version_of_files(folder: str | Path) -> str:
    """Version of a prepared split folder, hashed from every regular file in it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: prepared split not found; run the prepare stage first")
    return files_version([p for p in folder.iterdir() if p.is_file()], folder)


def split_version(root: str | Path, split: str) -> str:
    """The version of ``root/split`` that prepare recorded in ``root/report.json``, else hashed now."""
    report = Path(root) / REPORT_FILE
    try:
        recorded = json.loads(report.read_text()).get("versions", {}).get(split)
    except (OSError, ValueError, AttributeError):
        recorded = None
    return recorded or split_version_of_files(Path(root) / split)


def code_version() -> str:
    """Version of the training core's source (:data:`TRAINING_CORE`) as installed."""
    package = Path(salgan.__file__).parent
    files: list[Path] = []
    for name in TRAINING_CORE:
        path = package / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files_version(files, package)
