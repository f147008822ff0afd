"""The ``prepare`` stage: decode and resize SALICON into arrays that train without decoding.

Reads the raw tree under ``prepare.input`` (SALICON's layout, REFERENCE §2) and writes, per split present,
the arrays that docs/data-layout.md specifies (the contract with train, evaluate and predict):
``images.npy``, ``maps.npy``, ``names.json``, ``original_sizes.npy``, ``fixations.npz``,
``fixation_maps.npy`` and, for val, ``maps_full.npy``; plus ``report.json`` beside the split folders.

Speed: JPEGs are decoded with PIL's draft mode (libjpeg scales by 1/2, 1/4 or 1/8 in the DCT, so a
640x480 image destined for 256x192 is decoded at 320x240) and a process pool writes straight into
preallocated memory-mapped ``.npy`` files. Row i always holds the i-th name in sorted order, whatever the
worker count, so the output is deterministic.

Safety: everything is written into a temporary sibling folder that replaces the output only once the
stage has succeeded, so a failed run leaves the previous output intact.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import multiprocessing
import os
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from salgan.cpus import usable_cpus
from salgan.errors import InputError
from salgan.fixations import FixationFile, fixation_counts, load_fixations_mat
from salgan.layout import LABELLED_SPLITS, REPORT_FILE, SPLITS, SplitFiles, atomic_directory, split_version_of_files

if TYPE_CHECKING:
    from salgan.datasets import FixationSource
    from salgan.settings import DownloadParams, PrepareParams

FULL_MAP_SPLITS = ("val",)  # evaluate scores val at the original resolution
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SALICON_SIZE = (480, 640)  # (rows, cols), used only when no val image header can be read at all
RESAMPLE = Image.Resampling.BILINEAR  # Pillow's BILINEAR widens its support when shrinking: antialiased
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class PrepareError(InputError):
    """The stage cannot produce its output; the message names the offending file."""


class BadFileError(ValueError):
    """One input file is unreadable or inconsistent; ``path`` names it."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class Sample:
    """One image and, for train/val, its ground truth files."""

    name: str
    image: Path
    map: Path | None = None
    fixations: Path | None = None  # a SALICON .mat
    source: FixationSource | None = None  # the other datasets' fixations (salgan/datasets/); map may be None


@dataclass(frozen=True)
class SplitJob:
    """What a worker needs to fill rows of one split's preallocated arrays."""

    folder: str
    size: tuple[int, int]  # (W, H)
    with_maps: bool
    full_size: tuple[int, int] | None  # (rows, cols) every image must have; None: no maps_full
    max_pixels: int = 50_000_000  # prepare.max_pixels
    max_fixations: int = 100_000  # prepare.max_fixations
    map_sigma: float = 19.0  # prepare.map_sigma: maps made from fixations (salgan.datasets.render_map)
    full_offsets: tuple[int, ...] | None = None  # maps_full of mixed sizes: row i's pixels in the flat file (N + 1)


@dataclass(frozen=True)
class ItemResult:
    """A worker's answer for one row: its original size and fixations, or why it is bad."""

    index: int
    original_size: tuple[int, int] | None = None  # (rows, cols)
    coords: np.ndarray | None = None
    outside: int = 0  # fixations outside the image, clamped to its border
    bad_path: str | None = None
    reason: str | None = None


# --- decoding -------------------------------------------------------------------------------------


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: grey, CMYK, palette, 16-bit and transparent images included.

    Transparent pixels are composited over white: their stored colour is undefined (often black) and a
    viewer shows them as background, not as dark paint.
    """
    if img.mode == "RGB":
        return img
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "F":
        return _to_8bit_grey(img).convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def to_grey(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit grey ('L'); 16-bit values are scaled, not clipped."""
    if img.mode == "L":
        return img
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "F":
        return _to_8bit_grey(img)
    return img.convert("L")


