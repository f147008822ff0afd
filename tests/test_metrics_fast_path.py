"""The fast per-image path of salgan.metrics against straightforward implementations written here.

The AUC counts come from a histogram instead of a sort of the map, and the other metrics share passes and
scratch buffers: numba's compiled passes (salgan.metric_kernels, with their own logarithm) where numba is
installed, numpy's and torch's (KLD's logarithm and the map-sized dot products on one thread) otherwise.
Each test that takes ``metrics_backend`` runs under both, and each compares the metrics with the textbook
computation (a full sort, fresh arrays, numpy's log, exactly rounded sums) on maps built to break them:
ties, constant maps, integer maps, values a hair either side of a threshold or a bin edge, a first pixel
far from the rest, fixations stacked on one pixel or on the minimum, and a full 640x480 image.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import salgan
from salgan import metrics as m

SHAPE = (48, 64)
STEP_THRESHOLDS = np.round(np.arange(11) * 0.1, 12)


# --- straightforward implementations ------------------------------------------------------------------


def sorted_counts(s: np.ndarray, raw: np.ndarray, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """#(S >= r) for each r and #(N >= u) for each u, N the min-max normalised map, by sorting S."""
    v = np.sort(s.astype(np.float64).ravel())
    span = v[-1] - v[0]
    norm = (v - v[0]) / span if span else np.zeros_like(v)
    return v.size - np.searchsorted(v, raw, side="left"), v.size - np.searchsorted(norm, unit, side="left")


def reference_auc_judd(s: np.ndarray, f: np.ndarray) -> float:
    """ROC through the distinct fixated values: fixations weighted by count, non-fixated pixels once."""
    s, f = s.astype(np.float64).ravel(), f.ravel()
    fixated, counts, negatives = s[f > 0], f[f > 0], np.sort(s[f == 0])
    tp, fp = [0.0], [0.0]
    for t in np.unique(fixated)[::-1]:
        tp.append(counts[fixated >= t].sum() / counts.sum())
        fp.append((negatives.size - np.searchsorted(negatives, t, side="left")) / negatives.size)
    tp.append(1.0)
    fp.append(1.0)
    return float(np.trapezoid(tp, fp))


def reference_sampled_auc(s, f, negative_bins, n_splits, rng, replace=True) -> float:
    """The module's sampled AUC (AUC-Borji, sAUC) spelt out: per-bin negative counts drawn as it draws
    them, then the trapezoid of each split's ROC at the thresholds 0, 0.1, ..., 1."""
    s, f = s.astype(np.float64).ravel(), f.ravel()
    span = s.max() - s.min()
    norm = (s - s.min()) / span if span else np.zeros_like(s)
    positives, weights = norm[f > 0], f[f > 0].astype(np.float64)
    n_neg = int(weights.sum())
    if replace:
        drawn = rng.multinomial(n_neg, negative_bins / negative_bins.sum(), size=n_splits)
    else:
        drawn = rng.multivariate_hypergeometric(negative_bins.astype(np.int64), n_neg, size=n_splits)
    tp = [0.0, *[weights[positives >= t].sum() / weights.sum() for t in STEP_THRESHOLDS[::-1]], 1.0]
    areas = []
    for split in drawn:
        at_or_above = np.cumsum(split[::-1])[::-1] / n_neg
        fp = [0.0, *at_or_above[::-1], 1.0]
        areas.append(np.trapezoid(tp, fp))
    return float(np.mean(areas))


def bins_of(sorted_at_or_above: np.ndarray) -> np.ndarray:
    return sorted_at_or_above - np.append(sorted_at_or_above[1:], 0)


