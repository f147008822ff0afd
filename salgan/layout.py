"""The data and artifact contract between stages: names, files, readers, atomic writes and versions.

Every stage finds its inputs and writes its outputs through this module, so a file name or a check is
written once (docs/data-layout.md describes the same layout in prose):

- the splits (:data:`SPLITS`) and a prepared split's files (:class:`SplitFiles`), read whole and checked
  by :func:`read_split` (missing files and disagreeing counts are named);
- the train stage's outputs (:class:`ModelFiles`) and the evaluate stage's reports (:class:`ReportFiles`);
- writes that a kill never leaves half done: :func:`atomic_file`, :func:`write_atomic`,
  :func:`atomic_directory`;
- content versions (short sha256 over file contents) that say which data and which code a checkpoint, a
  registered model or a report came from: :func:`split_version`, :func:`code_version` (of the training core,
  or of the scoring code).

Only the standard library and numpy are imported: the data stages need neither torch nor MLflow.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import salgan
from salgan.errors import InputError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
LABELLED_SPLITS = ("train", "val")  # with maps and fixations; the test split has images only
VERSION_CHARS = 16
REPORT_FILE = "report.json"  # data/prepared/report.json: what prepare read, skipped, and each split's version
DATA_VERSION_TAG = "data_version"  # MLflow tag: the val split's version a run's or model version's metrics are on
# Hand-over between processes: the Prefect flows and the ablation tell the stages they launch (through
# DVC) which flow run and which parent MLflow run they belong to, so that each run is tagged with them.
FLOW_RUN_ENV = "SALGAN_FLOW_RUN_ID"
PARENT_RUN_ENV = "SALGAN_MLFLOW_PARENT_RUN_ID"
# The modules whose code decides the trained weights: a change to any of them invalidates a checkpoint.
TRAINING_CORE = ("train.py", "losses.py", "data.py", "layout.py", "checkpoint.py", "distributed.py", "models")
# The modules whose code decides a validation score of given weights (the promotion gate's fingerprint): the
# generator's forward pass, the input conversion, the post-processing, the metrics and the scoring itself.
SCORING_CODE = ("evaluate.py", "scoring.py", "metrics.py", "inference.py", "data.py", "models", "density")


# --- the prepared data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitFiles:
    """The files of one prepared split (docs/data-layout.md)."""

    folder: Path

    images = property(lambda self: self.folder / "images.npy")  # uint8 (N, H, W, 3) at prepare.size
    maps = property(lambda self: self.folder / "maps.npy")  # uint8 (N, H, W); train and val
    names = property(lambda self: self.folder / "names.json")  # N base names, sorted
    original_sizes = property(lambda self: self.folder / "original_sizes.npy")  # int32 (N, 2): (H, W)
    fixations = property(lambda self: self.folder / "fixations.npz")  # coords (M, 2), offsets (N + 1); train, val
    maps_full = property(lambda self: self.folder / "maps_full.npy")  # uint8 (N, H0, W0), or flat (mixed sizes); val
    fixation_maps = property(lambda self: self.folder / "fixation_maps.npy")  # uint8 counts (N, H, W); train, val


def split_files(root: str | Path, split: str) -> SplitFiles:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; the splits are {', '.join(SPLITS)}")
    return SplitFiles(Path(root) / split)


@dataclass
class SplitArrays:
    """A prepared split as arrays (large ones memory-mapped: nothing is read until it is used)."""

    names: list[str]
    images: object  # numpy arrays; typed loosely so that this module's import stays light
    original_sizes: object
    maps: object | None = None
    maps_full: object | None = None
    fixation_maps: object | None = None
    coords: object | None = None
    offsets: object | None = None

    def __len__(self) -> int:
        return len(self.names)


class NpyRows:
    """The rows of a ``.npy`` file, read on demand with plain reads: ``rows[i]`` and ``rows[a:b]`` are
    fresh arrays, ``len`` and ``shape`` as the array's.

    For stages that stream a split once (evaluate, the gate): pages of a memory map stay mapped once
    touched and count in the process's resident memory, so a pass over a 5,000-image map file would grow
    it by the file's size; these reads keep it at one batch.
    """

    def __init__(self, path: str | Path):
        import numpy as np

        self.path = Path(path)
        with open(self.path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            self.shape, fortran, self.dtype = read_header(f)
            self.offset = f.tell()
        if fortran or self.dtype.hasobject:
            raise InputError(f"{self.path}: not a C-ordered array of plain values")
        self.row_bytes = int(self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64)))

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, index):
        import numpy as np

        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise IndexError("NpyRows: slices must be contiguous")
        else:
            start = int(index) + (len(self) if int(index) < 0 else 0)
            if not 0 <= start < len(self):
                raise IndexError(f"{self.path}: row {index} out of range ({len(self)} rows)")
            stop = start + 1
        count = max(stop - start, 0)
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * self.row_bytes)
            data = f.read(count * self.row_bytes)
        if len(data) != count * self.row_bytes:
            raise InputError(f"{self.path}: truncated (row {stop - 1} of {len(self)} is missing)")
        rows = np.frombuffer(bytearray(data), dtype=self.dtype).reshape((count, *self.shape[1:]))
        return rows if isinstance(index, slice) else rows[0]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


class FlatMaps:
    """``maps_full.npy`` of a split whose images differ in size: one flat array of every map's pixels, row
    after row; ``maps[i]`` is image i's (H_i, W_i) map, H_i and W_i from ``original_sizes``. ``flat`` is the
    file as a memory map or as :class:`NpyRows` (one span read at a time)."""

    def __init__(self, flat, sizes, path: Path):
        import numpy as np

        self.flat, self.sizes = flat, np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes[:, 0] * self.sizes[:, 1])])
        if len(flat) != self.offsets[-1]:
            raise InputError(
                f"{path}: {len(flat)} pixels, but original_sizes.npy's {len(self.sizes)} images have {self.offsets[-1]}"
            )

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"map {index} out of range ({len(self)} images)")
        index %= len(self)
        rows, cols = (int(v) for v in self.sizes[index])
        return self.flat[int(self.offsets[index]) : int(self.offsets[index + 1])].reshape(rows, cols)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def read_split(root: str | Path, split: str, *parts: str, stream: bool = False) -> SplitArrays:
    """``names``, ``images`` and ``original_sizes`` of ``root/split``, plus the optional ``parts`` (``maps``,
    ``maps_full``, ``fixations``, ``fixation_maps``). Missing files raise :class:`InputError` naming the file;
    arrays that disagree on the number of images are named too. Images are mapped copy-on-write (torch
    wants writable arrays), the other large arrays read-only; with ``stream``, the large arrays are
    :class:`NpyRows` instead, for one pass in bounded memory.
    """
    import numpy as np

    files = split_files(root, split)
    for part in ("names", "images", "original_sizes", *parts):
        if not getattr(files, part).is_file():
            raise InputError(f"{getattr(files, part)}: not found; run the prepare stage first")

    def large(path: Path, mode: str):
        return NpyRows(path) if stream else np.load(path, mmap_mode=mode)

    arrays = SplitArrays(
        names=json.loads(files.names.read_text()),
        images=large(files.images, "c"),
        original_sizes=np.load(files.original_sizes),
    )
    if "maps" in parts:
        arrays.maps = large(files.maps, "r")
    if "maps_full" in parts:
        arrays.maps_full = large(files.maps_full, "r")
        if len(arrays.maps_full.shape) == 1:  # images of mixed sizes (docs/data-layout.md)
            arrays.maps_full = FlatMaps(arrays.maps_full, arrays.original_sizes, files.maps_full)
    if "fixation_maps" in parts:
        arrays.fixation_maps = large(files.fixation_maps, "r")
    if "fixations" in parts:
        with np.load(files.fixations) as fixations:
            arrays.coords, arrays.offsets = fixations["coords"], fixations["offsets"]
    counts = {"names.json": len(arrays.names), "images.npy": len(arrays.images)}
    counts["original_sizes.npy"] = len(arrays.original_sizes)
    for part, array in (
        ("maps.npy", arrays.maps),
        ("maps_full.npy", arrays.maps_full),
        ("fixation_maps.npy", arrays.fixation_maps),
    ):
        if array is not None:
            counts[part] = len(array)
    if arrays.offsets is not None:
        counts["fixations.npz"] = len(arrays.offsets) - 1
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name} {count}" for name, count in counts.items())
        raise InputError(f"{files.folder}: the files disagree on the number of images ({listed})")
    return arrays


# --- the train and evaluate stages' outputs ---------------------------------------------------------------


@dataclass(frozen=True)
class ModelFiles:
    """The train stage's folder (``train.output``)."""

    root: Path

    generator = property(lambda self: self.root / "generator.pt")  # the trained generator's state_dict
    checkpoint = property(lambda self: self.root / "checkpoint.pt")  # machine-local: resumes training
    history = property(lambda self: self.root / "history.json")  # per-epoch losses (DVC plots)
    snapshots = property(lambda self: self.root / "snapshots")  # one val map per epoch (seed paper Fig. 3)
    run_record = property(lambda self: self.root / "mlflow_run.json")  # machine-local: the MLflow run
    lineage = property(lambda self: self.root / "lineage.json")  # the datasets trained on (salgan/finetune.py)

    def snapshot(self, epoch: int) -> Path:
        return self.snapshots / f"epoch_{epoch:03d}.png"


