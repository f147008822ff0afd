"""Evaluate stage: score the validation split at the original resolution (docs/reference.md §3).

The generator's maps get the same post-processing as the test predictions (bicubic resize to the
original size, 5x5 Gaussian blur), then every image is scored with the eight metrics of
:mod:`salgan.metrics` against its original fixations and map. Two baselines are scored with the same
code: a centre-bias Gaussian (the bar a model must clear) and the ground-truth map itself (the ceiling).
Information gain is measured against the density of the training fixations (blurred, mixed 1% with a
uniform map so that no pixel has zero probability). A density model (``model.output: density``) is also
scored by its log-likelihood and information gain, and with ``evaluate.metric_maps`` on each metric's own
map (:mod:`salgan.density.scores`).

Outputs: ``reports/metrics.json`` (means, ``data_version``: the val split's version from
:mod:`salgan.layout`, ``baselines.center_bias`` / ``baselines.ground_truth``, and ``fingerprint``: what the
scores depend on besides the weights, :mod:`salgan.tracking.fingerprint`),
``reports/per_image.csv``, the figures of :mod:`salgan.figures` (``examples.png``, the seed paper's Fig. 4;
``progression.png`` and ``.gif``, its Fig. 3; ``losses.png``) and ``reports/report.html``, one page with
all of them beside the baselines and the seed paper's Table I.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from salgan.cli import command_parser, run_command
from salgan.datasets import DatasetError, prepared_dataset, raw_image_paths
from salgan.errors import InputError
from salgan.figures import example_grid, loss_curves, progression, report_page
from salgan.finetune import dataset_tags
from salgan.imaging import decode_rgb
from salgan.inference import BatchedPredictions
from salgan.layout import (
    ModelFiles,
    ReportFiles,
    SplitArrays,
    atomic_file,
    read_split,
    sha256_file,
    split_version,
    write_atomic,
)
from salgan.losses import describe_content_loss
from salgan.metrics import METRIC_NAMES, TABLE_I, center_bias_map
from salgan.models import load_generator, model_cost
from salgan.models.uri import open_model
from salgan.scoring import fixation_density_baseline, score_split
from salgan.settings import Params, load_params
from salgan.tracking import enabled as tracking_enabled
from salgan.tracking import fingerprint
from salgan.urls import redact_text

UNIFORM_MIX = 0.01


def ig_baseline(data: Path, shape: tuple[int, int], sigma_fraction: float) -> np.ndarray:
    """Training-fixation density at ``shape``: a centre prior learnt from data, as the MIT IG baseline."""
    train = read_split(data, "train", "fixations")
    sigma = sigma_fraction * float(np.hypot(*shape))
    density = fixation_density_baseline(train.coords, train.offsets, shape, sigma, train.original_sizes)
    return (1 - UNIFORM_MIX) * density + UNIFORM_MIX / density.size


def scoring_inputs(params: Params) -> tuple[SplitArrays, dict]:
    """The val split and the keyword arguments every score of it shares."""
    data = Path(params.train.data)
    val = read_split(data, "val", "maps", "maps_full", "fixations", stream=True)
    common = {
        "fixations": val.coords,
        "offsets": val.offsets,
        "baseline_map": ig_baseline(data, reference_shape(val), params.evaluate.ig_baseline_sigma),
        "n_splits": params.evaluate.n_splits,
        "sauc_other_images": params.evaluate.sauc_other_images,
        "sizes": val.original_sizes,  # each image is scored at its own size (MIT1003's vary)
    }
    return val, common


def reference_shape(val: SplitArrays) -> tuple[int, int]:
    """(rows, cols) the IG baseline is built at: the val images' most common original size (SALICON's only
    one, 480x640); the metrics resize it to each image's own size."""
    import collections

    sizes = collections.Counter(tuple(int(v) for v in size) for size in val.original_sizes)
    return sizes.most_common(1)[0][0]


