"""Saliency metrics: AUC-Judd, AUC-Borji, shuffled AUC, NSS, CC, KLD, SIM and information gain.

Every metric is a pure function of numpy arrays. The definitions follow the MIT saliency benchmark code
(repository cvzoya/saliency, ``code_forMetrics/*.m``) and pysaliency (matthias-k/pysaliency,
``pysaliency/metrics.py``, ``roc.py``); each docstring gives the formula, its source and where this module
departs from it. The conventions shared by all metrics:

* Arguments. ``saliency_map`` is any real 2-D array (float or integer). ``fixation_map`` is a *count
  map* of the same layout as the image: a pixel fixated three times holds 3 (see
  ``docs/data-layout.md``; build one with :func:`fixation_map_from_coords`). ``saliency_map_gt`` is a
  continuous ground-truth map (SALICON's blurred fixation maps).
* Resizing. When ``saliency_map`` has another shape than the map it is compared with, it is first resized
  to that shape by bilinear interpolation with pixel centres aligned (the convention of OpenCV's
  ``INTER_LINEAR`` and MATLAB's ``imresize(..., 'bilinear')`` without antialiasing; identical to
  ``scipy.ndimage.zoom(x, zoom, order=1, mode="nearest", grid_mode=True)``). See :func:`resize_map`.
* Fixation counts. Every fixation counts, as in pysaliency: a pixel fixated three times weighs three
  times in AUC-Judd, AUC-Borji, sAUC, NSS and IG. The MIT code counts each fixated pixel once; for a
  binary fixation map both conventions coincide.
* Edge cases never give a silent NaN. A constant saliency map scores AUC 0.5, NSS 0 and CC 0
  (pysaliency's convention; the MIT code returns NaN), and is treated as a uniform distribution by KLD,
  SIM and IG. NaN or infinite values, non-2-D arrays, empty arrays, fixation maps without fixations or
  with negative or non-integer counts raise ``ValueError``.

All arithmetic is float64. :class:`PreparedMap` and :class:`Fixations` cache what several metrics share
(sorted values, min-max normalisation, densities), so :func:`image_metrics` computes all eight metrics of
one image without repeating work; ``salgan.scoring`` uses it to score whole splits.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

# MATLAB's eps, the regulariser of the MIT KLD and information-gain code (docs/reference.md §3).
EPS = 2.2204e-16

# Published numbers on the SALICON test set (seed paper Table I), in these metric keys: the reports and the
# ablation table show them beside ours.
TABLE_I = {
    "SalGAN (Pan et al.)": {"auc_borji": 0.884, "auc_shuffled": 0.772, "cc": 0.781, "nss": 2.459},
    "seed paper, random encoder": {"auc_borji": 0.839, "auc_shuffled": 0.698, "cc": 0.756, "nss": 1.581},
}
METRIC_NAMES = (
    "auc_judd",
    "auc_borji",
    "auc_shuffled",
    "nss",
    "cc",
    "kld",
    "sim",
    "information_gain",
)
# The metrics where a lower value is the better model (KLD is a divergence); higher is better for the others.
LOWER_IS_BETTER = frozenset({"kld"})

__all__ = [
    "EPS",
    "LOWER_IS_BETTER",
    "METRIC_NAMES",
    "Fixations",
    "PreparedMap",
    "auc_borji",
    "auc_judd",
    "auc_shuffled",
    "cc",
    "center_bias_map",
    "fixation_map_from_coords",
    "image_metrics",
    "information_gain",
    "kld",
    "nss",
    "resize_map",
    "sim",
]


# ---------------------------------------------------------------------------------------------------------
# Validation and resizing


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product of two 1-D arrays without BLAS.

    ``np.dot`` hands large vectors to multithreaded OpenBLAS, whose thread wake-ups made each call cost
    milliseconds between the other (single-threaded) numpy operations of a scoring loop; einsum's own
    loop is steady at about 0.5 ms for 640x480.
    """
    return float(np.einsum("i,i->", a, b))


def _as_map(array: Any, name: str) -> np.ndarray:
    """``array`` as a finite float64 2-D array, or ``ValueError`` naming ``name`` and the problem."""
    a = np.asarray(array)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected a real-valued array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (H, W) map, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: the map is empty (shape {a.shape})")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: the map contains NaN or infinite values")
    return a