def _to_8bit_grey(img: Image.Image) -> Image.Image:
    """16-bit (or 32-bit int / float) grey -> 'L'.

    Pillow's own conversion clips such values at 255, which turns a 16-bit image white. 16-bit modes are
    scaled by 255/65535; mode 'I' is treated as 16-bit when it exceeds 255 (PNG and TIFF readers use it
    for 16-bit data); float images are taken as already on the 0-255 scale.
    """
    values = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and values.size and values.max() > 255):
        values = values * (255.0 / 65535.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def load_image(
    path: str | Path, size: Sequence[int], draft: bool = True, max_pixels: int = 50_000_000
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image, convert it to RGB and resize it to ``size`` = (W, H).

    Returns ``(uint8 (H, W, 3), (rows, cols) of the original)``. With ``draft`` a JPEG is decoded at the
    smallest DCT scale that is still at least ``size`` (a no-op for other formats). EXIF orientation is
    not applied: SALICON's maps and fixations refer to the stored pixel grid. An image declaring more than
    ``max_pixels`` pixels is refused from its header, before it is decoded (a few KB of PNG can declare
    gigabytes). Raises :class:`BadFileError` naming ``path``.
    """
    width, height = int(size[0]), int(size[1])
    try:
        with _quiet_bombs(), Image.open(path) as img:
            _check_pixels(path, img, max_pixels)
            original = (img.height, img.width)
            if draft:
                img.draft("RGB", (width, height))
            rgb = to_rgb(img)
            resized = rgb.resize((width, height), RESAMPLE) if rgb.size != (width, height) else rgb
            array = np.asarray(resized, dtype=np.uint8)
    except FileNotFoundError:
        raise BadFileError(path, "no such file") from None
    except BadFileError:
        raise
    # Pillow signals damaged input with OSError, SyntaxError, ValueError, EOFError, struct/zlib errors and
    # DecompressionBombError; whatever the type, the file is unusable and the message must name it.
    except Exception as exc:  # noqa: BLE001
        raise BadFileError(path, f"cannot decode image: {type(exc).__name__}: {exc}") from None
    return array, original


def load_map(path: str | Path, size: Sequence[int], max_pixels: int = 50_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Decode a saliency map as 8-bit grey: ``(resized uint8 (H, W), original uint8 (rows, cols))``."""
    width, height = int(size[0]), int(size[1])
    try:
        with _quiet_bombs(), Image.open(path) as img:
            _check_pixels(path, img, max_pixels)
            grey = to_grey(img)
            full = np.asarray(grey, dtype=np.uint8)
            resized = grey.resize((width, height), RESAMPLE) if grey.size != (width, height) else grey
            return np.asarray(resized, dtype=np.uint8), full
    except FileNotFoundError:
        raise BadFileError(path, "no such file") from None
    except BadFileError:
        raise
    except Exception as exc:  # noqa: BLE001 -- see load_image
        raise BadFileError(path, f"cannot decode map: {type(exc).__name__}: {exc}") from None


@contextlib.contextmanager
def _quiet_bombs():
    """Pillow's decompression-bomb warning at open: our own limit (prepare.max_pixels) decides, by name."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _check_pixels(path: str | Path, img: Image.Image, max_pixels: int) -> None:
    if img.width * img.height > max_pixels:
        raise BadFileError(path, f"declares {img.width}x{img.height} pixels, more than prepare.max_pixels {max_pixels}")


def resize_image(path: str | Path, size: Sequence[int]) -> np.ndarray:
    """The stage's fast path for one image: draft-mode decode, RGB, bilinear resize to (W, H)."""
    return load_image(path, size, draft=True)[0]


def resize_image_naive(path: str | Path, size: Sequence[int]) -> np.ndarray:
    """Reference path for benchmarks: full-resolution decode, then convert and resize (no draft)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((int(size[0]), int(size[1])), RESAMPLE), dtype=np.uint8)


# --- finding the samples --------------------------------------------------------------------------


def present_splits(root: str | Path) -> list[str]:
    """Splits with an ``images/{split}`` folder under ``root``, in train, val, test order."""
    return [split for split in SPLITS if (Path(root) / "images" / split).is_dir()]


def find_samples(root: str | Path, split: str) -> tuple[list[Sample], list[tuple[str, str, str]]]:
    """Samples of ``split`` sorted by name, and ``(name, path, reason)`` for images lacking ground truth."""
    root = Path(root)
    images: dict[str, Path] = {}
    for path in sorted((root / "images" / split).iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if not path.is_file():  # a pipe named like an image would block its reader forever
            print(f"prepare: warning: {path}: not a regular file (a pipe, socket or device); skipped", file=sys.stderr)
            continue
        if path.stem in images:
            raise PrepareError(f"{path}: same name as {images[path.stem]}; image names must be unique")
        images[path.stem] = path
    if split not in LABELLED_SPLITS:
        return [Sample(name, path) for name, path in sorted(images.items())], []
    samples, missing = [], []
    for name, image in sorted(images.items()):
        map_path = root / "maps" / split / f"{name}.png"
        fix_path = root / "fixations" / split / f"{name}.mat"
        if not map_path.is_file():
            missing.append((name, str(image), f"no saliency map {map_path}"))
        elif not fix_path.is_file():
            missing.append((name, str(image), f"no fixation file {fix_path}"))
        else:
            samples.append(Sample(name, image, map_path, fix_path))
    _warn_orphans(root, split, set(images))
    return samples, missing


def _warn_orphans(root: Path, split: str, names: set[str]) -> None:
    """Maps or fixation files without an image are ignored; say so, since it hints at a broken download."""
    for kind, suffix in (("maps", ".png"), ("fixations", ".mat")):
        folder = root / kind / split
        if not folder.is_dir():
            continue
        orphans = sorted(p.name for p in folder.glob(f"*{suffix}") if p.stem not in names)
        if orphans:
            print(
                f"prepare: warning: {len(orphans)} file(s) in {folder} have no image, ignored "
                f"(first: {', '.join(orphans[:3])})",
                file=sys.stderr,
            )


# --- the workers ----------------------------------------------------------------------------------


def process_chunk(job: SplitJob, items: Sequence[tuple[int, Sample]]) -> list[ItemResult]:
    """Decode ``items`` and write them into rows of the split's memory-mapped arrays.

    Runs in a worker process. A bad file yields an :class:`ItemResult` naming it instead of an exception,
    so that the parent decides (stop, or skip with ``skip_bad``) and the rest of the chunk still runs.
    """
    files = SplitFiles(Path(job.folder))
    images = np.load(files.images, mmap_mode="r+")
    maps = np.load(files.maps, mmap_mode="r+") if job.with_maps else None
    maps_full = np.load(files.maps_full, mmap_mode="r+") if job.full_size or job.full_offsets else None
    results = []
    for index, sample in items:
        try:
            image, original = load_image(sample.image, job.size, max_pixels=job.max_pixels)
            if job.full_size is not None and original != job.full_size:
                raise BadFileError(
                    sample.image,
                    f"is {original[1]}x{original[0]} but the split's images are "
                    f"{job.full_size[1]}x{job.full_size[0]}; maps_full needs one size",
                )
            coords = None
            if job.with_maps and sample.source is not None:
                small, full, coords, outside = _dataset_ground_truth(sample, original, job)
                maps[index] = small
                if maps_full is not None:
                    _write_full(maps_full, index, full, job)
            elif job.with_maps:
                small, full = load_map(sample.map, job.size, job.max_pixels)
                _check_same_size(sample.map, full.shape, original)
                coords, resolution, outside = _load_fixations(sample.fixations, job.max_fixations)
                _check_same_size(sample.fixations, resolution, original)
                maps[index] = small
                if maps_full is not None:
                    maps_full[index] = full
            images[index] = image
            results.append(ItemResult(index, original, coords, outside if job.with_maps else 0))
        except BadFileError as exc:
            results.append(ItemResult(index, bad_path=exc.path, reason=exc.reason))
    # No flush: the mapped pages are the page cache the parent reads back, and msync's write to disk
    # cost ~10% of the stage's time; the kernel writes them back on its own.
    return results


def _dataset_ground_truth(
    sample: Sample, original: tuple[int, int], job: SplitJob
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(map at the training size, map at the original size, fixations, how many lay outside) of a sample
    of salgan/datasets/: its map file checked to have the image's size, or a map made from the fixations."""
    from salgan.datasets import Limits, read_fixations, render_map

    where = sample.source.path or sample.source.where
    try:
        coords, outside = read_fixations(sample.source, original, Limits(job.max_pixels, job.max_fixations))
    except ValueError as exc:  # the message already names the file
        raise BadFileError(where, str(exc).removeprefix(f"{where}: ")) from None
    if sample.map is not None:
        small, full = load_map(sample.map, job.size, job.max_pixels)
        _check_same_size(sample.map, full.shape, original)
    else:
        full = render_map(coords, original, job.map_sigma)
        small = np.asarray(Image.fromarray(full).resize(job.size, RESAMPLE), dtype=np.uint8)
    return small, full, coords, outside


def _write_full(maps_full: np.ndarray, index: int, full: np.ndarray, job: SplitJob) -> None:
    """Row ``index`` of maps_full: a row of the (N, H0, W0) array, or its span of the flat file of mixed sizes."""
    if job.full_offsets is None:
        maps_full[index] = full
        return
    start, stop = job.full_offsets[index], job.full_offsets[index + 1]
    if stop - start != full.size:  # the header read when the file was allocated declared another size
        raise BadFileError(job.folder, f"row {index}: its map has {full.size} pixels, {stop - start} were allocated")
    maps_full[start:stop] = full.reshape(-1)


def _load_fixations(path: Path, max_fixations: int) -> FixationFile:
    try:
        return load_fixations_mat(path, max_fixations)
    except ValueError as exc:  # FixationFileError: the message already names the file
        raise BadFileError(path, str(exc).removeprefix(f"{path}: ")) from None


def _check_same_size(path: Path, shape: Sequence[int], original: tuple[int, int]) -> None:
    if tuple(shape[:2]) != original:
        raise BadFileError(path, f"is {shape[1]}x{shape[0]} but its image is {original[1]}x{original[0]}")


# --- the stage ------------------------------------------------------------------------------------


def resolve_workers(workers: int) -> int:
    """``prepare.workers``: 0 means one process per usable core (the schema rejects negative counts)."""
    return workers or usable_cpus()


def prepare(params: PrepareParams, progress: bool = True, download: DownloadParams | None = None) -> dict:
    """Run the stage for :class:`salgan.settings.PrepareParams` ``params``; return the report it writes.

    ``download``: the dataset settings (``download.dataset``, its val split); without them the raw tree's
    SOURCE.json says which dataset it is. Raises :class:`PrepareError` naming the file when an input is bad
    and ``params.skip_bad`` is false.
    """
    dataset = _dataset(Path(params.input), download)
    if dataset != "salicon":
        return prepare_dataset(params, dataset, download, progress)
    root, output = Path(params.input), Path(params.output)
    splits = present_splits(root)
    if not splits:
        raise PrepareError(f"{root}: no images/train, images/val or images/test folder")
    size = (int(params.size[0]), int(params.size[1]))
    workers = resolve_workers(params.workers)
    report: dict = {"input": str(root), "size": list(size), "splits": {}, "skipped": [], "versions": {}}
    with atomic_directory(output) as tmp:
        for split in splits:
            samples, missing = find_samples(root, split)
            skipped = [_skip(split, name, path, reason, params.skip_bad) for name, path, reason in missing]
            limits = {"max_pixels": params.max_pixels, "max_fixations": params.max_fixations}
            counts, more = _prepare_split(split, samples, tmp / split, size, workers, params.skip_bad, progress, limits)
            skipped += more
            report["splits"][split] = {**counts, "skipped": len(skipped)}
            report["skipped"] += skipped
            report["versions"][split] = split_version_of_files(tmp / split)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _dataset(root: Path, download: DownloadParams | None) -> str:
    """The dataset of the raw tree: ``download.dataset``, which must agree with its SOURCE.json."""
    from salgan.datasets import dataset_of, source_record

    recorded = dataset_of(root)
    if download is None:
        return recorded
    if source_record(root) and recorded != download.dataset:
        raise PrepareError(
            f"{root}: holds {recorded} (its SOURCE.json) but download.dataset is {download.dataset}; run the "
            "download stage (dvc repro download)"
        )
    return download.dataset


def prepare_dataset(params: PrepareParams, dataset: str, download: DownloadParams | None, progress: bool) -> dict:
    """The stage for the datasets of salgan/datasets/: their reader's records, split (the dataset's own
    splits, else a seeded val split), written as SALICON's are; ``report.json`` also names the dataset and,
    per split, each row's image relative to the raw tree (``sources``)."""
    from salgan import datasets
    from salgan.settings import DownloadParams

    download = download or DownloadParams(dataset=dataset)
    root, output = Path(params.input), Path(params.output)
    limits = datasets.Limits(params.max_pixels, params.max_fixations)
    try:
        records, problems = datasets.dataset_records(dataset, root, limits)
        by_split = datasets.split_records(records, download.val_fraction, download.split_seed)
    except datasets.DatasetError as exc:
        raise PrepareError(str(exc)) from None
    if "val" not in by_split or "train" not in by_split:
        raise PrepareError(f"{root}: {dataset} needs images with fixations in a train and a val split")
    size = (int(params.size[0]), int(params.size[1]))
    workers = resolve_workers(params.workers)
    report: dict = {"input": str(root), "size": list(size), "dataset": dataset, "splits": {}, "skipped": []}
    report |= {"versions": {}, "sources": {}}
    skipped = [_skip("labelled", name, file, reason, params.skip_bad) for name, file, reason in problems]
    limits_of = {"max_pixels": params.max_pixels, "max_fixations": params.max_fixations, "map_sigma": params.map_sigma}
    with atomic_directory(output) as tmp:
        for split, members in by_split.items():
            samples = [Sample(r.name, r.image, r.map, source=r.fixations) for r in members]
            counts, more = _prepare_split(
                split, samples, tmp / split, size, workers, params.skip_bad, progress, limits_of, mixed_sizes=True
            )
            kept = json.loads(SplitFiles(tmp / split).names.read_text())
            paths = {sample.name: sample.image for sample in samples}
            report["splits"][split] = {**counts, "skipped": len(more)}
            report["skipped"] += more
            report["versions"][split] = split_version_of_files(tmp / split)
            report["sources"][split] = [paths[name].relative_to(root).as_posix() for name in kept]
        report["skipped"] = skipped + report["skipped"]
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _skip(split: str, name: str, path: str, reason: str, skip_bad: bool) -> dict:
    """Record a bad sample, or stop the stage when skipping is off."""
    if not skip_bad:
        raise PrepareError(f"{path}: {reason} (set prepare.skip_bad: true to skip such files)")
    print(f"prepare: skipping {name}: {path}: {reason}", file=sys.stderr)
    return {"split": split, "name": name, "file": path, "reason": reason}


def _prepare_split(
    split: str,
    samples: list[Sample],
    folder: Path,
    size: tuple[int, int],
    workers: int,
    skip_bad: bool,
    progress: bool,
    limits: dict,
    mixed_sizes: bool = False,
) -> tuple[dict, list[dict]]:
    """Fill one split folder; return its counts and the skipped samples. With ``mixed_sizes`` the images may
    differ in size: ``maps_full.npy`` is then one flat array of every map's pixels, row after row
    (docs/data-layout.md), unless they share one size after all."""
    folder.mkdir(parents=True)
    n, (width, height) = len(samples), size
    with_maps = split in LABELLED_SPLITS
    full_size, offsets = None, None
    if split in FULL_MAP_SPLITS and mixed_sizes:
        full_size, offsets = _full_layout(samples, limits["max_pixels"])
    elif split in FULL_MAP_SPLITS:
        full_size = _peek_size(samples, limits["max_pixels"])
    files = SplitFiles(folder)
    _allocate(files.images, (n, height, width, 3))
    if with_maps:
        _allocate(files.maps, (n, height, width))
    if full_size:
        _allocate(files.maps_full, (n, *full_size))
    elif offsets is not None:
        _allocate(files.maps_full, (offsets[-1],))
    job = SplitJob(str(folder), size, with_maps, full_size, limits["max_pixels"], limits["max_fixations"])
    if mixed_sizes:
        job = dataclasses.replace(job, map_sigma=limits["map_sigma"], full_offsets=offsets)
    results = _run_jobs(job, list(enumerate(samples)), workers, f"prepare {split}", progress, stop_on_bad=not skip_bad)
    skipped = [_skip(split, samples[r.index].name, r.bad_path, r.reason, skip_bad) for r in results if r.bad_path]
    keep = [r for r in results if not r.bad_path]
    if len(keep) < n:
        _compact(folder, [r.index for r in keep], offsets)
    names = [samples[r.index].name for r in keep]
    files.names.write_text(json.dumps(names, indent=1) + "\n")
    sizes = np.array([r.original_size for r in keep], dtype=np.int32).reshape(-1, 2)
    np.save(files.original_sizes, sizes)
    counts = {"images": len(keep)}
    if with_maps:
        counts["fixations"] = _save_fixations(files.fixations, [r.coords for r in keep])
        _save_fixation_maps(files.fixation_maps, keep, (height, width))
        counts["fixations_outside"] = sum(r.outside for r in keep)
        if counts["fixations_outside"]:
            print(
                f"prepare: warning: {counts['fixations_outside']} {split} fixation(s) lay outside their image and "
                "were moved to its border (counted in report.json)",
                file=sys.stderr,
            )
    return counts, skipped


def _peek_size(samples: Sequence[Sample], max_pixels: int) -> tuple[int, int]:
    """(rows, cols) that ``maps_full`` is allocated with: the most common size among the headers that read
    and declare at most ``max_pixels`` (the first such on a tie). Not the first image's: with ``skip_bad``
    one odd or oversized image there would make every other image the odd one out, and drop the split."""
    sizes: collections.Counter[tuple[int, int]] = collections.Counter()
    for sample in samples:
        with contextlib.suppress(Exception), _quiet_bombs(), Image.open(sample.image) as img:
            if img.width * img.height <= max_pixels:
                sizes[(img.height, img.width)] += 1
    return sizes.most_common(1)[0][0] if sizes else SALICON_SIZE  # none reads: each is reported on its own


def _full_layout(samples: Sequence[Sample], max_pixels: int) -> tuple[tuple[int, int] | None, tuple[int, ...] | None]:
    """How ``maps_full`` holds the maps of images that may differ in size: ``(size, None)`` when every header
    declares one size (the (N, H0, W0) array), else ``(None, offsets)``: row i's pixels are
    ``offsets[i]:offsets[i + 1]`` of a flat array. An unreadable header gets no pixels (its image is reported
    bad by the worker)."""
    sizes = []
    for sample in samples:
        declared = (0, 0)
        with contextlib.suppress(Exception), _quiet_bombs(), Image.open(sample.image) as img:
            if img.width * img.height <= max_pixels:
                declared = (img.height, img.width)
        sizes.append(declared)
    if len(set(sizes)) == 1 and sizes[0] != (0, 0):
        return sizes[0], None
    pixels = [rows * cols for rows, cols in sizes]
    return None, tuple(int(v) for v in np.concatenate([[0], np.cumsum(pixels, dtype=np.int64)]))


def _allocate(path: Path, shape: tuple[int, ...]) -> None:
    """A zero-filled uint8 ``.npy`` of ``shape`` that workers open with ``mmap_mode='r+'``."""
    if 0 in shape:  # an empty file cannot be memory-mapped
        np.save(path, np.zeros(shape, dtype=np.uint8))
    else:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        del array  # closes the map; the file is sparse and reads as zeros


def _run_jobs(
    job: SplitJob, items: list, workers: int, desc: str, progress: bool, stop_on_bad: bool
) -> list[ItemResult]:
    """Process ``items`` in chunks, in this process or a pool; results come back sorted by row.

    With ``stop_on_bad`` the first bad file ends the run at once (queued chunks are cancelled).
    """
    chunk = max(1, min(32, -(-len(items) // (4 * workers))))  # ~4 chunks per worker balances the load
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    results: list[ItemResult] = []
    if workers == 1 or len(chunks) <= 1:
        with _bar(len(items), desc, progress) as bar:
            for part in chunks:
                results += _checked(process_chunk(job, part), stop_on_bad)
                bar.update(len(part))
        return sorted(results, key=lambda r: r.index)
    with _pool(min(workers, len(chunks))) as pool:
        # Submitting starts the workers, before the bar: draw nothing until they run.
        pending: set[Future] = {pool.submit(process_chunk, job, part) for part in chunks}
        with _bar(len(items), desc, progress) as bar:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    part = _checked(future.result(), stop_on_bad)
                    results += part
                    bar.update(len(part))
    return sorted(results, key=lambda r: r.index)


def _bar(total: int, desc: str, progress: bool):
    from salgan.cli import progress as bar_for

    return bar_for(total=total, desc=desc, unit="img", enabled=progress)


def _checked(results: list[ItemResult], stop_on_bad: bool) -> list[ItemResult]:
    bad = next((r for r in results if r.bad_path), None)
    if stop_on_bad and bad is not None:
        raise PrepareError(f"{bad.bad_path}: {bad.reason} (set prepare.skip_bad: true to skip such files)")
    return results


def _die_with_parent() -> None:
    """A pool worker's first act on Linux: ask the kernel to kill it when the process that started it dies,
    so that a SIGKILLed stage leaves no orphaned workers behind (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the request: nobody will collect this worker
        os._exit(1)


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool that starts fast without risking a deadlocked child.

    ``fork`` starts workers in milliseconds (``forkserver`` and ``spawn`` pay ~0.5 s of interpreter start
    and imports, the whole budget of a small run), but forking a process in which another thread holds a
    lock copies that lock held forever. So fork only while this process runs a single Python thread (the
    command line; the progress bar starts no thread); otherwise (embedded in a flow, a notebook or a test
    session with threads) use the forkserver, which preloads this module once.
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        context = multiprocessing.get_context("fork")
    elif "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["salgan.prepare"])
    else:
        context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_die_with_parent)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _compact(folder: Path, keep: list[int], full_offsets: tuple[int, ...] | None = None) -> None:
    """Drop the rows of skipped samples from every array of ``folder`` (from a flat ``maps_full`` of mixed
    sizes, their spans of ``full_offsets``)."""
    if full_offsets is not None:
        _compact_flat(SplitFiles(folder).maps_full, keep, full_offsets)
    for path in sorted(folder.glob("*.npy")):
        if full_offsets is not None and path == SplitFiles(folder).maps_full:
            continue
        source = np.load(path, mmap_mode="r")
        shape = (len(keep), *source.shape[1:])
        tmp = path.with_name(path.stem + ".compact.npy")
        _allocate(tmp, shape)
        if len(keep):
            target = np.load(tmp, mmap_mode="r+")
            for start in range(0, len(keep), 256):  # bounded memory for the full SALICON arrays
                target[start : start + 256] = source[keep[start : start + 256]]
            del target
        del source
        os.replace(tmp, path)


def _compact_flat(path: Path, keep: list[int], offsets: tuple[int, ...]) -> None:
    """A flat maps_full holding only the spans of the rows in ``keep``."""
    spans = [(offsets[i], offsets[i + 1]) for i in keep]
    tmp = path.with_name(path.stem + ".compact.npy")
    total = sum(stop - start for start, stop in spans)
    _allocate(tmp, (total,))
    if not total:  # an empty file cannot be memory-mapped
        os.replace(tmp, path)
        return
    source, target = np.load(path, mmap_mode="r"), np.load(tmp, mmap_mode="r+")
    position = 0
    for start, stop in spans:
        target[position : position + stop - start] = source[start:stop]
        position += stop - start
    del source, target
    os.replace(tmp, path)


def _save_fixations(path: Path, per_image: list[np.ndarray]) -> int:
    """``coords`` (M, 2) int32 and ``offsets`` (N + 1) int64; return M."""
    lengths = np.array([len(c) for c in per_image], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    coords = np.concatenate(per_image).astype(np.int32) if per_image else np.zeros((0, 2), np.int32)
    np.savez(path, coords=coords.reshape(-1, 2), offsets=offsets)
    return int(offsets[-1])


def _save_fixation_maps(path: Path, results: list[ItemResult], shape: tuple[int, int]) -> None:
    """uint8 (N, H, W) fixation counts at the training size (the NSS term of ``train.content_loss``),
    written row by row into a memory-mapped file."""
    _allocate(path, (len(results), *shape))
    if results:
        maps = np.load(path, mmap_mode="r+")
        for row, result in enumerate(results):
            maps[row] = fixation_counts(result.coords, result.original_size, shape)
        del maps


# --- command line ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``salgan prepare``: run the stage (exit statuses: salgan/cli.py)."""
    from salgan.cli import command_parser, run_command
    from salgan.settings import load_params

    parser = command_parser(
        "prepare",
        "Decode and resize the raw SALICON tree (prepare.input) into the arrays of docs/data-layout.md under "
        "prepare.output: images and maps at prepare.size, names, original sizes, fixations at the original "
        "resolution, and full-size val maps for scoring.",
        epilog="Settings (params.yaml, section 'prepare'): input, output, size [W, H], skip_bad (skip unreadable "
        "files and list them in report.json instead of stopping), workers (0: one per core).",
    )
    args = parser.parse_args(argv)

    def work() -> int:
        settings = load_params(args.params)
        params = settings.prepare
        report = prepare(params, download=settings.download)
        summary = ", ".join(f"{split} {c['images']}" for split, c in report["splits"].items())
        print(f"prepare: {summary} images -> {params.output} ({len(report['skipped'])} skipped)")
        return 0

    return run_command("prepare", work)


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy, so that pool tasks pickle as salgan.prepare.*
    from salgan import prepare as _stage

    raise SystemExit(_stage.main())
