"""The ``download`` stage: the raw SALICON tree in data/raw, from the release, a mirror, or the sample; or
another dataset's tree in its own layout (``download.dataset``, salgan/datasets/, docs/datasets.md).

Reads ``params.download`` (salgan/settings.py). Whatever the source, the output has SALICON's layout
(salgan/datasets/salicon.py, docs/data-layout.md) and a ``SOURCE.json`` saying where it came from, with
checksums.

The release is three zip files (Google Drive ids and md5s from pysaliency external_datasets/salicon.py):
the stimuli zip holds ``images/{train,val,test}/COCO_*.jpg``; the fixations zip ``{train,val}/COCO_*.mat``;
the maps zip ``{train,val}/COCO_*.png`` (layouts as read by pysaliency, datadings SALICON2015_write.py
and MSI-Net download.py). Here they are called ``images.zip``, ``fixations_<edition>.zip`` and
``maps.zip`` in the cache and on mirrors.

Safety: the new tree is built in a temporary folder beside the output, checked, and only then swapped
in with a rename, so a bad checksum, a truncated archive, an entry that points outside the target
(``../``, an absolute path, a symlink) or an incomplete layout stops the stage and leaves the previous
output as it was.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from salgan import datasets, fetch
from salgan.cli import command_parser, run_command
from salgan.datasets import SOURCE_FILE
from salgan.datasets.salicon import FILE_NAME, SUFFIXES, SaliconTree
from salgan.errors import InputError
from salgan.fetch import FetchError, md5sum
from salgan.layout import SPLITS, atomic_directory
from salgan.progress import progress as bar_for
from salgan.sample import generate_sample
from salgan.settings import ConfigError, DownloadParams, PrepareParams, load_params
from salgan.urls import is_s3_url, parse_s3_url, redact_url

log = logging.getLogger(__name__)

CHECKSUMS_FILE = "checksums.json"


class DownloadError(InputError):
    """The stage cannot produce a valid tree; the message names the file, entry or folder at fault."""


class ChecksumError(DownloadError):
    """An archive's md5 differs from the published or the mirror's checksum."""


class ArchiveError(DownloadError):
    """An archive is truncated, corrupt, unsafe or holds no SALICON files."""


class LayoutError(DownloadError):
    """The tree lacks images, maps or fixation files."""


@dataclass(frozen=True)
class Archive:
    """One zip of the SALICON release."""

    kind: str  # images | fixations | maps: the folder its files go to
    filename: str  # its name in the cache and on mirrors
    drive_id: str  # Google Drive file id
    md5: str | None  # the published md5; None where none is published
    aliases: tuple[str, ...] = ()  # other names accepted in a local folder or on a mirror
    release: str = "SALICON"  # whose release it is, in messages


# pysaliency external_datasets/salicon.py (docs/reference.md §2); maps.zip has no published md5.
RELEASE: dict[str, Archive] = {
    "images": Archive(
        "images",
        "images.zip",
        "1g8j-hTT-51IG1UFwP0xTGhLdgIUCW5e5",
        "eb2a1bb706633d1b31fc2e01422c5757",
        ("image.zip", "stimuli.zip"),
    ),
    "fixations_2017": Archive(
        "fixations",
        "fixations_2017.zip",
        "1P-jeZXCsjoKO79OhFUgnj6FGcyvmLDPj",
        "462b70f4f9e8ea446ac628e46cea8d3d",
        ("fixations.zip",),
    ),
    "fixations_2015": Archive(
        "fixations",
        "fixations_2015.zip",
        "1WVEiXba-I4GN33f0uUl4KhaN1rK7qzs6",
        "9a22db9d718200fb90252e5010c004c4",
        ("fixations.zip",),
    ),
    "maps": Archive("maps", "maps.zip", "1PnO7szbdub1559LfjYHMy65EDC4VhJC8", None, ("saliency.zip",)),
}

SOURCES_HELP = """\
download.source in params.yaml picks where the raw tree comes from:
  sample               generate the offline sample (download.sample_train/_val/_test, sample_seed):
                       synthetic images, observers and maps in SALICON's exact layout and formats
  salicon              the SALICON release (LSUN 2017) from Google Drive: images.zip (3 GB),
                       the fixations of download.fixations_edition (2017 or 2015) and maps.zip;
                       md5-checked where published, resumable (partial files in download.cache_dir)
  s3://bucket/prefix   the same zips mirrored on S3 (see `salgan mirror`), read with boto3 and the
                       standard AWS settings (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE,
                       AWS_ENDPOINT_URL for S3-compatible stores); resumable
  https://host/prefix  the same zips on a plain web server; resumable with Range requests
  a directory          holding the zips, or an already extracted tree (images/, maps/, fixations/)