@functools.lru_cache(maxsize=64)
def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D linear interpolation with pixel centres aligned.

    Output pixel ``o`` samples the input at ``x = (o + 0.5) * n_in / n_out - 0.5``, clamped to the
    image (edge pixels are repeated); ``x`` lies between ``lo`` and ``hi = lo + 1`` at fraction ``frac``.
    """
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    lo = np.floor(x).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = x - lo
    for a in (lo, hi, frac):
        a.setflags(write=False)  # shared through the cache
    return lo, hi, frac


def resize_map(saliency_map: Any, shape: Sequence[int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``shape`` = (rows, cols), pixel centres aligned.

    Output pixel (r, c) takes the value at input coordinates ``((r + 0.5) * h / H - 0.5,
    (c + 0.5) * w / W - 0.5)``, interpolated linearly along each axis and clamped at the borders: the
    convention of MATLAB ``imresize(..., 'bilinear', 'Antialiasing', false)`` and OpenCV ``INTER_LINEAR``,
    and numerically identical to ``scipy.ndimage.zoom(x, (H / h, W / w), order=1, mode="nearest",
    grid_mode=True)`` (the MIT code resizes with ``imresize``, which antialiases when shrinking; the
    difference only affects downsampling). Written as two gathers because it is about three times faster
    than ``zoom`` at 256x192 -> 640x480. A map already of ``shape`` is returned as float64 unchanged.

    Raises ``ValueError`` for a non-2-D, empty or non-finite map, or a target shape that is not two
    positive integers.
    """
    a = _as_map(saliency_map, "saliency_map")
    target = tuple(int(n) for n in shape)
    if len(target) != 2 or min(target) < 1:
        raise ValueError(f"cannot resize a map to shape {tuple(shape)}: expected two positive sizes")
    if a.shape == target:
        return a
    r_lo, r_hi, r_frac = _linear_taps(a.shape[0], target[0])
    c_lo, c_hi, c_frac = _linear_taps(a.shape[1], target[1])
    # lo + (hi - lo) * frac, not lo * (1 - frac) + hi * frac: a constant map must stay exactly constant,
    # or the constant-map conventions (AUC 0.5, NSS 0, CC 0) would see rounding noise. Columns first and
    # in place: the row pass then copies whole contiguous rows, which is the cheap direction.
    left = np.take(a, c_lo, axis=1)
    cols = np.take(a, c_hi, axis=1)
    cols -= left
    cols *= c_frac
    cols += left
    top = cols[r_lo]
    out = cols[r_hi]
    out -= top
    out *= r_frac[:, None]
    out += top
    return out


# ---------------------------------------------------------------------------------------------------------
# Prepared inputs shared between metrics


