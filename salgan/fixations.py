"""Reading SALICON fixation files (docs/reference.md §2, docs/data-layout.md).

A SALICON ``.mat`` file holds ``image`` (the name), ``resolution`` = [rows, cols] and ``gaze``, a struct
array with one entry per observer whose fields are ``location`` (raw mouse samples, N x 2), ``timestamp``
(N x 1) and ``fixations`` (K x 2). Coordinates are [x, y] and 1-based, as MATLAB indexes.

``scipy.io.loadmat`` returns that struct in several shapes depending on its options and on the data
(``squeeze_me`` turns a single observer into a 0-d array, a single fixation into shape (2,), an empty one
into shape (0,) or (0, 0); ``struct_as_record=False`` gives ``mat_struct`` objects instead of records), so
the parsing below accepts every variant rather than trusting one.
"""

from __future__ import annotations

import io
import math
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


def load_fixations_mat(path: str | Path, max_fixations: int) -> FixationFile:
    """Read a SALICON fixation file.

    ``coords`` is int32 (K, 2), the 0-based (row, col) of every fixation of every observer in file order.
    ``.mat`` files are zlib-compressed (a few hundred KB can hold gigabytes): what scipy reads is never more
    than a bound derived from ``max_fixations`` (:func:`bounded_mat_bytes`), and a file holding more
    fixations than ``max_fixations`` is refused. Raises :class:`FixationFileError` naming ``path``.
    """
    path = Path(path)
    limit = max(MIN_MAT_BYTES, max_fixations * BYTES_PER_FIXATION)
    try:
        source = bounded_mat_bytes(path, limit)
        mat = scipy.io.loadmat(source, squeeze_me=False, struct_as_record=True)
    except FileNotFoundError:
        raise FixationFileError(f"{path}: no such fixation file") from None
    except FixationFileError:
        raise
    # loadmat raises many types for damaged input (ValueError, TypeError, MatReadError, and
    # NotImplementedError for v7.3/HDF5 files); all of them mean "not a usable SALICON file".
    except Exception as exc:  # noqa: BLE001
        raise FixationFileError(f"{path}: cannot read MATLAB file: {type(exc).__name__}: {exc}") from None
    parsed = fixations_from_mat(mat, source=path)
    if len(parsed.coords) > max_fixations:
        raise FixationFileError(f"{path}: {len(parsed.coords)} fixations, over prepare.max_fixations {max_fixations}")
    return parsed


def bounded_mat_bytes(path: Path, limit: int) -> io.BytesIO | Path:
    """What scipy may read of ``path``: at most ``limit`` bytes, decompressed here, never by scipy.

    A MAT v5 file is a 128-byte header and top-level elements, each an 8-byte tag (type, size) and ``size``
    bytes, the next element following at once (scipy's ``read_var_header``: no padding at this level); a
    type-15 element holds a zlib stream of one variable. Each is inflated through ``decompressobj`` with
    ``max_length``, so a bomb stops at the limit, and the file is handed to scipy rebuilt with every variable
    uncompressed. Its variables are then walked as scipy reads them (:class:`_MatWalk`) so that no array
    scipy allocates from declared dimensions (cells, structs, chars) can outgrow the bytes present. Files
    of other versions (v4, read as stored; v7.3, refused by scipy) are returned as their path.
    """
    refused = (
        f"{path}: decompresses to more than {limit} bytes (prepare.max_fixations allows {limit // BYTES_PER_FIXATION})"
    )
    size = path.stat().st_size  # FileNotFoundError: named by the caller
    if size > limit:
        raise FixationFileError(f"{refused}; refused before loading")
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    # scipy's matfile_version: v4 has a zero in its first 4 bytes; v5 (1) and v7.3 (2) a version at 124
    if len(data) < 128 or 0 in data[:4] or data[126:128] not in (b"IM", b"MI") or data[124 + (data[126] == 73)] != 1:
        return path  # not MAT v5: read as stored (v4 holds no compressed data) or refused by loadmat
    order = "<" if data[126:128] == b"IM" else ">"
    parts, total, position = [data[:128]], 128, 128
    while position < len(data):
        if position + 8 > len(data):
            raise FixationFileError(f"{path}: truncated MAT file (an element tag at byte {position} is cut off)")
        kind, count = struct.unpack(order + "II", data[position : position + 8])
        body = data[position + 8 : position + 8 + count]
        if kind == MI_COMPRESSED:
            try:
                element = _inflate(body, limit - total + 1)
            except zlib.error as exc:
                raise FixationFileError(
                    f"{path}: a compressed variable at byte {position} is damaged ({exc})"
                ) from None
            if total + len(element) > limit:
                raise FixationFileError(f"{refused}; refused before loading")
            if len(element) < 8:
                raise FixationFileError(f"{path}: a compressed variable at byte {position} holds no element")
            # Its size as inflated: scipy then reads exactly what the stream held, and the next element after it.
            element[4:8] = struct.pack(order + "I", len(element) - 8)
        else:
            element = data[position : position + 8 + count]
        total += len(element)
        if total > limit:
            raise FixationFileError(f"{refused}; refused before loading")
        parts.append(element)
        position += 8 + count
    rebuilt = b"".join(parts)
    _MatWalk(rebuilt, order, path).variables()
    return io.BytesIO(rebuilt)


