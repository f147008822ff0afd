"""From a density model to log-densities and metric maps at the images' original size.

A density model (salgan/models/density.py) predicts a log-density at its input size; at the image's own
size it is resized bilinearly and renormalised with logsumexp (:func:`salgan.models.density.
resize_log_density`), so every log-density written or scored here is normalised at the size of its image.
``salgan predict --kind log-density | metric-map`` writes them as ``<stem>.npy`` (float32, numpy's own
format, read with ``numpy.load``), the served model returns them as base64 ``.npy`` bytes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from salgan.data import images_to_float
from salgan.density.maps import map_of_kind, metric_map
from salgan.imaging import decode_rgb
from salgan.inference import default_device
from salgan.layout import staged_files
from salgan.metrics import METRIC_NAMES, center_bias_map
from salgan.models.density import normalise, output_of, resize_log_density
from salgan.progress import progress

KINDS = ("map", "log-density", "metric-map")  # salgan predict --kind


def require_density(generator: torch.nn.Module, what: str) -> None:
    """Raise ValueError unless ``generator`` is a density model (``model.output: density``)."""
    if output_of(generator) != "density":
        raise ValueError(
            f"{what} needs a density model (trained with model.output: density); this model outputs a saliency map"
        )


@torch.no_grad()
def log_densities(
    generator: torch.nn.Module,
    images: np.ndarray,
    original_sizes: np.ndarray,
    batch_size: int = 16,
    device: torch.device | None = None,
) -> Iterator[np.ndarray]:
    """One float32 (H, W) log-density per image at its original (H, W), batch by batch; ``images`` uint8
    (N, h, w, 3) at the model's input size (as :func:`salgan.inference.predict_images` predicts them)."""
    require_density(generator, "a log-density")
    device = device or default_device()
    generator = generator.to(device).eval()
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)  # a read-only memmap's copy
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            predicted = generator(images_to_float(batch), return_logits=True)
        for one, size in zip(predicted, original_sizes[start : start + batch_size], strict=True):
            yield resize_log_density(one[None].float(), (int(size[0]), int(size[1])))[0, 0].cpu().numpy()


class BatchedLogDensities(Sequence):
    """:func:`log_densities` as a sequence that predicts the batch holding image ``i`` when it is first
    asked for and keeps only that batch (as :class:`salgan.inference.BatchedPredictions`)."""

    def __init__(self, generator, images, original_sizes, batch_size: int = 16, device=None):
        self.generator, self.images, self.sizes = generator, images, original_sizes
        self.batch_size, self.device = batch_size, device
        self._start, self._batch = -1, []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(f"log-density {index} out of range ({len(self)} images)")
        index %= len(self)
        start = index - index % self.batch_size
        if start != self._start:
            stop = start + self.batch_size
            self._batch = list(
                log_densities(
                    self.generator, self.images[start:stop], self.sizes[start:stop], self.batch_size, self.device
                )
            )
            self._start = start
        return self._batch[index - start]


def centre_log_density(generator: torch.nn.Module, shape: tuple[int, int], fallback_sigma: float) -> np.ndarray:
    """The centre-bias log-density at ``shape`` (H, W) that the sAUC map divides by: the prior the density
    model carries (fitted on its train fixations), resized; for a model without one, the centre-bias
    Gaussian of ``fallback_sigma`` (``evaluate.center_bias_sigma``, :func:`salgan.metrics.center_bias_map`)."""
    prior = getattr(generator, "log_prior", None)
    if prior is not None:
        return resize_log_density(prior.detach().float().cpu(), shape)[0, 0].double().numpy()
    centre = torch.from_numpy(np.log(center_bias_map(shape, fallback_sigma)))
    return normalise(centre[None, None]).numpy()[0, 0]


