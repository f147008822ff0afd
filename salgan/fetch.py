"""Resumable downloads into a cache folder: HTTP(S) with Range requests, S3 objects with ranged GETs.

A transfer writes ``<dest>.part`` and moves it to ``<dest>`` only once complete, so a file at ``dest``
is always whole. When a transfer breaks, the ``.part`` file stays; the next attempt (a retry here, or
the next run) asks only for the missing bytes. ``<dest>.part.json`` remembers where the bytes came
from and the server's validator (ETag or Last-Modified): if the remote file changed in between, the
stale bytes are dropped instead of being spliced onto new ones.

requests and boto3 are imported inside the functions that use them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from salgan.errors import InputError
from salgan.layout import atomic_file, file_digests
from salgan.progress import progress as bar_for
from salgan.urls import redact_text, redact_url

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20  # for reading files
# For network reads: a read that the connection breaks loses its bytes, so keep reads small.
NET_CHUNK_SIZE = 64 << 10
RETRY_DELAY_S = 2.0  # wait before retry n: n times this


class FetchError(InputError):
    """A download failed for good (missing file, refused access, retries spent); the message names it."""


class _Interrupted(Exception):
    """This attempt ended early but can resume; carries why."""


def md5sum(path: str | Path) -> str:
    """The hex md5 of a file (the checksum SALICON publishes)."""
    return file_digests(path, "md5")["md5"]


# --- the partial file ---------------------------------------------------------------------------


class _Partial:
    """``<dest>.part`` and its ``.part.json`` note of origin and validator.

    The note names the origin redacted (a signed URL's query is a secret; the same object signed anew
    resumes, and its validator still guards against changed bytes) and is readable by its owner only."""

    def __init__(self, dest: Path, origin: str):
        self.dest, self.origin = dest, redact_url(origin)
        self.path = dest.with_name(dest.name + ".part")
        self.meta = dest.with_name(dest.name + ".part.json")

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def validator(self) -> str | None:
        """The validator saved with the bytes, or None (no bytes, no note, or another origin)."""
        try:
            note = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return None
        return note.get("validator") if note.get("origin") == self.origin else None

    def start(self, validator: str | None) -> None:
        """Begin from byte 0, noting where the bytes come from."""
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a link planted there goes, not the file it points to
        _open_partial(self.path).close()
        with atomic_file(self.meta, "w") as note:
            os.fchmod(note.fileno(), 0o600)
            note.write(json.dumps({"origin": self.origin, "validator": validator}))

    def finish(self) -> Path:
        os.replace(self.path, self.dest)
        self.meta.unlink(missing_ok=True)
        return self.dest


def _open_partial(path: Path):
    """The partial file for appending, never through a symlink planted at its (resumable, so predictable)
    name: O_NOFOLLOW makes opening a link an error instead of writing where it points."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        raise FetchError(f"{path}: cannot open the partial download ({exc.strerror}); is it a link?") from None
    return os.fdopen(fd, "ab")


def _write(chunks: Iterable[bytes], part: _Partial, total: int | None, progress: bool) -> None:
    """Append ``chunks`` to the partial file with a progress bar that starts at the bytes already there."""

    with (
        _open_partial(part.path) as handle,
        bar_for(
            total=total,
            initial=part.size(),
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.dest.name,
            enabled=progress,
        ) as bar,
    ):
        for chunk in chunks:
            handle.write(chunk)
            bar.update(len(chunk))


def _with_retries(attempt: Callable[[], bool], part: _Partial, retries: int, what: str) -> Path:
    """Run ``attempt`` until it reports completion, resuming after each interruption."""
    reason, what = "no attempt made", redact_url(what)
    for number in range(retries + 1):
        if number:
            log.info("%s: interrupted (%s); resuming from byte %d", what, reason, part.size())
            time.sleep(RETRY_DELAY_S * number)
        try:
            if attempt():
                return part.finish()
            reason = "incomplete transfer"
        except _Interrupted as exc:
            reason = redact_text(str(exc))  # requests quotes "/path?X-Amz-Signature=..." on its own
    raise FetchError(
        f"{what}: download failed after {retries + 1} attempt(s): {reason}. "
        f"The {part.size()} bytes received are kept in {part.path}; run again to resume."
    )


