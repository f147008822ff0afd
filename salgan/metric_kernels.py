"""The metrics' passes over a map's pixels as compiled loops (numba), several sums to a pass.

numpy and torch run one operation per pass over the pixels, and at 640x480 every pass costs about the same,
0.1-0.15 ms (the map is 2.4 MB of float64: the pass is a trip through memory), whatever little arithmetic it
does. A compiled loop does the arithmetic of several passes on each pixel while it is loaded, the logarithm
included (:func:`_log`, vectorised with the rest; torch's is a pass of its own and glibc's is scalar).
:mod:`salgan.metrics` uses these kernels when numba can be imported and its own numpy and torch passes
otherwise (``SALGAN_METRICS_KERNELS=numpy`` forces those); both give the same values within 1e-13
(``tests/test_metrics_fast_path.py`` runs the metrics both ways).

Numerics. Sums are taken in blocks of :data:`BLOCK` pixels (inside a block in any order the compiler
vectorises: ``reassoc``), the block sums then in order: an error of a few ulps, like numpy's pairwise sum.
``reassoc`` also lets the compiler regroup the arithmetic of one pixel, so no expression here relies on
its order for more than a few ulps (``pair_pass`` adds one offset, not a difference and an offset). The
histogram's bin of a pixel need only be a non-decreasing function of its value, and is computed without
fast-math flags, in IEEE order, as numpy computes a threshold's: ``salgan.metrics._counts_by_kernel``
compares the pixels of a threshold's bin one by one, so the counts are exact.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

BLOCK = 2048
# Reductions may be reordered (and vectorised), products and sums fused into multiply-adds (the pair pass:
# 0.90 -> 0.75 ms at 640x480); no reciprocal divisions. Inputs are finite (the callers check), so min and
# max may ignore NaN's rules.
_FLAGS = {"reassoc", "nsz", "nnan", "ninf", "contract"}


def _compiled(function, **options):
    """``njit(function)`` with numba's on-disk cache, or without it where numba finds no writable place for
    one (a read-only install and home): each process then compiles the kernels, 2-3 s, instead of failing."""
    try:
        return njit(cache=True, nogil=True, boundscheck=False, **options)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return njit(cache=False, nogil=True, boundscheck=False, **options)(function)


def _kernel(function):
    # error_model="numpy": a division by zero gives inf instead of a check per division, which would keep
    # the loop from being vectorised.
    return _compiled(function, fastmath=_FLAGS, error_model="numpy")


@intrinsic
def _bits(typingctx, x):
    """The IEEE-754 bits of a float64 as an unsigned integer (a bit cast, no conversion)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.uint64(types.float64), codegen


