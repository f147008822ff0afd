"""Reading SALICON fixation files (REFERENCE §2, docs/data-layout.md).

A SALICON ``.mat`` file holds ``image`` (the name), ``resolution`` = [rows, cols] and ``gaze``, a struct
array with one entry per observer whose fields are ``location`` (raw mouse samples, N x 2), ``timestamp``
(N x 1) and ``fixations`` (K x 2). Coordinates are [x, y] and 1-based, as MATLAB indexes.

``scipy.io.loadmat`` returns that struct in several shapes depending on its options and on the data
(``squeeze_me`` turns a single observer into a 0-d array, a single fixation into shape (2,), an empty one
into shape (0,) or (0, 0); ``struct_as_record=False`` gives ``mat_struct`` objects instead of records), so
the parsing below accepts every variant rather than trusting one.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.io

MI_COMPRESSED = 15  # MAT v5 element type of zlib-compressed data
BYTES_PER_FIXATION = 256  # what one fixation may cost in a file (its location samples and timestamps too)
MIN_MAT_BYTES = 16 << 20  # the decompressed size every file may reach, whatever max_fixations


class FixationFileError(ValueError):
    """A fixation file cannot be read or does not have SALICON's layout; the message names the file."""


class FixationFile(NamedTuple):
    """A parsed fixation file: 0-based (row, col) of every fixation, the image's (rows, cols), and how
    many fixations lay outside the image (clamped to its border, and reported by the prepare stage)."""

    coords: np.ndarray
    resolution: tuple[int, int]
    outside: int


def load_fixations_mat(path: str | Path, max_fixations: int = 100_000) -> FixationFile:
    """Read a SALICON fixation file.

    ``coords`` is int32 (K, 2), the 0-based (row, col) of every fixation of every observer in file order.
    A file that would decompress to more than a bound derived from ``max_fixations`` (``.mat`` files are
    zlib-compressed: a few hundred KB can hold gigabytes) or holds more fixations than ``max_fixations``
    is refused before it can exhaust memory. Raises :class:`FixationFileError` naming ``path``.
    """
    path = Path(path)
    _check_decompressed_size(path, max(MIN_MAT_BYTES, max_fixations * BYTES_PER_FIXATION))
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=True)
    except FileNotFoundError:
        raise FixationFileError(f"{path}: no such fixation file") from None
    # loadmat raises many types for damaged input (ValueError, TypeError, MatReadError, and
    # NotImplementedError for v7.3/HDF5 files); all of them mean "not a usable SALICON file".
    except Exception as exc:  # noqa: BLE001
        raise FixationFileError(f"{path}: cannot read MATLAB file: {type(exc).__name__}: {exc}") from None
    parsed = fixations_from_mat(mat, source=path)
    if len(parsed.coords) > max_fixations:
        raise FixationFileError(f"{path}: {len(parsed.coords)} fixations, over prepare.max_fixations {max_fixations}")
    return parsed


def _check_decompressed_size(path: Path, limit: int) -> None:
    """Refuse a MAT v5 file whose compressed variables inflate past ``limit`` bytes, without inflating
    more than that: the 128-byte header, then (type, size) tagged elements, type 15 being zlib data."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(128)
            if len(header) < 128 or header[126:128] not in (b"IM", b"MI"):
                return  # not MAT v5: loadmat gives the error
            order = "<" if header[126:128] == b"IM" else ">"
            total = 0
            while tag := handle.read(8):
                if len(tag) < 8:
                    return
                kind, size = struct.unpack(order + "II", tag)
                if kind != MI_COMPRESSED:
                    total += size
                    handle.seek(size + (-size % 8), 1)
                else:
                    total += _inflated_size(handle, size, limit - total)
                if total > limit:
                    raise FixationFileError(
                        f"{path}: decompresses to more than {limit} bytes (prepare.max_fixations allows "
                        f"{limit // BYTES_PER_FIXATION}); refused before loading"
                    )
    except FileNotFoundError:
        raise FixationFileError(f"{path}: no such fixation file") from None


def _inflated_size(handle, size: int, budget: int) -> int:
    """Bytes one zlib element inflates to, counted up to ``budget + 1`` (never more held in memory)."""
    inflater, produced, left = zlib.decompressobj(), 0, size
    try:
        while left > 0 and produced <= budget:
            chunk = handle.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)
            data = inflater.decompress(chunk, max(1, budget + 1 - produced))
            produced += len(data)
            while inflater.unconsumed_tail and produced <= budget:
                data = inflater.decompress(inflater.unconsumed_tail, max(1, budget + 1 - produced))
                produced += len(data)
    except zlib.error:
        return produced  # damaged: loadmat will name the problem
    handle.seek(left, 1)
    return produced


def fixations_from_mat(mat: dict[str, Any], source: str | Path = "<mat>") -> FixationFile:
    """Parse the dict returned by ``scipy.io.loadmat`` (any ``squeeze_me``/``struct_as_record``).

    ``source`` names the file in error messages. See :func:`load_fixations_mat` for the result.
    """
    resolution = _resolution(mat, source)
    if "gaze" not in mat:
        raise FixationFileError(f"{source}: no 'gaze' variable (keys: {sorted(k for k in mat if k[:2] != '__')})")
    per_observer = [_observer_fixations(obs, source) for obs in _observers(mat["gaze"])]
    xy = np.concatenate(per_observer) if per_observer else np.zeros((0, 2))
    coords, outside = to_row_col(xy, resolution)
    return FixationFile(coords, resolution, outside)


def to_row_col(xy: np.ndarray, resolution: tuple[int, int]) -> tuple[np.ndarray, int]:
    """1-based [x, y] (float) -> 0-based (row, col) int32, rounded; those outside ``resolution`` are
    clamped to its border and counted (the count is returned, so that the prepare report shows them).

    Non-finite rows are dropped: they carry no location and would otherwise become arbitrary pixels.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    xy = xy[np.isfinite(xy).all(axis=1)]
    rows, cols = resolution
    row, col = np.rint(xy[:, 1]) - 1, np.rint(xy[:, 0]) - 1
    outside = int(np.count_nonzero((row < 0) | (row > rows - 1) | (col < 0) | (col > cols - 1)))
    coords = np.stack([np.clip(row, 0, rows - 1), np.clip(col, 0, cols - 1)], axis=1).astype(np.int32)
    return coords, outside


