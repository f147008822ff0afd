"""The ``package`` stage: the submission archive, SALICON challenge's or MIT/Tuebingen's, with a manifest beside it.

``package.output`` is a folder holding the archive and ``manifest.json`` (what the archive holds, and the
model and settings that produced it); the archive itself holds only what the server reads. Two formats
(docs/reference.md §2), chosen by ``package.format``:

- ``2017`` (CodaLab SALICON 2017, scored with the MIT benchmark code): ``submission.zip`` with one 8-bit
  grey PNG per test image at the image's original size (640x480 in SALICON), named as the image
  (``COCO_test2014_000000000001.png``).
- ``2015`` (salicon.net, MS COCO-style server): ``results.zip`` (the name the server expects) holding
  ``fixations_val2014_{algorithm}_results.json`` and ``fixations_test2014_{algorithm}_results.json``, each a
  JSON list of ``{"image_id": int, "saliency_map": base64 of the PNG bytes}`` where ``image_id`` is the
  number ending the COCO name. The val maps are predicted here with the model, by the predict stage's code.

- ``mit-tuebingen`` (the MIT/Tuebingen saliency benchmark, salgan/benchmark.py): ``saliency_maps.zip`` with
  ``<name>.png`` per test image at its size (CAT2000's names hold their category, ``Action/001.png``), and
  the submission's ``config.yaml`` beside it.

The maps are validated (count, names, 8-bit grey, size) before anything is written, and the folder is
written beside the old one and swapped in only when complete. A dataset without a test split gets only a
manifest saying so.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from salgan import benchmark
from salgan.cli import command_parser, run_command
from salgan.datasets import no_test_split, prepared_dataset
from salgan.density.submission import ARCHIVE, SubmissionError, validate_archive, write_archive
from salgan.errors import InputError
from salgan.layout import ModelFiles, atomic_directory, json_digest, read_split, sha256_file
from salgan.settings import load_params, to_dict

if TYPE_CHECKING:
    from salgan.settings import Params

ARCHIVES = {
    "2017": "submission.zip",
    "2015": "results.zip",
    "mit-tuebingen": "saliency_maps.zip",
    "mit-tuebingen-density": "log_densities.zip",
}
MANIFEST = "manifest.json"
MAX_LISTED = 5  # problems of one kind shown in an error message; the count says how many more
ALGORITHM_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")


class PackageError(InputError):
    """The archive cannot be built; the message names the offending file or key."""


# --- validation ------------------------------------------------------------------------------------


def validate_predictions(
    pred_dir: str | Path,
    expected_names: Sequence[str],
    expected_size: tuple[int, int] | Mapping[str, tuple[int, int]] = (640, 480),
) -> list[Path]:
    """Check that ``pred_dir`` holds exactly one valid PNG per expected name; return them in name order.

    ``expected_size`` is (W, H) for every image or a mapping name -> (W, H). Each file must be
    ``{name}.png``, a PNG in mode 'L' (8-bit grey) of that size. Hidden files are ignored; any other file
    is unexpected. Raises ``ValueError`` listing the problems (the first few of each kind).
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise ValueError(f"{pred_dir}: predictions folder not found")
    present = {p.name: p for p in pred_dir.iterdir() if not p.name.startswith(".")}
    wanted = [f"{name}.png" for name in expected_names]
    missing = [f for f in wanted if f not in present]
    unexpected = sorted(set(present) - set(wanted))
    bad = []
    for name, file in zip(expected_names, wanted, strict=True):
        problem = _check_png(present[file], _size_for(expected_size, name)) if file in present else None
        if problem:
            bad.append(problem)
    problems = [f"{len(present)} file(s) for {len(wanted)} test images"] if len(present) != len(wanted) else []
    if missing:
        problems.append(_listing(f"{len(missing)} of {len(wanted)} expected maps missing", missing))
    if unexpected:
        problems.append(_listing(f"{len(unexpected)} unexpected file(s)", unexpected))
    if bad:
        problems.append(_listing(f"{len(bad)} invalid map(s)", bad))
    if problems:
        raise ValueError(f"{pred_dir}: predictions do not match the test split: " + "; ".join(problems))
    return [present[f] for f in wanted]


