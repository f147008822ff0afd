"""``package.format: mit-tuebingen-density``: a density model's submission to the MIT/Tuebingen benchmark.

The benchmark (saliency.tuebingen.ai; matthias-k/saliency-benchmarking, ``models.ModelFromArchive``) takes a
zip of one prediction per test image, found by the image's file stem, and reads a ``.npy`` file as the
model's log-density at the image's own size, refusing one whose ``logsumexp`` is not within 0.01 of 0.
Here the archive ``log_densities.zip`` holds ``<name>.npy`` (float32, numpy's format, no pickle) for every
image of the prepared test split, predicted from the model at the image's original size
(:mod:`salgan.density.inference`). Each is checked (finite, |logsumexp| <= 0.01, the image's (H, W), the
expected name) before the archive is written, and the written archive is read back through
:func:`validate_archive`, the validator anyone can run on an archive before uploading it.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from salgan.density.metrics import normalisation_problem
from salgan.layout import read_split

ARCHIVE = "log_densities.zip"
NPY_HEADER_BYTES = 4096  # an .npy header of a 2-D float array takes 128 bytes; more is not a log-density
MAX_LISTED = 5


class SubmissionError(ValueError):
    """An archive or a log-density the benchmark would refuse; the message names the files and reasons."""


def member_problem(name: str, data: bytes, shape: tuple[int, int]) -> str | None:
    """Why ``data`` (an archive member's bytes) is not the log-density ``name`` of an (H, W) image, or None."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # a damaged or pickled file: numpy's errors vary, each means "not an .npy array"
        return f"{name}: not a numpy .npy array ({type(exc).__name__}: {exc})"
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        return f"{name}: expected a float array, got {getattr(array, 'dtype', type(array).__name__)}"
    problem = normalisation_problem(array, shape)
    if problem is None and not np.isfinite(array).all():
        problem = "holds -inf values (a zero probability: the log-likelihood of a fixation there is -inf)"
    return f"{name}: {problem}" if problem else None


def validate_archive(archive: str | Path, names: Sequence[str], sizes: Mapping[str, tuple[int, int]]) -> list[str]:
    """Check that ``archive`` holds exactly ``<name>.npy`` for each of ``names``, each a normalised finite
    float log-density of that image's ``sizes[name]`` = (W, H); return the members in name order. Member
    sizes are checked from the zip's directory before anything is inflated (at most the float64 array and
    its header). Raises :class:`SubmissionError` listing the problems (the first few of each kind)."""
    path = Path(archive)
    try:
        handle = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise SubmissionError(f"{path}: not a readable zip archive ({exc})") from None
    with handle:
        infos = {info.filename: info for info in handle.infolist() if not info.is_dir()}
        wanted = {f"{name}.npy": name for name in names}
        missing = [member for member in wanted if member not in infos]
        unexpected = sorted(set(infos) - set(wanted))
        bad = []
        for member, name in wanted.items():
            if member not in infos:
                continue
            width, height = (int(s) for s in sizes[name])
            if infos[member].file_size > 8 * width * height + NPY_HEADER_BYTES:
                bad.append(f"{member}: {infos[member].file_size} bytes, more than a {height}x{width} array holds")
                continue
            problem = member_problem(member, handle.read(member), (height, width))
            if problem:
                bad.append(problem)
    problems = []
    if missing:
        problems.append(_listing(f"{len(missing)} of {len(wanted)} log-densities missing", missing))
    if unexpected:
        problems.append(_listing(f"{len(unexpected)} unexpected member(s)", unexpected))
    if bad:
        problems.append(_listing(f"{len(bad)} invalid log-densit{'y' if len(bad) == 1 else 'ies'}", bad))
    if problems:
        raise SubmissionError(f"{path}: not a MIT/Tuebingen density submission: " + "; ".join(problems))
    return sorted(wanted)


def _listing(headline: str, items: Sequence[str]) -> str:
    more = f", and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"{headline}: {', '.join(items[:MAX_LISTED])}{more}"


def write_archive(path: Path, generator, data: str | Path, batch_size: int) -> int:
    """Predict the prepared test split's log-densities and write them into the zip at ``path``, each checked
    before it is added (a failing one stops the whole archive); returns how many were written."""
    from salgan.density.inference import log_densities

    test = read_split(data, "test", stream=True)
    predicted = log_densities(generator, test.images, test.original_sizes, batch_size)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, size, log_density in zip(test.names, test.original_sizes, predicted, strict=True):
            array = log_density.astype(np.float32)
            problem = normalisation_problem(array, (int(size[0]), int(size[1])))
            if problem is None and not np.isfinite(array).all():
                problem = "holds -inf values"
            if problem:
                raise SubmissionError(f"{name}: the model's log-density {problem}; no archive written")
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            archive.writestr(f"{name}.npy", buffer.getvalue())
    return len(test.names)