Zips are looked for as images.zip (or image.zip, stimuli.zip), fixations_<edition>.zip (or
fixations.zip) and maps.zip. Published md5s are checked (none is published for maps.zip); so is a
mirror's checksums.json ({"images.zip": "<md5>", ...} or {"images.zip": {"md5": "<md5>"}, ...}) or
<name>.md5 sidecar. Nothing in download.output is replaced unless the new tree is complete and verified.

download.dataset (default salicon) picks the layout: mit1003, cat2000 or fixations_csv come from their
release (download.source mit1003 or cat2000), a folder of the zips or the tree, a .zip, or an s3:// or
https:// prefix or .zip URL; download.test_source adds test images (mit300, a folder, zip or URL).
See docs/datasets.md.
"""


def release_archives(edition: str) -> list[Archive]:
    """The three zips of the release for a fixations edition ('2017' or '2015')."""
    return [RELEASE["images"], RELEASE[f"fixations_{edition}"], RELEASE["maps"]]


# --- the stage ----------------------------------------------------------------------------------


def run(params: DownloadParams, progress: bool = True) -> dict:
    """Fill ``params.output`` from ``params.source``; return what SOURCE.json records."""
    if params.dataset != "salicon":
        return run_dataset(params, progress)
    output = Path(params.output)
    kind = source_type(params.source)
    with atomic_directory(output) as stage:
        if kind == "sample":
            record = _from_sample(params, stage)
        elif kind == "local" and SaliconTree(Path(params.source)).is_tree():
            record = _from_tree(Path(params.source), stage)
        else:
            archives = _fetch_archives(params, kind, progress)
            for archive, path, _ in archives:
                extract_archive(path, archive.kind, stage, params, progress)
            record = {"archives": [info for _, _, info in archives]}
        record = {"source": redact_url(params.source), "type": kind, **record}
        record["counts"] = check_layout(stage)
        (stage / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def location_type(source: str) -> str | None:
    """s3 | http | local (a directory) | zip (a .zip file) for a source naming a place; None otherwise."""
    if is_s3_url(source):
        return "s3"
    if source.startswith(("http://", "https://")):
        return "http"
    if Path(source).is_dir():
        return "local"
    if Path(source).is_file() and source.lower().endswith(".zip"):
        return "zip"
    return None


def source_type(source: str) -> str:
    """sample | salicon | s3 | http | local; anything else is a ConfigError naming download.source."""
    if source in ("sample", "salicon"):
        return source
    location = location_type(source)
    if location in ("s3", "http", "local"):
        return location
    raise ConfigError(
        f"download.source: {source!r} is not 'sample', 'salicon', an s3:// or http(s):// URL, or an existing directory"
    )


def _from_sample(params: DownloadParams, stage: Path) -> dict:

    log.info(
        "generating the sample: %d train, %d val, %d test images (seed %d)",
        params.sample_train,
        params.sample_val,
        params.sample_test,
        params.sample_seed,
    )
    generate_sample(stage, params.sample_train, params.sample_val, params.sample_test, params.sample_seed)
    return {"seed": params.sample_seed}


def _from_tree(source: Path, stage: Path) -> dict:
    """Copy the SALICON files of an extracted tree (other files are left behind). A symlink whose target
    lies outside the tree is refused, as an archive's would be: it could copy any file into data/raw. Each
    file is checked as it is copied (:func:`_copy_inside`), so one swapped for a link after the listing is
    refused too."""
    copied, root, tree, staged = 0, source.resolve(), SaliconTree(source), SaliconTree(stage)
    for kind, ext in SUFFIXES.items():
        for split in SPLITS:
            folder = tree.folder(kind, split)
            if not folder.is_dir():
                continue
            if root not in folder.resolve().parents:
                raise DownloadError(f"{folder}: a link out of the tree {source} (to {folder.resolve()}); refused")
            target = staged.folder(kind, split)
            target.mkdir(parents=True, exist_ok=True)
            for file in folder.iterdir():
                if not (FILE_NAME.fullmatch(file.name) and file.suffix == ext):
                    continue
                if file.is_symlink() and root not in file.resolve().parents:
                    raise DownloadError(f"{file}: a link out of the tree {source} (to {file.resolve()}); refused")
                copied += _copy_inside(file, root, target / file.name, source)
    log.info("copied %d files from %s", copied, source)
    return {}


def _copy_inside(file: Path, root: Path, target: Path, source: Path) -> bool:
    """Copy ``file`` to ``target`` when, as opened, it is a regular file inside ``root`` (a link to one inside
    the tree is fine); FIFOs and devices are skipped (False). The check is made on the open file, its type by
    ``fstat`` and its real path from the kernel, so a link swapped in after any earlier look changes nothing."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # O_NONBLOCK: a FIFO must not block
    except OSError as exc:
        raise DownloadError(f"{file}: cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return False
        real = _opened_path(fd, file, info)
        if root not in real.parents:
            raise DownloadError(f"{file}: a link out of the tree {source} (to {real}); refused")
        with open(target, "wb") as sink:
            shutil.copyfileobj(handle, sink, fetch.CHUNK_SIZE)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))  # as copy2 kept them
    return True