# history.json holds one record per epoch: ``epoch``, ``phase``, these losses (dvc.yaml's plot of them, the
# report's loss curves), the discriminator's held-out diagnostics (salgan/gan_diagnostics.py; null in BCE
# epochs; dvc.yaml's discriminator plot, the report's panel beside the losses), and the throughput and
# learning rate; MLflow logs every one of these numbers.
HISTORY_LOSSES = ("g_loss", "content_loss", "d_loss", "val_content_loss")
HISTORY_DIAGNOSTICS = ("d_accuracy", "d_real", "d_fake", "d_dead_units")
HISTORY_METRICS = (*HISTORY_LOSSES, *HISTORY_DIAGNOSTICS, "images_per_s", "lr")


# An MLflow model that salgan logged: MLmodel's metadata.kind, and the plain weights inside the model folder
# (the only file salgan reads back from a model: torch.load with weights_only, nothing unpickled or run).
MODEL_KIND = "salgan-generator"
LOGGED_WEIGHTS = "extra_files/generator.pt"


@dataclass(frozen=True)
class ReportFiles:
    """The evaluate stage's folder (``evaluate.output``)."""

    root: Path

    metrics = property(lambda self: self.root / "metrics.json")  # means, data version, baselines (DVC metrics)
    per_image = property(lambda self: self.root / "per_image.csv")
    examples = property(lambda self: self.root / "examples.png")  # the seed paper's Fig. 4
    progression = property(lambda self: self.root / "progression.png")  # its Fig. 3, one grid
    progression_gif = property(lambda self: self.root / "progression.gif")  # the same, animated
    losses = property(lambda self: self.root / "losses.png")
    page = property(lambda self: self.root / "report.html")  # all of the above on one self-contained page