class CentreMaps:
    """The centre-bias map of each val image at its own size (one map per distinct size, computed once)."""

    def __init__(self, sizes, sigma_fraction: float):
        self.sizes, self.sigma, self._maps = sizes, sigma_fraction, {}

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int) -> np.ndarray:
        shape = tuple(int(v) for v in self.sizes[index])
        if shape not in self._maps:
            self._maps[shape] = center_bias_map(shape, self.sigma)
        return self._maps[shape]


def score_generator(generator, params: Params, val: SplitArrays | None = None, common: dict | None = None, images=None):
    """Score ``generator`` on the val split after the test maps' post-processing.

    ``images``: the val images at the generator's input size when that is not the prepared one (uint8
    rows, sliceable). Returns (per-image rows, means, predictions). The promotion gate scores a registered
    model with it, so that champion and challenger are compared on the same data with the same code. Each
    batch is scored as it is predicted: ``predictions`` is a :class:`BatchedPredictions` that predicts again
    any image asked for later, so memory holds one batch of maps whatever the split's size.
    """
    if val is None or common is None:
        val, common = scoring_inputs(params)
    predictions = BatchedPredictions(
        generator,
        val.images if images is None else images,
        val.original_sizes,
        params.evaluate.batch_size,
        params.predict.blur_size,
    )
    rows, means = score_split(predictions, val.maps_full, names=val.names, **common)
    return rows, means, predictions


def centre_bias_scores(params: Params, val: SplitArrays, common: dict) -> dict[str, float]:
    """The centre-bias baseline's means: the bar a model must clear (the first champion's floor)."""
    centre = CentreMaps(val.original_sizes, params.evaluate.center_bias_sigma)
    return score_split(centre, val.maps_full, progress=False, **common)[1]


def input_size(val: SplitArrays) -> tuple[int, int]:
    """(W, H) of the prepared val images: the input size the model is scored at."""
    return int(val.images.shape[2]), int(val.images.shape[1])


def evaluate(params: Params) -> dict:
    """Score the model and the baselines; write the reports; return the metrics dict."""

    cfg = params.evaluate
    val, common = scoring_inputs(params)
    trained = ModelFiles(Path(params.train.output))
    generator = load_generator(trained.generator).generator
    rows, means, predictions = score_generator(generator, params, val, common)
    center_means = centre_bias_scores(params, val, common)
    _, ceiling = score_split(val.maps_full, val.maps_full, progress=False, **common)
    weights = sha256_file(trained.generator)
    metrics = {
        **means,
        "n_images": len(rows),
        "data_version": split_version(params.train.data, "val"),
        "baselines": {"center_bias": center_means, "ground_truth": ceiling},
        "cost": model_costs(generator, trained.history),
        "fingerprint": fingerprint.fingerprint(fingerprint.today(params), input_size(val), weights),
        "datasets": dataset_tags(params),
    }
    from salgan.density.scores import add_density_scores

    add_density_scores(metrics, rows, generator, params, val, common)  # LL, IG, metric maps: density models only

    reports = ReportFiles(Path(cfg.output))
    write_scores(reports, metrics, rows)
    write_figures(params, metrics, val, predictions, rows, reports)
    record_to_mlflow(params, metrics, reports, trained.generator)
    return metrics


def model_costs(generator, history_path: Path) -> dict[str, float]:
    """What the model costs, for the ablation table: parameters (millions), forward GFLOPs per 256x192
    image and the training throughput (images/s, the median over the epochs of models/history.json)."""
    import statistics

    speeds = [r["images_per_s"] for r in json.loads(history_path.read_text()) if r.get("images_per_s")]
    return {**model_cost(generator), "train_images_per_s": statistics.median(speeds) if speeds else None}