def _opened_path(fd: int, name: Path, info: os.stat_result) -> Path:
    """The real path of the file open at ``fd``: the kernel's (``/proc/self/fd``), else ``name`` resolved,
    provided it is still the same file (device and inode)."""
    proc = Path(f"/proc/self/fd/{fd}")
    if proc.is_symlink():
        return Path(os.readlink(proc))
    real = name.resolve()
    now = os.stat(real)
    if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
        raise DownloadError(f"{name}: changed while it was being copied; refused")
    return real


# --- getting the zips ---------------------------------------------------------------------------


def _fetch_archives(params: DownloadParams, kind: str, progress: bool) -> list[tuple[Archive, Path, dict]]:
    """Each release zip as (archive, local path, checksum record), verified."""
    archives = release_archives(params.fixations_edition)
    if kind == "salicon":
        return [_from_drive(a, Path(params.cache_dir), progress) for a in archives]
    if kind == "local":
        folder = Path(params.source)

        def read(name: str) -> str | None:
            return (folder / name).read_text() if (folder / name).is_file() else None

        sidecars = _read_sidecars(read, CHECKSUMS_FILE)
        found = []
        for archive in archives:
            path = _find_local(folder, archive)
            sidecars.update(_md5_sidecar(read, path.name))
            found.append((archive, path, verify(path, archive, sidecars)))
        return found
    mirror = _Mirror(params.source, kind, progress)
    return [_from_mirror(a, mirror, Path(params.cache_dir)) for a in archives]


def _from_drive(archive: Archive, cache: Path, progress: bool) -> tuple[Archive, Path, dict]:
    """Fetch one zip from Google Drive with gdown (it answers the large-file confirmation page)."""
    dest = cache / archive.filename
    cached = _reuse_cached(dest, archive, {})
    if cached:
        return archive, dest, cached
    import gdown

    cache.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)  # gdown skips an existing output; only a verified one is reused
    log.info("downloading %s from Google Drive (id %s) to %s", archive.filename, archive.drive_id, dest)
    try:
        # resume=True: gdown keeps the partial download in the cache folder as <name>XXXXXXXX.part
        # and continues it with a Range request on the next run.
        gdown.download(id=archive.drive_id, output=str(dest), quiet=not progress, resume=True)
    except Exception as exc:  # gdown raises several unrelated types (quota, permission, network)
        raise FetchError(
            f"{archive.filename}: Google Drive download failed: {type(exc).__name__}: {exc}\n"
            f"If Drive refuses (quota exceeded is common), download https://drive.google.com/uc?id="
            f"{archive.drive_id} by hand into a folder and set download.source to that folder."
        ) from None
    return archive, dest, _verify_download(dest, archive, {})


class _Mirror:
    """The zips and checksum sidecars under an s3:// or http(s):// prefix."""

    def __init__(self, base: str, kind: str, progress: bool):
        self.base, self.kind, self.progress = base, kind, progress
        if kind == "s3":
            self.bucket, prefix = parse_s3_url(base)
            self.prefix = prefix + "/" if prefix else ""
            self.client = fetch.s3_client()

    def url(self, name: str) -> str:
        """``name`` under an http(s) prefix, in the path: a signed prefix's query string stays at the end."""
        parts = urlsplit(self.base)
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))

    def read(self, name: str) -> str | None:
        if self.kind == "s3":
            return fetch.s3_text(self.client, self.bucket, self.prefix + name, forbidden_is_missing=True)
        return fetch.http_text(self.url(name))

    def exists(self, name: str) -> bool:
        if self.kind == "s3":
            head = fetch.s3_head(self.client, self.bucket, self.prefix + name, forbidden_is_missing=True)
            return head is not None
        return fetch.http_exists(self.url(name))

    def download(self, name: str, dest: Path) -> None:
        if self.kind == "s3":
            fetch.fetch_s3(self.bucket, self.prefix + name, dest, client=self.client, progress=self.progress)
        else:
            fetch.fetch_http(self.url(name), dest, progress=self.progress)


