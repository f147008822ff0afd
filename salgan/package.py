"""The ``package`` stage: the SALICON challenge submission archive, with a manifest.

Two formats (REFERENCE §2), chosen by ``package.format``:

- ``2017`` (CodaLab SALICON 2017, scored with the MIT benchmark code): a zip with one 8-bit grey PNG per
  test image at the image's original size (640x480 in SALICON), named as the image
  (``COCO_test2014_000000000001.png``), plus ``manifest.json``.
- ``2015`` (salicon.net, MS COCO-style server): a zip holding ``fixations_test2014_{algorithm}_results.json``,
  a JSON list of ``{"image_id": int, "saliency_map": base64 of the PNG bytes}`` where ``image_id`` is the
  number ending the COCO name, plus ``manifest.json``. The server expects the upload named ``results.zip``.

The predictions are validated (count, names, 8-bit grey, size) before anything is written, and the archive
is written to a temporary file that replaces ``package.output`` only when complete.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import os
import re
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from salgan.config import Params

MAX_LISTED = 5  # problems of one kind shown in an error message; the count says how many more
ALGORITHM_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")


class PackageError(RuntimeError):
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


def load_test_split(data_dir: str | Path) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """Names of the prepared test split and each image's original (W, H), from ``{data}/test``."""
    folder = Path(data_dir) / "test"
    names_file, sizes_file = folder / "names.json", folder / "original_sizes.npy"
    try:
        names = json.loads(names_file.read_text())
        sizes = np.load(sizes_file)
    except FileNotFoundError as exc:
        raise PackageError(f"{exc.filename}: not found; run the prepare stage first") from None
    except (ValueError, OSError) as exc:
        raise PackageError(f"{folder}: cannot read the prepared test split: {exc}") from None
    if not isinstance(names, list) or sizes.shape != (len(names), 2):
        raise PackageError(
            f"{folder}: names.json lists {len(names)} names but original_sizes.npy has shape {sizes.shape}"
        )
    return names, {name: (int(w), int(h)) for name, (h, w) in zip(names, sizes, strict=True)}


def image_id(name: str) -> int:
    """The COCO image id ending a SALICON name: ``COCO_test2014_000000000042`` -> 42."""
    match = re.search(r"(\d+)$", name)
    if not match:
        raise PackageError(f"{name}: no COCO image id at the end of the name")
    return int(match.group(1))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def params_sha256(params: Params) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of the resolved settings."""
    from salgan.config import to_dict

    canonical = json.dumps(to_dict(params), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def package_version() -> str:
    """The installed ``salgan`` distribution's version, or ``unknown`` when running from a bare tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("salgan")
    except PackageNotFoundError:
        return "unknown"


def make_manifest(params: Params, model: Path, count: int, archive_member: str | None) -> dict[str, Any]:
    """What the archive holds and which model and settings produced it."""
    return {
        "format": params.package.format,
        "algorithm": params.package.algorithm,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "package_version": package_version(),
        "model": {"path": str(model), "sha256": sha256_file(model)},
        "params_sha256": params_sha256(params),
        "counts": {"maps": count},
        "results_file": archive_member,
    }


# --- the archives ----------------------------------------------------------------------------------


def results_member(algorithm: str) -> str:
    """Name of the 2015 results file inside the zip; ``algorithm`` must be safe in a file name."""
    if not ALGORITHM_PATTERN.fullmatch(algorithm):
        raise PackageError(f"package.algorithm: use letters, digits, '_', '-' or '.', got {algorithm!r}")
    return f"fixations_test2014_{algorithm}_results.json"


def write_2017(archive: zipfile.ZipFile, files: Sequence[Path]) -> None:
    """One PNG per test image, copied byte for byte; stored, since PNG is already compressed."""
    for path in files:
        archive.write(path, arcname=path.name, compress_type=zipfile.ZIP_STORED)


def write_2015(archive: zipfile.ZipFile, files: Sequence[Path], member: str) -> None:
    """The JSON list, streamed entry by entry so 5,000 base64 maps never sit in memory together."""
    with archive.open(member, "w", force_zip64=True) as handle:
        handle.write(b"[")
        for i, path in enumerate(files):
            entry = {
                "image_id": image_id(path.stem),
                "saliency_map": base64.b64encode(path.read_bytes()).decode(),
            }
            handle.write((",\n" if i else "\n").encode() + json.dumps(entry).encode())
        handle.write(b"\n]\n")


def write_archive(output: Path, files: Sequence[Path], manifest: dict[str, Any]) -> None:
    """Write the zip to a temporary sibling, then rename it over ``output``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            if manifest["format"] == "2015":
                write_2015(archive, files, manifest["results_file"])
            else:
                write_2017(archive, files)
            archive.writestr("manifest.json", json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def package(params: Params, predictions: str | Path, model: str | Path) -> dict[str, Any]:
    """Validate the predictions and write the archive at ``params.package.output``; return the manifest."""
    predictions, model = Path(predictions), Path(model)
    member = results_member(params.package.algorithm) if params.package.format == "2015" else None
    names, sizes = load_test_split(params.train.data)
    if params.package.format == "2015":
        for name in names:  # every name must carry an id: fail before writing
            image_id(name)
    try:
        files = validate_predictions(predictions, names, sizes)
    except ValueError as exc:
        raise PackageError(str(exc)) from None
    if not model.is_file():
        raise PackageError(f"{model}: model file not found (pass --model)")
    manifest = make_manifest(params, model, len(files), member)
    write_archive(Path(params.package.output), files, manifest)
    return manifest


# --- command line ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="salgan package",
        description="Build the SALICON challenge submission at package.output from the test-split maps: "
        "format 2017 (CodaLab: one 8-bit grey PNG per test image, named as the image) or 2015 "
        "(salicon.net: results JSON with base64 PNGs). A manifest records the model and settings hashes.",
    )
    parser.add_argument("--params", default="params.yaml", help="settings file (default: %(default)s)")
    parser.add_argument("--predictions", help="folder of test-split PNGs (default: params predict.output)")
    parser.add_argument("--model", help="model file hashed into the manifest (default: {train.output}/generator.pt)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``salgan package``: 0 on success, 1 with a message naming the problem otherwise."""
    from salgan.config import ConfigError, load_params

    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params)
        predictions = args.predictions or params.predict.output
        model = args.model or str(Path(params.train.output) / "generator.pt")
        manifest = package(params, predictions, model)
    except (ConfigError, PackageError) as exc:
        print(f"salgan package: error: {exc}", file=sys.stderr)
        return 1
    print(f"package: {manifest['counts']['maps']} maps, format {manifest['format']} -> {params.package.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
