"""``salgan predict --model URI --output DIR [--overlay] INPUTS...``: saliency maps for your images.

URI is a registry URI (``models:/salgan@champion``, ``models:/salgan/3``), a run or logged-model URI
(``runs:/<id>/model``, ``models:/m-<id>``), a local MLflow model directory, or a plain weights file (a
generator state_dict such as models/generator.pt, or a training checkpoint), all opened by
:func:`salgan.models.load_generator`. INPUTS are image files, directories (searched recursively) and glob
patterns (salgan/inputs.py); JPEG, PNG, BMP, WebP and TIFF in any mode. Each map is written at the input's
displayed size (EXIF orientation applied) as ``DIR/<path relative to its input>.png``; with ``--overlay``
also ``..._overlay.jpg``, a jet heat map over the image. Unreadable inputs are named on stderr and
skipped; the exit status is 1 if any input failed. S3 locations, as INPUTS or as the output, run as a
batch (salgan/batch.py).

Without INPUTS, ``salgan predict`` is the DVC stage (salgan/predict.py).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

from salgan import batch
from salgan import predict as stage
from salgan.cli import command_parser, run_command
from salgan.density.inference import KINDS, predict_density_files
from salgan.encoder_table import MIN_STRIDE, size_problem
from salgan.errors import ConfigError
from salgan.fetch import s3_client
from salgan.imaging import Decoded, decode_rgb, save_map, save_overlay
from salgan.inference import default_device, failure_reason, predict_images
from salgan.inputs import Job, collect
from salgan.layout import staged_files
from salgan.metrics import METRIC_NAMES
from salgan.models import ModelError
from salgan.models.density import output_of
from salgan.models.uri import open_model
from salgan.progress import progress
from salgan.settings import Params, PredictParams, load_params, validate_section
from salgan.urls import is_s3_url

# --- the model ---------------------------------------------------------------------------------------


def load_model(uri: str, params: Params, size: tuple[int, int] | None) -> tuple[torch.nn.Module, tuple[int, int]]:
    """(generator, input size (W, H)) from any --model form; an explicit ``size`` wins over the model's, and
    must suit the model's encoder."""
    generator, model_size = open_model(uri, params)
    if size is not None:
        problem = size_problem(generator.encoder_name, size)
        if problem:
            raise ConfigError(f"--size {size[0]}x{size[1]}: {problem}")
    return generator, size or model_size


# --- files in, files out ---------------------------------------------------------------------------------


def predict_files(
    generator: torch.nn.Module,
    jobs: list[Job],
    output: Path,
    size: tuple[int, int],
    options: PredictParams,
    with_overlay: bool = False,
    device: torch.device | None = None,
) -> tuple[int, list[str]]:
    """Predict every job in batches (``options``: batch size, blur, pixel limit); returns the number written
    and the errors (path: reason) of the inputs that were skipped.

    The maps are written into a staging folder and moved into ``output`` at the end
    (:func:`salgan.layout.staged_files`): a killed run leaves no mix of old and new maps.
    """

    def decode(job: Job) -> Decoded:
        return decode_rgb(job.path, size, options.max_pixels, "predict.max_pixels", exif=True, keep_full=with_overlay)

    errors: list[str] = []
    written = 0
    outcomes = predict_images(generator, jobs, decode, options.batch_size, options.blur_size, device)
    with staged_files(output) as staging:
        for outcome in progress(outcomes, total=len(jobs), unit="image", desc="predict"):
            if outcome.error is not None:  # this input alone: the others of its batch are written
                errors.append(f"{outcome.item.path}: {failure_reason(outcome.error)}")
                continue
            stem = staging / outcome.item.stem
            stem.parent.mkdir(parents=True, exist_ok=True)
            save_map(outcome.saliency, stem.with_name(stem.name + ".png"))
            if with_overlay:
                save_overlay(outcome.decoded.full, outcome.saliency, stem.with_name(stem.name + "_overlay.jpg"))
            written += 1
    return written, errors


# --- the command ---------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 256x192, got {text!r}") from None
    if width <= 0 or height <= 0 or width % MIN_STRIDE or height % MIN_STRIDE:
        raise argparse.ArgumentTypeError(f"sides must be positive multiples of {MIN_STRIDE}, got {text!r}")
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "predict",
        "Saliency maps. Without INPUTS: the predict stage (test split of the prepared data, generator from "
        "train.output, maps into predict.output). With INPUTS: maps for your images from a registry model, an "
        "MLflow model or a weights file, written as 8-bit grey PNGs at each image's own size. MLflow URIs use "
        "MLFLOW_TRACKING_URI, else mlflow.tracking_uri in params.yaml (its defaults outside a checkout).",
        epilog="example: salgan predict --model models:/salgan@champion --output maps --overlay photos/",
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUTS", help="image files, directories and globs")
    parser.add_argument(
        "--model",
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model, models:/m-ID, an MLflow model "
        "directory or a weights file (default: models:/<mlflow.model_name>@champion)",
    )
    parser.add_argument(
        "--output",
        type=_output_location,
        help="folder or s3://bucket/prefix for the maps (required with INPUTS); INPUTS may be s3://bucket/prefix "
        "listings too, predicted in bounded memory with a manifest.json (see salgan/batch.py)",
    )
    parser.add_argument("--overlay", action="store_true", help="also write <name>_overlay.jpg heat maps")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: predict.batch_size)")
    parser.add_argument("--blur", type=int, help="Gaussian blur kernel size, 0: none (default: predict.blur_size)")
    parser.add_argument("--size", type=parse_size, help="model input WxH (default: the model's own, else 256x192)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: auto")
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="map",
        help="map: 8-bit PNG saliency maps (default); log-density: <name>.npy float32 log-densities at the image's "
        "size (density models); metric-map: <name>.npy float32 map that maximises --metric's expected score "
        "under the density (Kuemmerer et al. 2018)",
    )
    parser.add_argument("--metric", choices=METRIC_NAMES, help="the metric of --kind metric-map")
    return parser