def _from_mirror(archive: Archive, mirror: _Mirror, cache: Path) -> tuple[Archive, Path, dict]:
    """Fetch one zip from an S3 or HTTP mirror into the cache, resuming a partial download."""
    name = next((n for n in (archive.filename, *archive.aliases) if mirror.exists(n)), None)
    if name is None:
        tried = ", ".join((archive.filename, *archive.aliases))
        raise FetchError(
            f"{redact_url(mirror.base)}: no {archive.kind} archive on the mirror (tried {tried}; "
            "a missing object and one you may not read look the same)"
        )
    sidecars = _read_sidecars(mirror.read, CHECKSUMS_FILE)
    sidecars.update(_md5_sidecar(mirror.read, name))
    dest = cache / archive.filename
    cached = _reuse_cached(dest, archive, sidecars, name)
    if cached:
        return archive, dest, cached
    log.info("downloading %s/%s to %s", redact_url(mirror.base).rstrip("/"), name, dest)
    mirror.download(name, dest)
    return archive, dest, _verify_download(dest, archive, sidecars, name)


def _reuse_cached(dest: Path, archive: Archive, sidecars: dict[str, str], name: str | None = None) -> dict | None:
    """The checksum record of an earlier download that still matches every known md5, else None.

    Files reach the cache only by an atomic rename after a complete transfer, so a cached zip with no
    known md5 (maps.zip without a sidecar) is reused as it is.
    """
    if not dest.is_file():
        return None
    try:
        record = verify(dest, archive, sidecars, name)
    except ChecksumError:
        log.info("%s: the cached copy does not match its checksum; downloading it again", dest)
        return None
    log.info("using the cached %s", dest)
    return record


def _verify_download(dest: Path, archive: Archive, sidecars: dict[str, str], name: str | None = None) -> dict:
    """Verify a fresh download; a mismatch removes it from the cache so the next run fetches it anew."""
    try:
        return verify(dest, archive, sidecars, name)
    except ChecksumError as exc:
        dest.unlink(missing_ok=True)
        raise ChecksumError(f"{exc} (removed from the cache)") from None


def _find_local(folder: Path, archive: Archive) -> Path:
    for name in (archive.filename, *archive.aliases):
        if (folder / name).is_file():
            return folder / name
    tried = ", ".join((archive.filename, *archive.aliases))
    raise DownloadError(
        f"{folder}: no {archive.kind} archive (looked for {tried}), and no extracted tree (images/ folder)"
    )


# --- checksums ----------------------------------------------------------------------------------


def verify(path: Path, archive: Archive, sidecars: dict[str, str], name: str | None = None) -> dict:
    """Check ``path`` against the published md5 and the mirror's; return the record for SOURCE.json."""
    name = name or path.name
    actual = md5sum(path)
    checked = []
    if archive.md5:
        if actual != archive.md5:
            raise ChecksumError(
                f"{path}: md5 {actual} differs from the published {archive.md5} of {archive.release}'s "
                f"{archive.filename}{_edition_hint(archive, actual)}; the file is damaged or not the release"
            )
        checked.append("published")
    mirror = sidecars.get(name)
    if mirror:
        if actual != mirror:
            raise ChecksumError(f"{path}: md5 {actual} differs from the mirror's checksum {mirror} for {name}")
        checked.append("mirror")
    if not checked:
        log.warning("%s: no published or mirror checksum; recording md5 %s", path, actual)
    return {"kind": archive.kind, "file": name, "md5": actual, "verified_against": checked}


def _edition_hint(archive: Archive, actual: str) -> str:
    """Point at download.fixations_edition when the file is the other edition's fixations."""
    for key, other in RELEASE.items():
        if other.kind == archive.kind and other != archive and other.md5 == actual:
            return f" (it is {key}: set download.fixations_edition accordingly)"
    return ""


