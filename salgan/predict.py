"""The ``predict`` stage: saliency maps for the prepared test split.

Every test image of the prepared data (``train.data``) is predicted with ``<train.output>/generator.pt``
and written to ``<predict.output>/<name>.png``, 8-bit grey at the image's original size (640x480 for
SALICON), post-processed as the original code (bicubic resize, 5x5 Gaussian blur:
:mod:`salgan.inference`). The folder is written beside the old one and swapped in only when complete. A
dataset without a test split (MIT1003 without ``download.test_source``) leaves the folder empty and says so.

DVC runs it as ``python -m salgan.predict``; ``salgan predict`` without INPUTS runs it too (with INPUTS,
``salgan predict`` is the tool for your own images: salgan/predict_tool.py).
"""

from __future__ import annotations

from pathlib import Path

from salgan.cli import command_parser, run_command
from salgan.datasets import no_test_split
from salgan.inference import write_split_maps
from salgan.layout import ModelFiles, atomic_directory
from salgan.models import load_generator
from salgan.settings import Params, load_params
from salgan.tracking import enabled as tracking_enabled


def run_stage(params: Params) -> list[Path]:
    """Maps for the prepared test split, swapped into predict.output when complete."""
    output = Path(params.predict.output)
    if no_test_split(params.train.data):
        with atomic_directory(output):  # an empty folder: DVC's output exists, and no old map stays in it
            return []
    generator = load_generator(ModelFiles(Path(params.train.output)).generator).generator
    with atomic_directory(output) as tmp:  # the folder is swapped in only when every map is written
        names = write_split_maps(generator, Path(params.train.data), "test", tmp, params.predict)
    return [output / f"{name}.png" for name in names]


def stage_main(params: Params) -> int:
    files = run_stage(params)
    print(no_test_split(params.train.data) or f"wrote {len(files)} maps to {params.predict.output}")
    if tracking_enabled(params):
        from salgan.tracking.runs import record_prediction  # MLflow: imported only when it is on

        record_prediction(params, files)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m salgan.predict`` (exit statuses: salgan/cli.py)."""
    parser = command_parser(
        "predict",
        "The predict stage: maps for the test split of the prepared data (train.data), from the generator in "
        "train.output, written into predict.output. salgan predict INPUTS... predicts your own images.",
    )
    args = parser.parse_args(argv)
    return run_command("predict", lambda: stage_main(load_params(args.params)))


if __name__ == "__main__":
    raise SystemExit(main())
