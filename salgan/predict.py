"""``salgan predict``: saliency maps from a trained generator.

Stage mode (no INPUTS; the DVC ``predict`` stage): every test image of the prepared data is predicted
with ``<train.output>/generator.pt`` and written to ``<predict.output>/<name>.png``, 8-bit grey at the
image's original size (640x480 for SALICON), post-processed as the original code (bicubic resize, 5x5
Gaussian blur). The folder is written beside the old one and swapped in only when complete.

Tool mode: ``salgan predict --model URI --output DIR [--overlay] INPUTS...``. URI is a registry URI
(``models:/salgan@champion``, ``models:/salgan/3``), a run or logged-model URI (``runs:/<id>/model``,
``models:/m-<id>``), a local MLflow model directory, or a plain weights file (a generator state_dict such
as models/generator.pt, or a training checkpoint). INPUTS are image files, directories (searched
recursively) and glob patterns; JPEG, PNG, BMP, WebP and TIFF in any mode. Each map is written at the
input's displayed size (EXIF orientation applied) as ``DIR/<path relative to its input>.png``; with
``--overlay`` also ``..._overlay.jpg``, a jet heat map over the image. Unreadable inputs are named on
stderr and skipped; the exit status is 1 if any input failed.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from salgan.batch import is_s3, predict_each
from salgan.cpus import usable_cpus
from salgan.encoder_table import MIN_STRIDE, size_problem
from salgan.errors import ConfigError
from salgan.imaging import IMAGE_SUFFIXES, decode_rgb, save_map, save_overlay, to_uint8
from salgan.inference import default_device, predict_batches
from salgan.layout import (
    ModelFiles,
    atomic_directory,
    read_split,
    staged_files,
)
from salgan.models import ModelError, load_generator
from salgan.settings import Params, PredictParams, load_params, validate_section
from salgan.tracking import enabled as tracking_enabled
from salgan.urls import redact_text

GLOB_CHARS = set("*?[")


@dataclass
class Job:
    """One input image and the output stem (relative path without suffix) its results are written to."""

    path: Path
    stem: Path


@dataclass
class Loaded:
    """A decoded input: the model-size array, the displayed (rows, cols) and, for overlays, the image."""

    job: Job
    array: np.ndarray
    original_size: tuple[int, int]
    full: np.ndarray | None


# --- the model ---------------------------------------------------------------------------------------


def load_model(uri: str, params: Params, size: tuple[int, int] | None) -> tuple[torch.nn.Module, tuple[int, int]]:
    """(generator, input size (W, H)) from any --model form; an explicit ``size`` wins over the model's, and
    must suit the model's encoder."""
    path = Path(uri).expanduser()
    if path.is_file() or path.is_dir():
        try:
            generator, model_size = load_generator(path)
        except ModelError as exc:
            raise ModelError(f"--model {exc}") from None
    elif ":" in uri:
        from salgan.tracking.models import fetched_model

        try:
            with fetched_model(uri, params) as local:
                generator, model_size = load_generator(local)
        except ModelError:
            raise
        except Exception as exc:  # MlflowException, botocore and HTTP errors alike: the URI is unusable
            raise ModelError(f"--model {uri}: cannot fetch the MLflow model: {redact_text(str(exc))}") from None
    else:
        raise ModelError(f"--model {uri}: no such file or directory, and not an MLflow URI")
    if size is not None:
        problem = size_problem(generator.encoder_name, size)
        if problem:
            raise ConfigError(f"--size {size[0]}x{size[1]}: {problem}")
    return generator, size or model_size


# --- inputs ----------------------------------------------------------------------------------------------


NOT_REGULAR = "not a regular file (a pipe, socket or device); skipped"