def write_figures(params: Params, metrics: dict, val: SplitArrays, predictions, rows, reports: ReportFiles) -> None:
    """The example grid, the training progression, the loss curves and reports/report.html holding them."""

    trained = ModelFiles(Path(params.train.output))
    snapshots = sorted(trained.snapshots.glob("epoch_*.png"))
    if not snapshots or not trained.history.is_file():
        raise InputError(f"{trained.snapshots} and {trained.history}: not found; run the train stage first")
    example_grid(val.images, val.maps, predictions, rows, params.evaluate.grid_images, reports.examples)
    progression(snapshots, reports.progression, reports.progression_gif)
    loss_curves(json.loads(trained.history.read_text()), reports.losses)
    model, train = params.model, params.train
    settings = {
        "encoder": f"{model.encoder}, weights {model.encoder_weights}, width {model.width}, "
        f"{model.freeze_blocks} stages frozen, decoder init {model.decoder_init}",
        "input": f"{params.prepare.size[0]}x{params.prepare.size[1]}",
        "schedule": f"{train.epochs} epochs, {train.bce_epochs} BCE-only, then {train.adversarial_schedule} G/D",
        "optimiser": f"AdaGrad, lr G {train.lr_generator} D {train.lr_discriminator}, batch {train.batch_size}"
        f"; BCE phase {train.bce_optimizer} lr {train.lr_bce or train.lr_generator}; "
        f"{train.d_steps_per_g} D step(s) per G step, "
        f"G warm-up {train.g_warmup_steps} steps",
        "losses": f"alpha {train.alpha}, content {describe_content_loss(train.content_loss, train.content_downsample)}"
        f", D loss {train.discriminator_loss}",
        "discriminator": f"width {model.discriminator_width}, image {model.discriminator_image}, weight-norm gain "
        f"{model.discriminator_weight_norm_gain}, pairs flipped {train.discriminator_flip}",
    }
    figures = {
        "examples": ("Val examples: best, median and worst by NSS (seed paper Fig. 4)", reports.examples),
        "progression": ("One val image's map, epoch by epoch (seed paper Fig. 3)", reports.progression),
        "animation": ("The same, animated", reports.progression_gif),
        "losses": ("Losses per epoch; beside them, the discriminator on held-out val pairs", reports.losses),
    }
    write_atomic(reports.page, report_page(metrics, TABLE_I, settings, figures))


def record_to_mlflow(params: Params, metrics: dict, reports: ReportFiles, generator_path: Path) -> str | None:
    """Log to the pipeline's MLflow run and register the generator, when MLflow is enabled; returns the
    registered version (None: MLflow disabled or unreachable)."""
    if not tracking_enabled(params):
        return None
    from salgan.tracking.models import record_evaluation

    extra = ("baselines", "n_images", "data_version", "cost", "fingerprint", "datasets", "metric_maps")
    means = {k: v for k, v in metrics.items() if k not in extra}
    means |= {f"metric_map_{k}": v for k, v in metrics.get("metric_maps", {}).items()}
    artifacts = [reports.metrics, reports.per_image, reports.examples, reports.progression, reports.progression_gif]
    artifacts += [reports.losses, reports.page]
    return record_evaluation(
        params,
        means,
        metrics["baselines"],
        artifacts,
        generator_path,
        metrics["data_version"],
        metrics["fingerprint"],
        metrics.get("datasets") or dataset_tags(params),
    )


def val_images_at(params: Params, names: list[str], size: tuple[int, int]) -> RawImages:
    """The val images ``names`` at ``size`` (W, H), decoded from the raw tree (``prepare.input``) as prepare
    decodes them: for a model trained at another size than the prepared data's."""
    try:
        paths = raw_image_paths(params.train.data, params.prepare.input, "val", names)
    except DatasetError as exc:
        raise InputError(
            f"{exc}; a model trained at {size[0]}x{size[1]} is scored on the raw val images (prepare.input) resized "
            "to its own size"
        ) from None
    return RawImages(paths, size, params.prepare.max_pixels)


class RawImages:
    """Images decoded and resized to ``size`` (W, H) as the prepare stage does, a slice at a time."""

    def __init__(self, paths: list[Path], size: tuple[int, int], max_pixels: int):
        self.paths, self.size, self.max_pixels = paths, size, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: slice):
        decoded = (
            decode_rgb(path, self.size, self.max_pixels, "prepare.max_pixels", draft=True) for path in self.paths[index]
        )
        return np.stack([image.array for image in decoded])


