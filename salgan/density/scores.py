"""What the evaluate stage adds for a density model (``model.output: density``).

Beside the eight metrics of its map (the density divided by its maximum, post-processed as any map), a
density model is scored as the MIT/Tuebingen benchmark scores one:

- ``log_likelihood`` and ``density_information_gain``: the val fixations' LL (over the uniform density)
  and IG over the centre-bias baseline, bits per fixation, averaged over all fixations (pysaliency's
  definitions, :mod:`salgan.density.metrics`), from the log-density at each image's original size. The
  IG baseline is evaluate's (the training fixations' density, 1% uniform; its own LL is LL - IG). The
  centre-bias Gaussian that evaluate scores beside the model gets both too, as a density
  (``baselines.center_bias``).
- with ``evaluate.metric_maps: true``, ``metric_maps``: each of the eight metrics scored on its own derived
  map (:mod:`salgan.density.maps`), by the same code and conventions as the plain scores (means over images).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import logsumexp

from salgan.density.inference import BatchedLogDensities, MetricMaps, centre_log_density
from salgan.density.maps import KINDS, MAP_OF
from salgan.density.metrics import split_scores
from salgan.errors import InputError
from salgan.metrics import METRIC_NAMES, center_bias_map
from salgan.models.density import output_of
from salgan.scoring import score_split

DENSITY_KEYS = ("log_likelihood", "density_information_gain")


def add_density_scores(metrics: dict, rows: list[dict], generator, params, val, common: dict) -> None:
    """Add a density model's scores to evaluate's ``metrics`` (and its LL and IG to each per-image row);
    nothing for a map model. ``val``, ``common``: :func:`salgan.evaluate.scoring_inputs`."""
    if output_of(generator) != "density":
        if params.evaluate.metric_maps:
            raise InputError("evaluate.metric_maps: the model is a map model; metric maps need model.output density")
        return
    log_densities = BatchedLogDensities(generator, val.images, val.original_sizes, params.evaluate.batch_size)
    log_baseline = np.log(common["baseline_map"])
    per_image, means = split_scores(log_densities, val.coords, val.offsets, log_baseline, names=val.names)
    for row, scores in zip(rows, per_image, strict=True):
        row.update(scores)
    metrics.update(means)
    shape = tuple(int(s) for s in val.maps_full.shape[1:])
    gaussian = np.log(center_bias_map(shape, params.evaluate.center_bias_sigma))
    log_gaussian = gaussian - logsumexp(gaussian)  # the centre-bias baseline of evaluate, as a density
    _, centre = split_scores([log_gaussian] * len(val.names), val.coords, val.offsets, log_baseline)
    metrics["baselines"]["center_bias"].update(centre)
    if params.evaluate.metric_maps:
        metrics["metric_maps"] = metric_map_scores(log_densities, generator, params, val, common)


def metric_map_scores(log_densities, generator, params, val, common: dict) -> dict[str, float]:
    """Each metric's mean over the val split, scored on its own map (one scoring pass per map kind)."""
    shape = tuple(int(s) for s in val.maps_full.shape[1:])
    log_centre = centre_log_density(generator, shape, params.evaluate.center_bias_sigma)
    sigma, n_fixations = params.predict.metric_map_sigma, params.predict.sim_fixations
    scores: dict[str, Any] = {}
    for kind in KINDS:
        maps = MetricMaps(log_densities, kind, log_centre, sigma, n_fixations)
        _, means = score_split(maps, val.maps_full, names=val.names, progress=False, **common)
        scores |= {metric: means[metric] for metric, of in MAP_OF.items() if of == kind}
    return {metric: scores[metric] for metric in METRIC_NAMES}