class PreparedMap:
    """A validated 2-D map, flattened, with the derived arrays several metrics share, computed once.

    ``shape`` is the map's shape; ``values`` its float64 values in C order. The cached properties are
    computed on first use: sorted values (AUC-Judd, AUC-Borji), min-max normalisation (AUC-Borji, sAUC,
    SIM), mean and standard deviation (NSS, CC), the density used by KLD and IG.
    """

    def __init__(self, array: Any, name: str = "saliency_map", shape: Sequence[int] | None = None):
        a = _as_map(array, name)
        if shape is not None and a.shape != tuple(shape):
            a = resize_map(a, shape)
        self.shape: tuple[int, int] = a.shape
        self.values: np.ndarray = a.reshape(-1)

    @functools.cached_property
    def sorted_values(self) -> np.ndarray:
        return np.sort(self.values)

    @functools.cached_property
    def min(self) -> float:
        return float(self.values.min())

    @functools.cached_property
    def max(self) -> float:
        return float(self.values.max())

    @property
    def is_constant(self) -> bool:
        # Exact comparison, not std == 0: summation rounding can give a constant map a tiny non-zero std.
        return self.min == self.max

    def normalise_minmax(self, values: np.ndarray) -> np.ndarray:
        """``(v - min) / (max - min)`` with this map's min and max; all zeros for a constant map."""
        if self.is_constant:
            return np.zeros_like(values)
        return (values - self.min) / (self.max - self.min)

    @functools.cached_property
    def minmax_sorted(self) -> np.ndarray:
        # The normalisation is monotone, so normalising the sorted values keeps them sorted and gives
        # exactly the values (and ties) of the normalised map.
        return self.normalise_minmax(self.sorted_values)

    @functools.cached_property
    def mean(self) -> float:
        return float(self.values.mean())

    @functools.cached_property
    def centred(self) -> np.ndarray:
        return self.values - self.mean

    @functools.cached_property
    def std(self) -> float:
        """Population standard deviation (ddof=0, pysaliency; the MIT NSS uses ddof=1)."""
        return float(np.sqrt(_dot(self.centred, self.centred) / self.values.size))

    @functools.cached_property
    def density(self) -> np.ndarray:
        """The map as a probability distribution (pysaliency ``convert_saliency_map_to_density``).

        ``P = (S - min(S, 0)) / sum(S - min(S, 0))``: maps with negative values are shifted to start at
        zero, then divided by their sum; a map summing to zero becomes uniform. The MIT code only divides
        by the sum (and leaves an all-zero map at zero).
        """
        v = self.values - self.min if self.min < 0 else self.values
        total = float(v.sum())
        if total <= 0:
            return np.full(v.shape, 1.0 / v.size)
        return v / total

    @functools.cached_property
    def minmax_density(self) -> np.ndarray:
        """MIT ``similarity.m`` normalisation: ``(S - min) / (max - min)``, then divided by its sum.

        The range division cancels against the sum, so this is ``(S - min) / sum(S - min)``. A constant
        map (where the MIT code divides 0 by 0) becomes uniform.
        """
        if self.is_constant:
            return np.full(self.values.shape, 1.0 / self.values.size)
        v = self.values - self.min
        return v / v.sum()

    @functools.cached_property
    def log2_density(self) -> np.ndarray:
        """``log2(eps + P)`` of :attr:`density`, for the information-gain baseline."""
        return np.log2(EPS + self.density)


class Fixations:
    """The fixations of one image: distinct fixated pixels (flat C-order indices) and their counts.

    ``indices`` int64 (K,) sorted; ``counts`` float64 (K,) >= 1; ``total`` = sum of counts (the number
    of fixations N_f); ``shape`` the image shape.
    """

    def __init__(self, indices: np.ndarray, counts: np.ndarray, shape: Sequence[int], name: str):
        if indices.size == 0:
            raise ValueError(f"{name}: no fixations; these metrics need at least one")
        self.indices = indices
        self.counts = counts.astype(np.float64, copy=False)
        self.total = float(self.counts.sum())
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))

    @classmethod
    def from_map(cls, fixation_map: Any, name: str = "fixation_map") -> Fixations:
        """From a count map: non-negative integer counts; raises ``ValueError`` otherwise or if empty."""
        f = _as_map(fixation_map, name)
        if f.min() < 0:
            raise ValueError(f"{name}: fixation counts must be non-negative")
        if not np.array_equal(f, np.round(f)):
            raise ValueError(
                f"{name}: expected integer fixation counts (a count map), got fractional values; "
                "is this a blurred ground-truth map?"
            )
        flat = f.reshape(-1)
        indices = np.flatnonzero(flat)
        return cls(indices, flat[indices], f.shape, name)

    @classmethod
    def from_flat_indices(cls, flat_indices: np.ndarray, shape: Sequence[int], name: str) -> Fixations:
        """From the flat indices of individual fixations (repeats allowed: a repeat is a second count)."""
        indices, counts = np.unique(np.asarray(flat_indices, dtype=np.int64), return_counts=True)
        return cls(indices, counts, shape, name)


def _check_same_shape(fixations: Fixations, other: tuple[int, int], name: str) -> None:
    if fixations.shape != tuple(other):
        raise ValueError(f"{name} has shape {tuple(other)}, the fixation map {fixations.shape}")


def _other_locations(other_fixation_map: Any, fixations: Fixations) -> np.ndarray:
    """Distinct flat indices of the non-zero pixels of ``other_fixation_map`` (validated)."""
    other = Fixations.from_map(other_fixation_map, "other_fixation_map")
    _check_same_shape(fixations, other.shape, "other_fixation_map")
    return other.indices


# ---------------------------------------------------------------------------------------------------------
# Metric kernels on prepared inputs


def _trapezoid(fp: np.ndarray, tp: np.ndarray) -> np.ndarray:
    """Area under the curve(s) given by points along the last axis (MATLAB ``trapz(fp, tp)``)."""
    return np.sum(np.diff(fp, axis=-1) * (tp[..., 1:] + tp[..., :-1]), axis=-1) / 2.0