def _output_location(text: str) -> str | Path:
    """An ``s3://`` URL stays a string (a Path would fold its ``//``); anything else is a folder."""
    return text if is_s3_url(text) else Path(text)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.inputs and (args.model or args.output or args.overlay):
        parser.error("--model, --output and --overlay need INPUTS (without INPUTS this is the DVC stage)")
    if args.inputs and args.output is None:
        parser.error("--output DIR is required with INPUTS")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    _check_density_arguments(parser, args)
    if not args.inputs:
        return run_command("predict", lambda: stage.stage_main(load_params(args.params)))
    return run_command("predict", lambda: _tool_main(args))


def _check_density_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--kind`` and ``--metric``: what a density model (model.output: density) writes (salgan/density/)."""
    if args.kind != "map" and not args.inputs:
        parser.error(f"--kind {args.kind} needs INPUTS (the predict stage writes PNG maps)")
    if (args.kind == "metric-map") != (args.metric is not None):
        parser.error("--metric goes with --kind metric-map, and --kind metric-map needs --metric")
    if args.kind != "map" and args.overlay:
        parser.error(f"--overlay draws saliency maps; it does not go with --kind {args.kind}")
    if args.kind != "map" and (is_s3_url(str(args.output or "")) or any(is_s3_url(text) for text in args.inputs)):
        parser.error(f"--kind {args.kind} writes to a local folder; S3 inputs and outputs take --kind map")


def _tool_main(args: argparse.Namespace) -> int:
    """Tool mode: params.yaml where there is one (tracking URI, model name, batch and blur defaults)."""
    params = load_params(args.params, require_all=False) if Path(args.params).is_file() else Params()
    given = {"batch_size": args.batch_size, "blur_size": args.blur}
    given = {key: value for key, value in given.items() if value is not None}
    # The command-line values pass the same checks as params.yaml's (an even blur kernel is refused).
    options = validate_section(PredictParams, params.predict.model_dump() | given, "predict option ")
    model = args.model or f"models:/{params.mlflow.model_name}@champion"
    generator, size = load_model(model, params, args.size)
    device = default_device() if args.device == "auto" else torch.device(args.device)
    if args.kind != "map":
        return _density_main(args, generator, size, options, device, params, model)
    if is_s3_url(args.output) or any(is_s3_url(text) for text in args.inputs):
        return _batch_main(args, generator, size, options, device, model)
    jobs, errors = collect(args.inputs, exclude=args.output)
    written, failed = predict_files(generator, jobs, args.output, size, options, args.overlay, device)
    errors += failed
    for error in errors:
        print(f"salgan predict: skipped {error}", file=sys.stderr)
    print(f"wrote {written} maps to {args.output}" + (f"; {len(errors)} inputs failed" if errors else ""))
    return 1 if errors else 0


def _density_main(args, generator, size, options: PredictParams, device, params: Params, model: str) -> int:
    """``--kind log-density | metric-map``: .npy files from a density model (salgan/density/inference.py)."""
    if output_of(generator) != "density":
        raise ModelError(f"--model {model}: --kind {args.kind} needs a density model (model.output: density)")
    jobs, errors = collect(args.inputs, exclude=args.output)
    written, failed = predict_density_files(
        generator, jobs, args.output, size, args.kind, args.metric, options, params.evaluate.center_bias_sigma, device
    )
    errors += failed
    for error in errors:
        print(f"salgan predict: skipped {error}", file=sys.stderr)
    what = "log-densities" if args.kind == "log-density" else f"{args.metric} maps"
    print(f"wrote {written} {what} to {args.output}" + (f"; {len(errors)} inputs failed" if errors else ""))
    return 1 if errors else 0


def _batch_main(args, generator, size, options: PredictParams, device, model: str) -> int:
    """S3 inputs or output: salgan/batch.py, one batch in memory at a time, a manifest at the end."""

    client = s3_client()
    local = [text for text in args.inputs if not is_s3_url(text)]
    items, errors = batch.local_items(local, None if is_s3_url(args.output) else args.output) if local else ([], [])
    listings = [batch.s3_items(client, text) for text in args.inputs if is_s3_url(text)]
    output = batch.open_output(str(args.output), client)
    manifest = batch.run(
        generator, size, itertools.chain(items, *listings), output, options, args.overlay, device, model
    )
    for error in errors:
        print(f"salgan predict: skipped {error}", file=sys.stderr)
    for failure in manifest["failed"]:
        print(f"salgan predict: skipped {failure['input']}: {failure['reason']}", file=sys.stderr)
    failed = len(errors) + len(manifest["failed"])
    print(
        f"wrote {len(manifest['written'])} maps to {output.url}, {len(manifest['skipped'])} already there from "
        f"the same model" + (f"; {failed} inputs failed" if failed else "") + f" ({output.url}/{batch.MANIFEST})"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