# --- writes a kill never leaves half done ---------------------------------------------------------------


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Yield a handle on a new temporary file beside ``path``; when the block succeeds the file is synced
    and renamed over ``path``, otherwise removed.

    The temporary name is random and created exclusively (mkstemp), so it never follows a planted
    symlink or collides with another writer; the result gets the usual umask permissions. The name holds
    the writer's pid, so that what a killed writer left (a checkpoint-sized file) is removed by the next.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_writers_files(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_dead_writers_files(path: Path) -> None:
    """Temporary files of :func:`atomic_file` beside ``path`` whose writer no longer runs (on this host)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)-\w+\.tmp")
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = pattern.fullmatch(leftover.name)
        if match and not leftover.is_symlink() and leftover.is_file() and not _running(int(match.group(1))):
            log.info("removing %s, left by an interrupted run", leftover)
            leftover.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """``path`` holds ``data`` (text is UTF-8) or, after a failure, what it held before."""
    with atomic_file(path, "w" if isinstance(data, str) else "wb") as handle:
        handle.write(data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def output_lock(output: str | Path) -> Iterator[None]:
    """Hold the lock of ``output`` (``.<name>.lock`` beside it, ``flock``): one run at a time writes an
    output. A second run waits, saying for whom; the kernel releases the lock when its holder dies. The
    lock file is opened without following a link, so a link planted at its name overwrites nothing."""
    import errno
    import fcntl
    import stat

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    lock = output.with_name(f".{output.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        why = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be opened ({exc.strerror})"
        raise InputError(f"{lock}: the lock file of {output} {why}; remove it and run again") from None
    with os.fdopen(fd, "r+") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{lock}: the lock file of {output} is not a regular file; remove it and run again")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            log.warning("%s is being written by %s; waiting for it to finish", output, holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_directory(output: str | Path) -> Iterator[Path]:
    """Yield a fresh sibling of ``output``; when the block succeeds it replaces ``output`` by rename.

    On an error the sibling is removed and ``output`` stays exactly as it was. The sibling lives beside
    ``output`` (same file system, so the rename is atomic) and is made with mkdir, not mkdtemp, so the
    result gets the usual umask permissions rather than 0700. The whole block holds :func:`output_lock`, so
    a concurrent run waits instead of removing this one's staging folder; leftovers of a killed run are
    removed once the lock is held.
    """
    output = Path(output)
    with _staging(output) as stage:
        yield stage
        _swap(stage, output)


@contextlib.contextmanager
def staged_files(output: str | Path) -> Iterator[Path]:
    """Yield a fresh staging folder beside ``output``; when the block succeeds, every file written there
    moves into ``output`` (created if needed; other files in it stay).

    A run killed before the moves leaves ``output`` as it was; one killed during them leaves its staging
    folder renamed ``.<name>.done-*`` first, and the next run finishes those moves before anything else:
    no mix of old and new maps outlives the next run.
    """
    output = Path(output)
    with _staging(output) as stage:
        yield stage
        done = stage.with_name(stage.name.replace(".tmp-", ".done-", 1))
        os.rename(stage, done)  # from here on, the moves are finished even if this run dies
        _move_files(done, output)


def _move_files(stage: Path, output: Path) -> None:
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        target = output / path.relative_to(stage)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def _staging(output: Path) -> Iterator[Path]:
    """Under ``output``'s lock, with a killed run's leftovers dealt with: a new staging folder beside it,
    removed when the block ends (after its content was swapped or moved in, or on an error)."""
    with output_lock(output):
        _recover_leftovers(output)
        stage = output.with_name(f".{output.name}.tmp-{uuid.uuid4().hex[:8]}")
        stage.mkdir()
        try:
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _swap(stage: Path, output: Path) -> None:
    """Two renames; the old folder is put back if the second one fails (or, after a kill between them, by
    the next run: :func:`_recover_leftovers`)."""
    if not output.exists():
        os.rename(stage, output)
        return
    old = output.with_name(f".{output.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(output, old)
    try:
        os.rename(stage, output)
    except OSError:
        os.rename(old, output)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _recover_leftovers(output: Path) -> None:
    """What a killed run left beside ``output`` (never ``output`` itself): moves it had started are
    finished, an output it had set aside but not replaced is put back, staging folders are removed."""
    pattern = re.compile(rf"\.{re.escape(output.name)}\.(tmp|old|done)-\w+")
    leftovers = sorted(
        path
        for path in output.parent.glob(f".{glob.escape(output.name)}.*-*")
        if path.is_dir() and not path.is_symlink() and pattern.fullmatch(path.name)
    )
    for leftover in leftovers:
        kind = pattern.fullmatch(leftover.name).group(1)
        if kind == "done":
            log.warning("finishing the moves into %s that an interrupted run had started", output)
            _move_files(leftover, output)
        elif kind == "old" and not output.exists():
            log.warning("putting back %s, which an interrupted run had set aside", output)
            os.rename(leftover, output)
        else:
            log.info("removing %s, left by an interrupted run", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


# --- content versions ---------------------------------------------------------------------------------


def file_digests(path: str | Path, *algorithms: str) -> dict[str, str]:
    """Hex digests of a file's bytes (``"md5"``, ``"sha256"``...), all in one pass over it."""
    digests = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            for digest in digests.values():
                digest.update(block)
    return {name: digest.hexdigest() for name, digest in digests.items()}