def write_scores(reports: ReportFiles, metrics: dict, rows: list[dict]) -> None:
    """``metrics.json`` and ``per_image.csv`` into the reports folder, each written atomically."""
    reports.root.mkdir(parents=True, exist_ok=True)
    write_atomic(reports.metrics, json.dumps(metrics, indent=2) + "\n")
    with atomic_file(reports.per_image, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def summary_table(metrics: dict) -> str:
    """Model, centre bias and ceiling side by side."""
    from salgan.density.scores import DENSITY_KEYS

    columns = {"model": metrics, **({"metric maps": metrics["metric_maps"]} if "metric_maps" in metrics else {})}
    columns |= metrics["baselines"]
    lines = [f"{'metric':<26}" + "".join(f"{name:>14}" for name in columns)]
    for key in METRIC_NAMES + tuple(k for k in DENSITY_KEYS if k in metrics):
        cells = (f"{column[key]:>14.4f}" if key in column else f"{'-':>14}" for column in columns.values())
        lines.append(f"{key:<26}" + "".join(cells))
    return "\n".join(lines)


def evaluate_model(params: Params, uri: str, output: Path) -> dict:
    """Cross-dataset evaluation: the model at ``uri`` (as ``salgan predict --model`` takes it) scored on the
    prepared val split (``train.data``, any dataset) with the same metrics and baselines as the stage, at its
    own input size; ``metrics.json``, ``per_image.csv`` and ``examples.png`` written into ``output``. Nothing
    is trained or registered."""
    generator, size = open_model(uri, params)
    val, common = scoring_inputs(params)
    images = None if input_size(val) == tuple(size) else val_images_at(params, val.names, tuple(size))
    rows, means, predictions = score_generator(generator, params, val, common, images)
    _, ceiling = score_split(val.maps_full, val.maps_full, progress=False, **common)
    metrics = {
        **means,
        "n_images": len(rows),
        "data_version": split_version(params.train.data, "val"),
        "baselines": {"center_bias": centre_bias_scores(params, val, common), "ground_truth": ceiling},
        "model": redact_text(uri),
        "input_size": [int(size[0]), int(size[1])],
        "datasets": {"scored_on": prepared_dataset(params.train.data)},
    }
    reports = ReportFiles(output)
    write_scores(reports, metrics, rows)
    example_grid(val.images, val.maps, predictions, rows, params.evaluate.grid_images, reports.examples)
    return metrics


def main(argv: list[str] | None = None) -> int:

    parser = command_parser(
        "evaluate",
        "Score the validation split with AUC-Judd, AUC-Borji, sAUC, NSS, CC, KLD, SIM and IG at the original "
        "resolution, beside a centre-bias baseline and the ground-truth ceiling; write reports/metrics.json, "
        "per_image.csv, the figures and report.html, and register the model in MLflow. With --model: score that "
        "model on the prepared data (any dataset, e.g. a SALICON model on MIT1003) without training or "
        "registering anything.",
        epilog="example: salgan evaluate --model models:/salgan@champion --output reports/cross/mit1003",
    )
    parser.add_argument(
        "--model",
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model, an MLflow model directory or a weights file",
    )
    parser.add_argument(
        "--output", help="with --model: the reports folder (default: <evaluate.output>/cross/<dataset>)"
    )
    args = parser.parse_args(argv)
    if args.output and not args.model:
        parser.error("--output goes with --model (the stage writes evaluate.output)")

    def work() -> int:
        params = load_params(args.params)
        if args.model:
            output = Path(args.output or Path(params.evaluate.output) / "cross" / prepared_dataset(params.train.data))
            metrics = evaluate_model(params, args.model, output)
            print(f"{metrics['model']} on the {metrics['datasets']['scored_on']} val split ({metrics['n_images']} "
                  f"images, data {metrics['data_version']}); reports in {output}")  # fmt: skip
            print(summary_table(metrics))
            return 0
        print(summary_table(evaluate(params)))
        return 0

    return run_command("evaluate", work)


if __name__ == "__main__":
    raise SystemExit(main())
