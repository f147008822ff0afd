"""MIT1003 (Judd, Ehinger, Durand and Torralba, "Learning to predict where humans look", ICCV 2009).

The layout, as Judd's page publishes it (http://people.csail.mit.edu/tjudd/WherePeopleLook/) and pysaliency
reads it (pysaliency/external_datasets/mit.py, ``get_mit1003``): ``ALLSTIMULI.zip`` holds
``ALLSTIMULI/<name>.jpeg``, 1003 images of varying size (longest side 1024, the other 405-1024);
``ALLFIXATIONMAPS.zip`` holds, per image, ``ALLFIXATIONMAPS/<name>_fixMap.jpg``, the continuous map, and
``<name>_fixPts.jpg``, the fixated pixels of all 15 observers as a binary image stored as a JPEG. JPEG
compression blurs the binary values, so the points are taken as the pixels above half range, never by
exact value (measured on 60 isolated points at JPEG quality 75: points read >= 240, ringing <= 37).

MIT1003 has no official split: its val split is drawn (``download.val_fraction``, ``download.split_seed``),
and its test split is the MIT/Tuebingen benchmark's MIT300 (``download.test_source: mit300``,
``BenchmarkIMAGES.zip``, pysaliency ``get_mit300``) or none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from salgan.datasets.records import (
    ArchiveSpec,
    DatasetError,
    FixationSource,
    Limits,
    Problem,
    Record,
    check_name,
    source_parts,
    warn_orphans,
)
from salgan.imaging import ImageError, opened, to_grey

NAME = "mit1003"
RELEASE = "MIT1003"
OFFICIAL = "http://people.csail.mit.edu/tjudd/WherePeopleLook"
# md5 of ALLSTIMULI.zip as pysaliency checks it; none is published for ALLFIXATIONMAPS.zip
ARCHIVES = (ArchiveSpec("ALLSTIMULI.zip", "0d7df8b954ecba69b6796e77b9afe4b6"), ArchiveSpec("ALLFIXATIONMAPS.zip", None))
STIMULI, MAPS = "ALLSTIMULI", "ALLFIXATIONMAPS"
STIMULUS_SUFFIXES = (".jpeg", ".jpg")
MAP_SUFFIX, POINTS_SUFFIX = "_fixMap.jpg", "_fixPts.jpg"
POINT_THRESHOLD = 127  # fixPts pixels above this are fixated (binary values, blurred by JPEG)


def layout(paths: Sequence[str]) -> dict[str, str]:
    """The stimuli and fixation maps among ``paths`` (a source tree's or zip's), each as
    ``ALLSTIMULI/<file>`` or ``ALLFIXATIONMAPS/<file>``, whatever folders hold those two."""
    found = {}
    for path in paths:
        parts = source_parts(path)
        if parts is None or len(parts) < 2:
            continue
        folder, file = parts[-2], parts[-1]
        if folder == STIMULI and file.lower().endswith(STIMULUS_SUFFIXES):
            found[path] = f"{STIMULI}/{file}"
        elif folder == MAPS and file.endswith((MAP_SUFFIX, POINTS_SUFFIX)):
            found[path] = f"{MAPS}/{file}"
    return found


def records(root: Path, limits: Limits) -> tuple[list[Record], list[Problem]]:
    """Every stimulus with its map and fixation points; a stimulus lacking either is a :class:`Problem`
    naming the missing file."""
    stimuli = root / STIMULI
    if not stimuli.is_dir():
        raise DatasetError(f"{stimuli}: no such folder; MIT1003 keeps its images in ALLSTIMULI/ (ALLSTIMULI.zip)")
    images: dict[str, Path] = {}
    for path in sorted(stimuli.iterdir()):
        if not path.is_file() or path.name.startswith(".") or not path.name.lower().endswith(STIMULUS_SUFFIXES):
            continue
        name = check_name(path.stem, path)
        if name in images:
            raise DatasetError(f"{path}: same name {name!r} as {images[name]}; image names must be unique")
        images[name] = path
    if not images:
        raise DatasetError(f"{stimuli}: no .jpeg images")
    maps = root / MAPS
    found, problems = [], []
    for name, image in images.items():
        continuous, points = maps / f"{name}{MAP_SUFFIX}", maps / f"{name}{POINTS_SUFFIX}"
        if not continuous.is_file():
            problems.append(Problem(name, str(image), f"no continuous map {continuous}"))
        elif not points.is_file():
            problems.append(Problem(name, str(image), f"no fixation points {points}"))
        else:
            found.append(Record(name, image, continuous, FixationSource("points_image", points)))
    if maps.is_dir():
        orphans = sorted(
            p.name
            for p in maps.iterdir()
            if p.name.endswith((MAP_SUFFIX, POINTS_SUFFIX))
            and p.name.removesuffix(MAP_SUFFIX).removesuffix(POINTS_SUFFIX) not in images
        )
        warn_orphans(f"file(s) in {maps}", orphans)
    return found, problems


def read_fixations(source: FixationSource, size: tuple[int, int], limits: Limits) -> tuple[np.ndarray, int]:
    """The fixated pixels of a ``<name>_fixPts.jpg`` as 0-based (row, col): those above half range
    (:data:`POINT_THRESHOLD`), the image's own size required. Raises ``ValueError`` naming the file."""
    path = source.path
    try:
        with opened(path, limits.max_pixels, "prepare.max_pixels") as img:
            grey = np.asarray(to_grey(img))
    except ImageError as exc:
        reason = f"cannot decode the fixation points: {exc}" if exc.damaged else str(exc)
        raise ValueError(f"{path}: {reason}") from None
    if grey.shape != tuple(size):
        raise ValueError(f"{path}: is {grey.shape[1]}x{grey.shape[0]} but its image is {size[1]}x{size[0]}")
    coords = np.argwhere(grey > POINT_THRESHOLD).astype(np.int32)
    if not len(coords):
        raise ValueError(f"{path}: no fixations (no pixel above {POINT_THRESHOLD})")
    if len(coords) > limits.max_fixations:
        raise ValueError(f"{path}: {len(coords)} fixated pixels, over prepare.max_fixations {limits.max_fixations}")
    return coords, 0