def _read_sidecars(read, filename: str) -> dict[str, str]:
    """Parse a mirror's checksums.json into {file name: md5}; {} when there is none.

    Accepts ``{"images.zip": "<md5>"}``, ``{"images.zip": {"md5": "<md5>", ...}}`` and either of
    those under a ``"files"`` key; keys may be paths (their last component is used). Keys that do
    not name a .zip are ignored.
    """
    text = read(filename)
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ChecksumError(f"{filename}: not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("files"), dict):
        data = data["files"]
    if not isinstance(data, dict):
        raise ChecksumError(f"{filename}: expected a mapping of file name to md5")
    sums = {}
    for key, value in data.items():
        digest = value.get("md5") if isinstance(value, dict) else value
        if digest is None or not key.endswith(".zip"):  # other metadata a mirror may keep
            continue
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{32}", digest):
            raise ChecksumError(f"{filename}: entry {key!r} is not an md5: {digest!r}")
        sums[key.rsplit("/", 1)[-1]] = digest.lower()
    return sums


def _md5_sidecar(read, name: str) -> dict[str, str]:
    """``<name>.md5`` (md5sum's format: the digest first) as {name: md5}; {} when there is none."""
    text = read(name + ".md5")
    if text is None:
        return {}
    digest = text.split()[0] if text.split() else ""
    if not re.fullmatch(r"[0-9a-fA-F]{32}", digest):
        raise ChecksumError(f"{name}.md5: does not start with an md5: {text[:80]!r}")
    return {name: digest.lower()}


# --- safe extraction ----------------------------------------------------------------------------


RATIO_FLOOR = 1 << 20  # smaller entries may compress well (a blank map); the archive's total may not


def extract_archive(path: Path, kind: str, stage: Path, limits: DownloadParams, progress: bool = False) -> int:
    """Extract the SALICON files of one zip into ``stage/<kind>/<split>/``; return how many.

    Every entry is checked before anything is written: an absolute path, a ``..`` component or a symlink
    refuses the whole archive, and so does anything over the ``limits``: too many entries, one entry too
    large or compressed too well (a zip bomb), or the entries to extract too large together or compressed
    too well together (many small entries, each under the ratio floor: a bomb too): the ``download`` settings
    ``max_archive_entries``, ``max_entry_bytes``, ``max_archive_bytes`` and ``max_compression_ratio``. The
    bytes actually written are counted against the same limits, so an archive lying about its sizes is
    stopped there.
    Files go to a folder chosen from their SALICON name (``COCO_val2014_...`` -> val), so the zip's own
    folder nesting does not matter; other entries (``__MACOSX/``, read-me files) are skipped.
    """
    with _open_checked(path, limits) as archive:
        entries = archive.infolist()
        wanted = [(entry, target) for entry in entries if (target := _target(entry, kind, stage)) is not None]
        written = _extract_entries(path, archive, wanted, limits, progress)
    if not written:
        ext = SUFFIXES[kind]
        raise ArchiveError(f"{path}: no SALICON {kind} (COCO_<split>2014_<id>{ext}) in this archive")
    log.info("extracted %d %s from %s", written, kind, path.name)
    return written


def _open_checked(path: Path, limits: DownloadParams) -> zipfile.ZipFile:
    """``path`` opened as a zip whose entry count and every entry pass the limits (:func:`_check_entry`)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{path}: not a readable zip archive (truncated or corrupt download?): {exc}") from None
    entries = archive.infolist()
    try:
        if len(entries) > limits.max_archive_entries:
            raise ArchiveError(
                f"{path}: {len(entries)} entries, over download.max_archive_entries {limits.max_archive_entries}; "
                "nothing was extracted"
            )
        for entry in entries:
            _check_entry(path, entry, limits)
    except ArchiveError:
        archive.close()
        raise
    return archive


def _extract_entries(
    path: Path,
    archive: zipfile.ZipFile,
    wanted: list[tuple[zipfile.ZipInfo, Path]],
    limits: DownloadParams,
    progress: bool,
) -> int:
    """Write each ``(entry, target)`` of ``wanted``, checked together first (:func:`_check_totals`), the bytes
    written counted against the limits as they come; returns how many were written."""
    _check_totals(path, [entry for entry, _ in wanted], limits)
    written, inflated, compressed = 0, 0, 0
    for entry, target in bar_for(wanted, enabled=progress, desc=f"extract {path.name}", unit="file"):
        if target.exists():
            raise ArchiveError(f"{path}: entry {entry.filename!r} duplicates {target.name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        budget, limit = limits.max_entry_bytes, f"download.max_entry_bytes {limits.max_entry_bytes}"
        if limits.max_archive_bytes - inflated < budget:
            budget = limits.max_archive_bytes - inflated
            limit = f"download.max_archive_bytes {limits.max_archive_bytes} with the entries before it"
        try:
            with archive.open(entry) as source, open(target, "wb") as sink:
                inflated += _copy_bounded(source, sink, budget, f"{path}: entry {entry.filename!r}", limit)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise ArchiveError(
                f"{path}: entry {entry.filename!r} cannot be extracted (corrupt archive?): {exc}"
            ) from None
        compressed += entry.compress_size
        if inflated > RATIO_FLOOR and inflated > limits.max_compression_ratio * max(compressed, 1):
            raise ArchiveError(
                f"{path}: its entries inflated {inflated / max(compressed, 1):.0f}:1 together, over "
                f"download.max_compression_ratio {limits.max_compression_ratio:g} (a zip bomb?); nothing was kept"
            )
        written += 1
    return written


def _check_entry(path: Path, entry: zipfile.ZipInfo, limits: DownloadParams) -> None:
    """Refuse an entry that could land outside the target folder, or inflate past the limits."""
    name = entry.filename.replace("\\", "/")
    max_bytes, max_ratio = limits.max_entry_bytes, limits.max_compression_ratio
    reason = None
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        reason = "an absolute path"
    elif ".." in name.split("/"):
        reason = "a '..' path component"
    elif stat.S_ISLNK(entry.external_attr >> 16):
        reason = "a symbolic link"
    elif entry.file_size > max_bytes:
        reason = f"{entry.file_size} bytes uncompressed, over download.max_entry_bytes {max_bytes}"
    elif entry.file_size > max_ratio * max(entry.compress_size, 1) and entry.file_size > RATIO_FLOOR:
        ratio = entry.file_size / max(entry.compress_size, 1)
        reason = f"compressed {ratio:.0f}:1, over download.max_compression_ratio {max_ratio:g} (a zip bomb?)"
    if reason:
        raise ArchiveError(f"{path}: refusing entry {entry.filename!r}: {reason}; nothing was extracted")


def _check_totals(path: Path, entries: list[zipfile.ZipInfo], limits: DownloadParams) -> None:
    """Refuse an archive whose entries to extract are too large together or compressed too well together:
    each may be under the ratio floor (300 entries of 1 MiB of zeros), their sum is not."""
    total = sum(entry.file_size for entry in entries)
    packed = max(sum(entry.compress_size for entry in entries), 1)
    if total > limits.max_archive_bytes:
        raise ArchiveError(
            f"{path}: its entries inflate to {total} bytes together, over download.max_archive_bytes "
            f"{limits.max_archive_bytes}; nothing was extracted"
        )
    if total > RATIO_FLOOR and total > limits.max_compression_ratio * packed:
        raise ArchiveError(
            f"{path}: its {len(entries)} entries are compressed {total / packed:.0f}:1 together, over "
            f"download.max_compression_ratio {limits.max_compression_ratio:g} (a zip bomb of small entries?); "
            "nothing was extracted"
        )


def _copy_bounded(source, sink, max_bytes: int, what: str, limit: str | None = None) -> int:
    """Copy at most ``max_bytes`` and return how many were copied: an entry whose header understates its
    size is stopped there (``limit`` names the setting: the entry's, or what is left of the archive's)."""
    copied = 0
    while block := source.read(fetch.CHUNK_SIZE):
        copied += len(block)
        if copied > max_bytes:
            limit = limit or f"download.max_entry_bytes {max_bytes}"
            raise ArchiveError(f"{what} inflates past {limit}; nothing was kept")
        sink.write(block)
    return copied


def _target(entry: zipfile.ZipInfo, kind: str, stage: Path) -> Path | None:
    """Where a SALICON file of this kind goes, or None for anything else."""
    if entry.is_dir():
        return None
    base = entry.filename.replace("\\", "/").rsplit("/", 1)[-1]
    match = FILE_NAME.fullmatch(base)
    if not match or "." + match.group(2) != SUFFIXES[kind]:
        return None
    return SaliconTree(stage).folder(kind, match.group(1)) / base


# --- the other datasets (salgan/datasets/) ----------------------------------------------------------

MIT300 = "http://saliency.mit.edu"  # BenchmarkIMAGES.zip: MIT300's test images (pysaliency get_mit300)
MIT300_ARCHIVE = Archive("test images", "BenchmarkIMAGES.zip", "", "03ed32bdf5e4289950cd28df89451260", (), "MIT300")


def run_dataset(params: DownloadParams, progress: bool = True) -> dict:
    """The raw tree of ``download.dataset`` (not SALICON) in ``download.output``, in the dataset's own layout
    (docs/datasets.md), with ``download.test_source``'s images in ``test_source/`` when set; checked by the
    dataset's reader before it replaces the output (an image without its map or fixations is named)."""
    module = datasets.reader(params.dataset)
    kind = dataset_source_type(params.source, module)
    with atomic_directory(Path(params.output)) as stage:
        record = {"source": redact_url(params.source), "type": kind, "dataset": params.dataset}
        record["archives"] = _fetch_into(params, params.source, kind, module, module.layout, stage, progress)
        if params.test_source != "none":
            test_kind = "official" if params.test_source == "mit300" else dataset_source_type(params.test_source, None)
            record["test_source"] = {"source": redact_url(params.test_source), "type": test_kind}
            target = stage / datasets.TEST_FOLDER
            record["test_source"]["archives"] = _fetch_into(
                params, params.test_source, test_kind, None, _test_layout, target, progress
            )
        source = redact_url(params.source)

        def named(text: str) -> str:  # files as they are in the source's layout, not the staging folder's
            return text.replace(f"{stage}/", "").replace(str(stage), source)

        try:
            # under the schema's default limits: this stage reads no prepare settings (prepare applies its own)
            defaults = PrepareParams()
            limits = datasets.Limits(defaults.max_pixels, defaults.max_fixations)
            records, problems = datasets.dataset_records(params.dataset, stage, limits)
        except datasets.DatasetError as exc:
            raise LayoutError(f"{source}: {named(str(exc))}; the output was left as it was") from None
        if problems:
            listed = "\n  ".join(named(f"{file}: {reason}") for _, file, reason in problems[:5])
            more = f"\n  (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise LayoutError(
                f"the new {module.RELEASE} tree from {source} is incomplete, so the output was "
                f"left as it was:\n  {listed}{more}"
            )
        labelled, test = sum(r.fixations is not None for r in records), sum(r.split == "test" for r in records)
        record["counts"] = {"labelled": labelled, "test": test}
        (stage / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def dataset_source_type(source: str, module) -> str:
    """official | s3 | http | local | zip for a dataset's (``module``) or the test images' (None) source; a
    ConfigError naming the key for anything else."""
    key = "download.source" if module is not None else "download.test_source"
    if module is not None and source == module.NAME and module.OFFICIAL:
        return "official"
    if source in ("sample", "salicon", "mit1003", "cat2000", "mit300"):
        what = f"download.dataset {module.NAME}" if module is not None else "the test images"
        raise ConfigError(
            f"{key}: {source!r} is not a source of {what}; use "
            + (f"'{module.NAME}' (its release), " if module is not None and module.OFFICIAL else "")
            + "a folder, a .zip, or an s3:// or https:// URL (README: Your own data)"
        )
    location = location_type(source)
    if location is None:
        raise ConfigError(f"{key}: {source!r} is not an s3:// or http(s):// URL, an existing directory or a .zip file")
    return location


def _test_layout(paths: list[str]) -> dict[str, str]:
    """Every image of a test-image source, at its path there."""
    return {
        path: "/".join(parts)
        for path in paths
        if (parts := datasets.source_parts(path)) and datasets.is_image(parts[-1])
    }


def _fetch_into(params: DownloadParams, source: str, kind: str, module, layout, stage: Path, progress: bool) -> list:
    """The files ``layout`` picks from ``source`` (a dataset's release when ``module``, else test images)
    copied or extracted into ``stage``; returns the checksum records of the archives."""
    stage.mkdir(parents=True, exist_ok=True)
    release = module.RELEASE if module is not None else "the test images"
    specs = (
        list(module.ARCHIVES)
        if module is not None
        else [datasets.ArchiveSpec(MIT300_ARCHIVE.filename, MIT300_ARCHIVE.md5)]
    )
    known = [(Archive(release, spec.filename, "", spec.md5, (), release), spec.required) for spec in specs]
    cache = Path(params.cache_dir) / (module.NAME if module is not None else "test_source")
    if kind == "local" and not any((Path(source) / archive.filename).is_file() for archive, _ in known):
        if not _copy_mapped(Path(source), stage, layout):
            raise LayoutError(f"{source}: no files of {release} in this folder (docs/datasets.md shows the layout)")
        return []
    if kind == "local":
        fetched = _local_archives(Path(source), known, release)
    elif kind == "zip" or source.split("?")[0].lower().endswith(".zip"):
        fetched = [_single_zip(source, kind, [archive for archive, _ in known], cache, progress)]
    elif kind == "official" or (module is not None and module.ARCHIVES):
        base = (module.OFFICIAL if module is not None else MIT300) if kind == "official" else source
        mirror = _Mirror(base, "http" if kind == "official" else kind, progress)
        fetched = [
            _from_mirror(archive, mirror, cache)
            for archive, required in known
            if required or mirror.exists(archive.filename)
        ]
    else:
        key = "download.source" if module is not None else "download.test_source"
        raise ConfigError(
            f"{key}: {redact_url(source)} is a prefix; {release} from s3:// or https:// is one .zip: give its URL"
        )
    for _, path, _ in fetched:
        if not extract_mapped(path, stage, layout, params, progress):
            raise ArchiveError(f"{path}: no files of {release} in this archive (docs/datasets.md shows the layout)")
    return [info for _, _, info in fetched]


def _local_archives(folder: Path, known: list[tuple[Archive, bool]], release: str) -> list[tuple[Archive, Path, dict]]:
    """A release's zips in a local folder, verified against their published md5s and the folder's sidecars."""

    def read(name: str) -> str | None:
        return (folder / name).read_text() if (folder / name).is_file() else None

    sidecars = _read_sidecars(read, CHECKSUMS_FILE)
    found = []
    for archive, required in known:
        path = folder / archive.filename
        if not path.is_file():
            if required:
                raise DownloadError(f"{folder}: no {archive.filename} (one of {release}'s archives)")
            continue
        sidecars.update(_md5_sidecar(read, path.name))
        found.append((archive, path, verify(path, archive, sidecars)))
    return found


def _single_zip(source: str, kind: str, archives: list[Archive], cache: Path, progress: bool) -> tuple:
    """One zip named by its own path or URL: verified against a published md5 when it has a release's name."""
    if kind == "zip":
        path = Path(source)
        known = next((a for a in archives if a.filename == path.name), None)
        archive = known or Archive("archive", path.name, "", None)
        return archive, path, verify(path, archive, {})
    parts = urlsplit(source)
    folder, _, name = parts.path.rpartition("/")
    base = urlunsplit(parts._replace(path=folder)) if kind == "http" else source.rpartition("/")[0]
    known = next((a for a in archives if a.filename == name), None)
    return _from_mirror(known or Archive("archive", name, "", None), _Mirror(base, kind, progress), cache)


def extract_mapped(path: Path, stage: Path, layout, limits: DownloadParams, progress: bool = False) -> int:
    """Extract the entries of one zip that ``layout`` (a reader's: entry path -> path below ``stage``) picks,
    under the same checks and limits as :func:`extract_archive`; return how many."""
    with _open_checked(path, limits) as archive:
        entries = [entry for entry in archive.infolist() if not entry.is_dir()]
        mapping = layout([entry.filename for entry in entries])
        wanted = [(entry, stage / mapping[entry.filename]) for entry in entries if entry.filename in mapping]
        written = _extract_entries(path, archive, wanted, limits, progress)
    log.info("extracted %d files from %s", written, path.name)
    return written


def _copy_mapped(source: Path, stage: Path, layout) -> int:
    """Copy the files of a folder that ``layout`` picks; links out of the folder are refused as in
    :func:`_from_tree`, links to folders are not followed."""
    root = source.resolve()
    files = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        files += [Path(dirpath, name).relative_to(source).as_posix() for name in sorted(filenames)]
    mapping = layout(files)
    copied = 0
    for relative, target in sorted(mapping.items()):
        destination = stage / target
        if destination.exists():
            raise DownloadError(f"{source / relative}: a second file for {target}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        copied += _copy_inside(source / relative, root, destination, source)
    log.info("copied %d files from %s", copied, source)
    return copied


# --- layout, staging and swapping ---------------------------------------------------------------


def check_layout(root: Path) -> dict[str, dict[str, int]]:
    """Every split has images; train and val have a map and a fixation file per image. Returns counts."""
    problems, counts, tree = [], {}, SaliconTree(root)
    for split in SPLITS:
        names = _stems(tree.folder("images", split), SUFFIXES["images"])
        counts[split] = {"images": len(names)}
        if not names:
            problems.append(f"images/{split}: no images")
        for kind in tree.kinds(split)[1:]:
            have = _stems(tree.folder(kind, split), SUFFIXES[kind])
            counts[split][kind] = len(have)
            missing = sorted(names - have)
            if missing:
                examples = ", ".join(n + SUFFIXES[kind] for n in missing[:3])
                problems.append(f"{kind}/{split}: missing for {len(missing)} of {len(names)} images ({examples} ...)")
    if problems:
        raise LayoutError("the new tree is incomplete, so the output was left as it was:\n  " + "\n  ".join(problems))
    return counts


def _stems(folder: Path, ext: str) -> set[str]:
    """Base names of the SALICON files of one split folder (``folder`` is ``<kind>/<split>``)."""
    if not folder.is_dir():
        return set()
    prefix = f"COCO_{folder.name}2014_"
    return {
        p.name[: -len(ext)]
        for p in folder.iterdir()
        if p.name.endswith(ext) and p.name.startswith(prefix) and FILE_NAME.fullmatch(p.name)
    }


# --- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``salgan download [--params params.yaml]``: run the stage (exit statuses: salgan/cli.py)."""

    parser = command_parser(
        "download",
        "Fetch the raw SALICON tree (or generate the offline sample) into download.output.",
        epilog=SOURCES_HELP,
    )
    args = parser.parse_args(argv)

    def work() -> int:
        params = load_params(args.params).download
        record = run(params, progress=True)
        counts = record["counts"]
        if params.dataset != "salicon":
            print(f"download: {params.output} ready: {params.dataset} from {record['source']} ({counts['labelled']} "
                  f"images with fixations, {counts['test']} test images)")  # fmt: skip
            return 0
        counts = ", ".join(f"{split} {c['images']}" for split, c in counts.items())
        print(f"download: {params.output} ready from {record['source']} (images: {counts})")
        return 0

    return run_command("download", work)


if __name__ == "__main__":
    raise SystemExit(main())
