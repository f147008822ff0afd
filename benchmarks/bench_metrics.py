"""Time the metric suite: ``score_split`` on K synthetic 640x480 images, plus each metric alone.

Usage: ``python benchmarks/bench_metrics.py [--images K | --quick] [--fixations F] [--splits S]``

Synthetic split: SALICON-val-like 480x640 uint8 ground-truth maps (blurred fixation counts), F
centre-biased fixations per image (default 500, about SALICON's order), predictions at the generator's
256x192 output resolution (float32), which the scorer resizes. Prints a table (ms per image for the
shared all-metrics pass and for each public metric called on its own) and, last, one JSON line with
images/s and the extrapolated time for 5,000 images (SALICON val).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import common  # noqa: F401  -- makes the package importable from a checkout
import numpy as np
from scipy.ndimage import gaussian_filter

from salgan import metrics, scoring

GT_SHAPE = (480, 640)
PRED_SHAPE = (192, 256)
TARGET_IMAGES = 5000


def synthetic_split(n_images: int, fixations: int, seed: int = 0):
    """Predictions, uint8 GT maps, coords and offsets of a random centre-biased split."""
    rng = np.random.default_rng(seed)
    h, w = GT_SHAPE
    counts = rng.integers(fixations // 2, fixations * 3 // 2 + 1, n_images)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rows = np.clip(rng.normal(h / 2, h / 5, offsets[-1]), 0, h - 1)
    cols = np.clip(rng.normal(w / 2, w / 5, offsets[-1]), 0, w - 1)
    coords = np.stack([rows, cols], axis=1).astype(np.int32)
    gt = np.empty((n_images, h, w), dtype=np.uint8)
    for i in range(n_images):
        # Blur at quarter resolution and upsample: realistic smooth maps, generated quickly.
        small = metrics.fixation_map_from_coords(coords[offsets[i] : offsets[i + 1]] // 4, (h // 4, w // 4))
        blurred = metrics.resize_map(gaussian_filter(small.astype(float), 6), GT_SHAPE)
        gt[i] = np.round(255 * blurred / blurred.max())
    predictions = rng.random((n_images, *PRED_SHAPE), dtype=np.float32)
    return predictions, gt, coords, offsets


def time_score_split(predictions, gt, coords, offsets, baseline, n_splits: int) -> float:
    start = time.perf_counter()
    scoring.score_split(predictions, gt, coords, offsets, baseline, n_splits=n_splits, progress=False)
    return time.perf_counter() - start


def time_single_metrics(predictions, gt, coords, offsets, baseline, n_splits: int, n: int) -> dict:
    """Seconds per image of each public metric called on its own (each re-resizes and re-prepares)."""
    calls = {
        "auc_judd": lambda s, f, q, o: metrics.auc_judd(s, f),
        "auc_borji": lambda s, f, q, o: metrics.auc_borji(s, f, n_splits=n_splits),
        "auc_shuffled": lambda s, f, q, o: metrics.auc_shuffled(s, f, o, n_splits=n_splits),
        "nss": lambda s, f, q, o: metrics.nss(s, f),
        "cc": lambda s, f, q, o: metrics.cc(s, q),
        "kld": lambda s, f, q, o: metrics.kld(s, q),
        "sim": lambda s, f, q, o: metrics.sim(s, q),
        "information_gain": lambda s, f, q, o: metrics.information_gain(s, f, baseline),
    }
    n_images = len(gt)
    inputs = []
    for i in range(n):
        f = metrics.fixation_map_from_coords(coords[offsets[i] : offsets[i + 1]], GT_SHAPE)
        j = (i + 1) % n_images
        other = metrics.fixation_map_from_coords(coords[offsets[j] : offsets[j + 1]], GT_SHAPE)
        inputs.append((predictions[i], f, gt[i], other))
    seconds = {}
    for name, call in calls.items():
        start = time.perf_counter()
        for args in inputs:
            call(*args)
        seconds[name] = (time.perf_counter() - start) / n
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="synthetic images to score (default 200)")
    parser.add_argument("--quick", action="store_true", help="20 images")
    parser.add_argument("--fixations", type=int, default=500, help="mean fixations per image (default 500)")
    parser.add_argument("--splits", type=int, default=100, help="AUC-Borji/sAUC splits (default 100)")
    args = parser.parse_args(argv)
    n_images = 20 if args.quick else args.images
    if n_images < 2:
        parser.error("--images must be at least 2")

    predictions, gt, coords, offsets = synthetic_split(n_images, args.fixations)
    baseline = scoring.fixation_density_baseline(coords, offsets, GT_SHAPE, sigma=20)
    seconds = time_score_split(predictions, gt, coords, offsets, baseline, args.splits)
    per_image = seconds / n_images
    singles = time_single_metrics(predictions, gt, coords, offsets, baseline, args.splits, min(n_images, 20))

    print(
        f"{n_images} images, GT {GT_SHAPE[1]}x{GT_SHAPE[0]}, predictions {PRED_SHAPE[1]}x{PRED_SHAPE[0]}, "
        f"{(offsets[-1] / n_images):.0f} fixations/image, {args.splits} splits, {os.cpu_count()} CPUs"
    )
    print(f"{'what':<34}{'ms/image':>10}")
    print(f"{'score_split (all 8 metrics)':<34}{1e3 * per_image:>10.2f}")
    for name, value in singles.items():
        print(f"{'  ' + name + ' alone':<34}{1e3 * value:>10.2f}")
    print(f"{'  sum of the 8 alone':<34}{1e3 * sum(singles.values()):>10.2f}")
    summary = {
        "images": n_images,
        "fixations_per_image": round(float(offsets[-1] / n_images), 1),
        "n_splits": args.splits,
        "cpus": os.cpu_count(),
        "seconds": round(seconds, 3),
        "ms_per_image": round(1e3 * per_image, 2),
        "images_per_s": round(n_images / seconds, 2),
        "extrapolated_s_for_5000": round(TARGET_IMAGES * per_image, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