def _size_for(expected_size: tuple[int, int] | Mapping[str, tuple[int, int]], name: str) -> tuple[int, int]:
    if isinstance(expected_size, Mapping):
        return tuple(expected_size[name])
    return tuple(expected_size)


def _check_png(path: Path, size: tuple[int, int]) -> str | None:
    """Why ``path`` is not an 8-bit grey PNG of ``size`` (W, H), or None when it is."""
    try:
        with Image.open(path) as img:
            fmt, mode, actual = img.format, img.mode, img.size
            img.verify()  # checksums every chunk without decoding the pixels
    # Pillow reports damaged files with several exception types; each makes the map unusable.
    except Exception as exc:  # noqa: BLE001
        return f"{path.name} unreadable ({type(exc).__name__}: {exc})"
    if fmt != "PNG":
        return f"{path.name} is {fmt}, not PNG"
    if mode != "L":
        return f"{path.name} has mode {mode}, expected L (8-bit grey)"
    if actual != size:
        return f"{path.name} is {actual[0]}x{actual[1]}, expected {size[0]}x{size[1]}"
    return None


def _listing(headline: str, items: Sequence[str]) -> str:
    more = f", and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"{headline}: {', '.join(items[:MAX_LISTED])}{more}"


# --- the test split and the manifest ---------------------------------------------------------------


def load_split_names(data_dir: str | Path, split: str = "test") -> tuple[list[str], dict[str, tuple[int, int]]]:
    """Names of a prepared split and each image's original (W, H)."""
    arrays = read_split(data_dir, split, stream=True)
    sizes = {name: (int(w), int(h)) for name, (h, w) in zip(arrays.names, arrays.original_sizes, strict=True)}
    return arrays.names, sizes


def image_id(name: str) -> int:
    """The COCO image id ending a SALICON name: ``COCO_test2014_000000000042`` -> 42."""
    match = re.search(r"(\d+)$", name)
    if not match:
        raise PackageError(f"{name}: no COCO image id at the end of the name")
    return int(match.group(1))


def params_sha256(params: Params) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of the resolved settings."""

    return json_digest(to_dict(params))


def package_version() -> str:
    """The installed ``salgan`` distribution's version, or ``unknown`` when running from a bare tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("salgan")
    except PackageNotFoundError:
        return "unknown"


def make_manifest(params: Params, model: Path, counts: dict[str, int], members: list[str]) -> dict[str, Any]:
    """What the archive holds and which model and settings produced it."""
    return {
        "format": params.package.format,
        "algorithm": params.package.algorithm,
        "archive": ARCHIVES[params.package.format],
        "members": members if params.package.format == "2015" else f"{counts['test']} PNG maps",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "package_version": package_version(),
        "model": {"path": str(model), "sha256": sha256_file(model)},
        "params_sha256": params_sha256(params),
        "counts": counts,
    }


# --- the archives ----------------------------------------------------------------------------------


def results_member(algorithm: str, split: str) -> str:
    """Name of a 2015 results file inside the zip; ``algorithm`` must be safe in a file name."""
    if not ALGORITHM_PATTERN.fullmatch(algorithm):
        raise PackageError(f"package.algorithm: use letters, digits, '_', '-' or '.', got {algorithm!r}")
    return f"fixations_{split}2014_{algorithm}_results.json"


def write_2017(archive: zipfile.ZipFile, files: Sequence[Path]) -> None:
    """One PNG per test image, copied byte for byte; stored, since PNG is already compressed."""
    for path in files:
        archive.write(path, arcname=path.name, compress_type=zipfile.ZIP_STORED)


