"""One reader per raw layout, behind one small interface (DESIGN.md: salgan/datasets/).

A raw dataset is what the download stage leaves in ``data/raw``. Its reader turns it into records
(:class:`Record`), one per image: a unique ``name`` (the image's path below its split's folder, without
suffix, ``/``-separated: ``i05june05_static_street_boston_p1010764``, ``Action/001``), the image file, the
continuous ground-truth
map where the dataset has one, and where the fixations come from (:class:`FixationSource`; none for a test
image). The prepare stage decodes the image, reads the fixations as 0-based (row, col) at the image's own
resolution (:func:`read_fixations`), takes or makes the map, and writes the arrays of docs/data-layout.md;
from there on every stage is the same for every dataset.

A reader is a module with:

- ``NAME``, ``RELEASE`` (who publishes it), ``OFFICIAL`` (the base URL of the release) and ``ARCHIVES``
  (its zips, with the md5 pysaliency checks where one is published);
- ``layout(paths) -> {source path: path in data/raw}``: which files of a source tree or zip belong to the
  dataset, and where they go (the download stage copies or extracts only those);
- ``records(root, limits) -> (records, problems)``: every image of the raw tree at ``root`` with its split
  when the dataset fixes it (else None: :func:`assign_splits` draws the val split), and the images that
  cannot be used, each ``(name, file, reason)``;
- ``read_fixations(source, size, max_fixations) -> (coords, outside)`` for its :class:`FixationSource` kind.

What the readers share (records, names, splits, what download and prepare record) is
salgan/datasets/records.py, importable from here. SALICON's raw tree is salgan/datasets/salicon.py, written
by salgan/download.py and read by salgan/prepare.py (its ``.mat`` files go through salgan/fixations.py);
the stages dispatch on ``download.dataset``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from salgan.datasets import cat2000, fixations_csv, mit1003
from salgan.datasets.records import (
    SALICON_DIAGONAL,
    SOURCE_FILE,
    TEST_FOLDER,
    ArchiveSpec,
    DatasetError,
    FixationSource,
    Limits,
    Problem,
    Record,
    assign_splits,
    check_name,
    dataset_of,
    group_of,
    is_image,
    map_sigma_px,
    minimal_names,
    named_records,
    no_test_split,
    prepared_dataset,
    raw_image_paths,
    render_map,
    source_parts,
    source_record,
    split_records,
    stem_of,
    test_source_records,
    warn_orphans,
    xy_to_row_col,
)
from salgan.errors import ConfigError

__all__ = [
    "ArchiveSpec",
    "DatasetError",
    "FixationSource",
    "Limits",
    "Problem",
    "READERS",
    "Record",
    "SALICON_DIAGONAL",
    "SOURCE_FILE",
    "TEST_FOLDER",
    "assign_splits",
    "check_name",
    "dataset_of",
    "dataset_records",
    "group_of",
    "is_image",
    "map_sigma_px",
    "minimal_names",
    "named_records",
    "no_test_split",
    "prepared_dataset",
    "raw_image_paths",
    "read_fixations",
    "reader",
    "render_map",
    "source_parts",
    "source_record",
    "split_records",
    "stem_of",
    "test_source_records",
    "warn_orphans",
    "xy_to_row_col",
]

READERS = {module.NAME: module for module in (mit1003, cat2000, fixations_csv)}  # by download.dataset
BY_FIXATION_KIND = {"points_image": mit1003, "binary_mat": cat2000, "points": fixations_csv}  # FixationSource.kind


def reader(dataset: str):
    """The reader module of ``dataset`` (``download.dataset``); SALICON's is salgan/download.py and prepare.py."""
    if dataset not in READERS:
        raise ConfigError(f"download.dataset: no reader module for {dataset!r} (known: {', '.join(READERS)})")
    return READERS[dataset]


def read_fixations(source: FixationSource, size: tuple[int, int], limits: Limits) -> tuple[np.ndarray, int]:
    """0-based (row, col) int32 (K, 2) of ``source``'s fixations in an image of ``size`` (rows, cols), and how
    many lay outside it (clamped to its border, as SALICON's reader does). Raises ``ValueError`` naming the
    file and the reason (no fixations, wrong size, over ``limits.max_fixations``)."""
    return BY_FIXATION_KIND[source.kind].read_fixations(source, size, limits)


def dataset_records(dataset: str, root: Path, limits: Limits) -> tuple[list[Record], list[Problem]]:
    """Every record of the raw tree at ``root`` and the images that cannot be used. A ``test_source`` folder
    (``download.test_source``) replaces the dataset's own test split."""
    records, problems = reader(dataset).records(root, limits)
    if (root / TEST_FOLDER).is_dir():
        records = [r for r in records if r.split != "test"] + test_source_records(root)
    return records, problems