class MetricMaps(Sequence):
    """The maps of one kind (salgan.density.maps.KINDS) of a sequence of log-densities, each computed when
    asked for (``seed`` + the image's index seeds the SIM map's simulations)."""

    def __init__(self, log_density_seq: Sequence, kind: str, log_centre, sigma: float, n_fixations: int, seed=0):
        self.source, self.kind, self.log_centre = log_density_seq, kind, log_centre
        self.sigma, self.n_fixations, self.seed = sigma, n_fixations, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> np.ndarray:
        return map_of_kind(
            self.source[index], self.kind, self.log_centre, self.sigma, self.n_fixations, self.seed + index
        )


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` in numpy's ``.npy`` format (no pickle), as bytes."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def output_array(log_density: np.ndarray, kind: str, metric: str | None, log_centre, options) -> np.ndarray:
    """What ``salgan predict --kind`` writes for one image: its log-density, or the metric map of
    ``metric`` (``options``: ``predict`` settings, for the maps' sigma and the SIM map's fixations), float32."""
    if kind == "log-density":
        return log_density.astype(np.float32)
    return metric_map(log_density, metric, log_centre, options.metric_map_sigma, options.sim_fixations).astype(
        np.float32
    )


def predict_density_files(
    generator: torch.nn.Module,
    jobs: list,
    output: Path,
    size: tuple[int, int],
    kind: str,
    metric: str | None,
    options,
    centre_sigma: float,
    device: torch.device | None = None,
) -> tuple[int, list[str]]:
    """``salgan predict --kind log-density | metric-map``: one ``<stem>.npy`` per job (salgan.inputs.Job)
    at its image's displayed size, written into a staging folder swapped into ``output`` at the end; returns
    the number written and the errors of the inputs skipped (path: reason)."""
    require_density(generator, f"--kind {kind}")
    device = device or default_device()
    errors: list[str] = []
    written = 0
    centres: dict[tuple[int, int], np.ndarray] = {}
    with staged_files(output) as stage, progress(total=len(jobs), unit="image", desc="predict") as bar:
        for start in range(0, len(jobs), options.batch_size):
            batch = []
            for job in jobs[start : start + options.batch_size]:
                try:
                    batch.append((job, decode_rgb(job.path, size, options.max_pixels, "predict.max_pixels", exif=True)))
                except ValueError as exc:
                    errors.append(f"{job.path}: {exc}")
                    bar.update(1)
            if not batch:
                continue
            images = np.stack([decoded.array for _, decoded in batch])
            sizes = np.array([decoded.original_size for _, decoded in batch], dtype=np.int64)
            for (job, decoded), log_density in zip(
                batch, log_densities(generator, images, sizes, len(batch), device), strict=True
            ):
                shape = tuple(decoded.original_size)
                if kind == "metric-map" and shape not in centres:
                    centres[shape] = centre_log_density(generator, shape, centre_sigma)
                array = output_array(log_density, kind, metric, centres.get(shape), options)
                target = stage / job.stem
                target.parent.mkdir(parents=True, exist_ok=True)
                np.save(target.with_name(target.name + ".npy"), array, allow_pickle=False)
                written += 1
                bar.update(1)
    return written, errors


def answer_rows(generator, frame, rows, decode, results: list[dict], options, device) -> None:
    """The served model's density rows (salgan/serving.py): each of ``rows`` whose ``kind`` in ``frame`` is
    ``log-density`` or ``metric-map`` (with ``metric``) gets its array as base64 ``.npy`` in ``saliency``,
    or the reason in ``error``; ``decode(row)`` gives its :class:`salgan.imaging.Decoded`, called only for
    those rows. Rows of kind ``map`` (or none) are left for the map path, undecoded."""
    import base64

    kinds = _cells(frame, "kind")
    metrics = _cells(frame, "metric")
    for row in rows:
        kind, metric = kinds[row] or "map", metrics[row]
        problem = None
        if kind not in KINDS:
            problem = f"kind {kind!r} is not one of {', '.join(KINDS)}"
        elif (kind == "metric-map") != (metric is not None):
            problem = "a metric goes with kind metric-map, and kind metric-map needs a metric"
        elif metric is not None and metric not in METRIC_NAMES:
            problem = f"metric {metric!r} is not one of {', '.join(METRIC_NAMES)}"
        elif kind != "map" and output_of(generator) != "density":
            problem = f"kind {kind} needs a density model (model.output: density); this model outputs maps"
        if problem:
            results[row]["error"] = f"row {row}: {problem}"
            continue
        if kind == "map":
            continue
        try:
            image = decode(row)
        except ValueError as exc:
            results[row]["error"] = f"row {row}: {exc}"
            continue
        try:
            sizes = np.array([image.original_size], dtype=np.int64)
            log_density = next(log_densities(generator, image.array[None], sizes, 1, device))
            centre = centre_log_density(generator, tuple(image.original_size), CENTRE_SIGMA) if metric else None
            chosen = output_array(log_density, kind, metric, centre, options)
            results[row]["saliency"] = base64.b64encode(npy_bytes(chosen)).decode("ascii")
        except Exception as exc:  # noqa: BLE001 -- this row alone fails, named
            results[row]["error"] = f"row {row}: {type(exc).__name__}: {exc}"


CENTRE_SIGMA = 0.25  # evaluate.center_bias_sigma's default: the sAUC map's centre bias for a model without a prior


def _cells(frame, column: str) -> list:
    """``frame[column]`` as a list with missing cells (absent column, None, NaN) as None."""
    if column not in frame.columns:
        return [None] * len(frame)
    return [value if isinstance(value, str) and value else None for value in frame[column].tolist()]
