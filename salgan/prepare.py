"""The ``prepare`` stage: decode and resize SALICON into arrays that train without decoding.

Reads the raw tree under ``prepare.input`` (SALICON's layout: salgan/datasets/salicon.py) and writes, per split present,
the arrays that docs/data-layout.md specifies (the contract with train, evaluate and predict):
``images.npy``, ``maps.npy``, ``names.json``, ``original_sizes.npy``, ``fixations.npz``,
``fixation_maps.npy`` and, for val, ``maps_full.npy``; plus ``report.json`` beside the split folders.

Speed: JPEGs are decoded in draft mode (:func:`salgan.imaging.decode_rgb`) and a process pool writes straight into
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
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from salgan import datasets
from salgan.cli import command_parser, run_command
from salgan.cpus import die_with_parent, usable_cpus, worker_context
from salgan.datasets import FixationSource, Limits, dataset_of, read_fixations, render_map, source_record
from salgan.datasets.salicon import SUFFIXES, SaliconTree
from salgan.errors import InputError
from salgan.fixations import FixationFile, fixation_counts, load_fixations_mat
from salgan.imaging import IMAGE_SUFFIXES, ImageError, declared_size, decode_grey, decode_rgb, opened, resize_grey
from salgan.layout import LABELLED_SPLITS, REPORT_FILE, SplitFiles, atomic_directory, split_version_of_files
from salgan.progress import progress as bar_for
from salgan.settings import DownloadParams, load_params

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from salgan.settings import PrepareParams

FULL_MAP_SPLITS = ("val",)  # evaluate scores val at the original resolution
SALICON_SIZE = (480, 640)  # (rows, cols), used only when no val image header can be read at all


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
    max_pixels: int  # prepare.max_pixels
    max_fixations: int  # prepare.max_fixations
    map_sigma: float  # prepare.map_sigma: maps made from fixations (salgan.datasets.render_map)
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


def load_image(
    path: str | Path, size: Sequence[int], max_pixels: int, draft: bool = True
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`salgan.imaging.decode_rgb` of a raw image, its stored pixel grid kept (SALICON's maps and
    fixations refer to it, not to an EXIF orientation), a JPEG decoded in draft mode with ``draft``.

    Returns ``(uint8 (H, W, 3) at size = (W, H), (rows, cols) of the original)``; raises
    :class:`BadFileError` naming ``path``.
    """
    try:
        decoded = decode_rgb(path, size, max_pixels, "prepare.max_pixels", draft=draft)
    except ImageError as exc:
        raise BadFileError(path, f"cannot decode image: {exc}" if exc.damaged else str(exc)) from None
    return decoded.array, decoded.original_size


