"""Prefect flow ``salgan-batch-predict``: maps for every image under an S3 prefix, from a registered model.

It runs ``salgan predict --model MODEL --output OUTPUT IMAGES`` (salgan/batch.py: one batch in memory at a
time, maps tagged with the model's weights so that a rerun skips what the same model wrote, a
``manifest.json`` at the end) on a worker of the ``gpu`` pool, holding a GPU slot as the pipeline's GPU
stages do. Its parameters are untrusted input (anyone who reaches the Prefect API can set them): the
locations must be plain ``s3://bucket/prefix`` URLs and the model a registry URI, checked before anything
runs, and the command is an argument list, never a shell line.

    python -m flows.batch_predict s3://bucket/images s3://bucket/maps [--model models:/salgan@champion]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.pipeline import checked_workdir, gpu_slot
from flows.processes import run_streaming
from salgan.cli import python_tool, run_command
from salgan.errors import ConfigError
from salgan.urls import REGISTRY_URI, S3_LOCATION

DEFAULT_MODEL = "models:/salgan@champion"


def batch_predict_command(images: str, output: str, model: str = DEFAULT_MODEL, overlay: bool = False) -> list[str]:
    """The ``salgan predict`` argument list, each parameter checked; raises :class:`ConfigError` (a
    ValueError) naming the bad one."""
    for name, value, pattern, form in (
        ("images", images, S3_LOCATION, "s3://bucket/prefix"),
        ("output", output, S3_LOCATION, "s3://bucket/prefix"),
        ("model", model, REGISTRY_URI, "models:/NAME@ALIAS or models:/NAME/VERSION"),
    ):
        if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value:
            raise ConfigError(f"{name} {value!r}: expected {form} (letters, digits and . _ - / only); refused")
    if not isinstance(overlay, bool):
        raise ConfigError(f"overlay {overlay!r}: expected true or false")
    command = [*python_tool("salgan.cli"), "predict", "--model", model, "--output", output]
    return command + (["--overlay"] if overlay else []) + [images]


@task(name="batch-predict", cache_policy=NO_CACHE)
def run_batch(command: list[str], workdir: str) -> None:
    logger = get_run_logger()
    with gpu_slot(True, "batch-predict", logger):
        run_streaming(command, workdir, "batch-predict", logger)


@flow(name="salgan-batch-predict")
def salgan_batch_predict(
    images: str, output: str, model: str = DEFAULT_MODEL, overlay: bool = False, workdir: str = "."
) -> str:
    """Predict every image under ``images`` into ``output`` with ``model``; returns the manifest's URL."""
    command = batch_predict_command(images, output, model, overlay)
    run_batch(command, checked_workdir(workdir))
    return f"{output.rstrip('/')}/manifest.json"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.batch_predict`` (exit statuses: salgan/cli.py; 1 when an image failed, as
    ``salgan predict``)."""
    parser = argparse.ArgumentParser(prog="python -m flows.batch_predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", help="s3://bucket/prefix of the images")
    parser.add_argument("output", help="s3://bucket/prefix for the maps")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"registry URI (default: {DEFAULT_MODEL})")
    parser.add_argument("--overlay", action="store_true", help="also write <name>_overlay.jpg heat maps")
    args = parser.parse_args(argv)

    def work() -> int:
        print(salgan_batch_predict(args.images, args.output, args.model, args.overlay))
        return 0

    return run_command("batch-predict", work, prog=parser.prog)


if __name__ == "__main__":
    raise SystemExit(main())
