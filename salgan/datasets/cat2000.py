"""CAT2000 (Borji and Itti, "CAT2000: a large scale fixation dataset for boosting saliency research", 2015).

The layout, as pysaliency reads the release (pysaliency/external_datasets/cat2000.py, ``get_cat2000_train``
and ``get_cat2000_test``: ``trainSet.zip``, md5 56ad5c77e6c8f72ed9ef2901628d6e48, and ``testSet.zip``, md5
903ec668df2e5a8470aef9d8654e7985, at http://saliency.mit.edu/): 20 categories of 1920x1080 images,

- ``trainSet/Stimuli/<Category>/<n>.jpg``, 100 per category;
- ``trainSet/FIXATIONMAPS/<Category>/<n>.jpg``, the continuous map;
- ``trainSet/FIXATIONLOCS/<Category>/<n>.mat``, variable ``fixLocs``: a matrix of the image's size, non-zero
  at every fixated pixel (as the MIT benchmark's CAT2000 code loads it: ``load(...).fixLocs``);
- ``testSet/Stimuli/<Category>/<n>.jpg``, the test split (no ground truth published).

Image numbers repeat across categories, so a name is ``<Category>/<n>``. Folders named ``Output`` (example
outputs shipped in the zips) are left out, as pysaliency does. EXIF orientation is ignored, as everywhere in
prepare: pysaliency resets a wrong rotation tag on ``testSet/Stimuli/Pattern/134.jpg``, and the stored pixel
grid is what the fixations refer to. The val split is drawn per category (``download.val_fraction``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io

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
from salgan.fixations import MIN_MAT_BYTES, FixationFileError, bounded_mat_bytes

NAME = "cat2000"
RELEASE = "CAT2000"
OFFICIAL = "http://saliency.mit.edu"
ARCHIVES = (
    ArchiveSpec("trainSet.zip", "56ad5c77e6c8f72ed9ef2901628d6e48"),
    ArchiveSpec("testSet.zip", "903ec668df2e5a8470aef9d8654e7985", required=False),
)
TRAIN, TEST = "trainSet", "testSet"
STIMULI, MAPS, LOCATIONS = "Stimuli", "FIXATIONMAPS", "FIXATIONLOCS"
VARIABLE = "fixLocs"
MAT_OVERHEAD = 1 << 16  # bytes of a .mat beyond its matrix (headers, name, tags)


def layout(paths: Sequence[str]) -> dict[str, str]:
    """``<set>/<kind>/<Category>/<file>`` of every train and test file among ``paths``, whatever folders hold
    ``trainSet`` and ``testSet``; ``Output`` folders are left out."""
    wanted = {TRAIN: (STIMULI, MAPS, LOCATIONS), TEST: (STIMULI,)}
    found = {}
    for path in paths:
        parts = source_parts(path)
        if parts is None or len(parts) < 4 or any(p.lower() == "output" for p in parts):
            continue
        which, kind, category, file = parts[-4:]
        if kind in wanted.get(which, ()) and Path(file).suffix.lower() in (".jpg", ".jpeg", ".mat"):
            found[path] = f"{which}/{kind}/{category}/{file}"
    return found


def records(root: Path, limits: Limits) -> tuple[list[Record], list[Problem]]:
    """The train images with their map and fixation matrix, and the test images; a train image lacking
    either is a :class:`Problem` naming the missing file."""
    train = root / TRAIN
    if not (train / STIMULI).is_dir():
        raise DatasetError(
            f"{train / STIMULI}: no such folder; CAT2000 keeps its images in trainSet/Stimuli/<Category>/"
        )
    found, problems = [], []
    images = _images(train / STIMULI)
    if not images:
        raise DatasetError(f"{train / STIMULI}: no .jpg images in category folders")
    for name, image in images.items():
        continuous = train / MAPS / f"{name}.jpg"
        points = train / LOCATIONS / f"{name}.mat"
        if not continuous.is_file():
            problems.append(Problem(name, str(image), f"no continuous map {continuous}"))
        elif not points.is_file():
            problems.append(Problem(name, str(image), f"no fixation locations {points}"))
        else:
            found.append(Record(name, image, continuous, FixationSource("binary_mat", points)))
    for kind, suffix in ((MAPS, ".jpg"), (LOCATIONS, ".mat")):
        folder = train / kind
        if folder.is_dir():
            orphans = sorted(
                p.relative_to(folder).as_posix()
                for p in folder.glob(f"*/*{suffix}")
                if p.relative_to(folder).with_suffix("").as_posix() not in images
            )
            warn_orphans(f"file(s) in {folder}", orphans)
    if (root / TEST / STIMULI).is_dir():
        found += [Record(name, image, split="test") for name, image in _images(root / TEST / STIMULI).items()]
    return found, problems


def _images(folder: Path) -> dict[str, Path]:
    """``{"<Category>/<n>": path}`` of the images one category folder down."""
    images: dict[str, Path] = {}
    for path in sorted(folder.glob("*/*")):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in (".jpg", ".jpeg"):
            continue
        if path.parent.name.lower() == "output":
            continue
        name = check_name(f"{path.parent.name}/{path.stem}", path)
        if name in images:
            raise DatasetError(f"{path}: same name {name!r} as {images[name]}; image names must be unique")
        images[name] = path
    return images


def read_fixations(source: FixationSource, size: tuple[int, int], limits: Limits) -> tuple[np.ndarray, int]:
    """The non-zero pixels of a ``FIXATIONLOCS`` matrix as 0-based (row, col). The file goes through
    salgan/fixations.py's bounded reader: no more is decompressed than a double matrix of the image's size
    takes. Raises ``ValueError`` naming the file (wrong size, no fixations, over prepare.max_fixations)."""
    path = source.path
    rows, cols = size
    try:
        mat = scipy.io.loadmat(bounded_mat_bytes(path, max(MIN_MAT_BYTES, rows * cols * 8 + MAT_OVERHEAD)))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such fixation file") from None
    except FixationFileError as exc:
        raise ValueError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 -- loadmat's many types for a damaged file (salgan/fixations.py)
        raise ValueError(f"{path}: cannot read MATLAB file: {type(exc).__name__}: {exc}") from None
    if VARIABLE not in mat:
        raise ValueError(f"{path}: no {VARIABLE!r} variable (keys: {sorted(k for k in mat if not k.startswith('__'))})")
    try:
        matrix = np.asarray(mat[VARIABLE], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {VARIABLE} is not a numeric matrix") from None
    if matrix.ndim != 2:
        raise ValueError(f"{path}: {VARIABLE} must be a 2-D matrix, got shape {matrix.shape}")
    if matrix.shape != (rows, cols):
        raise ValueError(f"{path}: is {matrix.shape[1]}x{matrix.shape[0]} but its image is {cols}x{rows}")
    coords = np.argwhere(np.nan_to_num(matrix) != 0).astype(np.int32)
    if not len(coords):
        raise ValueError(f"{path}: no fixations (every entry of {VARIABLE} is 0)")
    if len(coords) > limits.max_fixations:
        raise ValueError(f"{path}: {len(coords)} fixated pixels, over prepare.max_fixations {limits.max_fixations}")
    return coords, 0
