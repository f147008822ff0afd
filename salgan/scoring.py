"""Scoring a split with the full metric suite of :mod:`salgan.metrics`.

``score_split`` takes N predicted maps, the ground-truth maps at the original resolution and the
fixations as stored by ``prepare`` (docs/data-layout.md: ``coords`` (M, 2) 0-based (row, col) at the
original resolution, ``offsets`` (N + 1)), and returns one row of eight metrics per image plus their
means. Per image, the prediction is resized once (bilinear, :func:`salgan.metrics.resize_map`) and all
eight metrics share their passes over it (:func:`salgan.metrics.image_metrics`, about 3 ms of one core
at 640x480 with numba's compiled passes, 5-6 ms without); images are scored by a pool of processes, one
per usable CPU, while this process reads the maps in order.

Conventions (the report must state them):

* Means are over images, each image weighing the same (the MIT benchmark's convention), not over
  fixations.
* sAUC negatives for image i: the union of the fixation locations of the ``sauc_other_images`` images
  that follow it cyclically in split order, i+1, ..., i+k (mod N); deterministic, and effectively random
  images because split order is sorted COCO ids. Where the images differ in size (MIT1003, your own data),
  the other images' fixations are first moved to image i's size, pixel centres aligned (as pysaliency's
  shuffled baseline rescales other stimuli's fixations); SALICON's share one size and need none.
* Random streams: AUC-Borji of image i uses ``numpy.random.default_rng([seed, i, 0])`` and sAUC
  ``default_rng([seed, i, 1])``, so a row does not depend on which other images are scored and can be
  reproduced alone with the public metric functions.
* Information gain is measured against ``baseline_map`` (resized to the ground truth's shape if needed),
  normally :func:`fixation_density_baseline` of the training fixations.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from salgan.cpus import die_with_parent, usable_cpus, worker_context
from salgan.metrics import METRIC_NAMES, Fixations, PreparedMap, image_metrics, warm_up_kernels
from salgan.progress import progress as bar_for

__all__ = ["fixation_density_baseline", "score_split"]


def _check_offsets(coords: np.ndarray, offsets: np.ndarray, n_images: int | None = None) -> None:
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.dtype.kind not in "iu":
        raise ValueError(f"coords: expected an integer (M, 2) array, got {coords.dtype} {coords.shape}")
    if offsets.ndim != 1 or offsets.size < 2 or offsets.dtype.kind not in "iu":
        raise ValueError(f"offsets: expected an integer (N + 1,) array, got {offsets.dtype} {offsets.shape}")
    if n_images is not None and offsets.size != n_images + 1:
        raise ValueError(f"offsets has {offsets.size} entries, expected N + 1 = {n_images + 1}")
    if offsets[0] != 0 or offsets[-1] != len(coords) or np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must rise from 0 to len(coords) without decreasing")


def _flat_indices(coords: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Flat C-order indices of (row, col) coordinates, which must lie inside ``shape``."""
    rows, cols = coords[:, 0].astype(np.int64), coords[:, 1].astype(np.int64)
    if len(coords) and (rows.min() < 0 or cols.min() < 0 or rows.max() >= shape[0] or cols.max() >= shape[1]):
        raise ValueError(f"coords: fixations outside the {shape[0]}x{shape[1]} ground-truth maps")
    return rows * shape[1] + cols


