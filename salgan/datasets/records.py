"""What every reader of salgan/datasets/ shares: the records it returns, where fixations come from, the
names and splits of images, and what the download and prepare stages record about a raw or prepared tree."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from salgan.datasets.salicon import SaliconTree
from salgan.errors import InputError
from salgan.fixations import to_row_col
from salgan.imaging import IMAGE_SUFFIXES
from salgan.layout import REPORT_FILE, SPLITS

log = logging.getLogger(__name__)

SOURCE_FILE = "SOURCE.json"  # data/raw/SOURCE.json: where the tree came from, and which dataset it is
TEST_FOLDER = "test_source"  # data/raw/test_source/: the test images of download.test_source
SALICON_DIAGONAL = 800.0  # px: the diagonal of SALICON's 640x480, the reference of prepare.map_sigma
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\\]")


class DatasetError(InputError):
    """A raw dataset is unusable; the message names the offending file and why."""


@dataclass(frozen=True)
class FixationSource:
    """Where one image's fixations come from: ``kind`` says how to read them (the reader's module)."""

    kind: str  # points_image (MIT1003 fixPts) | binary_mat (CAT2000 FIXATIONLOCS) | points (fixations CSV)
    path: Path | None = None  # the file, for the kinds stored in files
    points: np.ndarray | None = field(default=None, compare=False)  # (K, 2) 0-based [x, y], kind points
    where: str = ""  # what names the fixations in a message when there is no file (fixations.csv rows)


@dataclass(frozen=True)
class Record:
    """One image of a raw dataset and its ground truth (none for a test image)."""

    name: str
    image: Path
    map: Path | None = None  # the continuous ground-truth map, where the dataset has one
    fixations: FixationSource | None = None
    split: str | None = None  # fixed by the dataset, or None: drawn by assign_splits


class Problem(NamedTuple):
    """An image the reader cannot use: its name, the offending file and why."""

    name: str
    file: str
    reason: str


class ArchiveSpec(NamedTuple):
    """One zip of a dataset's release: its name, the md5 published for it (None: none), and whether the
    release is incomplete without it."""

    filename: str
    md5: str | None
    required: bool = True


class Limits(NamedTuple):
    """What one image's files may cost (``prepare.max_pixels``, ``prepare.max_fixations``)."""

    max_pixels: int
    max_fixations: int