# --- HTTP(S) ------------------------------------------------------------------------------------

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def fetch_http(url: str, dest: str | Path, *, retries: int = 3, timeout: float = 60, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming from ``dest.part`` with a Range request where one exists.

    A server that ignores Range (status 200) or whose file changed (If-Range fails) restarts the
    transfer from byte 0. Client errors (4xx) are final; broken connections and 5xx are retried.
    """
    import requests

    dest = Path(dest)
    part = _Partial(dest, url)
    with requests.Session() as session:

        def attempt() -> bool:
            try:
                return _http_attempt(session, url, part, timeout, progress)
            except requests.RequestException as exc:
                raise _Interrupted(f"{type(exc).__name__}: {exc}") from None

        return _with_retries(attempt, part, retries, url)


def _http_attempt(session, url: str, part: _Partial, timeout: float, progress: bool) -> bool:
    """One GET; True when the partial file is complete afterwards."""
    offset = part.size()
    validator = part.validator() if offset else None
    if offset and validator is None:  # bytes of unknown origin cannot be trusted
        offset = 0
    # identity: byte counts must be those of the file, not of a compressed transfer encoding.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        headers["If-Range"] = validator
    with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416:  # nothing left to send: complete, or the file shrank
            total = re.search(r"/(\d+)$", response.headers.get("Content-Range", ""))
            if total and int(total.group(1)) == offset:
                return True
            part.start(None)
            raise _Interrupted("server refused the range; restarting from byte 0")
        if 400 <= response.status_code < 500:
            raise FetchError(f"{redact_url(url)}: HTTP {response.status_code} {response.reason}")
        if response.status_code >= 500:
            raise _Interrupted(f"HTTP {response.status_code} {response.reason}")
        total = _start_or_resume(response, part, offset)
        _write(response.iter_content(NET_CHUNK_SIZE), part, total, progress)
    size = part.size()
    if total is not None and size != total:
        raise _Interrupted(f"received {size} of {total} bytes")
    return True


def _start_or_resume(response, part: _Partial, offset: int) -> int | None:
    """Set up the partial file for this response's body; return the full file's size if known."""
    if response.status_code == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            part.start(None)
            raise _Interrupted(f"server sent an unexpected range {response.headers.get('Content-Range')!r}")
        return None if match.group(3) == "*" else int(match.group(3))
    # 200: the whole file (first attempt, Range ignored, or the file changed and If-Range failed).
    etag = response.headers.get("ETag", "")
    validator = etag if etag and not etag.startswith("W/") else response.headers.get("Last-Modified")
    part.start(validator)
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def http_text(url: str, timeout: float = 30) -> str | None:
    """The body of a small text file (a checksum sidecar), or None when the server has no such file."""
    import requests

    try:
        response = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise FetchError(f"{redact_url(url)}: {type(exc).__name__}: {redact_text(str(exc))}") from None
    if response.status_code in (403, 404, 410):
        return None
    if response.status_code >= 400:
        raise FetchError(f"{redact_url(url)}: HTTP {response.status_code} {response.reason}")
    return response.text


def http_exists(url: str, timeout: float = 30) -> bool:
    """Whether ``url`` answers a HEAD request with success (redirects followed)."""
    import requests

    try:
        response = requests.head(url, timeout=timeout, allow_redirects=True)
    except requests.RequestException as exc:
        raise FetchError(f"{redact_url(url)}: {type(exc).__name__}: {redact_text(str(exc))}") from None
    return response.status_code < 400


# --- S3 -----------------------------------------------------------------------------------------


def s3_client():
    """A boto3 S3 client from the standard AWS settings.

    boto3 (>= 1.28) reads the endpoint from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL and the config file
    itself, so S3-compatible stores (MinIO, Ceph, moto) need no code here; passing endpoint_url
    explicitly would override the service-specific variable.
    """
    import boto3

    return boto3.client("s3")


def s3_head(client, bucket: str, key: str, forbidden_is_missing: bool = False) -> dict | None:
    """The object's metadata, or None when it does not exist.

    Without s3:ListBucket permission S3 answers 403, not 404, for a missing key; probing for optional
    files (aliases, checksum sidecars) passes ``forbidden_is_missing`` to treat that as absent too.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    missing = {"404", "NoSuchKey", "NotFound"} | (
        {"403", "AccessDenied", "Forbidden"} if forbidden_is_missing else set()
    )
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in missing:
            return None
        raise FetchError(f"s3://{bucket}/{key}: {exc}") from None
    except BotoCoreError as exc:  # no credentials, endpoint unreachable, ...
        raise FetchError(f"s3://{bucket}/{key}: {exc}") from None


def s3_text(client, bucket: str, key: str, forbidden_is_missing: bool = False) -> str | None:
    """A small text object (a checksum sidecar), or None when it does not exist."""
    from botocore.exceptions import BotoCoreError, ClientError

    if s3_head(client, bucket, key, forbidden_is_missing) is None:
        return None
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    except (ClientError, BotoCoreError, UnicodeDecodeError) as exc:
        raise FetchError(f"s3://{bucket}/{key}: {exc}") from None


def fetch_s3(bucket: str, key: str, dest: str | Path, *, client=None, retries: int = 3, progress: bool = True) -> Path:
    """Download ``s3://bucket/key`` to ``dest``, resuming from ``dest.part`` with a ranged GET.

    The object's ETag is the validator: a resumed GET sends If-Match, so bytes of a replaced object
    are never spliced onto the old ones.
    """
    from botocore.exceptions import BotoCoreError, ClientError
    from urllib3.exceptions import HTTPError as Urllib3Error

    client = client or s3_client()
    url = f"s3://{bucket}/{key}"
    head = s3_head(client, bucket, key)
    if head is None:
        raise FetchError(f"{redact_url(url)}: no such object")
    total, etag = int(head["ContentLength"]), head.get("ETag")
    dest = Path(dest)
    part = _Partial(dest, url)

    def attempt() -> bool:
        offset = part.size()
        if offset > total or (offset and part.validator() != etag):
            offset = 0
        if offset == 0:
            part.start(etag)
        if offset == total:
            return True
        request = {"Bucket": bucket, "Key": key, "Range": f"bytes={offset}-{total - 1}"}
        if etag:
            request["IfMatch"] = etag
        try:
            body = client.get_object(**request)["Body"]
            _write(body.iter_chunks(NET_CHUNK_SIZE), part, total, progress)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "412"):
                part.start(None)
                raise FetchError(f"{redact_url(url)}: the object changed during the download; run again") from None
            raise FetchError(f"{redact_url(url)}: {redact_text(str(exc))}") from None
        except (BotoCoreError, Urllib3Error, OSError) as exc:
            raise _Interrupted(f"{type(exc).__name__}: {exc}") from None
        return part.size() == total

    return _with_retries(attempt, part, retries, url)
