"""Tests of salgan.metrics: docs/reference.md §3 known values, analytic properties and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, zoom

from salgan import metrics as m

# Every test under both implementations of the per-pixel passes (tests/conftest.py, metrics_backend).
pytestmark = pytest.mark.usefixtures("metrics_backend")

SIZE = 40
# docs/reference.md §3 fixture (pysaliency tests): 0-based (x, y) fixations; image 0 fixates (2, 12) three times.
FIXATIONS_XY = (
    [(0, 10), (1, 11), (2, 12), (2, 12), (2, 12)],
    [(1, 21), (5, 25), (3, 33)],
)
AUC_JUDD = (0.436318096, 0.453767481)
NSS_PER_FIXATION = (
    [-0.821596006, -0.789526122, -0.740616175, -0.740616175, -0.740616175],
    [-0.707322348, -0.433094498, -0.800070419],
)
NSS_MEAN_OVER_FIXATIONS = -0.721682239593952
CC = (-0.178481123, -0.130049671)
KLD = (2.224521946, 1.834044467)
SIM_MIT = (0.291215618, 0.338609482)
TOL = 1e-6


def reference_map() -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return np.exp(-0.5 * ((x - 20) ** 2 + (y - 20) ** 2) / np.sqrt(SIZE**2 + SIZE**2))


def reference_coords(image: int) -> np.ndarray:
    return np.array([(y, x) for x, y in FIXATIONS_XY[image]])  # (x, y) -> (row, col)


def reference_fixation_map(image: int) -> np.ndarray:
    return m.fixation_map_from_coords(reference_coords(image), (SIZE, SIZE))


def reference_gt(image: int) -> np.ndarray:
    binary = (reference_fixation_map(image) > 0).astype(float)
    return gaussian_filter(binary, sigma=10, mode="reflect")


# --- docs/reference.md §3 known values -----------------------------------------------------------------------


@pytest.mark.parametrize("image", [0, 1])
def test_auc_judd_reference(image):
    assert m.auc_judd(reference_map(), reference_fixation_map(image)) == pytest.approx(AUC_JUDD[image], abs=TOL)


def test_auc_judd_reference_mean_and_mit_count_once():
    scores = [m.auc_judd(reference_map(), reference_fixation_map(i)) for i in (0, 1)]
    assert np.mean(scores) == pytest.approx(0.44504278856188684, abs=1e-9)
    # With a binary map each fixated pixel counts once: the MIT convention's value.
    assert m.auc_judd(reference_map(), reference_fixation_map(0) > 0) == pytest.approx(0.314339386, abs=TOL)


@pytest.mark.parametrize("image", [0, 1])
def test_nss_reference_per_fixation(image):
    for (row, col), expected in zip(reference_coords(image), NSS_PER_FIXATION[image], strict=True):
        single = m.fixation_map_from_coords(np.array([[row, col]]), (SIZE, SIZE))
        assert m.nss(reference_map(), single) == pytest.approx(expected, abs=TOL)
    assert m.nss(reference_map(), reference_fixation_map(image)) == pytest.approx(
        np.mean(NSS_PER_FIXATION[image]), abs=TOL
    )


def test_nss_reference_mean_over_fixations():
    # The per-image NSS is a mean over that image's fixations, so weighting by fixation count recovers
    # the mean over all 8 fixations.
    per_image = [m.nss(reference_map(), reference_fixation_map(i)) for i in (0, 1)]
    assert (5 * per_image[0] + 3 * per_image[1]) / 8 == pytest.approx(NSS_MEAN_OVER_FIXATIONS, abs=1e-9)


@pytest.mark.parametrize("image", [0, 1])
def test_cc_kld_sim_reference(image):
    s, q = reference_map(), reference_gt(image)
    assert m.cc(s, q) == pytest.approx(CC[image], abs=TOL)
    assert m.kld(s, q) == pytest.approx(KLD[image], abs=TOL)
    assert m.sim(s, q) == pytest.approx(SIM_MIT[image], abs=TOL)


# --- Resizing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "dst"), [((24, 32), (48, 64)), ((48, 64), (20, 30)), ((7, 5), (13, 29))])
def test_resize_matches_scipy_zoom(src, dst):
    a = np.random.default_rng(0).random(src)
    expected = zoom(a, (dst[0] / src[0], dst[1] / src[1]), order=1, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(m.resize_map(a, dst), expected, atol=1e-12)


def test_resize_keeps_constant_maps_exactly_constant():
    out = m.resize_map(np.full((7, 9), 0.1), (40, 41))
    assert out.min() == out.max() == 0.1


def test_metrics_resize_the_saliency_map_to_the_target_shape():
    small = np.random.default_rng(1).random((20, 20))
    big = m.resize_map(small, (SIZE, SIZE))
    f, q = reference_fixation_map(1), reference_gt(1)
    assert m.auc_judd(small, f) == m.auc_judd(big, f)
    assert m.nss(small, f) == m.nss(big, f)
    assert m.cc(small, q) == m.cc(big, q)
    assert m.information_gain(small, f, np.ones((10, 10))) == m.information_gain(big, f, np.ones((40, 40)))


# --- Analytic properties -----------------------------------------------------------------------------


def random_case(seed=0, shape=(60, 80), n_fix=40):
    rng = np.random.default_rng(seed)
    s = gaussian_filter(rng.random(shape), 2)
    coords = np.stack([rng.integers(0, shape[0], n_fix), rng.integers(0, shape[1], n_fix)], axis=1)
    return s, m.fixation_map_from_coords(coords, shape)


def test_ground_truth_against_itself():
    q = reference_gt(0)
    assert m.cc(q, q) == pytest.approx(1.0, abs=1e-12)
    assert m.sim(q, q) == pytest.approx(1.0, abs=1e-12)
    assert m.kld(q, q) == pytest.approx(0.0, abs=1e-12)


def test_inverted_map_gives_complementary_auc_judd():
    # Judd's ROC is sampled only at the fixations' values and interpolated linearly between them (and to
    # (0, 0) and (1, 1)), so AUC(-S) = 1 - AUC(S) holds only approximately, better with more fixations.
    s, f = random_case(n_fix=400)
    assert m.auc_judd(-s, f) == pytest.approx(1.0 - m.auc_judd(s, f), abs=0.005)


def test_nss_and_cc_invariant_to_positive_affine_rescaling():
    s, f = random_case()
    q = gaussian_filter(f.astype(float), 3)
    assert m.nss(3.5 * s + 7.0, f) == pytest.approx(m.nss(s, f), abs=1e-9)
    assert m.cc(3.5 * s + 7.0, q) == pytest.approx(m.cc(s, q), abs=1e-12)


def test_auc_judd_invariant_to_monotonic_transforms():
    s, f = random_case()
    expected = m.auc_judd(s, f)
    for transformed in (s**3, np.exp(4 * s), np.log(s), 100 * s - 3):
        assert m.auc_judd(transformed, f) == pytest.approx(expected, abs=1e-12)


def test_auc_judd_ties_are_exact_and_vectorised_like_a_threshold_loop():
    rng = np.random.default_rng(3)
    s = rng.integers(0, 5, (30, 30)).astype(float)  # heavy ties
    f = rng.poisson(0.1, (30, 30))
    values, counts = s[f > 0], f[f > 0]
    negatives = s[f == 0]
    tp, fp = [0.0], [0.0]
    for t in sorted(set(values), reverse=True):
        tp.append(counts[values >= t].sum() / counts.sum())
        fp.append((negatives >= t).mean())
    tp.append(1.0)
    fp.append(1.0)
    expected = sum((fp[k + 1] - fp[k]) * (tp[k + 1] + tp[k]) / 2 for k in range(len(tp) - 1))
    assert m.auc_judd(s, f) == pytest.approx(expected, abs=1e-12)


def mit_style_sampled_auc(s, f, negative_pool, n_splits, rng, replace=True):
    """Direct MIT-style loop: sample locations, threshold values, trapezoid per split (count-weighted)."""
    sn = (s - s.min()) / (s.max() - s.min())
    pos, w = sn[f > 0], f[f > 0]
    thresholds = np.round(np.arange(11) * 0.1, 12)[::-1]
    aucs = []
    for _ in range(n_splits):
        neg = sn.reshape(-1)[rng.choice(negative_pool, int(w.sum()), replace=replace)]
        tp = [0.0, *[w[pos >= t].sum() / w.sum() for t in thresholds], 1.0]
        fp = [0.0, *[(neg >= t).mean() for t in thresholds], 1.0]
        aucs.append(np.trapezoid(tp, fp))
    return float(np.mean(aucs))


def test_auc_borji_matches_direct_location_sampling():
    s, f = random_case(n_fix=60)
    direct = mit_style_sampled_auc(s, f, np.arange(s.size), 400, np.random.default_rng(0))
    assert m.auc_borji(s, f, n_splits=400) == pytest.approx(direct, abs=0.01)


def test_auc_shuffled_matches_direct_location_sampling():
    s, f = random_case(n_fix=30)
    _, other = random_case(seed=5, n_fix=200)
    pool = np.flatnonzero(other)
    direct = mit_style_sampled_auc(s, f, pool, 400, np.random.default_rng(0), replace=False)
    assert m.auc_shuffled(s, f, other, n_splits=400) == pytest.approx(direct, abs=0.01)


def test_seeded_metrics_repeat_and_depend_on_the_seed():
    s, f = random_case()
    _, other = random_case(seed=9, n_fix=300)
    assert m.auc_borji(s, f, seed=3) == m.auc_borji(s, f, seed=3)
    assert m.auc_borji(s, f, seed=3) != m.auc_borji(s, f, seed=4)
    assert m.auc_shuffled(s, f, other, seed=3) == m.auc_shuffled(s, f, other, seed=3)
    assert m.auc_shuffled(s, f, other, seed=3) != m.auc_shuffled(s, f, other, seed=4)


def centre_biased_coords(rng, n, shape):
    rows = np.clip(rng.normal(shape[0] / 2, shape[0] / 8, n), 0, shape[0] - 1)
    cols = np.clip(rng.normal(shape[1] / 2, shape[1] / 8, n), 0, shape[1] - 1)
    return np.stack([rows, cols], axis=1).astype(int)


def test_auc_shuffled_properties():
    # pysaliency's sAUC is an exact ROC against all other images' fixations (docs/reference.md §3 gives its
    # per-fixation values); this is the MIT sampled and thresholded version, whose numbers differ, so it
    # is tested by its defining properties instead.
    shape, rng = (60, 80), np.random.default_rng(0)
    own = m.fixation_map_from_coords(centre_biased_coords(rng, 50, shape), shape)
    other = m.fixation_map_from_coords(centre_biased_coords(rng, 500, shape), shape)
    other_density = gaussian_filter(other.astype(float), 2)
    # A pure centre bias predicts this image's fixations well against uniform negatives (Borji) but not
    # against other images' fixations (sAUC).
    assert m.auc_borji(other_density, own) > 0.75
    assert m.auc_shuffled(other_density, own, other) < 0.55
    peaked = gaussian_filter(own.astype(float), 1)
    assert m.auc_shuffled(peaked, own, other) > 0.9


def test_auc_shuffled_with_fewer_other_locations_than_fixations():
    # Image 1 of the fixture has 3 fixated pixels, image 0 has 5 fixations: negatives are drawn with
    # replacement, still deterministically.
    s, f0, f1 = reference_map(), reference_fixation_map(0), reference_fixation_map(1)
    score = m.auc_shuffled(s, f0, f1)
    assert 0.0 <= score <= 1.0
    assert score == m.auc_shuffled(s, f0, f1)


def test_information_gain_formula_and_self_baseline():
    s, f = reference_map(), reference_fixation_map(0)
    uniform = np.ones_like(s)
    p = s / s.sum()
    counts = f[f > 0]
    expected = np.sum(counts * (np.log2(m.EPS + p[f > 0]) - np.log2(m.EPS + 1 / s.size))) / counts.sum()
    assert m.information_gain(s, f, uniform) == pytest.approx(expected, abs=1e-12)
    assert m.information_gain(s, f, 2 * s) == pytest.approx(0.0, abs=1e-12)


def test_kld_shifts_negative_maps():
    s, q = reference_map(), reference_gt(0)
    assert m.kld(s - 5.0, q) == pytest.approx(m.kld(s - s.min(), q), abs=1e-12)


def test_helpers():
    f = m.fixation_map_from_coords(np.array([[1, 2], [1, 2], [0, 0]]), (3, 4))
    assert f[1, 2] == 2
    assert f[0, 0] == 1
    assert f.sum() == 3
    with pytest.raises(ValueError, match="outside"):
        m.fixation_map_from_coords(np.array([[3, 0]]), (3, 4))
    c = m.center_bias_map((41, 61), 0.1)
    assert c[20, 30] == 1.0
    assert c.argmax() == 20 * 61 + 30
    sigma = 0.1 * np.hypot(41, 61)
    assert c[20, 30 + 10] == pytest.approx(np.exp(-100 / (2 * sigma**2)))
    with pytest.raises(ValueError, match="sigma_fraction"):
        m.center_bias_map((4, 4), 0)


# --- Edge cases --------------------------------------------------------------------------------------


def test_constant_map_conventions():
    f, q = reference_fixation_map(0), reference_gt(0)
    flat = np.full((SIZE, SIZE), 0.3)
    assert m.auc_judd(flat, f) == 0.5
    assert m.auc_borji(flat, f) == 0.5
    assert m.auc_shuffled(flat, f, reference_fixation_map(1)) == 0.5
    assert m.nss(flat, f) == 0.0
    assert m.cc(flat, q) == 0.0
    assert m.cc(q, flat) == 0.0
    uniform, q_minmax = np.full(q.shape, 1 / q.size), q - q.min()
    assert m.sim(flat, q) == pytest.approx(np.minimum(uniform, q_minmax / q_minmax.sum()).sum(), abs=1e-12)
    assert m.kld(np.zeros_like(q), q) == pytest.approx(m.kld(flat, q))
    assert np.isfinite(m.information_gain(np.zeros_like(q), f, q))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_raise(bad):
    s, f, q = reference_map(), reference_fixation_map(0), reference_gt(0)
    broken = s.copy()
    broken[3, 4] = bad
    for call in (
        lambda: m.auc_judd(broken, f),
        lambda: m.auc_borji(broken, f),
        lambda: m.auc_shuffled(broken, f, f),
        lambda: m.nss(broken, f),
        lambda: m.cc(broken, q),
        lambda: m.cc(s, broken),
        lambda: m.kld(broken, q),
        lambda: m.sim(s, broken),
        lambda: m.information_gain(s, f, broken),
    ):
        with pytest.raises(ValueError, match="NaN or infinite"):
            call()


def test_empty_fixation_map_raises():
    empty = np.zeros((SIZE, SIZE))
    for call in (
        lambda: m.auc_judd(reference_map(), empty),
        lambda: m.auc_borji(reference_map(), empty),
        lambda: m.nss(reference_map(), empty),
        lambda: m.information_gain(reference_map(), empty, reference_map()),
        lambda: m.auc_shuffled(reference_map(), reference_fixation_map(0), empty),
    ):
        with pytest.raises(ValueError, match="no fixations"):
            call()


def test_bad_shapes_and_values_raise():
    s, f = reference_map(), reference_fixation_map(0)
    with pytest.raises(ValueError, match="2-D"):
        m.auc_judd(s[None], f)
    with pytest.raises(ValueError, match="2-D"):
        m.nss(s, f.reshape(-1))
    with pytest.raises(ValueError, match="empty"):
        m.cc(np.zeros((0, 5)), s)
    with pytest.raises(ValueError, match="shape"):
        m.auc_shuffled(s, f, np.ones((10, 10)))
    with pytest.raises(ValueError, match="integer fixation counts"):
        m.nss(s, reference_gt(0))
    with pytest.raises(ValueError, match="non-negative"):
        m.nss(s, -f)
    with pytest.raises(ValueError, match="real-valued"):
        m.cc(s.astype(complex), s)
    with pytest.raises(ValueError, match="no negatives"):
        m.auc_judd(s, np.ones_like(f))
    with pytest.raises(ValueError, match="n_splits"):
        m.auc_borji(s, f, n_splits=0)
    with pytest.raises(ValueError, match="step_size"):
        m.auc_borji(s, f, step_size=0)
