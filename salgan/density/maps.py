"""Metric-specific saliency maps of a density (Kümmerer, Wallis, Bethge, ECCV 2018, Sec. 4 and Table 1).

A probabilistic model predicts a density p(x) over an image's pixels; for each metric, the saliency map to
score is the one that maximises the metric's expected value when the fixations come from p. The paper
derives (and the MIT/Tuebingen benchmark computes, matthias-k/saliency-benchmarking
``saliency_map_provider.py``):

- AUC (Judd, Borji) and NSS: p itself (AUC needs only its ranking; NSS is linear in the map).
- IG: p itself (a density is its own best guess).
- sAUC: p / p_c, the density divided by the centre-bias density: sAUC's negatives are other images'
  fixations, i.e. samples of the centre bias, so the ratio ranks pixels by the evidence against it.
- CC and KL-Div: p * G, the density blurred with the Gaussian the ground-truth maps are built with
  (``predict.metric_map_sigma``: salicon-api's 19 px): both compare the map with an empirical saliency map,
  whose expectation under p is p * G (for KL-Div the maximiser of E[sum Q log S] over densities S is E[Q]
  exactly; for CC, p * G is the paper's and the benchmark's choice).
- SIM: no closed form; the map that maximises the mean SIM against simulated ground-truth maps, found
  numerically as pysaliency's ``SIMSaliencyMapModel`` does (``metric_optimization_torch.maximize_expected_sim``),
  starting from p * G (:func:`sim_map`).

Every map is returned as a float64 density (sum 1) at the log-density's size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from salgan.metrics import METRIC_NAMES

# Which map each metric is scored on.
MAP_OF = {
    "auc_judd": "density",
    "auc_borji": "density",
    "nss": "density",
    "information_gain": "density",
    "auc_shuffled": "shuffled",
    "cc": "blurred",
    "kld": "blurred",
    "sim": "sim",
}
assert set(MAP_OF) == set(METRIC_NAMES)
KINDS = ("density", "shuffled", "blurred", "sim")
SIM_SAMPLES = 24  # simulated ground-truth maps to optimise against, and as many again to choose the best map by
SIM_STEPS = 40
SIM_STEP_SIZE = 0.3  # exponentiated-gradient step on the simplex: the gradient of SIM is a fraction in [0, 1]
# The SIM map holds 2 x SIM_SAMPLES float32 maps of the image and a filter matrix per side: bounded, so that a
# large request to the served model cannot take the host's memory (640x480: 59 MB; the bounds: 384 MB).
SIM_MAX_PIXELS, SIM_MAX_SIDE = 2_000_000, 4096

__all__ = ["KINDS", "MAP_OF", "blurred_map", "density_map", "metric_map", "shuffled_map", "sim_map"]


def _normalised(values: np.ndarray) -> np.ndarray:
    return values / values.sum()


def density_map(log_density: Any) -> np.ndarray:
    """p = exp(log p), renormalised in float64: the map of AUC, NSS and IG."""
    a = np.asarray(log_density, dtype=np.float64)
    return _normalised(np.exp(a - a.max()))


def shuffled_map(log_density: Any, log_centre: Any) -> np.ndarray:
    """p / p_c: the map of sAUC; ``log_centre`` is the centre-bias log-density at the same size."""
    ratio = np.asarray(log_density, dtype=np.float64) - np.asarray(log_centre, dtype=np.float64)
    return _normalised(np.exp(ratio - ratio.max()))


def blurred_map(log_density: Any, sigma: float) -> np.ndarray:
    """p * G_sigma (``scipy.ndimage.gaussian_filter``, reflect, as salicon-api blurs its fixation maps):
    the map of CC and KL-Div."""
    return _normalised(gaussian_filter(density_map(log_density), sigma=sigma, mode="reflect"))


def empirical_maps(density: np.ndarray, sigma: float, n_fixations: int, count: int, rng) -> np.ndarray:
    """``count`` simulated ground-truth maps, (count, H*W) float32: ``n_fixations`` fixations drawn from
    ``density``, counted, blurred as the ground truth is (``gaussian_filter``, sigma px, reflect) and min-max
    normalised to sum 1, as salgan.metrics.sim reads a ground-truth map. The blur is separable and linear, so
    each map is ``R[:, rows] @ C[:, cols].T`` with R and C the filter's matrices along each axis (exactly
    scipy's reflect filter, whatever the image's size): an (H x n) @ (n x W) product per map."""
    h, w = density.shape
    along_rows, along_cols = (_filter_matrix(length, sigma) for length in (h, w))
    draws = rng.choice(density.size, size=(count, n_fixations), p=density.ravel())
    maps = np.empty((count, h * w), dtype=np.float32)
    for k, flat in enumerate(draws):
        rows, cols = np.divmod(flat, w)
        maps[k] = (along_rows[:, rows] @ along_cols[:, cols].T).ravel()
    return _minmax_densities(maps)


def _filter_matrix(length: int, sigma: float) -> np.ndarray:
    """The (length, length) matrix of ``gaussian_filter1d(x, sigma, mode="reflect")``: column j is the
    filter's response to a unit impulse at j."""
    return gaussian_filter1d(np.eye(length, dtype=np.float32), sigma=sigma, axis=0, mode="reflect")


