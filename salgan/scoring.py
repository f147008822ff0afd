"""Scoring a split with the full metric suite of :mod:`salgan.metrics`.

``score_split`` takes N predicted maps, the ground-truth maps at the original resolution and the
fixations as stored by ``prepare`` (docs/data-layout.md: ``coords`` (M, 2) 0-based (row, col) at the
original resolution, ``offsets`` (N + 1)), and returns one row of eight metrics per image plus their
means. Per image, the prediction is resized once (bilinear, :func:`salgan.metrics.resize_map`) and its
sort, normalisations and density are shared by all metrics (:func:`salgan.metrics.image_metrics`), which
keeps a 5,000-image SALICON-val scoring to minutes on two cores.

Conventions (the report must state them):

* Means are over images, each image weighing the same (the MIT benchmark's convention), not over
  fixations.
* sAUC negatives for image i: the union of the fixation locations of the ``sauc_other_images`` images
  that follow it cyclically in split order, i+1, ..., i+k (mod N); deterministic, and effectively random
  images because split order is sorted COCO ids. All images share one resolution (SALICON val is
  480x640), so no rescaling is needed.
* Random streams: AUC-Borji of image i uses ``numpy.random.default_rng([seed, i, 0])`` and sAUC
  ``default_rng([seed, i, 1])``, so a row does not depend on which other images are scored and can be
  reproduced alone with the public metric functions.
* Information gain is measured against ``baseline_map`` (resized to the ground truth's shape if needed),
  normally :func:`fixation_density_baseline` of the training fixations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from salgan.metrics import METRIC_NAMES, Fixations, PreparedMap, image_metrics
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
    parts = [flat[offsets[j] : offsets[j + 1]] for j in others]
    return np.unique(np.concatenate(parts))


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
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Score N predicted saliency maps with all eight metrics.

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
    shape = tuple(np.shape(gt_maps[0]))
    if len(shape) != 2:
        raise ValueError(f"gt_maps: expected (N, H0, W0) maps, got maps of shape {shape}")
    flat = _flat_indices(coords, shape)
    log2_baseline = PreparedMap(baseline_map, "baseline_map", shape=shape).log2_density

    rows = []

    for i in bar_for(range(n_images), enabled=progress, desc="scoring", unit="img"):
        label = f"image {i}" + (f" ({names[i]})" if names is not None else "")
        try:
            fix = Fixations.from_flat_indices(flat[offs[i] : offs[i + 1]], shape, "fixations")
            scores = image_metrics(
                PreparedMap(predictions[i], "prediction", shape=shape),
                fix,
                PreparedMap(gt_maps[i], "ground-truth map"),
                _sauc_negatives(i, flat, offs, int(sauc_other_images)),
                log2_baseline,
                n_splits=int(n_splits),
                borji_seed=[seed, i, 0],
                shuffled_seed=[seed, i, 1],
            )
        except ValueError as error:
            raise ValueError(f"{label}: {error}") from error
        row: dict[str, Any] = {"index": i}
        if names is not None:
            row["name"] = str(names[i])
        row["n_fixations"] = int(offs[i + 1] - offs[i])
        rows.append(row | scores)
    means = {key: float(np.mean([row[key] for row in rows])) for key in METRIC_NAMES}
    return rows, means
