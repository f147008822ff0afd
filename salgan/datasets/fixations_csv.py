"""Your own eye-tracking experiment: a folder of images and ``fixations.csv``.

``fixations.csv`` has a header row and one row per fixation (extra columns, such as a duration, are ignored):

- ``image``: the image's path relative to the folder, ``/``-separated (``street/0042.jpg``), in any format
  ``salgan predict`` reads;
- ``x``, ``y``: the fixation in pixels of the stored image, 0-based, x to the right and y down (pysaliency's
  ``Fixations`` convention; EXIF orientation is not applied);
- optional ``subject`` (kept for reference) and ``split``: ``train``, ``val`` or ``test`` (empty: the
  val split is drawn, ``download.val_fraction``). A test image may have rows with empty x and y.

There is no continuous map: prepare makes one from the fixations (``prepare.map_sigma``, SALICON's 19 px at
640x480 scaled with each image's diagonal). A name is the image's path without its suffix. Fixations outside
their image are moved to its border and counted in ``data/prepared/report.json``, as SALICON's are.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from salgan.datasets.records import (
    TEST_FOLDER,
    DatasetError,
    FixationSource,
    Limits,
    Problem,
    Record,
    check_name,
    is_image,
    source_parts,
    stem_of,
    warn_orphans,
    xy_to_row_col,
)

NAME = "fixations_csv"
RELEASE = "fixations CSV"
OFFICIAL = None  # your own data: a folder, a zip, s3:// or https://
ARCHIVES = ()
CSV_FILE = "fixations.csv"
REQUIRED = ("image", "x", "y")
SPLIT_VALUES = ("train", "val", "test")


def layout(paths: Sequence[str]) -> dict[str, str]:
    """``fixations.csv`` and every image below the folder that holds it (the shallowest one; two at that
    depth are an error naming both), at their paths relative to that folder."""
    cleaned = {path: parts for path in paths if (parts := source_parts(path)) is not None}
    tables = sorted((len(parts), path) for path, parts in cleaned.items() if parts[-1] == CSV_FILE)
    if not tables:
        return {}
    depth = tables[0][0]
    if len(tables) > 1 and tables[1][0] == depth:
        raise DatasetError(f"two {CSV_FILE} files at the same depth: {tables[0][1]} and {tables[1][1]}")
    prefix = cleaned[tables[0][1]][:-1]
    found = {}
    for path, parts in cleaned.items():
        if parts[: len(prefix)] != prefix or len(parts) == len(prefix):
            continue
        below = "/".join(parts[len(prefix) :])
        if below == CSV_FILE or is_image(parts[-1]):
            found[path] = below
    return found


def records(root: Path, limits: Limits) -> tuple[list[Record], list[Problem]]:
    """One record per image that ``fixations.csv`` names. A row naming a missing image, a value that is
    not a number, an unknown split or an image given two splits is a :class:`DatasetError` naming the line;
    a train or val image without a fixation is a :class:`Problem`."""
    table = root / CSV_FILE
    if not table.is_file():
        raise DatasetError(f"{table}: no such file; a fixations_csv dataset is a folder with {CSV_FILE} and the images")
    points: dict[str, list[tuple[float, float]]] = {}
    splits: dict[str, str | None] = {}
    files = {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and is_image(p.name) and p.relative_to(root).parts[0] != TEST_FOLDER  # download.test_source's
    }
    with open(table, newline="", encoding="utf-8-sig") as handle:
        rows = csv.reader(handle)
        header = [column.strip().lower() for column in next(rows, [])]
        missing = [column for column in REQUIRED if column not in header]
        if missing:
            raise DatasetError(
                f"{table}: the header lacks column(s) {', '.join(missing)} (got {', '.join(header) or 'nothing'})"
            )
        index = {column: header.index(column) for column in (*REQUIRED, "split") if column in header}
        for line, row in enumerate(rows, start=2):
            if not any(cell.strip() for cell in row):
                continue
            cells = {column: (row[i].strip() if i < len(row) else "") for column, i in index.items()}
            image = _image(cells["image"], files, table, line)
            split = cells.get("split") or None
            if split is not None and split not in SPLIT_VALUES:
                raise DatasetError(f"{table} line {line}: split {split!r} is not one of {', '.join(SPLIT_VALUES)}")
            if image in splits and splits[image] != split:
                raise DatasetError(f"{table} line {line}: {image} is given split {split} here, {splits[image]} before")
            splits[image] = split
            point = _point(cells["x"], cells["y"], split, table, line)
            found = points.setdefault(image, [])
            if point is not None:
                found.append(point)
                if len(found) > limits.max_fixations:
                    raise DatasetError(
                        f"{table}: over prepare.max_fixations {limits.max_fixations} fixations for {image}"
                    )
    result, problems = [], []
    for image, split in sorted(splits.items()):
        name = check_name(stem_of(image), f"{table}: {image}")
        if split == "test":
            result.append(Record(name, root / image, split="test"))
        elif not points[image]:
            problems.append(Problem(name, str(root / image), f"no fixations in {table}"))
        else:
            xy = np.array(points[image], dtype=np.float64).reshape(-1, 2)
            result.append(
                Record(name, root / image, None, FixationSource("points", None, xy, f"{table}: {image}"), split)
            )
    names: dict[str, str] = {}
    for record in result:
        if record.name in names:
            raise DatasetError(
                f"{record.image}: same name {record.name!r} as {names[record.name]}; names must be unique"
            )
        names[record.name] = str(record.image)
    warn_orphans(f"image(s) in {root} not named in {CSV_FILE}", sorted(files - set(splits)))
    return result, problems


def _image(text: str, files: set[str], table: Path, line: int) -> str:
    """The ``image`` cell as a path of ``files``, else an error naming the line."""
    parts = text.split("/")
    if not text or "\\" in text or text.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise DatasetError(f"{table} line {line}: image {text!r} must be a path relative to the folder, with /")
    if text not in files:
        raise DatasetError(f"{table} line {line}: image {text!r}: no such image in {table.parent}")
    return text


def _point(x: str, y: str, split: str | None, table: Path, line: int) -> tuple[float, float] | None:
    """The (x, y) of a row; None for a test row without one."""
    if not x and not y and split == "test":
        return None
    try:
        point = (float(x), float(y))
    except ValueError:
        raise DatasetError(f"{table} line {line}: x {x!r}, y {y!r}: expected two numbers") from None
    if not all(math.isfinite(v) for v in point):
        raise DatasetError(f"{table} line {line}: x {x!r}, y {y!r}: expected finite numbers")
    return point


def read_fixations(source: FixationSource, size: tuple[int, int], limits: Limits) -> tuple[np.ndarray, int]:
    """The rows of one image as 0-based (row, col), those outside it moved to its border and counted."""
    if len(source.points) > limits.max_fixations:
        raise ValueError(
            f"{source.where}: {len(source.points)} fixations, over prepare.max_fixations {limits.max_fixations}"
        )
    if not len(source.points):
        raise ValueError(f"{source.where}: no fixations")
    return xy_to_row_col(source.points, size)