def write_2015(archive: zipfile.ZipFile, files: Sequence[Path], member: str) -> None:
    """One JSON list, streamed entry by entry so 5,000 base64 maps never sit in memory together."""
    with archive.open(member, "w", force_zip64=True) as handle:
        handle.write(b"[")
        for i, path in enumerate(files):
            entry = {
                "image_id": image_id(path.stem),
                "saliency_map": base64.b64encode(path.read_bytes()).decode(),
            }
            handle.write((",\n" if i else "\n").encode() + json.dumps(entry).encode())
        handle.write(b"\n]\n")


def validated_maps(folder: Path, data: str | Path, split: str, with_ids: bool) -> list[Path]:
    """The maps of ``folder``, one valid PNG per image of the prepared ``split``, in name order; with
    ``with_ids`` every name must end in a COCO image id (checked before anything is written)."""
    names, sizes = load_split_names(data, split)
    if with_ids:
        for name in names:
            image_id(name)
    try:
        return validate_predictions(folder, names, sizes)
    except ValueError as exc:
        raise PackageError(str(exc)) from None


def package(
    params: Params, predictions: str | Path, model: str | Path, val_predictions: str | Path | None = None
) -> dict[str, Any]:
    """Validate the maps and write the archive and its manifest into ``package.output``; return the
    manifest. For the 2015 format the val maps come from ``val_predictions`` or are predicted with
    ``model``."""
    predictions, model, fmt = Path(predictions), Path(model), params.package.format
    if fmt == "mit-tuebingen-density":  # log-densities predicted from the model (salgan/density/submission.py)
        if not model.is_file():
            raise PackageError(f"{model}: model file not found (pass --model)")
        return _package_density(params, model)
    if fmt == "mit-tuebingen" or no_test_split(params.train.data):
        return package_benchmark(params, predictions, model)
    dataset = prepared_dataset(params.train.data)
    if dataset != "salicon":
        raise PackageError(
            f"package.format {fmt} is the SALICON challenge's; the {dataset} test split is packaged for the "
            "MIT/Tuebingen benchmark: set package.format to mit-tuebingen"
        )
    members = [results_member(params.package.algorithm, split) for split in ("val", "test")] if fmt == "2015" else []
    test_files = validated_maps(predictions, params.train.data, "test", with_ids=fmt == "2015")
    if not model.is_file():
        raise PackageError(f"{model}: model file not found (pass --model)")
    with atomic_directory(params.package.output) as staging:
        counts = {"test": len(test_files)}
        scratch = staging / ".val-maps"  # inside the staging folder: a killed run's is removed with it
        scratch.mkdir()
        with zipfile.ZipFile(staging / ARCHIVES[fmt], "w", compression=zipfile.ZIP_DEFLATED) as archive:
            if fmt == "2017":
                write_2017(archive, test_files)
            else:
                val_folder = _val_maps(params, model, val_predictions, scratch)
                val_files = validated_maps(val_folder, params.train.data, "val", with_ids=True)
                counts["val"] = len(val_files)
                write_2015(archive, val_files, members[0])
                write_2015(archive, test_files, members[1])
        shutil.rmtree(scratch, ignore_errors=True)
        manifest = make_manifest(params, model, counts, members)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _package_density(params, model: Path) -> dict[str, Any]:
    """The ``package`` stage for ``mit-tuebingen-density``: ``log_densities.zip`` of the test split from the
    density model at ``model``, validated, with ``manifest.json`` beside it; returns the manifest."""
    from salgan.models import load_generator
    from salgan.models.density import output_of

    try:
        generator = load_generator(model).generator
    except Exception as exc:  # not a weights file, or not a generator
        raise PackageError(f"{model}: cannot predict log-densities with it ({type(exc).__name__}: {exc})") from None
    if output_of(generator) != "density":
        raise PackageError(f"{model}: a saliency-map model; package.format mit-tuebingen-density needs a density model")
    names, sizes = load_split_names(params.train.data, "test")
    with atomic_directory(params.package.output) as staging:
        try:
            count = write_archive(staging / ARCHIVE, generator, params.train.data, params.predict.batch_size)
            members = validate_archive(staging / ARCHIVE, names, sizes)
        except SubmissionError as exc:
            raise PackageError(str(exc)) from None
        manifest = make_manifest(params, model, {"test": count}, members)
        manifest["members"] = f"{count} .npy log-densities"
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def package_benchmark(params: Params, predictions: Path, model: Path) -> dict[str, Any]:
    """``package.format: mit-tuebingen`` (salgan/benchmark.py): one map per test image, ``<name>.png`` at the
    image's size, in an archive checked against the benchmark's own matching before it is written, with the
    submission's config.yaml beside it; or, for a dataset without a test split, only a manifest saying so."""
    note = no_test_split(params.train.data)
    names, sizes = ([], {}) if note else load_split_names(params.train.data, "test")
    files = {benchmark.member_name(name): predictions / benchmark.member_name(name) for name in names}
    if not note:
        present = {p.relative_to(predictions).as_posix() for p in predictions.rglob("*") if p.is_file()}
        missing = sorted(set(files) - present)
        if missing or not predictions.is_dir():
            raise PackageError(
                f"{predictions}: {len(missing)} of {len(files)} test maps missing ({', '.join(missing[:MAX_LISTED])}); "
                "run the predict stage"
            )
    if not model.is_file():
        raise PackageError(f"{model}: model file not found (pass --model)")
    with atomic_directory(params.package.output) as staging:
        if note:
            manifest = make_manifest(params, model, {"test": 0}, []) | {"archive": None, "note": note}
        else:
            try:
                benchmark.write_archive(staging / benchmark.ARCHIVE, files, sizes)
            except benchmark.ArchiveProblem as exc:
                raise PackageError(f"{predictions}: {exc}") from None
            manifest = make_manifest(params, model, {"test": len(names)}, [])
            config = benchmark.config_yaml(params.package.algorithm, prepared_dataset(params.train.data))
            if config:
                (staging / benchmark.CONFIG).write_text(config)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _val_maps(params: Params, model: Path, given: str | Path | None, scratch: Path) -> Path:
    """The folder of val maps: the given one, or the model's predictions written into ``scratch``."""
    if given is not None:
        return Path(given)
    from salgan.inference import write_split_maps
    from salgan.models import load_generator

    try:
        generator = load_generator(model).generator
    except Exception as exc:  # not a weights file, or not a generator: both mean no val maps
        raise PackageError(f"{model}: cannot predict the val maps with it ({type(exc).__name__}: {exc})") from None
    write_split_maps(generator, Path(params.train.data), "val", scratch, params.predict)
    return scratch


