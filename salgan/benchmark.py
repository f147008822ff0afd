"""The MIT/Tuebingen saliency benchmark's submission archive (``package.format: mit-tuebingen``).

What the benchmark accepts, from its evaluation code (matthias-k/saliency-benchmarking:
``saliency_benchmarking/models.py``, ``PredictionsFromArchiveMixin`` and ``SaliencyMapModelFromArchive``;
``evaluate.py``, ``load_saliency_map_model`` and ``config_schema``; README.md):

- a zip (or tar, rar) of saliency maps, read with ``imageio.imread`` from ``.png``, ``.jpg``, ``.tiff`` (or
  ``.npy``, ``.mat``), entries under ``__MACOSX`` and ``.DS_Store`` ignored;
- each benchmark stimulus is matched to the one entry whose path without suffix ends with the stimulus's
  minimal unique file name without suffix (pysaliency's ``get_minimal_unique_filenames``: the stimuli's
  paths with their shared leading folders removed: ``i1`` for MIT300, ``Action/001`` for CAT2000); no
  entry or several entries for a stimulus is an error;
- "new submissions have to have saliency maps of the same size as the evaluated images" (README);
- a 3-channel map must be grey (``IgnoreColorChannelSaliencyMapModel``); salgan writes 8-bit grey PNGs;
- beside the archive, the submission's ``config.yaml``: ``model: {name, filename, probabilistic}`` and
  ``dataset``: MIT300, MIT1003 or CAT2000.

So the archive holds ``<name>.png`` for every test image, ``<name>`` being the prepared test split's name
(salgan/datasets/: the image's minimal unique path without suffix), at the image's own size.
:func:`validate_members` applies the benchmark's matching and salgan's checks to the files before the
archive is written, and :func:`read_archive` reads a written archive back the way the benchmark does.
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from PIL import Image

ARCHIVE = "saliency_maps.zip"
CONFIG = "config.yaml"
IGNORED = ("__macosx", ".ds_store")  # skipped by the benchmark's archive reader, lower-cased
BENCHMARK_DATASETS = {"mit1003": "MIT300", "cat2000": "CAT2000"}  # a dataset's test split on the benchmark
MAX_LISTED = 5


class ArchiveProblem(ValueError):
    """The archive would not be accepted; the message lists the problems, the files named."""


def member_name(name: str) -> str:
    """The archive entry of the test image named ``name``: ``Action/001`` -> ``Action/001.png``."""
    return f"{name}.png"


def match(stems: Sequence[str], stimulus: str) -> list[str]:
    """The entries (paths without suffix) the benchmark would take for ``stimulus`` (its minimal unique
    name without suffix): those ending with it (``PredictionsFromArchiveMixin``)."""
    return [stem for stem in stems if stem.endswith(stimulus)]


def validate_members(members: Mapping[str, Callable[[], IO[bytes]]], expected: Mapping[str, tuple[int, int]]) -> None:
    """Check ``members`` (entry name -> opener of its bytes) against the test images ``expected`` (name ->
    (W, H)): exactly one entry per image by the benchmark's matching, each an 8-bit grey PNG of the image's
    size, no entry left over. Raises :class:`ArchiveProblem` listing every kind of problem found."""
    entries = [m for m in members if not any(part in m.lower() for part in IGNORED)]
    stems = {str(Path(m).with_suffix("")): m for m in entries}
    unmatched, ambiguous, bad, used = [], [], [], set()
    for name, size in expected.items():
        candidates = match(list(stems), name)
        if not candidates:
            unmatched.append(name)
            continue
        if len(candidates) > 1:
            ambiguous.append(f"{name} ({', '.join(stems[c] for c in candidates)})")
            continue
        entry = stems[candidates[0]]
        used.add(entry)
        problem = _check_map(entry, members[entry], size)
        if problem:
            bad.append(problem)
    extra = sorted(set(entries) - used)
    problems = []
    for headline, items in (
        ("test images without a map", unmatched),
        ("test images that several entries match", ambiguous),
        ("invalid maps", bad),
        ("entries matching no test image", extra),
    ):
        if items:
            more = f", and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
            problems.append(f"{len(items)} {headline}: {', '.join(items[:MAX_LISTED])}{more}")
    if problems:
        raise ArchiveProblem("the MIT/Tuebingen benchmark would refuse it: " + "; ".join(problems))


def _check_map(entry: str, opener: Callable[[], IO[bytes]], size: tuple[int, int]) -> str | None:
    """Why an entry is not an 8-bit grey PNG of ``size`` (W, H), or None."""
    try:
        with opener() as handle, Image.open(io.BytesIO(handle.read())) as img:
            fmt, mode, actual = img.format, img.mode, img.size
            img.verify()
    except Exception as exc:  # noqa: BLE001 -- Pillow's many ways of saying the file is damaged
        return f"{entry} unreadable ({type(exc).__name__}: {exc})"
    if fmt != "PNG" or mode != "L":
        return f"{entry} is a {fmt} in mode {mode}, expected an 8-bit grey PNG"
    if tuple(actual) != tuple(size):
        return f"{entry} is {actual[0]}x{actual[1]}, its image {size[0]}x{size[1]}"
    return None


def write_archive(path: Path, files: Mapping[str, Path], expected: Mapping[str, tuple[int, int]]) -> None:
    """The archive at ``path`` from the map ``files`` (entry name -> PNG file), validated first
    (:func:`validate_members`) and read back after (:func:`read_archive`): nothing is written that the
    benchmark would refuse. PNGs are stored, not deflated (already compressed)."""
    validate_members({entry: functools.partial(Path(file).open, "rb") for entry, file in files.items()}, expected)
    with zipfile.ZipFile(path, "w") as archive:
        for entry, file in sorted(files.items()):
            archive.write(file, arcname=entry, compress_type=zipfile.ZIP_STORED)
    read_archive(path, expected)


def read_archive(path: Path, expected: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """The (W, H) of the map the benchmark takes for each expected test image, from a written archive;
    :class:`ArchiveProblem` if it would refuse it."""
    with zipfile.ZipFile(path) as archive:
        names = [info.filename for info in archive.infolist() if not info.is_dir()]
        validate_members({name: (lambda name=name: archive.open(name)) for name in names}, expected)
        stems = {str(Path(n).with_suffix("")): n for n in names if not any(p in n.lower() for p in IGNORED)}
        sizes = {}
        for name in expected:
            with archive.open(stems[match(list(stems), name)[0]]) as handle, Image.open(handle) as img:
                sizes[name] = img.size
    return sizes


def config_yaml(algorithm: str, dataset: str) -> str | None:
    """The submission's config.yaml (``evaluate.py``'s ``config_schema``) for a dataset whose test split the
    benchmark scores; None for the others (your own data)."""
    benchmark = BENCHMARK_DATASETS.get(dataset)
    if benchmark is None:
        return None
    config = {"model": {"name": algorithm, "filename": ARCHIVE, "probabilistic": False}, "dataset": benchmark}
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML, and needs no YAML writer