@intrinsic
def _float(typingctx, bits):
    """The float64 with the given IEEE-754 bits (the inverse of :func:`_bits`)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.uint64), codegen


# fdlibm's e_log.c (Sun Microsystems, 1993): ln(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f),
# with a minimax polynomial R; under 1 ulp in its own order, within 3 ulps as the compiler regroups it here.
_LG = (
    6.666666666666735130e-01,
    3.999999999940941908e-01,
    2.857142874366239149e-01,
    2.222219843214978396e-01,
    1.818357216161805012e-01,
    1.531383769920937332e-01,
    1.479819860511658591e-01,
)
_LN2_HIGH = 6.93147180369123816490e-01  # ln 2 in two parts, the first with 32 bits: k * _LN2_HIGH is exact
_LN2_LOW = 1.90821492927058770002e-10
_SQRT_HALF_BITS = np.uint64(0x3FE6A09E00000000)  # the bits of about sqrt(2) / 2
_ONE_MINUS_SQRT_HALF_BITS = np.uint64(0x3FF0000000000000 - 0x3FE6A09E00000000)
_MANTISSA = np.uint64(0x000FFFFFFFFFFFFF)
_EXPONENT_SHIFT = np.uint64(52)


@njit(inline="always", error_model="numpy")
def _log(x):
    """ln x of a positive normal float64 without a library call, so that a loop of them is vectorised
    (torch's SLEEF log is a pass of its own; glibc's is scalar). x = 2^k m with m in [sqrt(2)/2, sqrt(2))."""
    shifted = _bits(x) + _ONE_MINUS_SQRT_HALF_BITS
    k = float(np.int32(shifted >> _EXPONENT_SHIFT) - np.int32(1023))
    f = _float((shifted & _MANTISSA) + _SQRT_HALF_BITS) - 1.0
    half_square = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    r = z * (_LG[0] + w * (_LG[2] + w * (_LG[4] + w * _LG[6]))) + w * (_LG[1] + w * (_LG[3] + w * _LG[5]))
    return k * _LN2_HIGH - ((half_square - (s * (half_square + r) + k * _LN2_LOW)) - f)


def _log_of_level(value, log_levels):
    """``ln value`` (0 for 0): from the table for an integer value, else computed."""


@overload(_log_of_level, inline="always")
def _log_of_level_typed(value, log_levels):
    if isinstance(value, types.Integer):
        return lambda value, log_levels: log_levels[value]
    return lambda value, log_levels: _log(value) if value > 0 else 0.0


@_kernel
def map_stats(a):
    """One pass over a 1-D float64 array: min, max, sum, and ``sum(a - p)`` and ``sum((a - p)^2)``
    about the pivot ``p = a[0]`` (from which the caller gets the mean and the variance, or takes a second,
    centred pass, :func:`centred_sums`, where the pivot is too far from the mean for them to be exact)."""
    pivot = float(a[0])
    low = a[0]
    high = a[0]
    total = 0.0
    deviation = 0.0
    squares = 0.0
    for start in range(0, a.size, BLOCK):
        stop = min(start + BLOCK, a.size)
        # Two loops over the block (in L1 for the second): together in one, the min and max kept the sums
        # from being vectorised (0.30 against 0.24 ms at 640x480).
        part_low = a[start]
        part_high = a[start]
        for i in range(start, stop):
            part_low = min(part_low, a[i])
            part_high = max(part_high, a[i])
        part = 0.0
        part_deviation = 0.0
        part_squares = 0.0
        for i in range(start, stop):
            v = a[i]
            part += v
            c = v - pivot
            part_deviation += c
            part_squares += c * c
        low = min(low, part_low)
        high = max(high, part_high)
        total += part
        deviation += part_deviation
        squares += part_squares
    return float(low), float(high), total, deviation, squares


@_kernel
def level_stats(a):
    """:func:`map_stats` of an 8-bit map, in integers (exact, and a third faster than through floats)."""
    pivot = np.int64(a[0])
    low = a[0]
    high = a[0]
    total = np.int64(0)
    deviation = np.int64(0)
    squares = np.int64(0)
    for i in range(a.size):
        v = a[i]
        low = min(low, v)
        high = max(high, v)
        w = np.int64(v)
        total += w
        c = w - pivot
        deviation += c
        squares += c * c
    return float(low), float(high), float(total), float(deviation), float(squares)


@_kernel
def centred_sums(a, centre, low):
    """``sum((a - centre)^2)``, ``sum(a - centre)`` and ``sum(a - low)`` (the shifted map's total): the
    second pass where :func:`map_stats`'s pivot was too far from the mean."""
    squares = 0.0
    deviation = 0.0
    shifted = 0.0
    for start in range(0, a.size, BLOCK):
        part_squares = 0.0
        part_deviation = 0.0
        part_shifted = 0.0
        for i in range(start, min(start + BLOCK, a.size)):
            v = float(a[i])
            c = v - centre
            part_squares += c * c
            part_deviation += c
            part_shifted += v - low
        squares += part_squares
        deviation += part_deviation
        shifted += part_shifted
    return squares, deviation, shifted


@_kernel
def pair_pass(s, g, s_mean, g_mean, s_low, s_scale, g_low, g_scale, log_offset, log_levels):
    """The sums of the metrics that compare a map S >= 0 (float64) with a map G >= 0, in one pass.

    Returns ``sum((S - mean S)(G - mean G))`` (CC's numerator), ``sum(min((S - s_low) * s_scale, (G -
    g_low) * g_scale))`` (SIM, the scales being the reciprocals of the shifted maps' totals) and ``sum(G
    (ln G - ln(S + log_offset)))`` (KLD's, terms with G = 0 being 0). ``ln G`` comes from the table
    ``log_levels`` (``ln k``, and 0 at 0) for an 8-bit G, else from the logarithm (the table is then
    empty).
    """
    cross = 0.0
    similarity = 0.0
    divergence = 0.0
    for start in range(0, s.size, BLOCK):
        part_cross = 0.0
        part_similarity = 0.0
        part_divergence = 0.0
        for i in range(start, min(start + BLOCK, s.size)):
            v = s[i]
            u = float(g[i])
            part_cross += (v - s_mean) * (u - g_mean)
            part_similarity += min((v - s_low) * s_scale, (u - g_low) * g_scale)
            part_divergence += u * (_log_of_level(g[i], log_levels) - _log(v + log_offset))
        cross += part_cross
        similarity += part_similarity
        divergence += part_divergence
    return cross, similarity, divergence


def histogram(s, low, scale, counts, candidates):
    """Adds each pixel to ``counts`` at its bin ``int((S - low) * scale)``; the value of a pixel whose bin
    holds a negative count (the caller marks the bins to compare one by one that way) is also written to
    ``candidates``. Returns the number written. The mark rides on the count the loop loads anyway: a
    separate table of marked bins cost a third more.

    Compiled without fast-math flags (a scatter loop is not vectorised anyway), so that the bin is
    computed in IEEE order, exactly as numpy computes ``int((r - low) * scale)`` for a threshold r."""
    n = 0
    for i in range(s.size):
        v = s[i]
        b = int((v - low) * scale)
        c = counts[b] + 1
        counts[b] = c
        if c < 0:
            candidates[n] = v
            n += 1
    return n


histogram = _compiled(histogram, error_model="numpy")  # no fast-math flags: IEEE order (see the docstring)


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel for the dtypes the scorer uses, so that worker
    processes started from this one do not each compile them."""
    s = np.linspace(0.0, 1.0, 8)
    levels = np.zeros(256)
    level_stats(np.arange(8, dtype=np.uint8))
    for g, table in ((np.arange(8, dtype=np.uint8), levels), (s.copy(), levels[:0])):
        centred_sums(g, 0.5, 0.0)
        pair_pass(s, g, 0.5, 0.5, 0.0, 0.25, 0.0, 0.25, 1e-16, table)
    map_stats(s)
    centred_sums(s, 0.5, 0.0)
    histogram(s, 0.0, 4.0, np.zeros(6, dtype=np.int32), np.empty(8))