def _auc_judd(smap: PreparedMap, fix: Fixations) -> float:
    values = smap.values[fix.indices]
    n_pixels, n_fixated = smap.values.size, fix.indices.size
    if n_fixated == n_pixels:
        raise ValueError("auc_judd: every pixel is fixated, so there are no negatives to rank against")
    order = np.argsort(values, kind="stable")
    fixated_sorted, counts_sorted = values[order], fix.counts[order]
    thresholds = np.unique(fixated_sorted)  # ascending; each distinct fixated value is one ROC point
    below = np.searchsorted(fixated_sorted, thresholds, side="left")
    weight_below = np.concatenate(([0.0], np.cumsum(counts_sorted)))[below]
    tp = (fix.total - weight_below) / fix.total  # share of fixations with S >= t (counts weighted)
    all_ge = n_pixels - np.searchsorted(smap.sorted_values, thresholds, side="left")
    fixated_ge = n_fixated - below
    fp = (all_ge - fixated_ge) / (n_pixels - n_fixated)  # share of non-fixated pixels with S >= t
    # Thresholds from high to low, between the fixed end points (0, 0) and (1, 1).
    fp = np.concatenate(([0.0], fp[::-1], [1.0]))
    tp = np.concatenate(([0.0], tp[::-1], [1.0]))
    return float(_trapezoid(fp, tp))


def _borji_thresholds(step_size: float) -> np.ndarray:
    """``0:step:1`` on the min-max normalised map.

    The MIT code stops at the largest value among the positives and negatives of a split; thresholds
    above it only add points at (0, 0), which add no area, so a fixed 0..1 sweep gives the same AUC and
    allows all splits to share one array. Rounded to 12 decimals so that 0.3 is the double nearest 0.3
    (3 * 0.1 is 0.30000000000000004, which would drop map values of exactly 0.3 from that threshold).
    """
    if not (0 < step_size <= 1):
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    n = int(np.floor(1.0 / step_size + 1e-9))
    return np.round(np.arange(n + 1) * step_size, 12)


