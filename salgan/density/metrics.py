"""Log-likelihood and information gain of a density model, in bits per fixation, as pysaliency defines them.

pysaliency (matthias-k/pysaliency, ``pysaliency/models.py``): ``Model.log_likelihoods`` reads each fixation's
value of the model's log-density (natural log, normalised over the image's pixels), and
``Model.information_gains`` is ``(log_likelihoods - baseline.log_likelihoods) / log(2)``; their
``average='fixation'`` default averages over all fixations of the data set. The MIT/Tuebingen benchmark
(matthias-k/saliency-benchmarking, ``multi_metric_evaluation.IG``) reports as LL the information gain over
the uniform model, whose log-density is ``-log(H W)``; so:

    LL = 1/N sum_i (log p(x_i) + log(H_i W_i)) / log 2      (0 for the uniform density)
    IG = 1/N sum_i (log p(x_i) - log b(x_i)) / log 2        (0 for the baseline itself)

over the N fixations x_i of all images, with ``b`` the centre-bias baseline: the training fixations' density
(:func:`salgan.evaluate.ig_baseline`). A log-density must be normalised (|logsumexp| <= 0.01, the benchmark's
own check) and finite; anything else raises ``ValueError`` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import logsumexp

LN2 = math.log(2.0)
NORMALISATION_TOLERANCE = 0.01  # |logsumexp| the MIT/Tuebingen benchmark accepts for a submitted log-density

__all__ = ["information_gain", "log_likelihood", "normalisation_problem", "split_scores"]


def normalisation_problem(log_density: Any, shape: Sequence[int] | None = None) -> str | None:
    """Why ``log_density`` is not a log-density (of ``shape``, when given), or None: not a real 2-D array,
    another shape, a NaN or +inf value, or ``|logsumexp| > 0.01``."""
    a = np.asarray(log_density)
    if a.dtype.kind not in "fiu" or a.ndim != 2 or a.size == 0:
        return f"expected a real 2-D array, got {a.dtype} {a.shape}"
    if shape is not None and a.shape != tuple(int(s) for s in shape):
        return f"has shape {a.shape[0]}x{a.shape[1]}, the image is {int(shape[0])}x{int(shape[1])}"
    if np.isnan(a).any() or np.isposinf(a).any():
        return "holds NaN or +inf values"
    total = float(logsumexp(a.astype(np.float64)))
    if not abs(total) <= NORMALISATION_TOLERANCE:
        return f"is not normalised: logsumexp {total:.4g}, expected 0 (within {NORMALISATION_TOLERANCE})"
    return None


def _checked(log_density: Any, name: str) -> np.ndarray:
    problem = normalisation_problem(log_density)
    if problem:
        raise ValueError(f"{name}: {problem}")
    return np.asarray(log_density, dtype=np.float64)


def _values_at(a: np.ndarray, coords: Any) -> np.ndarray:
    c = np.asarray(coords)
    if c.ndim != 2 or c.shape[1] != 2 or c.dtype.kind not in "iu" or len(c) == 0:
        raise ValueError(f"coords: expected a non-empty integer (M, 2) array of (row, col), got {c.dtype} {c.shape}")
    if c.min() < 0 or c[:, 0].max() >= a.shape[0] or c[:, 1].max() >= a.shape[1]:
        raise ValueError(f"coords: fixations outside the {a.shape[0]}x{a.shape[1]} log-density")
    return a[c[:, 0], c[:, 1]]


def log_likelihood(log_density: Any, coords: Any) -> float:
    """LL of one image's fixations ``coords`` ((M, 2) 0-based (row, col)) under ``log_density`` (H, W): bits
    per fixation over the uniform density (module docstring)."""
    a = _checked(log_density, "log_density")
    return float(np.mean(_values_at(a, coords) + math.log(a.size)) / LN2)


def information_gain(log_density: Any, coords: Any, log_baseline: Any) -> float:
    """IG of one image's fixations over ``log_baseline`` (H, W), in bits per fixation (module docstring)."""
    a, b = _checked(log_density, "log_density"), _checked(log_baseline, "log_baseline")
    if a.shape != b.shape:
        raise ValueError(f"log_baseline is {b.shape}, the log-density {a.shape}")
    return float(np.mean(_values_at(a, coords) - _values_at(b, coords)) / LN2)


def split_scores(
    log_densities: Sequence[Any], coords: Any, offsets: Any, log_baseline: Any, names: Sequence[str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """LL and IG of every image of a split, read in order (``log_densities`` may compute them batch by batch).

    ``coords``/``offsets`` as ``fixations.npz`` (image i's fixations are ``coords[offsets[i]:offsets[i+1]]``,
    at the log-densities' resolution); ``log_baseline`` the baseline's log-density at that resolution.
    Returns per-image rows (``log_likelihood``, ``density_information_gain``) and the means
    over all fixations (pysaliency's ``average='fixation'``), keyed ``log_likelihood`` and
    ``density_information_gain``.
    """
    c, o = np.asarray(coords), np.asarray(offsets)
    if o.ndim != 1 or o.size != len(log_densities) + 1:
        raise ValueError(f"offsets has {o.size} entries for {len(log_densities)} log-densities")
    baseline = _checked(log_baseline, "log_baseline")
    rows, sums, count = [], np.zeros(2), 0
    for i in range(len(log_densities)):
        label = f"image {i}" + (f" ({names[i]})" if names is not None else "")
        fixations = c[o[i] : o[i + 1]]
        try:
            a = _checked(log_densities[i], "log-density")
            if a.shape != baseline.shape:
                raise ValueError(f"log-density is {a.shape}, the baseline {baseline.shape}")
            own = _values_at(a, fixations)
            gains = np.stack([own + math.log(a.size), own - _values_at(baseline, fixations)]) / LN2
        except ValueError as error:
            raise ValueError(f"{label}: {error}") from error
        sums += gains.sum(axis=1)
        count += len(fixations)
        rows.append({"log_likelihood": float(gains[0].mean()), "density_information_gain": float(gains[1].mean())})
    return rows, {"log_likelihood": float(sums[0] / count), "density_information_gain": float(sums[1] / count)}