# --- command line ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``salgan package`` (exit statuses: salgan/cli.py)."""

    parser = command_parser(
        "package",
        "Build the submission in the package.output folder: format 2017 (CodaLab SALICON: "
        "submission.zip of one 8-bit grey PNG per test image, named as the image), 2015 (salicon.net: "
        "results.zip with the val and test results JSON, base64 PNGs) or mit-tuebingen (the MIT/Tuebingen "
        "benchmark: saliency_maps.zip and config.yaml). manifest.json beside the archive records the model "
        "and settings hashes.",
    )
    parser.add_argument("--predictions", help="folder of test-split PNGs (default: params predict.output)")
    parser.add_argument(
        "--val-predictions", help="2015 only: folder of val-split PNGs (default: predicted with --model)"
    )
    parser.add_argument("--model", help="model file hashed into the manifest (default: {train.output}/generator.pt)")
    args = parser.parse_args(argv)

    def work() -> int:
        params = load_params(args.params)
        predictions = args.predictions or params.predict.output
        model = args.model or ModelFiles(Path(params.train.output)).generator
        manifest = package(params, predictions, model, args.val_predictions)
        if manifest["archive"] is None:
            print(f"package: {manifest['note']}")
            return 0
        counts = ", ".join(f"{n} {split}" for split, n in manifest["counts"].items())
        archive = Path(params.package.output) / manifest["archive"]
        print(f"package: {counts} maps, format {manifest['format']} -> {archive} (manifest beside it)")
        return 0

    return run_command("package", work)


if __name__ == "__main__":
    raise SystemExit(main())
