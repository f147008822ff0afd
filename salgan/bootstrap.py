"""How sure a difference between two ablation arms is: a paired bootstrap over images and seeds.

Two arms scored on the same val images give, per metric, a (seeds x images) array each. The question is
whether arm A's mean differs from the reference arm R's by more than the luck of which images were
scored and which seeds were trained. Each bootstrap replicate draws N images with replacement, the same
draw for both arms (paired: an image hard for A is hard for R too, and that shared difficulty cancels),
and each arm's seeds with replacement (so that an arm whose seeds disagree gets a wider interval); the
replicate's difference is A's mean over the drawn seeds and images minus R's. The 95% interval is the
2.5th to 97.5th percentile of those differences (Efron & Tibshirani 1993, the percentile interval). With
one seed per arm only the images are resampled, and the interval says nothing about training noise.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

REPLICATES = 10_000
CHUNK = 250  # replicates drawn at a time: memory stays at CHUNK x images


class Interval(NamedTuple):
    difference: float  # mean(A) - mean(R) over every seed and image
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(
    arm: np.ndarray, reference: np.ndarray, replicates: int = REPLICATES, level: float = 0.95, seed: int = 0
) -> Interval:
    """The difference of means ``arm`` - ``reference`` and its bootstrap interval at ``level``.

    ``arm`` (S_a, N) and ``reference`` (S_r, N): per-seed, per-image scores of the same N images in the
    same order (a 1-D array is one seed). Images are resampled jointly for both arms, seeds separately
    for each (module docstring). ``seed`` fixes the draws, so the same scores give the same interval.
    """
    a, r = np.atleast_2d(np.asarray(arm, dtype=np.float64)), np.atleast_2d(np.asarray(reference, dtype=np.float64))
    if a.shape[1] != r.shape[1] or a.shape[1] == 0:
        raise ValueError(f"the arms must score the same images: {a.shape[1]} against {r.shape[1]}")
    if not (np.isfinite(a).all() and np.isfinite(r).all()):
        raise ValueError("scores must be finite")
    rng = np.random.default_rng(seed)
    images = a.shape[1]
    differences = np.empty(replicates)
    for start in range(0, replicates, CHUNK):
        count = min(CHUNK, replicates - start)
        drawn = rng.integers(0, images, size=(count, images))
        per_image = _seed_means(a, count, rng) - _seed_means(r, count, rng)  # (count, images)
        differences[start : start + count] = np.take_along_axis(per_image, drawn, axis=1).mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    return Interval(float(a.mean() - r.mean()), float(low), float(high))


def _seed_means(scores: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` replicates of the per-image mean over a with-replacement draw of the seeds: (count, N)."""
    seeds = scores.shape[0]
    if seeds == 1:
        return np.broadcast_to(scores[0], (count, scores.shape[1]))
    weights = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=count) / seeds  # (count, seeds)
    return weights @ scores