def load_map(path: str | Path, size: Sequence[int], max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """A saliency map as 8-bit grey: ``(resized uint8 (H, W), original uint8 (rows, cols))``."""
    try:
        return decode_grey(path, size, max_pixels, "prepare.max_pixels")
    except ImageError as exc:
        raise BadFileError(path, f"cannot decode map: {exc}" if exc.damaged else str(exc)) from None


# --- finding the samples --------------------------------------------------------------------------


def find_samples(root: str | Path, split: str) -> tuple[list[Sample], list[tuple[str, str, str]]]:
    """Samples of ``split`` sorted by name, and ``(name, path, reason)`` for images lacking ground truth."""
    tree = SaliconTree(Path(root))
    images: dict[str, Path] = {}
    for path in sorted(tree.folder("images", split).iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if not path.is_file():  # a pipe named like an image would block its reader forever
            log.warning("%s: not a regular file (a pipe, socket or device); skipped", path)
            continue
        if path.stem in images:
            raise PrepareError(f"{path}: same name as {images[path.stem]}; image names must be unique")
        images[path.stem] = path
    if split not in LABELLED_SPLITS:
        return [Sample(name, path) for name, path in sorted(images.items())], []
    samples, missing = [], []
    for name, image in sorted(images.items()):
        map_path, fix_path = tree.file("maps", split, name), tree.file("fixations", split, name)
        if not map_path.is_file():
            missing.append((name, str(image), f"no saliency map {map_path}"))
        elif not fix_path.is_file():
            missing.append((name, str(image), f"no fixation file {fix_path}"))
        else:
            samples.append(Sample(name, image, map_path, fix_path))
    _warn_orphans(tree, split, set(images))
    return samples, missing


def _warn_orphans(tree: SaliconTree, split: str, names: set[str]) -> None:
    """Maps or fixation files without an image are ignored; say so, since it hints at a broken download."""
    for kind in tree.kinds(split)[1:]:
        folder = tree.folder(kind, split)
        if not folder.is_dir():
            continue
        orphans = sorted(p.name for p in folder.glob(f"*{SUFFIXES[kind]}") if p.stem not in names)
        if orphans:
            log.warning(
                "%d file(s) in %s have no image, ignored (first: %s)", len(orphans), folder, ", ".join(orphans[:3])
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
            image, original = load_image(sample.image, job.size, job.max_pixels)
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
        small = resize_grey(full, job.size)
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
    splits = SaliconTree(root).present_splits()
    if not splits:
        raise PrepareError(f"{root}: no images/train, images/val or images/test folder")
    size = (int(params.size[0]), int(params.size[1]))
    workers = resolve_workers(params.workers)
    report: dict = {"input": str(root), "size": list(size), "splits": {}, "skipped": [], "versions": {}}
    with atomic_directory(output) as tmp:
        for split in splits:
            samples, missing = find_samples(root, split)
            skipped = [_skip(split, name, path, reason, params.skip_bad) for name, path, reason in missing]
            limits = {
                "max_pixels": params.max_pixels,
                "max_fixations": params.max_fixations,
                "map_sigma": params.map_sigma,
            }
            counts, more = _prepare_split(split, samples, tmp / split, size, workers, params.skip_bad, progress, limits)
            skipped += more
            report["splits"][split] = {**counts, "skipped": len(skipped)}
            report["skipped"] += skipped
            report["versions"][split] = split_version_of_files(tmp / split)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _dataset(root: Path, download: DownloadParams | None) -> str:
    """The dataset of the raw tree: ``download.dataset``, which must agree with its SOURCE.json."""
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
    log.warning("skipping %s: %s: %s", name, path, reason)
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
    job = SplitJob(
        str(folder), size, with_maps, full_size, limits["max_pixels"], limits["max_fixations"], limits["map_sigma"]
    )
    if mixed_sizes:
        job = dataclasses.replace(job, full_offsets=offsets)
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
            log.warning(
                "%d %s fixation(s) lay outside their image and were moved to its border (counted in report.json)",
                counts["fixations_outside"],
                split,
            )
    return counts, skipped


def _peek_size(samples: Sequence[Sample], max_pixels: int) -> tuple[int, int]:
    """(rows, cols) that ``maps_full`` is allocated with: the most common size among the headers that read
    and declare at most ``max_pixels`` (the first such on a tie). Not the first image's: with ``skip_bad``
    one odd or oversized image there would make every other image the odd one out, and drop the split."""
    sizes: collections.Counter[tuple[int, int]] = collections.Counter()
    for sample in samples:
        with contextlib.suppress(ImageError), opened(sample.image, max_pixels, "prepare.max_pixels") as img:
            sizes[(img.height, img.width)] += 1
    return sizes.most_common(1)[0][0] if sizes else SALICON_SIZE  # none reads: each is reported on its own


def _full_layout(samples: Sequence[Sample], max_pixels: int) -> tuple[tuple[int, int] | None, tuple[int, ...] | None]:
    """How ``maps_full`` holds the maps of images that may differ in size: ``(size, None)`` when every header
    declares one size (the (N, H0, W0) array), else ``(None, offsets)``: row i's pixels are
    ``offsets[i]:offsets[i + 1]`` of a flat array. An unreadable header gets no pixels (its image is reported
    bad by the worker)."""
    sizes = [declared_size(sample.image, max_pixels, "prepare.max_pixels") or (0, 0) for sample in samples]
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

    return bar_for(total=total, desc=desc, unit="img", enabled=progress)


def _checked(results: list[ItemResult], stop_on_bad: bool) -> list[ItemResult]:
    bad = next((r for r in results if r.bad_path), None)
    if stop_on_bad and bad is not None:
        raise PrepareError(f"{bad.bad_path}: {bad.reason} (set prepare.skip_bad: true to skip such files)")
    return results


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool started as :func:`salgan.cpus.worker_context` says, each worker dying with this one."""
    context = worker_context(["salgan.prepare"])
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=die_with_parent)
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
