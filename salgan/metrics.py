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
(min, max, sum, standard deviation, the fixated values), so :func:`image_metrics` computes all eight metrics
of one image without repeating work; ``salgan.scoring`` uses it to score whole splits. Nothing sorts the
map: AUC-Judd's and AUC-Borji's counts come from one histogram (:func:`_counts_at_or_above`).

The passes over the pixels run one of two ways, chosen once per process (:func:`_kernels`):

* Compiled (``salgan.metric_kernels``, numba: the ``fast`` extra). Three loops over the prediction, each
  doing the work of several numpy passes on the pixel it has loaded: min, max, sum and the moments
  (:meth:`PreparedMap.kernel_sums`); CC's, SIM's and KLD's sums together (:func:`_pair_pass`, KLD as
  ``sum Q (ln Q - ln(P + eps))`` with a compiled logarithm); the AUC histogram. About 2.6 ms per 640x480
  image on one core.
* numpy's and torch's, where numba is not installed or cannot compile, or ``SALGAN_METRICS_KERNELS=numpy``:
  one operation per pass into reusable scratch buffers, KLD's logarithm and the map-sized dot products in
  torch on the calling thread (:func:`_one_torch_thread`; torch is imported on first use, not with this
  module). About 6 ms.

``benchmarks/bench_metrics.py`` times both. The AUCs and IG are those of the sort-based computation to the
last bit either way (the counts are exact), and so is SIM on numpy's passes; CC, NSS, KLD and the compiled
SIM differ from it in the last digits, and the two ways from each other within 1e-13
(``tests/test_metrics_fast_path.py`` checks both against exactly rounded sums). Each public function gives
exactly what :func:`image_metrics` gives for its metric: they run the same passes.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import warnings
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
    """Inner product of two short 1-D arrays (one value per fixation) without BLAS.

    ``np.dot`` hands vectors to multithreaded OpenBLAS, whose thread wake-ups cost milliseconds between
    the other (single-threaded) numpy operations of a scoring loop; einsum's own loop is steady. Map-sized
    products go through :func:`_map_dot`.
    """
    return float(np.einsum("i,i->", a, b))


def _torch():
    """torch, imported on first use: its import takes about 2 s, which the many processes that import this
    module for its names (and numpy-only callers) should not pay."""
    import torch

    return torch


_KERNELS_UNSET = object()
_kernels_module: Any = _KERNELS_UNSET


def _kernels():
    """:mod:`salgan.metric_kernels` (numba's compiled passes), or None where numba cannot be imported, cannot
    compile here, or ``SALGAN_METRICS_KERNELS=numpy`` asks for numpy's and torch's passes.

    Loaded on first use, like torch: numba's import and its cached kernels take about 0.7 s (their first
    compilation on a machine 2-3 s, kept in numba's cache) that importing this module should not cost.
    """
    global _kernels_module
    if _kernels_module is _KERNELS_UNSET:
        _kernels_module = None
        if os.environ.get("SALGAN_METRICS_KERNELS", "numba") != "numpy":
            try:
                from salgan import metric_kernels

                metric_kernels.warm_up()
            except ImportError:  # numba not installed, or too old for this numpy
                pass
            except Exception as error:  # noqa: BLE001 -- a compiler failure must not stop the scoring
                message = f"salgan.metrics: numba could not compile the metrics' passes ({error}); using numpy's"
                warnings.warn(message, stacklevel=3)
            else:
                _kernels_module = metric_kernels
    return _kernels_module


def warm_up_kernels() -> None:
    """Load the compiled passes now (see :func:`_kernels`), so that processes forked from this one have them."""
    _kernels()


@contextlib.contextmanager
def _one_torch_thread():
    """torch with one intra-op thread while the block runs, the calling thread's count restored afterwards.

    torch's CPU kernels are vectorised where numpy's are not on AVX2 (a float64 log through SLEEF: 0.8 ms
    against numpy's scalar 1.3 ms at 640x480; a BLAS dot: 0.07 ms against einsum's 0.15 ms), but they split
    a map-sized pass across all cores: scoring runs one process per core, so the pass stays on this thread.
    ``torch.set_num_threads`` is partly process-wide (the main thread reads what any thread last set), so
    torch work in another thread during the block may also see one thread; each thread restores the count
    it found.
    """
    torch = _torch()
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield torch
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


def _map_dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product of two map-sized float64 scratch rows (writable, contiguous) by torch's BLAS dot."""
    with _one_torch_thread() as torch:
        return float(torch.dot(torch.from_numpy(a), torch.from_numpy(b)))


def _checked(array: Any, name: str, finite: bool = True) -> np.ndarray:
    """``array`` as a real, non-empty 2-D numpy array of its own dtype, finite unless ``finite`` is False
    (the caller checks), or ``ValueError`` naming ``name`` and the problem."""
    a = np.asarray(array)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected a real-valued array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (H, W) map, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: the map is empty (shape {a.shape})")
    if finite and a.dtype.kind == "f" and not np.isfinite(a).all():  # integers always are
        _not_finite(name)
    return a


def _not_finite(name: str):
    raise ValueError(f"{name}: the map contains NaN or infinite values")