def density(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    a = a - a.min() if a.min() < 0 else a
    return np.full(a.shape, 1 / a.size) if a.sum() <= 0 else a / a.sum()


def minmax_density(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    if a.min() == a.max():
        return np.full(a.shape, 1 / a.size)
    return (a - a.min()) / (a - a.min()).sum()


def reference_metrics(s, f, q, other, baseline, n_splits=30, borji_seed=0, shuffled_seed=1) -> dict:
    s64, q64 = s.astype(np.float64), q.astype(np.float64)
    counts, fixated = f[f > 0].astype(np.float64), s64[f > 0]
    constant = s64.min() == s64.max()
    _, borji_ge = sorted_counts(s64, np.empty(0), STEP_THRESHOLDS)
    norm_other = np.sort(m.PreparedMap(s).normalise_minmax(s64.ravel()[np.flatnonzero(other)]))
    sauc_bins = bins_of(norm_other.size - np.searchsorted(norm_other, STEP_THRESHOLDS, side="left"))
    sc, qc = s64 - s64.mean(), q64 - q64.mean()
    p, qd = density(s64), density(q64)
    return {
        "auc_judd": reference_auc_judd(s64, f),
        "auc_borji": reference_sampled_auc(s64, f, bins_of(borji_ge), n_splits, np.random.default_rng(borji_seed)),
        "auc_shuffled": reference_sampled_auc(
            s64, f, sauc_bins, n_splits, np.random.default_rng(shuffled_seed), replace=norm_other.size < counts.sum()
        ),
        "nss": 0.0 if constant else float(np.sum(counts * (fixated - s64.mean()) / s64.std()) / counts.sum()),
        "cc": 0.0
        if constant or q64.min() == q64.max()
        else float(np.sum(sc * qc) / np.sqrt(np.sum(sc**2) * np.sum(qc**2))),
        "kld": float(np.sum(qd * np.log(m.EPS + qd / (p + m.EPS)))),
        "sim": float(np.minimum(minmax_density(s64), minmax_density(q64)).sum()),
        "information_gain": float(
            np.sum(counts * (np.log2(m.EPS + p[f > 0]) - np.log2(m.EPS + density(baseline)[f > 0]))) / counts.sum()
        ),
    }


# --- cases --------------------------------------------------------------------------------------------


def fixation_map(rng, n, shape=SHAPE, repeat_first=3) -> np.ndarray:
    coords = np.stack([rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)], axis=1)
    coords = np.vstack([coords, np.repeat(coords[:1], repeat_first, axis=0)])  # one pixel fixated 4 times
    return m.fixation_map_from_coords(coords, shape)


def saliency_cases():
    """(name, map) pairs of the kinds that break a histogram's shortcuts."""
    rng = np.random.default_rng(0)
    smooth = gaussian_filter(rng.random(SHAPE), 2)
    normalised = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    steps = rng.choice(STEP_THRESHOLDS, SHAPE)  # exactly on AUC-Borji's thresholds
    edges = normalised.copy()
    edges.ravel()[::7] = np.nextafter(0.5, 0)  # a hair below and at a bin edge of the counting histogram
    edges.ravel()[3::7] = 0.5
    edges.ravel()[5::7] = 3 / m._COUNT_BINS  # the edge of a narrow bin, and a hair above it
    edges.ravel()[6::7] = np.nextafter(3 / m._COUNT_BINS, 1)
    clumped = np.where(rng.random(SHAPE) < 0.8, 0.25, normalised)  # most pixels in one bin
    return [
        ("random", rng.random(SHAPE)),
        ("ties", rng.integers(0, 5, SHAPE).astype(np.float64)),
        ("uint8", rng.integers(0, 256, SHAPE).astype(np.uint8)),
        ("uint8 narrow", rng.integers(100, 104, SHAPE).astype(np.uint8)),
        ("int16 negative", rng.integers(-300, 300, SHAPE).astype(np.int16)),
        ("uint16 full range", rng.integers(0, 1 << 16, SHAPE).astype(np.uint16)),  # one bin per level
        ("int32 wide", rng.integers(-(1 << 20), 1 << 20, SHAPE).astype(np.int32)),  # more levels than bins
        ("constant", np.full(SHAPE, 0.3)),
        ("normalised", normalised),
        ("on the thresholds", steps),
        ("bin edges", edges),
        ("clumped", clumped),
        ("negative", smooth - 0.5),
        ("float32", smooth.astype(np.float32)),
        ("minimum -0.0", np.where(normalised < 0.2, -0.0, normalised)),
        ("tiny span", 1.0 + np.round(normalised * 7) * np.spacing(1.0)),
        ("huge range", np.exp(rng.normal(0, 40, SHAPE))),
        ("smaller, resized", rng.random((24, 32))),
        # The compiled passes' mean and variance come from sums about the first pixel: one far from the
        # rest takes a second, centred pass; an offset map, far from 0, the shifted total's guard.
        ("outlier first pixel", np.where(np.arange(normalised.size).reshape(SHAPE) == 0, 1e6, normalised)),
        ("offset", 1000.0 + normalised),
    ]


CASES = saliency_cases()


@pytest.mark.parametrize(("name", "s"), CASES, ids=[name for name, _ in CASES])
def test_counts_equal_a_full_sort(name, s, metrics_backend):
    rng = np.random.default_rng(1)
    smap = m.PreparedMap(s, shape=SHAPE)
    values = smap.values.reshape(SHAPE)
    # Thresholds: every fixated value kind: the minimum, the maximum, duplicates, random pixels' values.
    raw = np.unique(np.concatenate([[values.min(), values.max()], rng.choice(values.ravel(), 200)]))
    unit = np.concatenate([STEP_THRESHOLDS, [-0.5, 1e-300, 0.5, np.nextafter(0.5, 1), 1.0, 1.5]])
    work = m._scratch(smap.size)
    shifted = m._shift_into(smap, work[2])
    raw_ge, unit_ge = m._counts_at_or_above(smap, shifted, raw, unit, work[3], work[4].view(np.intp))
    expected_raw, expected_unit = sorted_counts(values, raw, unit)
    np.testing.assert_array_equal(raw_ge, expected_raw)
    np.testing.assert_array_equal(unit_ge, expected_unit)


@pytest.mark.parametrize(("name", "s"), CASES, ids=[name for name, _ in CASES])
def test_every_metric_equals_the_straightforward_computation(name, s, metrics_backend):
    rng = np.random.default_rng(2)
    f = fixation_map(rng, 40)
    f.ravel()[np.argmin(m.resize_map(s, SHAPE))] += 2  # fixations on the minimum too
    q = np.round(255 * gaussian_filter(rng.random(SHAPE), 3) ** 2).astype(np.uint8)
    other = fixation_map(rng, 150)
    baseline = gaussian_filter(rng.random(SHAPE), 4) + 0.1
    s_full = m.resize_map(s, SHAPE) if s.shape != SHAPE else s
    expected = reference_metrics(s_full, f, q, other, baseline)
    got = m.image_metrics(
        m.PreparedMap(s, shape=SHAPE),
        m.Fixations.from_map(f),
        m.PreparedMap(q),
        m.Fixations.from_map(other).indices,
        m.PreparedMap(baseline).log2_density,
        n_splits=30,
    )
    assert got == pytest.approx(expected, abs=1e-12, rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_public_functions_equal_image_metrics_bit_for_bit(seed, metrics_backend):
    rng = np.random.default_rng(seed)
    s = [rng.random((24, 32)), gaussian_filter(rng.random(SHAPE), 2) - 0.3, rng.integers(0, 9, SHAPE)][seed % 3]
    f, other = fixation_map(rng, 30), fixation_map(rng, 100)
    q = gaussian_filter(rng.random(SHAPE), 3) + (seed % 2)  # minimum above 0 on odd seeds
    baseline = gaussian_filter(rng.random(SHAPE), 4) + 0.1
    shared = m.image_metrics(
        m.PreparedMap(s, shape=SHAPE),
        m.Fixations.from_map(f),
        m.PreparedMap(q),
        m.Fixations.from_map(other).indices,
        m.PreparedMap(baseline).log2_density,
        n_splits=50,
        borji_seed=[seed, 0],
        shuffled_seed=[seed, 1],
    )
    alone = {
        "auc_judd": m.auc_judd(s, f),
        "auc_borji": m.auc_borji(s, f, n_splits=50, seed=[seed, 0]),
        "auc_shuffled": m.auc_shuffled(s, f, other, n_splits=50, seed=[seed, 1]),
        "nss": m.nss(s, f),
        "cc": m.cc(s, q),
        "kld": m.kld(s, q),
        "sim": m.sim(s, q),
        "information_gain": m.information_gain(s, f, baseline),
    }
    assert alone == shared  # exact: the same kernels on the same values


def test_inputs_and_buffers_are_left_alone(metrics_backend):
    """The scratch rows never alias a caller's array: image_metrics leaves its inputs as they were, and a
    map built on a caller's buffer keeps its values across other metric calls."""
    rng = np.random.default_rng(3)
    s = gaussian_filter(rng.random(SHAPE), 2)
    s = (s - s.min()) / (s.max() - s.min())  # minimum +0.0: the case where S - min is S itself
    q = gaussian_filter(rng.random(SHAPE), 3)
    s_copy, q_copy = s.copy(), q.copy()
    f = fixation_map(rng, 30)
    buffers = np.empty((2, s.size))
    smap, gt = m.PreparedMap(s.astype(np.float32), buffer=buffers[0]), m.PreparedMap(q, buffer=buffers[1])
    kept = smap.values.copy()
    args = (m.Fixations.from_map(f), gt, np.arange(0, s.size, 17), m.PreparedMap(q).log2_density)
    first = m.image_metrics(smap, *args)
    m.auc_judd(s, f), m.kld(q, s), m.sim(s, q)  # other calls reuse the scratch rows
    assert m.image_metrics(smap, *args) == first
    np.testing.assert_array_equal(smap.values, kept)
    np.testing.assert_array_equal(s, s_copy)
    np.testing.assert_array_equal(q, q_copy)
    assert np.shares_memory(smap.values, buffers[0])


def test_fixation_count_maps_are_validated_without_converting_them():
    counts = np.zeros(SHAPE, dtype=np.int64)
    counts[3, 4], counts[10, 20] = 2, 1
    fix = m.Fixations.from_map(counts)
    np.testing.assert_array_equal(fix.indices, [3 * SHAPE[1] + 4, 10 * SHAPE[1] + 20])
    np.testing.assert_array_equal(fix.counts, [2.0, 1.0])
    assert fix.total == 3.0
    fractional = counts.astype(float)
    fractional[0, 0] = 0.5
    with pytest.raises(ValueError, match="integer fixation counts"):
        m.Fixations.from_map(fractional)
    fractional[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        m.Fixations.from_map(fractional)


def test_a_map_too_large_for_a_float_sum_is_still_accepted_and_a_nan_still_refused(metrics_backend):
    big = np.full(SHAPE, 1e306)
    big[0, 0] = 0.0  # finite, but its sum overflows to inf: the check falls back to looking at each value
    f = fixation_map(np.random.default_rng(4), 10)
    assert 0.0 <= m.auc_judd(big, f) <= 1.0
    big[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        m.auc_judd(big, f)


def test_a_full_size_image_equals_the_straightforward_computation(metrics_backend):
    """At 640x480, where the histogram's bins hold many pixels each and torch's sums run long: the sort-based
    values, and KLD, CC and NSS against exactly rounded sums (math.fsum)."""
    rng = np.random.default_rng(5)
    shape = (480, 640)
    s = gaussian_filter(rng.random((120, 160)), 3)  # smooth, resized 4x: many near-ties
    s_full = m.resize_map(s, shape)
    f = fixation_map(rng, 500, shape)
    q = np.round(255 * gaussian_filter(rng.random(shape), 8) ** 2).astype(np.uint8)
    other = fixation_map(rng, 5000, shape)
    baseline = gaussian_filter(rng.random(shape), 20) + 0.1
    got = m.image_metrics(
        m.PreparedMap(s, shape=shape),
        m.Fixations.from_map(f),
        m.PreparedMap(q),
        m.Fixations.from_map(other).indices,
        m.PreparedMap(baseline).log2_density,
        n_splits=30,
    )
    assert got == pytest.approx(reference_metrics(s_full, f, q, other, baseline), abs=1e-12, rel=1e-12)

    p, qd = density(s_full).ravel(), density(q).ravel()
    assert got["kld"] == pytest.approx(math.fsum(qd * np.log(m.EPS + qd / (p + m.EPS))), abs=1e-14)
    sc, qc = s_full.ravel() - s_full.mean(), q.ravel() - q.mean()
    ss, qq, sq = (math.fsum(a * b) for a, b in ((sc, sc), (qc, qc), (sc, qc)))
    assert got["cc"] == pytest.approx(sq / math.sqrt(ss * qq), abs=1e-14)
    counts = f.ravel()[f.ravel() > 0]
    nss = math.fsum(counts * sc[f.ravel() > 0]) / math.sqrt(ss / sc.size) / counts.sum()
    assert got["nss"] == pytest.approx(nss, abs=1e-13)


def test_torch_runs_one_thread_and_gives_the_callers_count_back(monkeypatch):
    """The torch kernels (KLD's log, the map-sized dots) run on the calling thread only, whatever the
    caller's thread count, which they restore afterwards, also when a kernel fails. (numpy's path: the
    compiled passes use no torch.)"""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(m, "_kernels_module", None)
    seen = []
    log, dot = torch.log, torch.dot

    def spy(real):
        def call(*args, **kwargs):
            seen.append(torch.get_num_threads())
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(torch, "log", spy(log))
    monkeypatch.setattr(torch, "dot", spy(dot))
    rng = np.random.default_rng(6)
    s, q, f = rng.random(SHAPE), gaussian_filter(rng.random(SHAPE), 3), fixation_map(rng, 30)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        m.kld(s, q), m.cc(s, q), m.nss(s, f)
        assert torch.get_num_threads() == 2
        assert seen and set(seen) == {1}

        def failing(*args, **kwargs):
            raise RuntimeError("kernel failed")

        monkeypatch.setattr(torch, "log", failing)
        with pytest.raises(RuntimeError, match="kernel failed"):
            m.kld(s, q)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_torch_kernels_in_two_threads_at_once_give_the_count_back(monkeypatch):
    """torch's thread count is partly process-wide (the main thread reads what any thread set): kernels
    overlapping in two threads both run on one thread, and the main thread's count is as it was once both
    are done, the first in leaving first. (numpy's path.)"""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(m, "_kernels_module", None)
    log, seen = torch.log, []
    first_inside, second_inside, first_done = threading.Event(), threading.Event(), threading.Event()

    def paced_log(*args, **kwargs):
        seen.append(torch.get_num_threads())
        if threading.current_thread().name == "first":  # enters first, leaves while the second is inside
            first_inside.set()
            assert second_inside.wait(10)
        else:
            second_inside.set()
            assert first_done.wait(10)
        result = log(*args, **kwargs)
        seen.append(torch.get_num_threads())
        return result

    rng = np.random.default_rng(7)
    s, q = rng.random(SHAPE), gaussian_filter(rng.random(SHAPE), 3)
    expected = m.kld(s, q)
    monkeypatch.setattr(torch, "log", paced_log)
    results = {}

    def run(name):
        results[name] = m.kld(s, q)

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = threading.Thread(target=run, args=("first",), name="first")
        second = threading.Thread(target=run, args=("second",), name="second")
        first.start()
        assert first_inside.wait(10)
        second.start()
        first.join(10)
        first_done.set()
        second.join(10)
        assert results == {"first": expected, "second": expected}
        assert set(seen) == {1}  # the second kernel kept one thread after the first had finished
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --- the compiled passes -------------------------------------------------------------------------------


def test_the_compiled_logarithm_is_within_a_few_ulps_of_numpys():
    """salgan.metric_kernels._log (fdlibm's algorithm, compiled with the kernels' flags) over the range KLD
    feeds it: tiny, huge, near 1, and powers of two, where the reduction changes exponent."""
    kernels = pytest.importorskip("salgan.metric_kernels")
    rng = np.random.default_rng(7)
    x = np.concatenate(
        [
            np.exp(rng.uniform(-700, 700, 2000)),
            1.0 + rng.normal(0, 1e-9, 500),
            rng.random(500),
            2.0 ** np.arange(-1000, 1000, 37),
            [np.nextafter(np.sqrt(0.5), 0), np.sqrt(0.5), np.sqrt(2.0), 2.2250738585072014e-308],
        ]
    )
    x = x[x > 0]
    got = np.array([kernels._log(v) for v in x])
    expected = np.log(x)
    ulps = np.abs(got - expected) / np.spacing(np.maximum(np.abs(expected), np.finfo(float).tiny))
    assert ulps.max() <= 4, x[np.argmax(ulps)]


def pair_cases():
    """(name, S, Q) pairs that take each branch of the compiled pair pass and of its fallback."""
    rng = np.random.default_rng(8)
    smooth = gaussian_filter(rng.random(SHAPE), 2)
    s = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    q = gaussian_filter(rng.random(SHAPE), 3)
    q_zeros = np.where(q < np.quantile(q, 0.4), 0.0, q)  # a float ground truth that is 0 on 40% of it
    return [
        ("uint8 ground truth", s, np.round(255 * q_zeros / q_zeros.max()).astype(np.uint8)),
        ("float ground truth with zeros", s, q_zeros),
        ("ground truth above 0", s + 0.2, q + 1.0),
        ("negative prediction (numpy's pass)", s - 0.5, q),
        ("negative ground truth (numpy's pass)", s, q - 0.5),
        ("constant ground truth", s, np.full(SHAPE, 3.0)),
        ("integer prediction", rng.integers(0, 9, SHAPE), q_zeros),
        ("prediction of ones and one zero", np.where(np.arange(s.size).reshape(SHAPE) == 5, 0.0, 1.0), q),
    ]


PAIRS = pair_cases()


@pytest.mark.parametrize(("name", "s", "q"), PAIRS, ids=[name for name, _, _ in PAIRS])
def test_cc_kld_and_sim_equal_the_straightforward_computation(name, s, q, metrics_backend):
    s64, q64 = s.astype(np.float64), q.astype(np.float64)
    p, qd = density(s64), density(q64)
    sc, qc = s64 - s64.mean(), q64 - q64.mean()
    constant = s64.min() == s64.max() or q64.min() == q64.max()
    ss, qq, sq = (math.fsum((a * b).ravel()) for a, b in ((sc, sc), (qc, qc), (sc, qc)))
    expected = {
        "cc": 0.0 if constant else sq / math.sqrt(ss * qq),
        "kld": math.fsum((qd * np.log(m.EPS + qd / (p + m.EPS))).ravel()),
        "sim": math.fsum(np.minimum(minmax_density(s64), minmax_density(q64)).ravel()),
    }
    got = {"cc": m.cc(s, q), "kld": m.kld(s, q), "sim": m.sim(s, q)}
    assert got == pytest.approx(expected, abs=1e-13, rel=1e-13)


def test_the_compiled_and_numpy_passes_give_the_same_scores(monkeypatch):
    """The scorer's numbers do not depend on whether numba is installed: all eight metrics of a full-size
    image, once through each implementation, within 1e-13."""
    pytest.importorskip("salgan.metric_kernels")
    rng = np.random.default_rng(9)
    shape = (480, 640)
    s = m.resize_map(gaussian_filter(rng.random((120, 160)), 3).astype(np.float32), shape)
    f, other = fixation_map(rng, 500, shape), fixation_map(rng, 5000, shape)
    q = np.round(255 * gaussian_filter(rng.random(shape), 8) ** 2).astype(np.uint8)
    baseline = m.PreparedMap(gaussian_filter(rng.random(shape), 20) + 0.1).log2_density

    def scores():
        args = (m.Fixations.from_map(f), m.PreparedMap(q), m.Fixations.from_map(other).indices, baseline)
        return m.image_metrics(m.PreparedMap(s), *args, n_splits=30)

    assert m._kernels() is not None, "numba is installed with the package"
    compiled = scores()
    monkeypatch.setattr(m, "_kernels_module", None)
    assert compiled == pytest.approx(scores(), abs=1e-13, rel=1e-13)


def test_without_numba_or_with_the_switch_the_numpy_passes_run(monkeypatch):
    """numba missing, SALGAN_METRICS_KERNELS=numpy, or a compiler failure (with a warning): the metrics
    still run, on numpy's and torch's passes."""
    s, q = np.random.default_rng(10).random(SHAPE), np.full(SHAPE, 2.0)
    q[0, 0] = 0.0
    expected = m.kld(s, q)
    monkeypatch.setattr(m, "_kernels_module", m._KERNELS_UNSET)
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    monkeypatch.delitem(sys.modules, "salgan.metric_kernels", raising=False)
    monkeypatch.delattr(salgan, "metric_kernels", raising=False)
    assert m._kernels() is None
    assert m.kld(s, q) == pytest.approx(expected, abs=1e-13)

    monkeypatch.undo()
    monkeypatch.setattr(m, "_kernels_module", m._KERNELS_UNSET)
    monkeypatch.setenv("SALGAN_METRICS_KERNELS", "numpy")
    assert m._kernels() is None

    kernels = pytest.importorskip("salgan.metric_kernels")
    monkeypatch.delenv("SALGAN_METRICS_KERNELS")
    monkeypatch.setattr(m, "_kernels_module", m._KERNELS_UNSET)
    monkeypatch.setattr(kernels, "warm_up", lambda: (_ for _ in ()).throw(RuntimeError("no LLVM target")))
    with pytest.warns(UserWarning, match="no LLVM target"):
        assert m._kernels() is None
    assert m.kld(s, q) == pytest.approx(expected, abs=1e-13)


def test_maps_the_compiled_logarithm_cannot_take_go_through_numpys_passes(metrics_backend):
    """A prediction whose total is so small that eps times it is subnormal, and one whose total overflows:
    KLD as the straightforward computation gives it (or, overflowing, as numpy's passes give it)."""
    rng = np.random.default_rng(11)
    q = gaussian_filter(rng.random(SHAPE), 3)
    tiny = rng.random(SHAPE) * 1e-300
    p, qd = density(tiny), density(q)
    assert m.kld(tiny, q) == pytest.approx(math.fsum((qd * np.log(m.EPS + qd / (p + m.EPS))).ravel()), abs=1e-12)
    huge = np.full(SHAPE, 1e306)
    huge[0, 0] = 0.0
    assert not m._pair_pass_applies(m.PreparedMap(huge), m.PreparedMap(q))


def test_the_kernels_compile_uncached_where_numba_can_cache_nowhere(tmp_path):
    """A read-only install and home leave numba no cache folder: the kernels then compile in each process
    instead of failing (in a fresh interpreter, with every cache locator of numba taken away)."""
    pytest.importorskip("salgan.metric_kernels")
    script = (
        "import numba.core.caching as caching\n"
        "caching.CacheImpl._locator_classes = []\n"
        "import numpy as np\n"
        "from salgan import metrics\n"
        "assert metrics._kernels() is not None\n"
        "s, q = np.random.default_rng(0).random((48, 64)), np.random.default_rng(1).random((48, 64))\n"
        "print(metrics.kld(s, q))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(m.__file__).parents[1])}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    s, q = np.random.default_rng(0).random((48, 64)), np.random.default_rng(1).random((48, 64))
    assert float(result.stdout) == pytest.approx(m.kld(s, q), abs=1e-13)