def fixation_counts(coords: np.ndarray, original_size: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W) map of how many of ``coords`` (0-based (row, col) in an image of ``original_size``
    (rows, cols)) fall in each pixel of the image resized to ``shape`` (rows, cols), clipped at 255.

    A pixel r of the original lies in row floor((r + 0.5) * H / H0) of the resized image (pixel centres
    map to pixel centres, as the resize of the images does)."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    (rows0, cols0), (rows, cols) = original_size, shape
    row = np.minimum(((coords[:, 0] + 0.5) * rows / rows0).astype(np.int64), rows - 1)
    col = np.minimum(((coords[:, 1] + 0.5) * cols / cols0).astype(np.int64), cols - 1)
    counts = np.bincount(row * cols + col, minlength=rows * cols).reshape(rows, cols)
    return np.minimum(counts, 255).astype(np.uint8)


def _resolution(mat: dict[str, Any], source: str | Path) -> tuple[int, int]:
    if "resolution" not in mat:
        raise FixationFileError(f"{source}: no 'resolution' variable")
    values = np.asarray(mat["resolution"]).ravel()
    if values.size != 2 or not np.all(np.isfinite(values.astype(np.float64))) or np.any(values <= 0):
        raise FixationFileError(f"{source}: 'resolution' must be [rows, cols], got {values.tolist()}")
    return int(values[0]), int(values[1])


def _observers(gaze: Any) -> list[Any]:
    """The observer entries of ``gaze`` whatever shape loadmat gave it (0-d, (N,), (1, N), (N, 1))."""
    if isinstance(gaze, np.ndarray):
        return list(gaze.ravel())
    return [gaze]  # squeeze_me=True, struct_as_record=False and a single observer: a bare mat_struct


def _observer_fixations(observer: Any, source: str | Path) -> np.ndarray:
    """One observer's fixations as float (K, 2) [x, y]; an observer without fixations gives (0, 2)."""
    value = _field(observer, "fixations", source)
    try:
        xy = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise FixationFileError(f"{source}: gaze.fixations is not numeric") from None
    if xy.size == 0:
        return np.zeros((0, 2))
    if xy.ndim == 1 and xy.size == 2:  # a single fixation, squeezed
        return xy.reshape(1, 2)
    if xy.ndim == 2 and xy.shape[1] == 2:
        return xy
    if xy.ndim == 2 and xy.shape[0] == 2:  # stored transposed (2 x K)
        return xy.T
    raise FixationFileError(f"{source}: gaze.fixations must be K x 2 [x, y], got shape {xy.shape}")


def _field(observer: Any, name: str, source: str | Path) -> Any:
    """A struct field from a record (np.void / 0-d structured array) or a ``mat_struct``."""
    names = getattr(getattr(observer, "dtype", None), "names", None)
    if names is not None:
        if name not in names:
            raise FixationFileError(f"{source}: gaze has no field '{name}' (fields: {list(names)})")
        return observer[name]
    if hasattr(observer, "_fieldnames"):
        if name not in observer._fieldnames:
            raise FixationFileError(f"{source}: gaze has no field '{name}' (fields: {observer._fieldnames})")
        return getattr(observer, name)
    raise FixationFileError(f"{source}: gaze is not a struct array (got {type(observer).__name__})")