def collect(inputs: list[str], exclude: Path | None = None) -> tuple[list[Job], list[str]]:
    """Jobs for files, directories (recursive, images only, dot-files skipped) and globs; and errors."""
    jobs: list[Job] = []
    errors: list[str] = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_file():
            jobs.append(Job(path, Path(path.stem)))
        elif path.is_dir():
            for found in _walk(path, exclude):
                if found.is_file():
                    jobs.append(Job(found, found.relative_to(path).with_suffix("")))
                else:
                    errors.append(f"{found}: {NOT_REGULAR}")
        elif GLOB_CHARS & set(text):
            base = _glob_base(text)
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
            found = [p for p in matches if p.is_file()]
            if not found:
                errors.append(f"{text}: no files match")
            jobs += [Job(p, _relative(p, base).with_suffix("")) for p in found]
        elif path.exists():
            errors.append(f"{text}: {NOT_REGULAR}")
        else:
            errors.append(f"{text}: no such file or directory")
    return _unique(jobs, errors), errors


def _walk(root: Path, exclude: Path | None) -> Iterator[Path]:
    """Entries named like images under ``root``: regular files to read, and pipes or devices, which the
    caller reports and skips (reading a pipe named like an image would block forever)."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not _same(here / d, exclude))
        for name in sorted(filenames):
            # ._x.jpg AppleDouble files and other dot-files are not images even with an image suffix
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield here / name


def _same(a: Path, b: Path | None) -> bool:
    return b is not None and a.resolve() == b.resolve()


def _glob_base(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard (outputs keep the path below it)."""
    parts = Path(os.path.expanduser(pattern)).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if GLOB_CHARS & set(p))]]
    return Path(*fixed) if fixed else Path(".")


def _relative(path: Path, base: Path) -> Path:
    try:
        return path.relative_to(base)
    except ValueError:
        return Path(path.name)


def _unique(jobs: list[Job], errors: list[str]) -> list[Job]:
    """Drop repeated files; two inputs with one stem (a.jpg, a.png) keep their suffix in the output name."""
    seen: set[Path] = set()
    distinct = []
    for job in jobs:
        if job.path.resolve() not in seen:
            seen.add(job.path.resolve())
            distinct.append(job)
    jobs = distinct
    counts: dict[Path, int] = {}
    for job in jobs:
        counts[job.stem] = counts.get(job.stem, 0) + 1
    for job in jobs:
        if counts[job.stem] > 1:
            job.stem = job.stem.with_name(job.path.name)
    taken: set[Path] = set()
    unique = []
    for job in jobs:
        if job.stem in taken:
            errors.append(f"{job.path}: output name {job.stem}.png is already used by another input; skipped")
            continue
        taken.add(job.stem)
        unique.append(job)
    return unique


def read_image(job: Job, size: tuple[int, int], keep_full: bool, max_pixels: int) -> Loaded:
    """A user's image file decoded as shown (EXIF orientation applied) for the generator."""
    decoded = decode_rgb(job.path, size, max_pixels, "predict.max_pixels", exif=True, keep_full=keep_full)
    return Loaded(job, decoded.array, decoded.original_size, decoded.full)


# --- outputs ---------------------------------------------------------------------------------------------


def write_results(loaded: Loaded, saliency: np.ndarray, folder: Path, with_overlay: bool) -> None:
    """The map (and the overlay) of one input into ``folder`` (a staging folder: see predict_files)."""
    stem = folder / loaded.job.stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    save_map(saliency, stem.with_name(stem.name + ".png"))
    if with_overlay and loaded.full is not None:
        save_overlay(loaded.full, saliency, stem.with_name(stem.name + "_overlay.jpg"))


# --- the two modes ---------------------------------------------------------------------------------------


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
    from salgan.cli import progress

    device = device or default_device()
    generator = generator.to(device).eval()
    errors: list[str] = []
    written = 0
    with staged_files(output) as stage, progress(total=len(jobs), unit="image", desc="predict") as bar:
        for start in range(0, len(jobs), options.batch_size):
            batch: list[Loaded] = []
            for job in jobs[start : start + options.batch_size]:
                try:
                    batch.append(read_image(job, size, with_overlay, options.max_pixels))
                except ValueError as exc:
                    errors.append(f"{job.path}: {exc}")
                    bar.update(1)
            decoded = [(item, (item.array, item.original_size, item.full)) for item in batch]
            for item, outcome in zip(batch, predict_each(generator, decoded, options, device), strict=True):
                if isinstance(outcome, Exception):  # this input alone: the others of its batch are written
                    errors.append(f"{item.job.path}: {type(outcome).__name__}: {outcome}")
                else:
                    write_results(item, outcome, stage, with_overlay)
                    written += 1
                bar.update(1)
    return written, errors