def _minmax_densities(maps: np.ndarray) -> np.ndarray:
    """Each row shifted to a minimum of 0 and divided by its sum (uniform if constant): salgan.metrics.sim's
    normalisation (the MIT code's)."""
    shifted = maps - maps.min(axis=-1, keepdims=True)
    totals = shifted.sum(axis=-1, keepdims=True)
    return np.where(totals > 0, shifted / np.where(totals > 0, totals, 1), 1.0 / maps.shape[-1]).astype(np.float32)


def expected_sim(saliency: np.ndarray, references: np.ndarray) -> float:
    """Mean SIM of ``saliency`` against the min-max-normalised ``references`` (count, H*W), each computed
    as :func:`salgan.metrics.sim`: sum of the pixelwise minimum of the two min-max densities."""
    s = _minmax_densities(saliency.reshape(1, -1))
    return float(np.minimum(s, references).sum(axis=1, dtype=np.float64).mean())


def sim_map(log_density: Any, sigma: float, n_fixations: int, seed: int = 0) -> np.ndarray:
    """The map maximising the expected SIM under p, found numerically (Kümmerer et al. 2018 Sec. 4.2;
    pysaliency's ``maximize_expected_sim``).

    Simulated ground-truth maps E_k (:func:`empirical_maps`: ``n_fixations`` fixations drawn from p,
    blurred with ``sigma``) stand for the expectation. Starting from p * G, the map S (a density) follows
    exponentiated-gradient ascent of mean_k SIM(S, E_k) over the simplex: the gradient with respect to S(x)
    is the fraction of maps with S(x) < E_k(x), so each step is S <- S * exp(eta * g) / Z. The best map
    by the mean SIM against as many other simulated maps (a held-out draw) is returned, p * G included,
    so the result never scores below p * G on them. Deterministic for a ``seed``.
    """
    density = density_map(log_density)
    h, w = density.shape
    if h * w > SIM_MAX_PIXELS or max(h, w) > SIM_MAX_SIDE:
        raise ValueError(
            f"the SIM map of a {h}x{w} image: more than {SIM_MAX_PIXELS} pixels or a side over {SIM_MAX_SIDE} "
            "(its simulated ground-truth maps would not fit the memory it is allowed); use a smaller image"
        )
    rng = np.random.default_rng([seed, 0x5117])
    train = empirical_maps(density, sigma, n_fixations, SIM_SAMPLES, rng)
    held_out = empirical_maps(density, sigma, n_fixations, SIM_SAMPLES, rng)
    current = blurred_map(log_density, sigma).ravel()
    best, best_score = current, expected_sim(current, held_out)
    for step in range(SIM_STEPS):
        gradient = (current[None, :] < train).mean(axis=0)
        current = _normalised(current * np.exp(SIM_STEP_SIZE / np.sqrt(step + 1) * gradient))
        score = expected_sim(current, held_out)
        if score > best_score:
            best, best_score = current, score
    return best.reshape(density.shape)


def metric_map(
    log_density: Any,
    metric: str,
    log_centre: Any = None,
    sigma: float = 19.0,
    n_fixations: int = 100,
    seed: int = 0,
) -> np.ndarray:
    """The map ``metric`` (a name of :data:`salgan.metrics.METRIC_NAMES`) is scored on (module docstring);
    ``log_centre``, the centre-bias log-density, is needed for ``auc_shuffled`` only."""
    if metric not in MAP_OF:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRIC_NAMES)}")
    return map_of_kind(log_density, MAP_OF[metric], log_centre, sigma, n_fixations, seed)


def map_of_kind(log_density: Any, kind: str, log_centre: Any, sigma: float, n_fixations: int, seed: int) -> np.ndarray:
    """One of :data:`KINDS` for ``log_density``."""
    if kind == "density":
        return density_map(log_density)
    if kind == "shuffled":
        if log_centre is None:
            raise ValueError("the sAUC map needs the centre-bias log-density")
        return shuffled_map(log_density, log_centre)
    if kind == "blurred":
        return blurred_map(log_density, sigma)
    if kind == "sim":
        return sim_map(log_density, sigma, n_fixations, seed)
    raise ValueError(f"unknown map kind {kind!r}; known: {', '.join(KINDS)}")
