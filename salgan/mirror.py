"""``salgan mirror``: upload the raw SALICON zips to ``s3://bucket/prefix`` with their checksums.

The mirror is what ``download.source: s3://bucket/prefix`` reads (salgan/download.py): the release zips
under their usual names (``images.zip``, ``fixations_<edition>.zip``, ``maps.zip`` or the aliases the
download stage accepts) and a ``checksums.json`` sidecar, ``{"images.zip": {"md5": ..., "sha256": ...,
"size": ...}, ...}``, whose md5 the download stage verifies (S3 ETags of multipart uploads are not
md5s, so the sidecar is the mirror's only checksum). The digests also travel as object metadata.

Zips with a published md5 are checked against it before upload, so a damaged download is never
mirrored. An object already on the mirror with the same size and md5 is not sent again, and the
sidecar is merged with the one already there, so mirroring one more edition keeps the others.

Credentials and the endpoint come only from the standard AWS settings (environment, profiles, config
file; ``AWS_ENDPOINT_URL`` for MinIO and other S3-compatible stores), read by boto3 itself; nothing
here prints them. boto3 is imported when the command runs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from salgan import fetch
from salgan.cli import command_parser, run_command
from salgan.download import CHECKSUMS_FILE, RELEASE
from salgan.errors import InputError
from salgan.layout import file_digests
from salgan.progress import progress as bar_for
from salgan.settings import load_params
from salgan.urls import is_s3_url, parse_s3_url

log = logging.getLogger(__name__)

PART_SIZE_MIB = 64  # multipart part size; S3 allows 5 MiB to 5 GiB and 10,000 parts (images.zip is ~3 GB)


class MirrorError(InputError):
    """The mirror cannot be written; the message names the file, object or setting at fault."""


@dataclass(frozen=True)
class Zip:
    """One local zip and its digests."""

    path: Path
    size: int
    md5: str
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name

    def record(self) -> dict:
        return {"md5": self.md5, "sha256": self.sha256, "size": self.size}


def published_md5s() -> dict[str, set[str]]:
    """File name -> the published md5s it may have (``fixations.zip`` names either edition)."""
    names: dict[str, set[str]] = {}
    for archive in RELEASE.values():
        for name in (archive.filename, *archive.aliases):
            names.setdefault(name, set())
            if archive.md5:
                names[name].add(archive.md5)
    return names


def find_zips(folder: Path) -> list[Path]:
    """The release zips in ``folder``, under any name the download stage looks for."""
    if not folder.is_dir():
        raise MirrorError(f"{folder}: no such folder")
    found = sorted(p for p in folder.iterdir() if p.name in published_md5s() and p.is_file())
    if not found:
        known = ", ".join(sorted(published_md5s()))
        raise MirrorError(f"{folder}: no SALICON zips to mirror (looked for {known})")
    return found


def digest(path: Path) -> Zip:
    """md5 and sha256 of a file in one pass over it; a zip whose published md5 differs is refused."""
    digests = file_digests(path, "md5", "sha256")
    result = Zip(path, path.stat().st_size, digests["md5"], digests["sha256"])
    expected = published_md5s().get(path.name, set())
    if expected and result.md5 not in expected:
        raise MirrorError(
            f"{path}: md5 {result.md5} is not the published md5 of SALICON's {path.name} "
            f"({', '.join(sorted(expected))}); the file is damaged or not the release, so it is not mirrored"
        )
    return result


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, ``prefix/``), the key prefix with its trailing slash."""
    try:
        bucket, prefix = parse_s3_url(url)
    except InputError as exc:
        raise MirrorError(str(exc)) from None
    return bucket, prefix + "/" if prefix else ""


def upload(client, item: Zip, bucket: str, key: str, part_size_mib: int, progress: bool) -> bool:
    """Upload one zip (multipart above one part); False when the mirror already holds it."""
    from boto3.s3.transfer import TransferConfig

    head = fetch.s3_head(client, bucket, key)
    if head and head["ContentLength"] == item.size and head.get("Metadata", {}).get("md5") == item.md5:
        log.info("s3://%s/%s is up to date (md5 %s)", bucket, key, item.md5)
        return False
    part = part_size_mib * 1024 * 1024
    config = TransferConfig(multipart_threshold=part, multipart_chunksize=part)
    extra = {"ContentType": "application/zip", "Metadata": {"md5": item.md5, "sha256": item.sha256}}
    with bar_for(
        total=item.size, unit="B", unit_scale=True, unit_divisor=1024, desc=item.name, enabled=progress
    ) as bar:
        client.upload_file(str(item.path), bucket, key, ExtraArgs=extra, Config=config, Callback=bar.update)
    log.info("uploaded %s to s3://%s/%s (%d bytes, md5 %s)", item.path, bucket, key, item.size, item.md5)
    return True