def xy_to_row_col(xy: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """0-based [x, y] (float) -> 0-based (row, col) int32, rounded; points outside the ``size`` (rows, cols)
    image are clamped to its border and counted (salgan/fixations.py's ``to_row_col`` for 1-based input)."""
    return to_row_col(np.asarray(xy, dtype=np.float64).reshape(-1, 2) + 1.0, size)


def map_sigma_px(size: tuple[int, int], sigma_at_640x480: float) -> float:
    """``prepare.map_sigma`` (px at 640x480) for an image of ``size`` (rows, cols): scaled with the diagonal."""
    return float(sigma_at_640x480 * np.hypot(*size) / SALICON_DIAGONAL)


def render_map(coords: np.ndarray, size: tuple[int, int], sigma_at_640x480: float) -> np.ndarray:
    """uint8 (rows, cols) map of 0-based (row, col) fixations: their count map blurred by a Gaussian of
    :func:`map_sigma_px` and min-max normalised to 0-255, as salicon-api makes SALICON's maps (and
    salgan/sample.py the sample's). All zeros without fixations."""
    from scipy.ndimage import gaussian_filter

    rows, cols = size
    counts = np.zeros(size, dtype=np.float64)
    np.add.at(counts, (coords[:, 0], coords[:, 1]), 1.0)
    blurred = gaussian_filter(counts, map_sigma_px(size, sigma_at_640x480))
    low, high = float(blurred.min()), float(blurred.max())
    if high <= low:
        return np.zeros((rows, cols), dtype=np.uint8)
    return np.rint((blurred - low) * (255.0 / (high - low))).astype(np.uint8)


def check_name(name: str, source: str | Path) -> str:
    """``name`` if it can name a file below an output folder (``<name>.png``): relative, no ``.``/``..`` or
    empty components, no backslash or control character; else :class:`DatasetError` naming ``source``."""
    parts = name.split("/")
    if not name or name.startswith("/") or _UNSAFE_NAME.search(name) or any(p in ("", ".", "..") for p in parts):
        raise DatasetError(
            f"{source}: {name!r} cannot name an output file (an absolute path, '..', or a control character)"
        )
    return name


def source_parts(path: str) -> tuple[str, ...] | None:
    """A source tree's or zip's path as its components, or None for what no release means to ship:
    folders and files starting with a dot, ``__MACOSX`` (macOS zip metadata), empty components."""
    parts = tuple(p for p in path.replace("\\", "/").split("/") if p not in ("", "."))
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return parts


def warn_orphans(kind: str, orphans: Sequence[str]) -> None:
    """Ground-truth files without their image are ignored; say so, as SALICON's reader does."""
    if orphans:
        log.warning("%d %s without an image, ignored (first: %s)", len(orphans), kind, ", ".join(orphans[:3]))


def stem_of(relative: str) -> str:
    """``street/0042.jpg`` -> ``street/0042``: a record's name from its path below the split's folder."""
    path = Path(relative)
    return path.with_suffix("").as_posix() if path.suffix else path.as_posix()


def is_image(name: str) -> bool:
    return not Path(name).name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def minimal_names(paths: Sequence[str]) -> list[str]:
    """The paths with the leading folders they all share removed, as pysaliency's
    ``get_minimal_unique_filenames`` names stimuli (pysaliency/utils.py), which the MIT/Tuebingen benchmark
    matches submitted maps against (saliency-benchmarking, saliency_benchmarking/models.py)."""
    if len(paths) <= 1:
        return [Path(p).name for p in paths]
    parts = [Path(p).parts for p in paths]
    while len({p[0] for p in parts}) <= 1 and all(len(p) > 1 for p in parts):
        parts = [p[1:] for p in parts]
    return ["/".join(p) for p in parts]


def test_source_records(root: Path) -> list[Record]:
    """The images below ``root/test_source`` (``download.test_source``) as test records, named by their
    minimal unique path (:func:`minimal_names`) without suffix."""
    folder = root / TEST_FOLDER
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and is_image(p.name))
    return named_records(folder, files, split="test")


def named_records(folder: Path, files: Sequence[str], split: str | None = None) -> list[Record]:
    """Records for the image ``files`` below ``folder``, named by :func:`minimal_names` without suffix; two
    files with one name (``a.jpg``, ``a.png``) are an error naming both."""
    taken: dict[str, str] = {}
    records = []
    for file, short in zip(files, minimal_names(files), strict=True):
        name = check_name(stem_of(short), folder / file)
        if name in taken:
            raise DatasetError(
                f"{folder / file}: same name {name!r} as {folder / taken[name]}; image names must be unique"
            )
        taken[name] = file
        records.append(Record(name, folder / file, split=split))
    return records


def group_of(name: str) -> str:
    """The folder part of a name (CAT2000's category; '' for a flat dataset): the val split is drawn per group."""
    return name.rpartition("/")[0]


def assign_splits(names: Iterable[str], val_fraction: float, seed: int) -> dict[str, str]:
    """``{name: "train" | "val"}``: a seeded val split of ``val_fraction`` of the names, drawn per group
    (:func:`group_of`: every CAT2000 category is in val) with the largest-remainder rule, at least one image
    in each split when there are two. The same names, fraction and seed give the same split."""
    names = sorted(set(names))
    if len(names) < 2:
        raise DatasetError(f"{len(names)} labelled image(s): a train and a val split need at least 2")
    total = min(max(1, round(val_fraction * len(names))), len(names) - 1)
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(group_of(name), []).append(name)
    rng = np.random.default_rng(seed)
    shuffled = {group: [members[i] for i in rng.permutation(len(members))] for group, members in sorted(groups.items())}
    shares = {group: total * len(members) / len(names) for group, members in shuffled.items()}
    counts = {group: int(share) for group, share in shares.items()}
    by_remainder = sorted(shares, key=lambda g: (-(shares[g] - counts[g]), g))
    for group in by_remainder[: total - sum(counts.values())]:
        counts[group] += 1
    splits = {}
    for group, members in shuffled.items():
        for i, name in enumerate(members):
            splits[name] = "val" if i < counts[group] else "train"
    return splits