def sha256_file(path: str | Path) -> str:
    return file_digests(path, "sha256")["sha256"]


def json_digest(data: object) -> str:
    """sha256 of the canonical JSON of ``data`` (sorted keys, no spaces): the version of a set of settings."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def files_version(files: list[Path], root: Path) -> str:
    """Version of a set of files: their paths relative to ``root`` and contents, in path order."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()[:VERSION_CHARS]


def split_version_of_files(folder: str | Path) -> str:
    """Version of a prepared split folder, hashed from every regular file in it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: prepared split not found; run the prepare stage first")
    return files_version([p for p in folder.iterdir() if p.is_file()], folder)


def split_version(root: str | Path, split: str) -> str:
    """The version of ``root/split`` that prepare recorded in ``root/report.json``, else hashed now."""
    report = Path(root) / REPORT_FILE
    try:
        recorded = json.loads(report.read_text()).get("versions", {}).get(split)
    except (OSError, ValueError, AttributeError):
        recorded = None
    return recorded or split_version_of_files(Path(root) / split)


def code_version(modules: tuple[str, ...] = TRAINING_CORE) -> str:
    """Version of the source of ``modules`` (files and packages of salgan; default :data:`TRAINING_CORE`)
    as installed."""
    package = Path(salgan.__file__).parent
    files: list[Path] = []
    for name in modules:
        path = package / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files_version(files, package)