def _float64(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a`` as float64: itself if it is, else converted into ``out`` (as many elements) or a new array."""
    if a.dtype == np.float64:
        return a
    if out is not None and out.size == a.size:
        shaped = out.reshape(a.shape)
        np.copyto(shaped, a)
        return shaped
    return a.astype(np.float64)


def _as_map(array: Any, name: str) -> np.ndarray:
    """``array`` as a finite float64 2-D array, or ``ValueError`` naming ``name`` and the problem."""
    checked = _checked(array, name, finite=False)
    a = _float64(checked)
    if checked.dtype.kind == "f" and not np.isfinite(a).all():  # checked after the conversion: a long
        _not_finite(name)  # double may overflow float64
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
    target = _target_shape(shape)
    return a if a.shape == target else _resize(a, target)


def _target_shape(shape: Sequence[int]) -> tuple[int, int]:
    target = tuple(int(n) for n in shape)
    if len(target) != 2 or min(target) < 1:
        raise ValueError(f"cannot resize a map to shape {tuple(shape)}: expected two positive sizes")
    return target


def _resize(a: np.ndarray, target: tuple[int, int], out: np.ndarray | None = None, work: np.ndarray | None = None):
    """:func:`resize_map` of a validated float64 map; the result and the rows' temporary are written into
    ``out`` and ``work`` (float64, ``target``'s size) when given."""
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
    top = np.take(cols, r_lo, axis=0, out=None if work is None else work.reshape(target))
    out = np.take(cols, r_hi, axis=0, out=None if out is None else out.reshape(target))
    out -= top
    out *= r_frac[:, None]
    out += top
    return out


# ---------------------------------------------------------------------------------------------------------
# Prepared inputs shared between metrics


class PreparedMap:
    """A validated 2-D map, flattened, with the statistics several metrics share, computed once.

    ``shape`` is the map's shape, ``size`` its number of pixels; ``values`` its float64 values in C order;
    ``integral`` whether they came as integers (an 8-bit map, say) and were not resized, which lets the
    AUC counting histogram them exactly; ``levels`` an 8-bit map as given (else None). The cached
    properties are computed on first use: min, max, sum, mean, standard deviation (NSS), the density (KLD,
    IG) and its log. The per-pixel intermediates of the metrics are written into reusable scratch buffers
    (:func:`_scratch`) instead of being kept here.
    """

    def __init__(
        self,
        array: Any,
        name: str = "saliency_map",
        shape: Sequence[int] | None = None,
        *,
        buffer: np.ndarray | None = None,
    ):
        """``buffer``: a float64 array of the map's (final) number of pixels to hold the values, which a
        scoring loop reuses from image to image; it must not change while this map is in use."""
        raw = np.asarray(array)
        target = None if shape is None else _target_shape(shape)
        resizing = target is not None and raw.shape != target
        self.integral: bool = raw.dtype.kind in "biu" and not resizing
        if resizing:
            if buffer is not None and buffer.size != target[0] * target[1]:
                buffer = None
            work = None if buffer is None else _scratch(buffer.size)[_RESIZE_ROW]
            a = _resize(_as_map(raw, name), target, buffer, work)
        else:
            a = _checked(raw, name, finite=False)
        self.shape: tuple[int, int] = a.shape
        self.size: int = a.size
        # An 8-bit map as given (an eighth of the memory), for the passes that can read it; its values are
        # the levels of KLD's table (_pair_pass).
        self.levels: np.ndarray | None = raw.reshape(-1) if self.integral and raw.dtype == np.uint8 else None
        kernels = _kernels()
        # The float64 values; where the compiled passes read the 8-bit map itself they are converted on
        # first use, which a ground truth's may never see.
        self._values: np.ndarray | None = None
        self._buffer = buffer
        if kernels is None or self.levels is None:
            self._values = _float64(a, buffer).reshape(-1)
        if kernels is not None:  # min, max, sum and the sums for the mean and variance in one compiled pass
            stats = kernels.map_stats if self.levels is None else kernels.level_stats
            self.min, self.max, self.total, *self._pivot_sums = stats(self._kernel_source)
        elif raw.dtype.kind == "f" and not resizing:
            with np.errstate(over="ignore"):
                self.total = float(self.values.sum())
        # A sum is finite only if every term is (a non-finite one may also be an overflow): the sum,
        # needed anyway, spares a pass over the map to check it.
        finite_sum = raw.dtype.kind != "f" or resizing or math.isfinite(self.total)
        if not finite_sum and not np.isfinite(self.values).all():
            _not_finite(name)
        # Min and max are read from the array as given when it holds small integers (an 8-bit map: an
        # eighth of the memory); the conversion to float64 is monotone, so they are the same numbers.
        self._extremes_of = raw if self.integral and raw.dtype.itemsize <= 4 else a
        self._sum_sq: float | None = None
        self._kernel_sums: tuple[float, float, float] | None = None
        self._fixated: tuple[Fixations, np.ndarray] | None = None

    @property
    def values(self) -> np.ndarray:
        """The float64 values in C order (1-D)."""
        if self._values is None:
            self._values = _float64(self.levels.reshape(self.shape), self._buffer).reshape(-1)
        return self._values

    @property
    def _kernel_source(self) -> np.ndarray:
        """What the compiled passes read: the 8-bit map as given, else the float64 values."""
        return self.values if self.levels is None else self.levels

    def kernel_sums(self, kernels) -> tuple[float, float, float]:
        """The mean, ``sum((v - mean)^2)`` (kept for :attr:`std`) and ``sum(v - min)``.

        From the sums about a pivot ``p`` (the first value) that :func:`~salgan.metric_kernels.map_stats`
        took with the min and max: ``mean = p + sum(v - p) / n``, and the squares moved from ``p`` to that
        mean (the corrected two-pass algorithm, the pivot standing in for the first pass's mean). That is
        exact to rounding while the pivot lies within a few standard deviations of the mean (and, for
        ``sum(v - min)``, of the minimum); beyond :data:`_PIVOT_LIMIT` a second, centred pass
        (:func:`~salgan.metric_kernels.centred_sums`) gives them.
        """
        if self._kernel_sums is None:
            n, pivot = self.size, float(self._kernel_source[0])
            deviation, squares = self._pivot_sums
            mean, centred = _moved_moments(pivot, deviation, squares, n)
            if self.min == 0 or self.integral:  # exact: the total, or a difference of integers
                shifted, far_from_min = self.total - n * self.min, False
            else:
                shifted = deviation + n * (pivot - self.min)
                far_from_min = abs(pivot - self.min) + (self.max - self.min) > _PIVOT_LIMIT * (mean - self.min)
            if squares > _PIVOT_LIMIT**2 * centred or far_from_min:
                squares, deviation, shifted = kernels.centred_sums(self._kernel_source, mean, self.min)
                mean, centred = _moved_moments(mean, deviation, squares, n)
            self._sum_sq = centred
            self._kernel_sums = (mean, centred, shifted)
        return self._kernel_sums

    def at(self, indices: np.ndarray) -> np.ndarray:
        """The values at flat ``indices``."""
        return self.values[indices]

    def at_fixations(self, fix: Fixations) -> np.ndarray:
        """The values at ``fix``'s pixels, gathered once for the several metrics that need them."""
        if self._fixated is None or self._fixated[0] is not fix:
            self._fixated = (fix, self.values[fix.indices])
        return self._fixated[1]

    @functools.cached_property
    def min(self) -> float:
        return float(self._extremes_of.min())

    @functools.cached_property
    def max(self) -> float:
        return float(self._extremes_of.max())

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
    def total(self) -> float:
        """The sum of the values (numpy's pairwise sum)."""
        return float(self.values.sum())

    @functools.cached_property
    def mean(self) -> float:
        kernels = _kernels()
        if kernels is not None:
            return self.kernel_sums(kernels)[0]
        # Bit for bit ``values.mean()``, which is the same pairwise sum divided by the count.
        return self.total / self.size

    @property
    def starts_at_zero(self) -> bool:
        """Whether the minimum is +0.0, so that ``S - min`` is ``S`` itself, bit for bit."""
        return self.min == 0 and not math.copysign(1.0, self.min) < 0

    def centre_into(self, out: np.ndarray) -> np.ndarray:
        """Write ``values - mean`` into ``out`` (and keep its sum of squares for :attr:`std`)."""
        np.subtract(self.values, self.mean, out=out)
        self._sum_sq = _map_dot(out, out)
        return out

    @functools.cached_property
    def std(self) -> float:
        """Population standard deviation (ddof=0, pysaliency; the MIT NSS uses ddof=1)."""
        if self._sum_sq is None:
            _prepare_std(self, None)
        return float(np.sqrt(self._sum_sq / self.size))

    @functools.cached_property
    def density(self) -> np.ndarray:
        """The map as a probability distribution (pysaliency ``convert_saliency_map_to_density``).

        ``P = (S - min(S, 0)) / sum(S - min(S, 0))``: maps with negative values are shifted to start at
        zero, then divided by their sum; a map summing to zero becomes uniform. The MIT code only divides
        by the sum (and leaves an all-zero map at zero).
        """
        return _density_into(self, np.empty(self.size))

    @functools.cached_property
    def log2_density(self) -> np.ndarray:
        """``log2(eps + P)`` of :attr:`density`, for the information-gain baseline."""
        return np.log2(EPS + self.density)


# How far (in standard deviations, or in mean distances from the minimum) the pivot of PreparedMap.kernel_sums
# may lie before a second pass: its sums then lose at most about 64 ulps.
_PIVOT_LIMIT = 8.0


def _moved_moments(centre: float, deviation: float, squares: float, n: int) -> tuple[float, float]:
    """The mean and ``sum((v - mean)^2)`` from ``sum(v - c)`` and ``sum((v - c)^2)`` about a centre ``c``:
    ``sum((v - m)^2) = sum((v - c)^2) - 2 (m - c) sum(v - c) + n (m - c)^2`` for the rounded mean ``m``."""
    mean = centre + deviation / n
    step = mean - centre
    return mean, max(squares - 2.0 * step * deviation + n * step * step, 0.0)


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
        f = _checked(fixation_map, name)  # not converted to float64: a copy of the whole map per call
        flat = f.reshape(-1)
        if flat.min() < 0:
            raise ValueError(f"{name}: fixation counts must be non-negative")
        indices = np.flatnonzero(flat)
        counts = flat[indices].astype(np.float64)
        if not np.array_equal(counts, np.round(counts)):  # zeros are integers: only the rest need a look
            raise ValueError(
                f"{name}: expected integer fixation counts (a count map), got fractional values; "
                "is this a blurred ground-truth map?"
            )
        return cls(indices, counts, f.shape, name)

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
# Per-pixel work in reusable buffers

_SCRATCH = threading.local()
_SCRATCH_ROWS = 8
_RESIZE_ROW = 5  # rows 0-4: the metrics' intermediates; 5: a resize's temporary; 6, 7: the public functions' inputs
_INPUT_ROWS = (6, 7)
_SCRATCH_KEEP_PIXELS = 1 << 20  # kept for maps up to 1 Mpx (8 x 8 MB); larger ones get fresh buffers each call


def _scratch(n_pixels: int) -> np.ndarray:
    """``_SCRATCH_ROWS`` float64 work arrays of ``n_pixels`` (the rows of one block), reused per thread.

    Why: every fresh multi-megabyte temporary costs its page faults again, and they dominated the metrics
    (here a chain of four 640x480 temporaries took 10 ms freshly allocated, 1.6 ms in reused buffers). A
    row is only valid until the next metric call on this thread, so no row ever leaves this module.
    """
    block = getattr(_SCRATCH, "block", None)
    if block is None or block.shape[1] != n_pixels:
        block = np.empty((_SCRATCH_ROWS, n_pixels))
        _SCRATCH.block = block if n_pixels <= _SCRATCH_KEEP_PIXELS else None
    return block


def _input_row(shape: Sequence[int], k: int) -> np.ndarray | None:
    """Scratch row ``k`` of the two that hold a public function's input maps; None (a map of its own) for
    a malformed shape, which the map's validation then reports, or a map too large to keep buffers for."""
    if len(shape) != 2 or not 0 < shape[0] * shape[1] <= _SCRATCH_KEEP_PIXELS:
        return None
    return _scratch(int(shape[0]) * int(shape[1]))[_INPUT_ROWS[k]]


def _shift_into(smap: PreparedMap, out: np.ndarray) -> np.ndarray:
    """``S - min(S)``, written into ``out`` (or ``S`` itself when the minimum is +0.0)."""
    return smap.values if smap.starts_at_zero else np.subtract(smap.values, smap.min, out=out)


def _shifted_total(smap: PreparedMap, shifted: np.ndarray) -> float:
    """The sum of ``shifted`` = ``S - min(S)``."""
    return smap.total if smap.starts_at_zero else float(shifted.sum())  # then `shifted` is `values`


def _density_into(smap: PreparedMap, out: np.ndarray, shifted: np.ndarray | None = None) -> np.ndarray:
    """:attr:`PreparedMap.density` written into ``out``; ``shifted``: ``S - min(S)`` if already computed."""
    v, total = smap.values, smap.total
    if smap.min < 0:
        v = shifted if shifted is not None else _shift_into(smap, out)
        total = _shifted_total(smap, v)
    if total <= 0:
        out.fill(1.0 / out.size)
        return out
    return np.divide(v, total, out=out)


def _minmax_density_into(smap: PreparedMap, out: np.ndarray, shifted: np.ndarray | None = None) -> np.ndarray:
    """MIT ``similarity.m`` normalisation: ``(S - min) / (max - min)``, then divided by its sum.

    The range division cancels against the sum, so this is ``(S - min) / sum(S - min)``. A constant
    map (where the MIT code divides 0 by 0) becomes uniform.
    """
    if smap.is_constant:
        out.fill(1.0 / out.size)
        return out
    v = shifted if shifted is not None else _shift_into(smap, out)
    return np.divide(v, _shifted_total(smap, v), out=out)


def _minmax_density_reusing(
    smap: PreparedMap, density: np.ndarray, out: np.ndarray, shifted: np.ndarray | None = None
) -> np.ndarray:
    """The min-max density; ``density`` itself when the minimum is +0.0 (``(S - 0) / sum(S - 0)`` is
    ``S / sum(S)`` bit for bit), else written into ``out`` (which may be ``shifted``)."""
    if smap.starts_at_zero and not smap.is_constant:
        return density
    return _minmax_density_into(smap, out, shifted)


# Histogram bins over the min-max normalised map for the AUC counts (a power of two: exact scaling). 2^16
# rather than 2^14: a quarter of the pixels to compare one by one, whose gathering and sort cost more than
# the larger histogram.
_COUNT_BINS = 1 << 16


def _counts_at_or_above(
    smap: PreparedMap, shifted: np.ndarray, raw: np.ndarray, unit: np.ndarray, work: np.ndarray, bins: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact pixel counts ``#(S >= r)`` for each value ``r`` of ``raw`` (values of the map, e.g. the
    fixated ones) and ``#(N >= u)`` for each ``u`` of ``unit``, N the min-max normalised map: what
    AUC-Judd and AUC-Borji need, without sorting the map's pixels.

    One histogram of ``b = floor(N * 2^16)`` over all pixels. ``N`` is computed exactly as
    :meth:`PreparedMap.normalise_minmax` does and the scaling by a power of two is exact, so ``b`` is a
    non-decreasing function of S and of N: a pixel whose bin holds no threshold is at or above a threshold
    exactly when its bin is above the threshold's. Only the pixels sharing a bin with a threshold (about
    2,000 at 640x480 with 500 fixations) are compared one by one, after sorting them. Maps given as integers are
    histogrammed by value instead, one bin per level, with no pixel left to compare.

    ``shifted`` holds ``S - min(S)`` (None: computed here where needed); ``work`` (float64) and ``bins``
    (intp) are scratch of the map's size.
    """
    n, low = smap.size, smap.min
    if smap.is_constant:  # every pixel equals every raw threshold; N is all zeros
        return np.full(raw.size, n), np.where(unit <= 0, n, 0)
    span = smap.max - low
    if smap.integral and span <= _COUNT_BINS:
        levels = int(span)  # pixel S = min + k sits in bin k, which no other value shares
        np.copyto(bins, _shift_into(smap, work) if shifted is None else shifted, casting="unsafe")
        at_or_above = np.cumsum(np.bincount(bins, minlength=levels + 1)[::-1])[::-1]
        at_or_above = np.append(at_or_above, 0)
        level_norm = np.arange(levels + 1, dtype=np.float64) / span  # N of each level, as normalise_minmax
        raw_ge = at_or_above[(raw - low).astype(np.intp)]
        return raw_ge, at_or_above[np.searchsorted(level_norm, unit, side="left")]

    kernels = _kernels()
    if kernels is not None and n < -_MARKED:
        return _counts_by_kernel(kernels, smap, raw, unit, work)
    if shifted is None:
        shifted = _shift_into(smap, work)
    norm = shifted if span == 1 else np.divide(shifted, span, out=work)  # N, exactly
    np.multiply(norm, _COUNT_BINS, out=bins, casting="unsafe")  # truncated to an integer: floor, as N >= 0
    hist = np.bincount(bins, minlength=_COUNT_BINS + 1)
    raw_bins = (((raw - low) / span) * _COUNT_BINS).astype(np.intp)
    unit_bins = np.floor(np.clip(unit, 0.0, 1.0) * _COUNT_BINS).astype(np.intp)
    raw_all, unit_all, unit_none = raw <= low, unit <= 0, unit > 1
    shared = np.zeros(hist.size, dtype=bool)  # bins holding a threshold: their pixels are compared exactly
    shared[raw_bins[~raw_all]] = True
    shared[unit_bins[~(unit_all | unit_none)]] = True
    candidates = np.sort(smap.at(shared[bins]))
    hist[shared] = 0
    up_to = np.cumsum(hist)  # up_to[b]: the other pixels in bins <= b (a forward cumsum: 5x a reversed one)
    raw_ge = (up_to[-1] - up_to[raw_bins]) + (candidates.size - np.searchsorted(candidates, raw, side="left"))
    candidates_norm = (candidates - low) / span  # the same N values, still sorted (N is monotone)
    unit_ge = (up_to[-1] - up_to[unit_bins]) + (candidates.size - np.searchsorted(candidates_norm, unit, side="left"))
    raw_ge[raw_all] = n
    unit_ge[unit_all], unit_ge[unit_none] = n, 0
    return raw_ge, unit_ge


def _counts_by_kernel(
    kernels, smap: PreparedMap, raw: np.ndarray, unit: np.ndarray, candidates: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_counts_at_or_above` of a float map by the compiled histogram (``candidates``: float64 scratch
    of the map's size).

    Its bin, ``int((S - min) * 2^16 / span)``, is non-decreasing in S and computed in the same IEEE order
    as here, so a raw threshold's bin is the bin its value has among the pixels. AUC-Borji's thresholds
    live on the normalised map, ``N = (S - min) / span``, whose ``N * 2^16`` differs from the bin's
    product by a rounding: the bins either side of theirs are compared one by one too. A pixel in any
    unmarked bin above a threshold's is above the threshold.
    """
    n, low = smap.size, smap.min
    span = smap.max - low
    scale = _COUNT_BINS / span
    raw_all, unit_all, unit_none = raw <= low, unit <= 0, unit > 1
    raw_bins = np.clip((raw - low) * scale, 0, _COUNT_BINS).astype(np.intp)
    unit_bins = np.floor(np.clip(unit, 0.0, 1.0) * _COUNT_BINS).astype(np.intp)
    unit_marked = unit_bins[~(unit_all | unit_none)]
    marked = np.concatenate((raw_bins[~raw_all], np.maximum(unit_marked - 1, 0), unit_marked, unit_marked + 1))
    hist, up_to = _count_buffers()
    hist.fill(0)
    hist[marked] = _MARKED  # the kernel copies these bins' pixels out instead of counting them
    found = kernels.histogram(smap.values, low, scale, hist, candidates)
    hist[marked] = 0
    compared = np.sort(candidates[:found])
    np.cumsum(hist, out=up_to)  # up_to[b]: the pixels of the other bins <= b
    raw_ge = (up_to[-1] - up_to[raw_bins]) + (found - np.searchsorted(compared, raw, side="left"))
    compared_norm = (compared - low) / span  # N, exactly as normalise_minmax computes it; still sorted
    unit_ge = (up_to[-1] - up_to[unit_bins + 1]) + (found - np.searchsorted(compared_norm, unit, side="left"))
    raw_ge[raw_all] = n
    unit_ge[unit_all], unit_ge[unit_none] = n, 0
    return raw_ge, unit_ge


_MARKED = np.int32(-(1 << 30))  # below any count of a map under 2^30 pixels (larger ones: numpy's passes)


def _count_buffers() -> tuple[np.ndarray, np.ndarray]:
    """The compiled histogram's counts (int32: half the cache a 64-bit table takes, 10% faster) and their
    cumulative sums (int64), ``_COUNT_BINS + 2`` each, reused per thread: a fresh 512 KB array costs its
    page faults, 0.2 ms, on every call."""
    buffers = getattr(_SCRATCH, "counts", None)
    if buffers is None:
        buffers = _SCRATCH.counts = tuple(np.empty(_COUNT_BINS + 2, dtype=t) for t in (np.int32, np.int64))
    return buffers


# ---------------------------------------------------------------------------------------------------------
# Metric kernels on prepared inputs


def _trapezoid(fp: np.ndarray, tp: np.ndarray) -> np.ndarray:
    """Area under the curve(s) given by points along the last axis (MATLAB ``trapz(fp, tp)``)."""
    widths = fp[..., 1:] - fp[..., :-1]  # np.diff's arithmetic, without its wrapper's cost
    widths *= tp[..., 1:] + tp[..., :-1]
    return widths.sum(axis=-1) / 2.0


class _JuddThresholds:
    """The ROC points of AUC-Judd: the distinct fixated values (ascending) and the fixations' share at
    or above each."""

    def __init__(self, smap: PreparedMap, fix: Fixations):
        values = smap.at_fixations(fix)
        if fix.indices.size == smap.size:
            raise ValueError("auc_judd: every pixel is fixated, so there are no negatives to rank against")
        order = np.argsort(values, kind="stable")
        fixated_sorted, counts_sorted = values[order], fix.counts[order]
        # Each distinct fixated value is one ROC point; ``below`` is its first place in the sorted values.
        self.below = np.flatnonzero(np.concatenate(([True], fixated_sorted[1:] != fixated_sorted[:-1])))
        self.values = fixated_sorted[self.below]
        weight_below = np.concatenate(([0.0], np.cumsum(counts_sorted)))[self.below]
        self.tp = (fix.total - weight_below) / fix.total  # share of fixations with S >= t (counts weighted)


def _auc_judd(smap: PreparedMap, fix: Fixations, judd: _JuddThresholds, all_ge: np.ndarray) -> float:
    """AUC-Judd from the thresholds and ``all_ge``, the number of pixels with S >= each threshold."""
    n_pixels, n_fixated = smap.size, fix.indices.size
    fixated_ge = n_fixated - judd.below
    fp = (all_ge - fixated_ge) / (n_pixels - n_fixated)  # share of non-fixated pixels with S >= t
    # Thresholds from high to low, between the fixed end points (0, 0) and (1, 1).
    fp = np.concatenate(([0.0], fp[::-1], [1.0]))
    tp = np.concatenate(([0.0], judd.tp[::-1], [1.0]))
    return float(_trapezoid(fp, tp))


@functools.lru_cache(maxsize=16)
def _borji_thresholds(step_size: float) -> np.ndarray:
    """``0:step:1`` on the min-max normalised map (read-only: shared through the cache).

    The MIT code stops at the largest value among the positives and negatives of a split; thresholds
    above it only add points at (0, 0), which add no area, so a fixed 0..1 sweep gives the same AUC and
    allows all splits to share one array. Rounded to 12 decimals so that 0.3 is the double nearest 0.3
    (3 * 0.1 is 0.30000000000000004, which would drop map values of exactly 0.3 from that threshold).
    """
    if not (0 < step_size <= 1):
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    n = int(np.floor(1.0 / step_size + 1e-9))
    thresholds = np.round(np.arange(n + 1) * step_size, 12)
    thresholds.setflags(write=False)
    return thresholds


def _threshold_bins(values: np.ndarray, thresholds: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Counts (or summed ``weights``) of min-max normalised ``values`` (all >= 0 = ``thresholds[0]``) in
    the bins ``[t_j, t_j+1)``, the last bin open-ended."""
    j = np.searchsorted(thresholds, values, side="right") - 1
    return np.bincount(j, weights=weights, minlength=thresholds.size)


def _positives_curve(smap: PreparedMap, fix: Fixations, thresholds: np.ndarray) -> np.ndarray:
    """The TP coordinates of the thresholded ROC of AUC-Borji and sAUC: 0, the share of fixations (counts
    weighted) at or above each threshold from the highest down, 1."""
    positives = smap.normalise_minmax(smap.at_fixations(fix))
    tp = np.cumsum(_threshold_bins(positives, thresholds, fix.counts)[::-1]) / fix.total
    return np.concatenate(([0.0], tp, [1.0]))


def _bin_counts(at_or_above: np.ndarray) -> np.ndarray:
    """Counts in bins ``[t_j, t_j+1)`` (the last bin open-ended) from the counts at or above each t_j."""
    return at_or_above - np.append(at_or_above[1:], 0)


def _sampled_auc(
    negative_bins: np.ndarray, sample: str, n_negatives: int, tp_curve: np.ndarray, n_splits: int, rng
) -> float:
    """Mean over splits of the thresholded ROC area of fixations against sampled negatives.

    ``negative_bins`` counts the population of negative candidates per threshold bin. Each split draws
    ``n_negatives`` = N_f (the number of fixations) negatives from it; only a negative's bin matters for
    ``S >= t``, so drawing per-bin counts (multinomial with replacement, multivariate hypergeometric
    without) is exactly equivalent in distribution to drawing locations and thresholding their values, and
    costs O(splits x bins) instead of O(splits x N_f). ``tp_curve``: :func:`_positives_curve`.
    """
    if sample == "with_replacement":
        drawn = rng.multinomial(n_negatives, negative_bins / negative_bins.sum(), size=n_splits)
    else:
        drawn = rng.multivariate_hypergeometric(negative_bins.astype(np.int64), n_negatives, size=n_splits)
    fp_curve = np.zeros((n_splits, tp_curve.size))  # per split: 0, the share of negatives >= t_j from the
    fp_curve[:, -1] = 1.0  # highest threshold down, 1
    np.divide(np.cumsum(drawn[:, ::-1], axis=1), n_negatives, out=fp_curve[:, 1:-1])
    return float(_trapezoid(fp_curve, tp_curve).sum() / n_splits)  # np.mean's arithmetic


def _auc_borji(fix: Fixations, at_or_above: np.ndarray, n_splits: int, tp_curve: np.ndarray, rng) -> float:
    """AUC-Borji from ``at_or_above``, the number of pixels with N >= each :func:`_borji_thresholds`."""
    return _sampled_auc(_bin_counts(at_or_above), "with_replacement", round(fix.total), tp_curve, n_splits, rng)


def _auc_shuffled(
    smap: PreparedMap,
    fix: Fixations,
    other_indices: np.ndarray,
    n_splits: int,
    thresholds: np.ndarray,
    tp_curve: np.ndarray,
    rng,
) -> float:
    if other_indices.size == 0:
        raise ValueError("auc_shuffled: the other images have no fixations to sample negatives from")
    bins = _threshold_bins(smap.normalise_minmax(smap.at(other_indices)), thresholds)
    # MIT draws min(N_f, #locations) without replacement; drawing N_f with replacement when the other
    # images have fewer locations keeps N_f negatives per split (documented in auc_shuffled).
    sample = "without_replacement" if other_indices.size >= fix.total else "with_replacement"
    return _sampled_auc(bins, sample, round(fix.total), tp_curve, n_splits, rng)


def _nss(smap: PreparedMap, fix: Fixations) -> float:
    if smap.is_constant:
        return 0.0
    z = (smap.at_fixations(fix) - smap.mean) / smap.std
    return float(_dot(z, fix.counts) / fix.total)


def _cc(smap: PreparedMap, gt: PreparedMap, centred: np.ndarray, gt_centred: np.ndarray) -> float:
    """CC from both maps' centred values (:meth:`PreparedMap.centre_into`, which also keeps their sums of
    squares)."""
    if smap.is_constant or gt.is_constant:
        return 0.0
    r = _map_dot(centred, gt_centred) / np.sqrt(smap._sum_sq * gt._sum_sq)
    return float(np.clip(r, -1.0, 1.0))


def _kld(p: np.ndarray, q: np.ndarray, work: np.ndarray) -> float:
    """``sum Q ln(eps + Q / (P + eps))`` of two densities (scratch rows); ``work`` is scratch.

    In torch (:func:`_one_torch_thread`): its vectorised log is most of the saving; the division and the
    second ``+ eps`` are one ``addcdiv`` pass, the same operations in the same order.
    """
    with _one_torch_thread() as torch:
        tp, tq, tw = torch.from_numpy(p), torch.from_numpy(q), torch.from_numpy(work)
        torch.add(tp, EPS, out=tw)
        torch.addcdiv(_eps_tensor(torch), tq, tw, out=tw)
        return float(torch.dot(tq, torch.log(tw, out=tw)))


@functools.cache
def _eps_tensor(torch) -> Any:
    return torch.tensor(EPS, dtype=torch.float64)


def _sim(p: np.ndarray, q: np.ndarray, work: np.ndarray) -> float:
    """``sum min(P, Q)`` of two min-max densities; ``work`` is scratch."""
    return float(np.minimum(p, q, out=work).sum())


def _information_gain(fixated_density: np.ndarray, fix: Fixations, log2_baseline: np.ndarray) -> float:
    """IG from the density at ``fix``'s pixels."""
    gain = np.log2(EPS + fixated_density) - log2_baseline[fix.indices]
    return float(_dot(gain, fix.counts) / fix.total)


def _fixated_density(smap: PreparedMap, fix: Fixations, work: np.ndarray) -> np.ndarray:
    """:attr:`PreparedMap.density` at ``fix``'s pixels: computed there alone where the compiled passes run
    (``work``, a scratch row, is then left alone), else from the whole density written into ``work``."""
    kernels = _kernels()
    if kernels is None:
        return _density_into(smap, work)[fix.indices]
    shift, total = _density_terms(kernels, smap)
    if total <= 0:
        return np.full(fix.indices.size, 1.0 / smap.size)
    fixated = smap.at_fixations(fix)
    return (fixated if shift == 0 else fixated - shift) / total


def _density_terms(kernels, smap: PreparedMap) -> tuple[float, float]:
    """The shift and the total of :attr:`PreparedMap.density` (``P = (S - shift) / total``)."""
    if smap.min < 0:
        return smap.min, smap.kernel_sums(kernels)[2]
    return 0.0, smap.total


_NO_LEVELS = np.zeros(0)  # the pair pass's table for a ground truth that is not 8-bit: ln G computed


@functools.cache
def _log_levels() -> np.ndarray:
    """``ln k`` for the 256 levels of an 8-bit map, with 0 at level 0 (read-only: shared through the
    cache)."""
    with np.errstate(divide="ignore"):
        table = np.log(np.arange(256, dtype=np.float64))
    table[0] = 0.0
    table.setflags(write=False)
    return table


def _pair_pass_applies(smap: PreparedMap, gt: PreparedMap) -> bool:
    """Whether CC, KLD and SIM come from :func:`_pair_pass` (compiled passes available, neither map constant,
    both non-negative, and ``eps`` times the prediction's total a normal number, which the compiled
    logarithm needs) rather than from numpy's and torch's passes."""
    if _kernels() is None or smap.is_constant or gt.is_constant or smap.min < 0 or gt.min < 0:
        return False
    return _SMALLEST_TOTAL <= smap.total < math.inf and gt.total < math.inf


_SMALLEST_TOTAL = np.finfo(np.float64).tiny / EPS


def _pair_pass(kernels, smap: PreparedMap, gt: PreparedMap) -> dict[str, float]:
    """CC, SIM and KLD of a prediction S against a ground truth Q from one compiled pass over both maps
    (:func:`salgan.metric_kernels.pair_pass`), where :func:`_pair_pass_applies`.

    KLD is ``sum Q ln(eps + Q / (P + eps))`` written as ``sum Q (ln Q - ln(P + eps))``: where Q > 0 the two
    differ by ``Q ln(1 + eps (P + eps) / Q) <= eps (P + eps)``, at most about 2e-16 over the whole map,
    and where Q = 0 both terms are 0. With ``P = S / T`` and ``Q = G / U`` (T, U the maps' totals) that is
    ``sum G (ln G - ln(S + eps T)) / U + ln(T / U)``: one logarithm per pixel, and for an 8-bit ground
    truth ``ln G`` from a table of its 256 levels.
    """

    _, s_squares, s_shifted = smap.kernel_sums(kernels)
    _, g_squares, g_shifted = gt.kernel_sums(kernels)
    cross, similarity, divergence = kernels.pair_pass(
        smap.values,
        gt._kernel_source,
        smap.mean,
        gt.mean,
        smap.min,
        1.0 / s_shifted,
        gt.min,
        1.0 / g_shifted,
        EPS * smap.total,
        _log_levels() if gt.levels is not None else _NO_LEVELS,
    )
    return {
        "cc": float(np.clip(cross / math.sqrt(s_squares * g_squares), -1.0, 1.0)),
        "kld": divergence / gt.total + math.log(smap.total / gt.total),
        "sim": similarity,
    }


def _pair_metrics(smap: PreparedMap, gt: PreparedMap, work: np.ndarray, wanted: Sequence[str]) -> dict[str, float]:
    """The ``wanted`` ones of CC, KLD and SIM of S against Q, as every caller computes them: from
    :func:`_pair_pass` where it applies (its one pass gives CC and SIM together), else from numpy's and
    torch's passes in the scratch rows 0-2 of ``work``."""
    kernels = _kernels()
    if _pair_pass_applies(smap, gt):
        return _pair_pass(kernels, smap, gt)
    scores = {}
    if "cc" in wanted:
        scores["cc"] = _cc(smap, gt, smap.centre_into(work[0]), gt.centre_into(work[1]))
    if "kld" in wanted:
        scores["kld"] = _kld(_density_into(smap, work[0]), _density_into(gt, work[1]), work[2])
    if "sim" in wanted:
        scores["sim"] = _sim(_minmax_density_into(smap, work[0]), _minmax_density_into(gt, work[1]), work[2])
    return scores


def _prepare_std(smap: PreparedMap, work_row: np.ndarray | None) -> None:
    """Compute the sum of squares behind ``smap.std`` (NSS): by the compiled pass, or by numpy's in
    ``work_row`` (None: a fresh array, where a scratch row may be in use by the caller)."""
    kernels = _kernels()
    if kernels is not None:
        smap.kernel_sums(kernels)
    else:
        smap.centre_into(np.empty(smap.size) if work_row is None else work_row)


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
    fixated pixel once (docs/reference.md §3: 0.314339386 instead of 0.436318096 on the test fixture). The value
    depends only on the ranks of S, so the MIT min-max normalisation is omitted and any strictly
    increasing transform of S leaves the score unchanged. A constant map scores 0.5.

    Vectorised without sorting S: the pixels at or above every threshold are counted at once from one
    histogram of the map (:func:`_counts_at_or_above`), exactly.

    Args:
        saliency_map: real (h, w) map; resized bilinearly (:func:`resize_map`) to the fixation map's shape.
        fixation_map: (H, W) count map of non-negative integers with at least one fixation.

    Raises:
        ValueError: non-finite or non-2-D input, empty fixation map, or every pixel fixated.
    """
    fix = Fixations.from_map(fixation_map)
    smap = PreparedMap(saliency_map, shape=fix.shape, buffer=_input_row(fix.shape, 0))
    judd = _JuddThresholds(smap, fix)
    work = _scratch(smap.size)
    all_ge, _ = _counts_at_or_above(smap, None, judd.values, np.empty(0), work[1], work[2].view(np.intp))
    return _auc_judd(smap, fix, judd, all_ge)


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
    smap = PreparedMap(saliency_map, shape=fix.shape, buffer=_input_row(fix.shape, 0))
    work = _scratch(smap.size)
    thresholds = _borji_thresholds(step_size)
    _, at_or_above = _counts_at_or_above(smap, None, np.empty(0), thresholds, work[1], work[2].view(np.intp))
    tp_curve = _positives_curve(smap, fix, thresholds)
    return _auc_borji(fix, at_or_above, int(n_splits), tp_curve, np.random.default_rng(seed))


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
    smap = PreparedMap(saliency_map, shape=fix.shape, buffer=_input_row(fix.shape, 0))
    thresholds = _borji_thresholds(step_size)
    tp_curve = _positives_curve(smap, fix, thresholds)
    return _auc_shuffled(smap, fix, other, int(n_splits), thresholds, tp_curve, np.random.default_rng(seed))


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
    smap = PreparedMap(saliency_map, shape=fix.shape, buffer=_input_row(fix.shape, 0))
    _prepare_std(smap, _scratch(smap.size)[0])
    return _nss(smap, fix)


def cc(saliency_map: Any, saliency_map_gt: Any) -> float:
    """Pearson linear correlation coefficient between S and the ground-truth map Q.

    ``CC = sum((S - mean S)(Q - mean Q)) / sqrt(sum((S - mean S)^2) sum((Q - mean Q)^2))``. Source: MIT
    ``CC.m`` (z-scores both maps, then ``corr2``), pysaliency ``CC``. Either map constant: 0 (pysaliency's
    convention; the MIT code returns NaN). Symmetric in its arguments up to resizing.

    Args:
        saliency_map: real (h, w) map; resized bilinearly to the ground truth's shape.
        saliency_map_gt: real (H, W) ground-truth saliency map.
    """
    gt = PreparedMap(saliency_map_gt, "saliency_map_gt", buffer=_input_row(np.shape(saliency_map_gt), 1))
    smap = PreparedMap(saliency_map, shape=gt.shape, buffer=_input_row(gt.shape, 0))
    return _pair_metrics(smap, gt, _scratch(gt.size), ("cc",))["cc"]


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
    gt = PreparedMap(saliency_map_gt, "saliency_map_gt", buffer=_input_row(np.shape(saliency_map_gt), 1))
    smap = PreparedMap(saliency_map, shape=gt.shape, buffer=_input_row(gt.shape, 0))
    return _pair_metrics(smap, gt, _scratch(gt.size), ("kld",))["kld"]


def sim(saliency_map: Any, saliency_map_gt: Any) -> float:
    """Similarity (histogram intersection) of two maps seen as distributions.

    Each map is min-max normalised to [0, 1] and divided by its sum; ``SIM = sum min(P, Q)``, 1 for
    identical maps, 0 for disjoint ones. Source: MIT ``similarity.m``, deliberately: it is the benchmark's
    definition (and the SALICON challenge's). pysaliency's ``SIM`` skips the min-max step (it only shifts
    a map with negative values), so the two agree when both maps have a minimum of 0 and differ when one
    has its minimum above 0 (docs/reference.md §3: 0.291215618 here, 0.292096571 in pysaliency, on the test
    fixture). A constant map (0 / 0 in the MIT code) is taken as uniform.

    Args:
        saliency_map: real (h, w) map; resized bilinearly to the ground truth's shape.
        saliency_map_gt: real (H, W) ground-truth saliency map.
    """
    gt = PreparedMap(saliency_map_gt, "saliency_map_gt", buffer=_input_row(np.shape(saliency_map_gt), 1))
    smap = PreparedMap(saliency_map, shape=gt.shape, buffer=_input_row(gt.shape, 0))
    return _pair_metrics(smap, gt, _scratch(gt.size), ("sim",))["sim"]


def information_gain(saliency_map: Any, fixation_map: Any, baseline_map: Any) -> float:
    """Information gain over a baseline, in bits per fixation.

    ``IG = sum_i c_i * (log2(eps + P(x_i)) - log2(eps + B(x_i))) / sum_i c_i`` over fixated pixels x_i
    with counts c_i, where P and B are the saliency and baseline maps normalised to sum 1 (negative maps
    shifted to a minimum of 0, all-zero maps uniform, as in :func:`kld`) and eps = 2.2204e-16. Source:
    Kümmerer et al. 2015 (PNAS), MIT ``InfoGain.m``, pysaliency. The MIT code min-max normalises both
    maps before dividing by the sum, which sends each map's minimum pixel to probability 0; this
    implementation follows the plain sum normalisation of docs/reference.md §3 and pysaliency instead.
    Positive: the model explains the fixations better than the baseline (a centre prior, or the mean
    fixation density of the training set).

    Args:
        saliency_map: real (h, w) map; resized bilinearly to the fixation map's shape.
        fixation_map: (H, W) count map with at least one fixation.
        baseline_map: real map of the baseline; resized bilinearly to the fixation map's shape.
    """
    fix = Fixations.from_map(fixation_map)
    smap = PreparedMap(saliency_map, shape=fix.shape, buffer=_input_row(fix.shape, 0))
    baseline = PreparedMap(baseline_map, "baseline_map", shape=fix.shape, buffer=_input_row(fix.shape, 1))
    return _information_gain(_fixated_density(smap, fix, _scratch(smap.size)[0]), fix, baseline.log2_density)


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
    """All eight metrics of one image from prepared inputs, sharing every pass over the pixels.

    Equivalent to calling each public metric, to the last bit: the same kernels run on the same values.
    ``smap`` and ``gt`` must already have the fixations' shape (build them with ``PreparedMap(x,
    shape=fix.shape)``), ``other_indices`` are the distinct flat indices of the sAUC negatives'
    locations, ``log2_baseline`` is ``PreparedMap(baseline).log2_density``. The two seeds feed
    ``numpy.random.default_rng`` for AUC-Borji and sAUC. Returns a dict keyed by :data:`METRIC_NAMES`.

    Shared work: each map's min, max, mean and centred values (NSS, CC); one histogram of the normalised
    saliency map gives AUC-Judd's counts at every fixated value and AUC-Borji's at every threshold
    (:func:`_counts_at_or_above`); ``S - min`` serves that histogram and SIM; the density serves KLD and IG.
    """
    _check_splits(n_splits)
    for name, shape in (("saliency map", smap.shape), ("ground-truth map", gt.shape)):
        _check_same_shape(fix, shape, name)
    if log2_baseline.size != smap.size:
        raise ValueError(f"baseline has {log2_baseline.size} pixels, the fixation map {smap.size}")
    judd = _JuddThresholds(smap, fix)
    borji_thresholds = _borji_thresholds(step_size)
    work = _scratch(smap.size)
    compiled = _kernels() is not None
    if compiled:  # NSS's standard deviation first: the pair metrics' numpy passes may centre the map again
        _prepare_std(smap, work[0])
        scores, shifted = {"nss": _nss(smap, fix)}, None
    else:
        scores = {"cc": _cc(smap, gt, smap.centre_into(work[0]), gt.centre_into(work[1])), "nss": _nss(smap, fix)}
        shifted = _shift_into(smap, work[2])
    all_ge, borji_ge = _counts_at_or_above(smap, shifted, judd.values, borji_thresholds, work[3], work[4].view(np.intp))
    scores["auc_judd"] = _auc_judd(smap, fix, judd, all_ge)
    tp_curve = _positives_curve(smap, fix, borji_thresholds)  # the same for AUC-Borji and sAUC
    rng = np.random.default_rng(borji_seed)
    scores["auc_borji"] = _auc_borji(fix, borji_ge, n_splits, tp_curve, rng)
    rng = np.random.default_rng(shuffled_seed)
    scores["auc_shuffled"] = _auc_shuffled(smap, fix, other_indices, n_splits, borji_thresholds, tp_curve, rng)
    if compiled:
        scores["information_gain"] = _information_gain(_fixated_density(smap, fix, work[3]), fix, log2_baseline)
        scores |= _pair_metrics(smap, gt, work, ("cc", "kld", "sim"))
        return {name: scores[name] for name in METRIC_NAMES}
    p = _density_into(smap, work[3], shifted)
    q = _density_into(gt, work[4])
    scores["information_gain"] = _information_gain(p[fix.indices], fix, log2_baseline)
    scores["kld"] = _kld(p, q, work[0])
    s_minmax = _minmax_density_reusing(smap, p, work[2], shifted)
    scores["sim"] = _sim(s_minmax, _minmax_density_reusing(gt, q, work[1]), work[0])
    return {name: scores[name] for name in METRIC_NAMES}


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