def _inflate(compressed: bytes, most: int) -> bytearray:
    """At most ``most`` bytes of a zlib stream, inflated a megabyte at a time (never more held)."""
    inflater, out, pending = zlib.decompressobj(), bytearray(), compressed
    while pending and len(out) < most and not inflater.eof:
        out += inflater.decompress(pending, min(1 << 20, most - len(out)))
        pending = inflater.unconsumed_tail
    return out


class _MatWalk:
    """The variables of an uncompressed MAT v5 file walked in scipy's order (``_mio5_utils.pyx``:
    ``read_header``, ``array_from_header``, ``read_element``), checking before scipy allocates: a cell or
    struct array of N elements needs N tagged elements (8 bytes each at least) still in the file, a
    fieldless struct or empty char array the same; deep nesting and MATLAB classes that fixation files never
    hold (functions, opaque objects) are refused."""

    MAX_DEPTH = 16
    NUMERIC = range(6, 16)  # mxDOUBLE_CLASS .. mxUINT64_CLASS
    CELL, STRUCT, OBJECT, CHAR, SPARSE = 1, 2, 3, 4, 5

    def __init__(self, data: bytes, order: str, path: Path):
        self.data, self.order, self.path = data, order, path
        self.pair = struct.Struct(order + "II")

    def variables(self) -> None:
        position = 128
        while position < len(self.data):
            count = self._u4s(position)[1]
            self._matrix(position, 0)
            position += 8 + count

    def _fail(self, reason: str):
        raise FixationFileError(f"{self.path}: {reason}; refused before loading")

    def _u4s(self, position: int) -> tuple[int, int]:
        if position + 8 > len(self.data):
            self._fail("truncated MAT file (an element runs past its end)")
        return self.pair.unpack_from(self.data, position)

    def _element(self, position: int) -> tuple[int, bytes, int]:
        """(type, data, next position) of a data element, small (4 bytes in the tag) or full (padded to 8)."""
        kind, count = self._u4s(position)
        if kind >> 16:  # small data element: the byte count in the upper half of the type
            small = kind >> 16
            if small > 4:
                self._fail("a small data element declares more than 4 bytes")
            return kind & 0xFFFF, self.data[position + 4 : position + 4 + small], position + 8
        end = position + 8 + count
        if end > len(self.data):
            self._fail(f"an element at byte {position} declares {count} bytes, more than the file holds")
        return kind, self.data[position + 8 : end], end + (-count % 8)

    def _matrix(self, position: int, depth: int) -> int:
        """Walk one miMATRIX element; returns where scipy reads next."""
        if depth > self.MAX_DEPTH:
            self._fail(f"variables nested more than {self.MAX_DEPTH} deep")
        kind, count = self._u4s(position)
        if kind != 14:  # miMATRIX
            self._fail(f"expected a matrix element at byte {position}, found type {kind}")
        if count == 0:
            return position + 8
        flags = self._u4s(position + 16)[0]
        mclass, is_complex = flags & 0xFF, flags >> 11 & 1
        _, dims_data, position = self._element(position + 24)
        dims = struct.unpack(f"{self.order}{len(dims_data) // 4}i", dims_data[: len(dims_data) // 4 * 4])
        if any(d < 0 for d in dims):
            self._fail(f"negative dimensions {list(dims)}")
        _, _, position = self._element(position)  # the name
        length = math.prod(dims)
        if mclass in self.NUMERIC:
            for _ in range(1 + is_complex):
                position = self._element(position)[2]
        elif mclass == self.SPARSE:
            for _ in range(3 + is_complex):
                position = self._element(position)[2]
        elif mclass == self.CHAR:
            _, text, position = self._element(position)
            if not text:  # scipy fills an empty char array's declared size with spaces
                self._room(length, position)
        elif mclass == self.CELL:
            self._room(length, position)
            for _ in range(length):
                position = self._matrix(position, depth + 1)
        elif mclass in (self.STRUCT, self.OBJECT):
            if mclass == self.OBJECT:
                position = self._element(position)[2]  # the class name
            _, name_length, position = self._element(position)
            _, names, position = self._element(position)
            width = struct.unpack(self.order + "i", name_length[:4])[0] if len(name_length) >= 4 else 0
            if width <= 0:
                self._fail("a struct's field-name length is not positive")
            fields = len(names) // width
            self._room(length * max(fields, 1), position)
            for _ in range(length * fields):
                position = self._matrix(position, depth + 1)
        else:
            self._fail(f"MATLAB class {mclass} (a function or opaque object) has no place in a fixation file")
        return position

    def _room(self, elements: int, position: int) -> None:
        """``elements`` tagged elements must still fit in the file: scipy allocates them before reading."""
        if elements * 8 > len(self.data) - position:
            self._fail(
                f"an array declares {elements} elements, more than the {len(self.data) - position} bytes left hold"
            )


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