def write_checksums(client, bucket: str, prefix: str, items: list[Zip]) -> dict:
    """Merge ``items`` into the mirror's checksums.json and write it back; return the merged content."""
    key = prefix + CHECKSUMS_FILE
    text = fetch.s3_text(client, bucket, key)
    sums = {}
    if text is not None:
        try:
            sums = json.loads(text)
        except ValueError as exc:
            raise MirrorError(f"s3://{bucket}/{key}: not valid JSON ({exc}); fix or delete it") from None
        if isinstance(sums.get("files"), dict):  # the download stage also reads this nested form
            sums = sums["files"]
        if not isinstance(sums, dict):
            raise MirrorError(f"s3://{bucket}/{key}: expected a mapping of file name to checksums")
    sums.update({item.name: item.record() for item in items})
    body = json.dumps(dict(sorted(sums.items())), indent=2) + "\n"
    client.put_object(Bucket=bucket, Key=key, Body=body.encode(), ContentType="application/json")
    return sums


def mirror(source: Path, dest: str, *, client=None, part_size_mib: int = PART_SIZE_MIB, progress: bool = True):
    """Upload the release zips in ``source`` to ``dest`` (s3://bucket/prefix); return the checksums written."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_url(dest)
    if not 5 <= part_size_mib <= 5 * 1024:
        raise MirrorError(f"--part-size-mib: S3 parts are 5 MiB to 5 GiB, got {part_size_mib}")
    items = [digest(path) for path in find_zips(source)]  # every zip checked before any upload
    if client is None:
        import boto3

        client = fetch.s3_client()
        if boto3.session.Session().get_credentials() is None:  # the chain boto3.client() just searched
            raise MirrorError(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
                "(a profile of ~/.aws/credentials or ~/.aws/config)"
            )
    try:
        for item in items:
            upload(client, item, bucket, prefix + item.name, part_size_mib, progress)
        # The sidecar goes last: a reader that sees a new zip before it fails the checksum, never
        # accepts stale bytes.
        return write_checksums(client, bucket, prefix, items)
    except (ClientError, BotoCoreError, S3UploadFailedError) as exc:  # refused, no bucket, unreachable, ...
        hint = f" (create the bucket {bucket} first)" if "NoSuchBucket" in str(exc) else ""
        raise MirrorError(f"s3://{bucket}/{prefix}: {exc}{hint}") from None


def default_source(params_file: str) -> Path:
    """download.source when it is a folder, else download.cache_dir (where `salicon` keeps the zips)."""
    params = load_params(params_file).download
    source = Path(params.source)
    return source if "://" not in params.source and source.is_dir() else Path(params.cache_dir)


def main(argv: list[str] | None = None) -> int:
    """``salgan mirror s3://bucket/prefix [--source DIR]`` (exit statuses: salgan/cli.py)."""

    parser = command_parser(
        "mirror",
        "Upload the raw SALICON zips to an S3 mirror with a checksums.json sidecar, so that "
        "download.source: s3://bucket/prefix reads them back verified.",
        epilog="Credentials and endpoint come from the standard AWS settings: AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY or AWS_PROFILE, and AWS_ENDPOINT_URL for MinIO or another S3-compatible store.",
    )
    parser.add_argument("dest", metavar="s3://bucket/prefix", help="where the zips go")
    parser.add_argument(
        "--source",
        type=Path,
        help="folder holding the zips (default: download.source if it is a folder, else download.cache_dir)",
    )
    parser.add_argument("--part-size-mib", type=int, default=PART_SIZE_MIB, help="multipart part size (MiB)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if not is_s3_url(args.dest):
        parser.error(f"destination {args.dest!r} is not an s3://bucket/prefix URL")

    def work() -> int:
        source = args.source or default_source(args.params)
        sums = mirror(source, args.dest, part_size_mib=args.part_size_mib, progress=not args.no_progress)
        print(f"mirror: {args.dest.rstrip('/')} holds {', '.join(sorted(sums))} with {CHECKSUMS_FILE}")
        return 0

    return run_command("mirror", work)


if __name__ == "__main__":
    raise SystemExit(main())