def fixation_density_baseline(
    coords: Any,
    offsets: Any,
    shape: Sequence[int],
    sigma: float,
    original_sizes: Any | None = None,
) -> np.ndarray:
    """Mean fixation density of a set of images (e.g. the training split): an information-gain baseline.

    All fixations are accumulated into one count map of ``shape``, blurred with a Gaussian of ``sigma``
    pixels (``scipy.ndimage.gaussian_filter``, ``mode="reflect"`` so no mass leaks out at the borders)
    and normalised to sum 1. Every fixation weighs the same (images with more fixations weigh more),
    matching the count-map convention of the metrics.

    Args:
        coords: (M, 2) integer 0-based (row, col), as in ``fixations.npz``.
        offsets: (N + 1,) image i's fixations are ``coords[offsets[i]:offsets[i + 1]]``.
        shape: (rows, cols) of the baseline map.
        sigma: Gaussian standard deviation in pixels of ``shape``; 0 for no blur.
        original_sizes: optional (N, 2) (height, width) of each image, for fixations recorded at another
            resolution than ``shape``: pixel (r, c) of an h x w image maps to
            ``floor((r + 0.5) * H / h), floor((c + 0.5) * W / w)``. Without it every image must already
            be of size ``shape``.

    Raises:
        ValueError: malformed coords/offsets, fixations outside their image, no fixations, sigma < 0.
    """
    c, o = np.asarray(coords), np.asarray(offsets)
    _check_offsets(c, o)
    target = (int(shape[0]), int(shape[1]))
    if len(c) == 0:
        raise ValueError("fixation_density_baseline: no fixations")
    if sigma < 0:
        raise ValueError(f"fixation_density_baseline: sigma must be >= 0, got {sigma}")
    if original_sizes is not None:
        c = _rescale_coords(c, o, np.asarray(original_sizes), target)
    counts = np.bincount(_flat_indices(c, target), minlength=target[0] * target[1])
    density = counts.reshape(target).astype(np.float64)
    if sigma > 0:
        density = gaussian_filter(density, sigma=sigma, mode="reflect")
    return density / density.sum()


def _rescale_coords(coords: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Map each image's (row, col) from its own (height, width) to ``target``, pixel centres aligned."""
    n_images = offsets.size - 1
    if sizes.shape != (n_images, 2) or np.any(sizes < 1):
        raise ValueError(f"original_sizes: expected ({n_images}, 2) positive sizes, got {sizes.shape}")
    per_fixation = np.repeat(sizes.astype(np.float64), np.diff(offsets), axis=0)
    if np.any(coords < 0) or np.any(coords >= per_fixation):
        raise ValueError("coords: fixations outside their image's original size")
    scaled = np.floor((coords + 0.5) * (np.asarray(target, dtype=np.float64) / per_fixation))
    return np.minimum(scaled.astype(np.int64), np.asarray(target) - 1)


def _other_images(i: int, n_images: int, k: int) -> np.ndarray:
    """The k images after i, cyclically (i itself excluded)."""
    return (i + 1 + np.arange(min(k, n_images - 1))) % n_images


def _sauc_negatives(i: int, flat: np.ndarray, offsets: np.ndarray, k: int) -> np.ndarray:
    """Distinct flat indices of the fixations of image i's sAUC reference images."""
    others = _other_images(i, offsets.size - 1, k)
    if others.size == 0:
        return flat[:0]
    first, last = int(others[0]), int(others[-1])  # one run of their fixations, or two where they wrap
    if first <= last:
        parts = flat[offsets[first] : offsets[last + 1]]
    else:
        parts = np.concatenate((flat[offsets[first] : offsets[-1]], flat[: offsets[last + 1]]))
    parts = np.sort(parts)
    if parts.size == 0:
        return parts
    # np.unique by hand: numpy 2.4's hashing unique took 1 ms for these 5,000 indices, sorting 0.05 ms.
    return parts[np.concatenate(([True], parts[1:] != parts[:-1]))]


class _Geometry:
    """Per image: its (rows, cols), its fixations and its sAUC negatives as flat indices there, and the
    information-gain baseline's log2 density at that size. One size for all (SALICON): computed once, as
    before; mixed sizes: the other images' fixations moved to image i's size (:func:`_rescale_coords`) and
    the baseline resized once per size."""

    def __init__(self, gt_maps, coords: np.ndarray, offsets: np.ndarray, baseline_map, sizes, k: int):
        self.coords, self.offsets, self.baseline_map, self.k = coords, offsets, baseline_map, k
        if sizes is None:
            sizes = getattr(gt_maps, "sizes", None)  # salgan.layout.FlatMaps
        if sizes is None:
            shape = np.shape(gt_maps[0])
            if len(shape) != 2:
                raise ValueError(f"gt_maps: expected (N, H0, W0) maps, got maps of shape {shape}")
            uniform = len(np.shape(gt_maps)) == 3 if hasattr(gt_maps, "shape") else False
            sizes = [shape] * len(gt_maps) if uniform else [np.shape(m) for m in gt_maps]
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        self.uniform = bool((self.sizes == self.sizes[0]).all())
        self._baselines: dict[tuple[int, int], np.ndarray] = {}
        if self.uniform:
            self.flat = _flat_indices(coords, tuple(int(v) for v in self.sizes[0]))

    def baseline(self, shape: tuple[int, int]) -> np.ndarray:
        if shape not in self._baselines:
            self._baselines[shape] = PreparedMap(self.baseline_map, "baseline_map", shape=shape).log2_density
        return self._baselines[shape]

    def __call__(self, i: int) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]:
        offs, shape = self.offsets, (int(self.sizes[i][0]), int(self.sizes[i][1]))
        if self.uniform:
            return (
                shape,
                self.flat[offs[i] : offs[i + 1]],
                _sauc_negatives(i, self.flat, offs, self.k),
                self.baseline(shape),
            )
        own = _flat_indices(self.coords[offs[i] : offs[i + 1]], shape)
        parts = []
        for j in _other_images(i, offs.size - 1, self.k):
            theirs = self.coords[offs[j] : offs[j + 1]]
            moved = _rescale_coords(theirs, np.array([0, len(theirs)]), self.sizes[j : j + 1], shape)
            parts.append(_flat_indices(moved, shape))
        negatives = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        return shape, own, negatives, self.baseline(shape)