def split_records(records: Sequence[Record], val_fraction: float, seed: int) -> dict[str, list[Record]]:
    """Records by split, each sorted by name: the dataset's own splits where it fixes them (a CSV's split
    column); the others are split between train and val by :func:`assign_splits` (``val_fraction`` of them)."""
    free = [r for r in records if r.split is None]
    drawn = assign_splits([r.name for r in free], val_fraction, seed) if len(free) > 1 else {}
    by_split: dict[str, list[Record]] = {split: [] for split in SPLITS}
    for record in records:
        split = record.split or drawn.get(record.name, "train")
        by_split[split].append(record)
    for split, members in by_split.items():
        members.sort(key=lambda r: r.name)
        for first, second in zip(members, members[1:], strict=False):
            if first.name == second.name:
                raise DatasetError(f"{second.image}: same name {first.name!r} as {first.image} in the {split} split")
    return {split: members for split, members in by_split.items() if members}


def source_record(root: Path) -> dict[str, Any]:
    """``root/SOURCE.json`` as written by the download stage ({} when there is none or it is unreadable)."""
    try:
        data = json.loads((root / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def dataset_of(root: Path) -> str:
    """The dataset a raw tree holds, from its SOURCE.json (trees written before datasets existed: salicon)."""
    return str(source_record(root).get("dataset") or "salicon")


def prepared_dataset(data: str | Path) -> str:
    """The dataset a prepared tree was made from (``data/prepared/report.json``; salicon when unrecorded)."""
    try:
        report = json.loads((Path(data) / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return "salicon"
    return str(report.get("dataset") or "salicon") if isinstance(report, dict) else "salicon"


def no_test_split(data: str | Path) -> str | None:
    """What predict and package say when the prepared data has no test split (MIT1003 without
    ``download.test_source``, your own data without test images); None when it has one."""
    data = Path(data)
    if (data / "test").is_dir() or not (data / "val").is_dir():
        return None  # a test split, or no prepared data at all (the stage then names what is missing)
    return (
        f"{data}: the {prepared_dataset(data)} data has no test split, so there is nothing to predict or package; "
        "set download.test_source to a folder, zip or URL of test images (mit300: the MIT/Tuebingen benchmark's)"
    )


def raw_image_paths(data: str | Path, raw: str | Path, split: str, names: Sequence[str]) -> list[Path]:
    """The raw image of each of ``names`` of a prepared ``split``: as recorded by prepare
    (``report.json``'s ``sources``, paths relative to the raw tree) for the datasets of this package; for
    SALICON, ``images/<split>/<name>.<suffix>`` of the raw tree. Raises :class:`DatasetError` naming the
    image that is missing."""
    try:
        recorded = json.loads((Path(data) / REPORT_FILE).read_text()).get("sources", {}).get(split)
    except (OSError, ValueError, AttributeError):
        recorded = None
    raw = Path(raw)
    if recorded is not None:
        if len(recorded) != len(names):
            raise DatasetError(f"{Path(data) / REPORT_FILE}: {len(recorded)} {split} sources for {len(names)} images")
        paths = [raw / relative for relative in recorded]
    else:
        folder = SaliconTree(raw).folder("images", split)
        paths = []
        for name in names:
            found = [folder / f"{name}{s}" for s in (".jpg", ".jpeg", ".png") if (folder / f"{name}{s}").is_file()]
            paths.append(found[0] if found else folder / f"{name}.jpg")
    for path in paths:
        if not path.is_file():
            raise DatasetError(f"{path}: not found in the raw tree {raw} (prepare.input)")
    return paths