def _bin_counts(values_sorted: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Counts of sorted values in bins ``[t_j, t_j+1)`` (the last bin open-ended); all values >= t_0."""
    at_or_above = values_sorted.size - np.searchsorted(values_sorted, thresholds, side="left")
    return at_or_above - np.append(at_or_above[1:], 0)


def _sampled_auc(
    smap: PreparedMap,
    fix: Fixations,
    negative_bins: np.ndarray,
    sample: str,
    n_splits: int,
    step_size: float,
    rng: np.random.Generator,
) -> float:
    """Mean over splits of the thresholded ROC area of fixations against sampled negatives.

    ``negative_bins`` counts the population of negative candidates per threshold bin. Each split draws
    ``N_f`` (the number of fixations) negatives from it; only a negative's bin matters for ``S >= t``, so
    drawing per-bin counts (multinomial with replacement, multivariate hypergeometric without) is exactly
    equivalent in distribution to drawing locations and thresholding their values, and costs
    O(splits x bins) instead of O(splits x N_f).
    """
    thresholds = _borji_thresholds(step_size)
    n_neg = round(fix.total)
    if sample == "with_replacement":
        p = negative_bins / negative_bins.sum()
        drawn = rng.multinomial(n_neg, p, size=n_splits)
    else:
        drawn = rng.multivariate_hypergeometric(negative_bins.astype(np.int64), n_neg, size=n_splits)
    fp = np.cumsum(drawn[:, ::-1], axis=1)[:, ::-1] / n_neg  # (splits, thresholds): share >= t_j
    positives = smap.normalise_minmax(smap.values[fix.indices])
    pos_bins = np.bincount(
        np.searchsorted(thresholds, positives, side="right") - 1,
        weights=fix.counts,
        minlength=thresholds.size,
    )
    tp = np.cumsum(pos_bins[::-1])[::-1] / fix.total  # share of fixations >= t_j (counts weighted)
    zeros, ones = np.zeros((n_splits, 1)), np.ones((n_splits, 1))
    fp_curve = np.hstack([zeros, fp[:, ::-1], ones])
    tp_curve = np.hstack([zeros, np.broadcast_to(tp[::-1], fp.shape), ones])
    return float(_trapezoid(fp_curve, tp_curve).mean())


def _auc_borji(smap: PreparedMap, fix: Fixations, n_splits: int, step_size: float, rng) -> float:
    bins = _bin_counts(smap.minmax_sorted, _borji_thresholds(step_size))
    return _sampled_auc(smap, fix, bins, "with_replacement", n_splits, step_size, rng)


def _auc_shuffled(
    smap: PreparedMap, fix: Fixations, other_indices: np.ndarray, n_splits: int, step_size: float, rng
) -> float:
    if other_indices.size == 0:
        raise ValueError("auc_shuffled: the other images have no fixations to sample negatives from")
    negatives = np.sort(smap.normalise_minmax(smap.values[other_indices]))
    bins = _bin_counts(negatives, _borji_thresholds(step_size))
    # MIT draws min(N_f, #locations) without replacement; drawing N_f with replacement when the other
    # images have fewer locations keeps N_f negatives per split (documented in auc_shuffled).
    sample = "without_replacement" if other_indices.size >= fix.total else "with_replacement"
    return _sampled_auc(smap, fix, bins, sample, n_splits, step_size, rng)


def _nss(smap: PreparedMap, fix: Fixations) -> float:
    if smap.is_constant:
        return 0.0
    z = (smap.values[fix.indices] - smap.mean) / smap.std
    return float(_dot(z, fix.counts) / fix.total)


def _cc(smap: PreparedMap, gt: PreparedMap) -> float:
    if smap.is_constant or gt.is_constant:
        return 0.0
    a, b = smap.centred, gt.centred
    r = _dot(a, b) / np.sqrt(_dot(a, a) * _dot(b, b))
    return float(np.clip(r, -1.0, 1.0))


def _kld(smap: PreparedMap, gt: PreparedMap) -> float:
    p, q = smap.density, gt.density
    return float(_dot(q, np.log(EPS + q / (p + EPS))))


def _sim(smap: PreparedMap, gt: PreparedMap) -> float:
    return float(np.minimum(smap.minmax_density, gt.minmax_density).sum())


def _information_gain(smap: PreparedMap, fix: Fixations, log2_baseline: np.ndarray) -> float:
    gain = np.log2(EPS + smap.density[fix.indices]) - log2_baseline[fix.indices]
    return float(_dot(gain, fix.counts) / fix.total)


def _check_splits(n_splits: int) -> None:
    if int(n_splits) != n_splits or n_splits < 1:
        raise ValueError(f"n_splits must be a positive integer, got {n_splits}")


# ---------------------------------------------------------------------------------------------------------
# Public metrics


def auc_judd(saliency_map: Any, fixation_map: Any) -> float:
    """AUC-Judd: area under the ROC curve of fixations against all non-fixated pixels.

    Thresholds t are the distinct values of S at the fixations. For each, TP(t) = share of fixations
    with S >= t and FP(t) = share of non-fixated pixels with S >= t; the points are joined, from the
    highest threshold down, between (0, 0) and (1, 1), and the area is the trapezoid rule. Sources: MIT
    ``AUC_Judd.m``, pysaliency ``roc.py`` (``general_roc``).

    Conventions. Ties are counted exactly with ``>=`` (pysaliency without jitter; the MIT code breaks
    ties with random jitter), so the result is deterministic. Every fixation counts (pysaliency): a pixel
    fixated three times weighs three in TP; non-fixated pixels count once each. The MIT code counts each
    fixated pixel once (REFERENCE §3: 0.314339386 instead of 0.436318096 on the test fixture). The value
    depends only on the ranks of S, so the MIT min-max normalisation is omitted and any strictly
    increasing transform of S leaves the score unchanged. A constant map scores 0.5.

    Vectorised: one sort of S and ``searchsorted`` for every threshold at once.

    Args:
        saliency_map: real (h, w) map; resized bilinearly (:func:`resize_map`) to the fixation map's shape.
        fixation_map: (H, W) count map of non-negative integers with at least one fixation.

    Raises:
        ValueError: non-finite or non-2-D input, empty fixation map, or every pixel fixated.
    """
    fix = Fixations.from_map(fixation_map)
    return _auc_judd(PreparedMap(saliency_map, shape=fix.shape), fix)


def auc_borji(
    saliency_map: Any, fixation_map: Any, n_splits: int = 100, step_size: float = 0.1, seed: Any = 0
) -> float:
    """AUC-Borji: ROC area of fixations against uniformly sampled pixels, averaged over random splits.

    S is min-max normalised to [0, 1] (a constant map becomes all zeros and scores exactly 0.5). For
    each of ``n_splits`` splits, N_f negatives (N_f = number of fixations) are drawn uniformly from all
    pixels with replacement; at thresholds t = 0, step, 2 step, ..., 1, TP(t) = share of fixations with
    S >= t and FP(t) = share of negatives with S >= t; the trapezoid area between (0, 0) and (1, 1)
    is averaged over splits. Source: MIT ``AUC_Borji.m`` (100 splits, step 0.1).

    Conventions. Fixations are weighted by count and N_f counts repeats (MIT: each fixated pixel once).
    The negatives' values are drawn as per-threshold-bin counts (a multinomial over the map's histogram),
    which is the same distribution as drawing pixel locations but vectorised across splits; the numbers
    therefore differ from MATLAB's random stream, as any reimplementation's would.

    Args:
        saliency_map: real (h, w) map; resized bilinearly to the fixation map's shape.
        fixation_map: (H, W) count map with at least one fixation.
        n_splits: number of random splits (positive integer).
        step_size: threshold step on the normalised map, in (0, 1].
        seed: anything ``numpy.random.default_rng`` accepts (int, sequence of ints, Generator). The same
            seed gives the same score.

    Raises:
        ValueError: invalid maps (see :func:`auc_judd`), ``n_splits`` < 1 or ``step_size`` outside (0, 1].
    """
    _check_splits(n_splits)
    fix = Fixations.from_map(fixation_map)
    smap = PreparedMap(saliency_map, shape=fix.shape)
    return _auc_borji(smap, fix, int(n_splits), step_size, np.random.default_rng(seed))


def auc_shuffled(
    saliency_map: Any,
    fixation_map: Any,
    other_fixation_map: Any,
    n_splits: int = 100,
    step_size: float = 0.1,
    seed: Any = 0,
) -> float:
    """Shuffled AUC (sAUC): like AUC-Borji, but negatives are fixation locations of other images.

    Negatives are drawn from the distinct non-zero pixels of ``other_fixation_map`` (typically the union
    of the fixations of about 10 other images, Borji's choice), which cancels the reward for a mere
    centre bias: a map that only reproduces the fixation distribution shared by all images scores about
    0.5. Per split, N_f locations are drawn without replacement (MIT), their normalised S values are the
    negatives, and TP/FP/area are as in :func:`auc_borji`. Source: MIT ``AUC_shuffled.m``.

    Conventions. Each distinct location of the other map counts once, whatever its count (MIT uses a
    binary map). If the other map has fewer locations than N_f, this implementation draws N_f *with*
    replacement, keeping N_f negatives per split; the MIT code instead uses all of them, without
    replacement. Fixations are weighted by count. pysaliency's sAUC is an exact (unsampled) ROC against
    all other images' fixations and gives different numbers.

    Args:
        saliency_map: real (h, w) map; resized bilinearly to the fixation map's shape.
        fixation_map: (H, W) count map with at least one fixation.
        other_fixation_map: (H, W) count (or binary) map of other images' fixations, non-empty.
        n_splits, step_size, seed: as in :func:`auc_borji`.

    Raises:
        ValueError: invalid maps, an empty or differently shaped ``other_fixation_map``, bad parameters.
    """
    _check_splits(n_splits)
    fix = Fixations.from_map(fixation_map)
    other = _other_locations(other_fixation_map, fix)
    smap = PreparedMap(saliency_map, shape=fix.shape)
    return _auc_shuffled(smap, fix, other, int(n_splits), step_size, np.random.default_rng(seed))


def nss(saliency_map: Any, fixation_map: Any) -> float:
    """Normalised scanpath saliency: the mean z-scored saliency at the fixations.

    ``NSS = sum_i c_i * (S(x_i) - mean(S)) / std(S) / sum_i c_i`` over fixated pixels x_i with counts
    c_i, i.e. the mean over all fixations. ``std`` is the population standard deviation (ddof=0,
    pysaliency ``NSS``); the MIT ``NSS.m`` uses MATLAB's ``std`` (ddof=1), which makes its values smaller
    by a factor sqrt((n-1)/n) (negligible at 640x480). A constant map scores 0 (pysaliency).

    Args:
        saliency_map: real (h, w) map; resized bilinearly to the fixation map's shape.
        fixation_map: (H, W) count map with at least one fixation.
    """
    fix = Fixations.from_map(fixation_map)
    return _nss(PreparedMap(saliency_map, shape=fix.shape), fix)


def cc(saliency_map: Any, saliency_map_gt: Any) -> float:
    """Pearson linear correlation coefficient between S and the ground-truth map Q.

    ``CC = sum((S - mean S)(Q - mean Q)) / sqrt(sum((S - mean S)^2) sum((Q - mean Q)^2))``. Source: MIT
    ``CC.m`` (z-scores both maps, then ``corr2``), pysaliency ``CC``. Either map constant: 0 (pysaliency's
    convention; the MIT code returns NaN). Symmetric in its arguments up to resizing.

    Args:
        saliency_map: real (h, w) map; resized bilinearly to the ground truth's shape.
        saliency_map_gt: real (H, W) ground-truth saliency map.
    """
    gt = PreparedMap(saliency_map_gt, "saliency_map_gt")
    return _cc(PreparedMap(saliency_map, shape=gt.shape), gt)


def kld(saliency_map: Any, saliency_map_gt: Any) -> float:
    """Kullback-Leibler divergence of the prediction P from the ground truth Q, in nats.

    ``KLD = sum Q * ln(eps + Q / (P + eps))`` with P = S / sum(S), Q = Q / sum(Q) and eps = 2.2204e-16
    (MATLAB's eps). Source: MIT ``KLdiv.m``. Lower is better; 0 for identical maps.

    Conventions (pysaliency's density conversion; the MIT code has no rule): a map with negative values
    is first shifted so its minimum is 0; a map summing to 0 is taken as uniform.

    Args:
        saliency_map: real (h, w) map; resized bilinearly to the ground truth's shape.
        saliency_map_gt: real (H, W) ground-truth saliency map.
    """
    gt = PreparedMap(saliency_map_gt, "saliency_map_gt")
    return _kld(PreparedMap(saliency_map, shape=gt.shape), gt)


def sim(saliency_map: Any, saliency_map_gt: Any) -> float:
    """Similarity (histogram intersection) of two maps seen as distributions.

    Each map is min-max normalised to [0, 1] and divided by its sum; ``SIM = sum min(P, Q)``, 1 for
    identical maps, 0 for disjoint ones. Source: MIT ``similarity.m``. pysaliency skips the min-max step
    and so scores maps whose minimum is above 0 differently (REFERENCE §3). A constant map (0 / 0 in the
    MIT code) is taken as uniform.

    Args:
        saliency_map: real (h, w) map; resized bilinearly to the ground truth's shape.
        saliency_map_gt: real (H, W) ground-truth saliency map.
    """
    gt = PreparedMap(saliency_map_gt, "saliency_map_gt")
    return _sim(PreparedMap(saliency_map, shape=gt.shape), gt)


def information_gain(saliency_map: Any, fixation_map: Any, baseline_map: Any) -> float:
    """Information gain over a baseline, in bits per fixation.

    ``IG = sum_i c_i * (log2(eps + P(x_i)) - log2(eps + B(x_i))) / sum_i c_i`` over fixated pixels x_i
    with counts c_i, where P and B are the saliency and baseline maps normalised to sum 1 (negative maps
    shifted to a minimum of 0, all-zero maps uniform, as in :func:`kld`) and eps = 2.2204e-16. Source:
    Kümmerer et al. 2015 (PNAS), MIT ``InfoGain.m``, pysaliency. The MIT code min-max normalises both
    maps before dividing by the sum, which sends each map's minimum pixel to probability 0; this
    implementation follows the plain sum normalisation of REFERENCE §3 and pysaliency instead.
    Positive: the model explains the fixations better than the baseline (a centre prior, or the mean
    fixation density of the training set).

    Args:
        saliency_map: real (h, w) map; resized bilinearly to the fixation map's shape.
        fixation_map: (H, W) count map with at least one fixation.
        baseline_map: real map of the baseline; resized bilinearly to the fixation map's shape.
    """
    fix = Fixations.from_map(fixation_map)
    smap = PreparedMap(saliency_map, shape=fix.shape)
    baseline = PreparedMap(baseline_map, "baseline_map", shape=fix.shape)
    return _information_gain(smap, fix, baseline.log2_density)


def image_metrics(
    smap: PreparedMap,
    fix: Fixations,
    gt: PreparedMap,
    other_indices: np.ndarray,
    log2_baseline: np.ndarray,
    n_splits: int = 100,
    step_size: float = 0.1,
    borji_seed: Any = 0,
    shuffled_seed: Any = 1,
) -> dict[str, float]:
    """All eight metrics of one image from prepared inputs, sharing sorts and normalisations.

    Equivalent to calling each public metric: ``smap`` and ``gt`` must already have the fixations' shape
    (build them with ``PreparedMap(x, shape=fix.shape)``), ``other_indices`` are the distinct flat indices
    of the sAUC negatives' locations, ``log2_baseline`` is ``PreparedMap(baseline).log2_density``. The
    two seeds feed ``numpy.random.default_rng`` for AUC-Borji and sAUC. Returns a dict keyed by
    :data:`METRIC_NAMES`.
    """
    _check_splits(n_splits)
    for name, shape in (("saliency map", smap.shape), ("ground-truth map", gt.shape)):
        _check_same_shape(fix, shape, name)
    if log2_baseline.size != smap.values.size:
        raise ValueError(f"baseline has {log2_baseline.size} pixels, the fixation map {smap.values.size}")
    return {
        "auc_judd": _auc_judd(smap, fix),
        "auc_borji": _auc_borji(smap, fix, n_splits, step_size, np.random.default_rng(borji_seed)),
        "auc_shuffled": _auc_shuffled(
            smap, fix, other_indices, n_splits, step_size, np.random.default_rng(shuffled_seed)
        ),
        "nss": _nss(smap, fix),
        "cc": _cc(smap, gt),
        "kld": _kld(smap, gt),
        "sim": _sim(smap, gt),
        "information_gain": _information_gain(smap, fix, log2_baseline),
    }


# ---------------------------------------------------------------------------------------------------------
# Helpers for building inputs


def fixation_map_from_coords(coords: Any, shape: Sequence[int]) -> np.ndarray:
    """Count map (int64, ``shape``) from 0-based (row, col) fixations; a repeated pixel counts each time.

    Args:
        coords: integer array (M, 2) of 0-based (row, col), as in ``fixations.npz`` (docs/data-layout.md).
            M may be 0 (an all-zero map, which the metrics reject).
        shape: (rows, cols) of the map.

    Raises:
        ValueError: coordinates not (M, 2) integers, or outside the map.
    """
    rows, cols = int(shape[0]), int(shape[1])
    c = np.asarray(coords)
    if c.size == 0:
        return np.zeros((rows, cols), dtype=np.int64)
    if c.ndim != 2 or c.shape[1] != 2 or c.dtype.kind not in "iu":
        raise ValueError(f"coords: expected an integer (M, 2) array of (row, col), got {c.dtype} {c.shape}")
    r, k = c[:, 0].astype(np.int64), c[:, 1].astype(np.int64)
    if r.min() < 0 or k.min() < 0 or r.max() >= rows or k.max() >= cols:
        raise ValueError(f"coords: fixations outside a {rows}x{cols} map")
    return np.bincount(r * cols + k, minlength=rows * cols).reshape(rows, cols)


def center_bias_map(shape: Sequence[int], sigma_fraction: float) -> np.ndarray:
    """Isotropic Gaussian centred in the image: a centre-prior saliency map (peak 1, float64).

    ``G(r, c) = exp(-((r - (H-1)/2)^2 + (c - (W-1)/2)^2) / (2 sigma^2))`` with
    ``sigma = sigma_fraction * sqrt(H^2 + W^2)`` (a fraction of the image diagonal).

    Raises:
        ValueError: non-positive ``sigma_fraction`` or shape.
    """
    rows, cols = int(shape[0]), int(shape[1])
    if rows < 1 or cols < 1:
        raise ValueError(f"center_bias_map: invalid shape {tuple(shape)}")
    if not sigma_fraction > 0:
        raise ValueError(f"center_bias_map: sigma_fraction must be > 0, got {sigma_fraction}")
    sigma = sigma_fraction * np.hypot(rows, cols)
    dr = (np.arange(rows) - (rows - 1) / 2.0) ** 2
    dc = (np.arange(cols) - (cols - 1) / 2.0) ** 2
    return np.exp(-(dr[:, None] + dc[None, :]) / (2.0 * sigma**2))