def _validate_split(predictions, gt_maps, offsets, names, n_splits, sauc_other_images, seed) -> int:
    n_images = len(gt_maps)
    if len(predictions) != n_images:
        raise ValueError(f"{len(predictions)} predictions for {n_images} ground-truth maps")
    if names is not None and len(names) != n_images:
        raise ValueError(f"{len(names)} names for {n_images} images")
    if n_images < 2:
        raise ValueError("score_split needs at least 2 images: sAUC draws negatives from other images")
    if int(sauc_other_images) != sauc_other_images or sauc_other_images < 1:
        raise ValueError(f"sauc_other_images must be a positive integer, got {sauc_other_images}")
    if int(n_splits) != n_splits or n_splits < 1:
        raise ValueError(f"n_splits must be a positive integer, got {n_splits}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if offsets.size != n_images + 1:
        raise ValueError(f"offsets has {offsets.size} entries, expected N + 1 = {n_images + 1}")
    return n_images


def score_split(
    predictions: Sequence[Any] | np.ndarray,
    gt_maps: Sequence[Any] | np.ndarray,
    fixations: Any,
    offsets: Any,
    baseline_map: Any,
    n_splits: int = 100,
    sauc_other_images: int = 10,
    seed: int = 0,
    progress: bool = True,
    names: Sequence[str] | None = None,
    workers: int | None = None,
    sizes: Any | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Score N predicted saliency maps with all eight metrics, each at its ground truth's resolution.

    Args:
        predictions: N real 2-D maps of any size (a list or an (N, h, w) array); each is resized
            bilinearly to its ground-truth map's size.
        gt_maps: (N, H0, W0) ground-truth maps (uint8 or float), e.g. ``maps_full.npy``.
        fixations: (M, 2) integer 0-based (row, col) fixations at the ground truth's resolution.
        offsets: (N + 1,) image i's fixations are ``fixations[offsets[i]:offsets[i + 1]]``.
        baseline_map: information-gain baseline (see :func:`fixation_density_baseline`); resized to the
            ground truth's size if needed.
        n_splits: random splits of AUC-Borji and sAUC (MIT: 100).
        sauc_other_images: k, the number of following images whose fixations are sAUC negatives
            (Borji: 10); capped at N - 1.
        seed: non-negative integer; see the module docstring for the per-image streams.
        progress: show a tqdm bar (only when stderr is a terminal).
        names: optional N image names, copied into the rows.
        workers: processes scoring at once; None: one per usable CPU (:func:`salgan.cpus.usable_cpus`),
            at most one per 8 images; 1: this process alone. This process reads the maps in order
            (``predictions`` may compute them batch by batch, see ``salgan.inference.BatchedPredictions``)
            and hands each image to a free worker, so at most ``workers`` images are in flight. The rows
            are the same whatever the count.
        sizes: optional (N, 2) (rows, cols) of the ground-truth maps, which may differ (the prepared
            ``original_sizes``); without it they are read from ``gt_maps``.

    Returns:
        ``(rows, means)``: ``rows[i]`` = {"index": i, "name": names[i] (only with ``names``),
        "n_fixations": int, and one float per metric}; ``means`` maps each of
        :data:`salgan.metrics.METRIC_NAMES` to its mean over images.

    Raises:
        ValueError: mismatched lengths, fewer than 2 images, malformed fixations, an image without
            fixations (the message names it), or any metric error, with the image named.
    """
    coords, offs = np.asarray(fixations), np.asarray(offsets)
    n_images = _validate_split(predictions, gt_maps, offs, names, n_splits, sauc_other_images, seed)
    _check_offsets(coords, offs, n_images)
    if workers is not None and (int(workers) != workers or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers}")
    split = _Split(
        geometry=_Geometry(gt_maps, coords, offs, baseline_map, sizes, int(sauc_other_images)),
        n_splits=int(n_splits),
        seed=int(seed),
    )
    # A worker costs a fork and a pipe; below 8 images each it would cost more than it saves.
    n_workers = max(1, min(workers or usable_cpus(), n_images // 8))

    rows: list[dict[str, Any]] = []
    with bar_for(total=n_images, enabled=progress, desc="scoring", unit="img") as bar:
        if n_workers <= 1:
            buffers: dict[int, np.ndarray] = {}
            for image in _images(predictions, gt_maps, names, n_images):
                rows.append(_score_row(split, *image, buffers))
                bar.update(1)
        else:
            with _Workers(n_workers, split) as pool:
                for image in _images(predictions, gt_maps, names, n_images):
                    rows += pool.submit(*image)
                    bar.update(len(rows) - bar.n)
                rows += pool.drain()
                bar.update(len(rows) - bar.n)
            rows.sort(key=lambda row: row["index"])
    means = {key: float(np.mean([row[key] for row in rows])) for key in METRIC_NAMES}
    return rows, means


@dataclass(frozen=True)
class _Split:
    """What scoring any image of a split needs besides its own maps (sent once to each worker)."""

    geometry: _Geometry  # each image's size, fixations, sAUC negatives and IG baseline
    n_splits: int
    seed: int


def _images(predictions, gt_maps, names, n_images: int) -> Iterator[tuple[int, str | None, np.ndarray, np.ndarray]]:
    """(index, name or None, prediction, ground truth) of each image, in order."""
    for i in range(n_images):
        yield i, None if names is None else str(names[i]), np.asarray(predictions[i]), np.asarray(gt_maps[i])


def _score_row(
    split: _Split, i: int, name: str | None, prediction, gt, buffers: dict[int, np.ndarray]
) -> dict[str, Any]:
    """Image i's row. ``buffers``: two float64 rows of the image's pixel count (keyed by it) that hold its
    prediction and ground truth, reused from image to image: fresh multi-megabyte arrays cost their page
    faults every time."""
    start, stop = split.geometry.offsets[i], split.geometry.offsets[i + 1]
    try:
        shape, own, negatives, log2_baseline = split.geometry(i)
        pixels = shape[0] * shape[1]
        if pixels not in buffers:  # one size kept: mixed sizes (MIT1003) must not pile up buffers
            buffers.clear()
            buffers[pixels] = np.empty((2, pixels))
        rows = buffers[pixels]
        scores = image_metrics(
            PreparedMap(prediction, "prediction", shape=shape, buffer=rows[0]),
            Fixations.from_flat_indices(own, shape, "fixations"),
            PreparedMap(gt, "ground-truth map", buffer=rows[1]),
            negatives,
            log2_baseline,
            n_splits=split.n_splits,
            borji_seed=[split.seed, i, 0],
            shuffled_seed=[split.seed, i, 1],
        )
    except ValueError as error:
        label = f"image {i}" + (f" ({name})" if name is not None else "")
        raise ValueError(f"{label}: {error}") from error
    return {"index": i} | ({} if name is None else {"name": name}) | {"n_fixations": int(stop - start)} | scores


class _Workers:
    """Scoring processes fed through pipes, one image at a time to whichever is free.

    Each image's two maps travel as raw bytes, written straight from their arrays and read into a buffer
    the worker keeps: no pickling of the maps and no fresh pages on either side. (Through a
    ``ProcessPoolExecutor``, pickling them in its feeder thread and unpickling them cost 3 ms and 2 ms of
    CPU per 640x480 image here, most of it page faults, against 7 ms for the scoring itself.) Started as
    ``salgan.prepare``'s pool is (:func:`salgan.cpus.worker_context`).
    """

    def __init__(self, workers: int, split: _Split):
        import torch  # noqa: F401 -- image_metrics's numpy path runs torch kernels: imported once here

        warm_up_kernels()  # numba's compiled passes, loaded once here rather than in each forked worker
        context = worker_context(["salgan.scoring", "torch"])
        self.split, self.processes, self.idle, self.busy = split, [], [], {}
        for _ in range(workers):
            here, there = context.Pipe()
            process = context.Process(target=_work, args=(there, split), daemon=True)
            process.start()
            there.close()
            self.processes.append(process)
            self.idle.append(here)

    def __enter__(self) -> _Workers:
        return self

    def submit(self, i: int, name: str | None, prediction: np.ndarray, gt: np.ndarray) -> list[dict[str, Any]]:
        """Hand image i to a free worker (waiting for one if none is); returns the rows finished meanwhile."""
        if any(a.dtype.kind not in "biuf" for a in (prediction, gt)):
            return [_score_row(self.split, i, name, prediction, gt, {})]  # raises, named
        done = self._wait() if not self.idle else []
        connection = self.idle.pop()
        maps = [np.ascontiguousarray(prediction), np.ascontiguousarray(gt)]
        try:
            connection.send((i, name, [(a.dtype.str, a.shape) for a in maps]))
            for a in maps:
                connection.send_bytes(a.reshape(-1).view(np.uint8))  # flat bytes of the array's own memory
        except OSError:  # a broken pipe: the worker is gone
            raise RuntimeError(f"the worker handed image {i} stopped (killed, or out of memory?)") from None
        self.busy[connection] = i
        return done

    def drain(self) -> list[dict[str, Any]]:
        rows = []
        while self.busy:
            rows += self._wait()
        return rows

    def _wait(self) -> list[dict[str, Any]]:
        rows = []
        for connection in multiprocessing.connection.wait(list(self.busy)):
            i = self.busy.pop(connection)
            try:
                kind, payload = connection.recv()
            except (EOFError, OSError):
                raise RuntimeError(f"the worker scoring image {i} stopped (killed, or out of memory?)") from None
            self.idle.append(connection)
            if kind == "error":
                raise ValueError(payload)
            if kind == "crash":
                raise RuntimeError(f"the worker scoring image {i} failed:\n{payload}")
            rows.append(payload)
        return rows

    def __exit__(self, *exc) -> None:
        for connection in self.idle:
            with contextlib.suppress(OSError):
                connection.send(None)
        for process in self.processes:
            process.join(timeout=0 if self.busy else 10)  # a worker still busy is stopped, not awaited
            if process.is_alive():
                process.terminate()
                process.join()
        for connection in self.idle + list(self.busy):
            connection.close()


def _work(connection, split: _Split) -> None:
    """A worker's loop: receive an image's header and maps, answer its row (or its error)."""
    import signal

    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    buffers: dict[int, np.ndarray] = {}
    received = [bytearray(), bytearray()]
    while (header := connection.recv()) is not None:
        i, name, layouts = header
        maps = []
        for k, (dtype, shape) in enumerate(layouts):
            count = int(np.prod(shape))
            if len(received[k]) < count * np.dtype(dtype).itemsize:
                received[k] = bytearray(count * np.dtype(dtype).itemsize)
            connection.recv_bytes_into(received[k])
            maps.append(np.frombuffer(received[k], dtype=dtype, count=count).reshape(shape))
        try:
            connection.send(("row", _score_row(split, i, name, maps[0], maps[1], buffers)))
        except ValueError as error:
            connection.send(("error", str(error)))
        except Exception:  # noqa: BLE001 -- reported to the parent, which raises it
            connection.send(("crash", traceback.format_exc()))