def write_split_maps(generator: torch.nn.Module, data: Path, split: str, folder: Path, params: Params) -> list[str]:
    """One 8-bit PNG per image of a prepared split, ``folder/<name>.png`` at the image's original size,
    post-processed as the original code (the stage's test maps; the 2015 submission's val maps)."""
    arrays = read_split(data, split, stream=True)  # one batch in memory at a time
    names, images, sizes = arrays.names, arrays.images, arrays.original_sizes
    from salgan.cli import progress

    maps = predict_batches(generator, images, sizes, params.predict.batch_size, params.predict.blur_size)
    pairs = zip(names, maps, strict=True)
    # PNG encoding (zlib, which releases the GIL) costs ~40x the model's time per map on a GPU, so it runs
    # in threads; a bounded window of pending maps keeps memory flat on a fast GPU.
    workers = min(8, usable_cpus())
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        for name, saliency in progress(pairs, total=len(names), unit="image", desc=f"predict {split}"):
            pending.append(pool.submit(Image.fromarray(to_uint8(saliency), mode="L").save, folder / f"{name}.png"))
            if len(pending) > 4 * workers:
                pending.popleft().result()
        for future in pending:
            future.result()
    return names


def run_stage(params: Params) -> list[Path]:
    """The DVC stage: maps for the prepared test split, swapped into predict.output when complete."""
    generator = load_generator(ModelFiles(Path(params.train.output)).generator).generator
    output = Path(params.predict.output)
    with atomic_directory(output) as tmp:  # the folder is swapped in only when every map is written
        names = write_split_maps(generator, Path(params.train.data), "test", tmp, params)
    return [output / f"{name}.png" for name in names]


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 256x192, got {text!r}") from None
    if width <= 0 or height <= 0 or width % MIN_STRIDE or height % MIN_STRIDE:
        raise argparse.ArgumentTypeError(f"sides must be positive multiples of {MIN_STRIDE}, got {text!r}")
    return width, height


def build_parser() -> argparse.ArgumentParser:
    from salgan.cli import command_parser

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
    return parser


def _output_location(text: str) -> str | Path:
    """An ``s3://`` URL stays a string (a Path would fold its ``//``); anything else is a folder."""
    return text if is_s3(text) else Path(text)


def main(argv: list[str] | None = None) -> int:
    from salgan.cli import run_command

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.inputs and (args.model or args.output or args.overlay):
        parser.error("--model, --output and --overlay need INPUTS (without INPUTS this is the DVC stage)")
    if args.inputs and args.output is None:
        parser.error("--output DIR is required with INPUTS")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    if not args.inputs:
        return run_command("predict", lambda: _stage_main(load_params(args.params)))
    return run_command("predict", lambda: _tool_main(args))


def _stage_main(params: Params) -> int:
    files = run_stage(params)
    print(f"wrote {len(files)} maps to {params.predict.output}")
    if tracking_enabled(params):
        from salgan.tracking.runs import record_prediction

        record_prediction(params, files)
    return 0


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
    if is_s3(args.output) or any(is_s3(text) for text in args.inputs):
        return _batch_main(args, generator, size, options, device, model)
    jobs, errors = collect(args.inputs, exclude=args.output)
    written, failed = predict_files(generator, jobs, args.output, size, options, args.overlay, device)
    errors += failed
    for error in errors:
        print(f"salgan predict: skipped {error}", file=sys.stderr)
    print(f"wrote {written} maps to {args.output}" + (f"; {len(errors)} inputs failed" if errors else ""))
    return 1 if errors else 0


def _batch_main(args, generator, size, options: PredictParams, device, model: str) -> int:
    """S3 inputs or output: salgan/batch.py, one batch in memory at a time, a manifest at the end."""
    import itertools

    from salgan import batch
    from salgan.fetch import s3_client

    client = s3_client()
    local = [text for text in args.inputs if not batch.is_s3(text)]
    items, errors = batch.local_items(local, None if batch.is_s3(args.output) else args.output) if local else ([], [])
    listings = [batch.s3_items(client, text) for text in args.inputs if batch.is_s3(text)]
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
