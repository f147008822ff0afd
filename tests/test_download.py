"""The download stage: every source, checksums, safe extraction, resumable fetches, atomic replacement.

Real HTTP and S3 endpoints run on 127.0.0.1: a threaded HTTP server that honours Range requests (and
can break a transfer mid-file), and moto's S3 server. The zips are the sample packed in SALICON's
release layout, with the "published" md5s patched to theirs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import types
import zipfile
from pathlib import Path

import pytest

from salgan import download, fetch
from salgan.download import ArchiveError, ChecksumError, DownloadError, LayoutError
from salgan.fetch import FetchError
from salgan.sample import generate_sample
from salgan.settings import DownloadParams
from salgan.urls import redact_url
from tests.conftest import free_port, write_params_file, write_release_zips


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _layout_files(root: Path) -> dict[str, bytes]:
    """The SALICON files of a tree (everything but SOURCE.json)."""
    return {k: v for k, v in _snapshot(root).items() if k != download.SOURCE_FILE}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    generate_sample(root, n_train=4, n_val=3, n_test=2, seed=1)
    return root


@pytest.fixture(scope="module")
def zips(tree, tmp_path_factory) -> dict[str, Path]:
    return write_release_zips(tree, tmp_path_factory.mktemp("zips"))


@pytest.fixture(autouse=True)
def published(monkeypatch, zips):
    """Make the test zips 'the release': patch the published md5s (maps.zip has none, as in reality)."""
    for key, kind in (("images", "images"), ("fixations_2017", "fixations")):
        archive = dataclasses.replace(download.RELEASE[key], md5=_md5(zips[kind]))
        monkeypatch.setitem(download.RELEASE, key, archive)


def _params(tmp_path: Path, source: str | Path, **overrides) -> DownloadParams:
    values = {"source": str(source), "output": str(tmp_path / "raw"), "cache_dir": str(tmp_path / "cache")}
    return DownloadParams(**{**values, **overrides})


def _copy_zips(zips: dict[str, Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in zips.values():
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture
def existing(tmp_path, tree) -> dict[str, bytes]:
    """An output already in place (from the local tree); tests check that failures leave it intact."""
    download.run(_params(tmp_path, tree), progress=False)
    return _snapshot(tmp_path / "raw")


def _assert_untouched(tmp_path: Path, before: dict[str, bytes]) -> None:
    assert _snapshot(tmp_path / "raw") == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".raw.") and p.name != ".raw.lock"]
    assert leftovers == []  # no staging folder (the lock file beside the output stays)


# --- sources ------------------------------------------------------------------------------------


def test_sample_source_through_the_command_line(tmp_path, capsys):
    sample = {"output": str(tmp_path / "raw"), "sample_train": 3, "sample_val": 2, "sample_test": 1}
    params = write_params_file(tmp_path / "params.yaml", {"download": sample})
    assert download.main(["--params", str(params)]) == 0
    record = json.loads((tmp_path / "raw" / "SOURCE.json").read_text())
    assert record["source"] == "sample" and record["seed"] == 0
    assert record["counts"] == {
        "train": {"images": 3, "maps": 3, "fixations": 3},
        "val": {"images": 2, "maps": 2, "fixations": 2},
        "test": {"images": 1},
    }
    assert "ready" in capsys.readouterr().out


def test_help_explains_the_sources(capsys):
    with pytest.raises(SystemExit) as stop:
        download.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for word in ("sample", "salicon", "s3://bucket/prefix", "AWS_ENDPOINT_URL", "checksums.json"):
        assert word in text


def test_local_zips(tmp_path, tree, zips):
    record = download.run(_params(tmp_path, zips["images"].parent), progress=False)
    assert _layout_files(tmp_path / "raw") == _snapshot(tree)
    checks = {a["kind"]: a["verified_against"] for a in record["archives"]}
    assert checks == {"images": ["published"], "fixations": ["published"], "maps": []}
    assert {a["kind"]: a["md5"] for a in record["archives"]}["maps"] == _md5(zips["maps"])


def test_local_extracted_tree(tmp_path, tree):
    record = download.run(_params(tmp_path, tree), progress=False)
    assert _layout_files(tmp_path / "raw") == _snapshot(tree)
    assert record["type"] == "local" and record["counts"]["test"] == {"images": 2}


def test_unknown_source_is_a_config_error(tmp_path):
    with pytest.raises(download.ConfigError, match="download.source"):
        download.run(_params(tmp_path, tmp_path / "nowhere"), progress=False)


def test_google_drive_source_with_gdown(tmp_path, tree, zips, monkeypatch):
    """source 'salicon': each zip by its Drive id through gdown with resume on; cached zips are reused."""
    release = download.RELEASE
    by_id = {
        release["images"].drive_id: zips["images"],
        release["fixations_2017"].drive_id: zips["fixations"],
        release["maps"].drive_id: zips["maps"],
    }
    calls = []

    def fake_download(id, output, quiet, resume):
        calls.append((id, Path(output).name, resume))
        shutil.copy(by_id[id], output)
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=fake_download))
    download.run(_params(tmp_path, "salicon"), progress=False)
    assert _layout_files(tmp_path / "raw") == _snapshot(tree)
    assert sorted(name for _, name, _ in calls) == ["fixations_2017.zip", "images.zip", "maps.zip"]
    assert all(resume for _, _, resume in calls)
    calls.clear()
    download.run(_params(tmp_path, "salicon"), progress=False)
    assert calls == []  # all three came from the cache


# --- failures leave the output alone ------------------------------------------------------------


def test_wrong_md5_fails_and_leaves_existing_data(tmp_path, zips, existing):
    folder = _copy_zips(zips, tmp_path / "bad")
    with zipfile.ZipFile(folder / "images.zip", "a") as archive:  # still a valid zip, other bytes
        archive.writestr("images/readme.txt", "not the release")
    with pytest.raises(ChecksumError, match=r"images\.zip: md5 .* differs from the published"):
        download.run(_params(tmp_path, folder), progress=False)
    _assert_untouched(tmp_path, existing)


def test_mirror_checksum_mismatch_fails(tmp_path, zips, existing):
    folder = _copy_zips(zips, tmp_path / "mirror")
    (folder / "checksums.json").write_text(json.dumps({"maps.zip": {"md5": "0" * 32}}))
    with pytest.raises(ChecksumError, match=r"maps\.zip: md5 .* differs from the mirror's checksum"):
        download.run(_params(tmp_path, folder), progress=False)
    _assert_untouched(tmp_path, existing)


def test_command_line_reports_errors_with_exit_status_1(tmp_path, zips, existing, capsys):
    folder = _copy_zips(zips, tmp_path / "mirror")
    (folder / "maps.zip.md5").write_text("f" * 32 + "  maps.zip\n")
    params = write_params_file(
        tmp_path / "params.yaml", {"download": {"source": str(folder), "output": str(tmp_path / "raw")}}
    )
    assert download.main(["--params", str(params)]) == 1
    assert "maps.zip" in capsys.readouterr().err
    _assert_untouched(tmp_path, existing)


def _with_entry(zips: dict[str, Path], folder: Path, write_entry) -> Path:
    """The release zips, with one extra entry added to maps.zip (which has no published md5)."""
    folder = _copy_zips(zips, folder)
    with zipfile.ZipFile(folder / "maps.zip", "a") as archive:
        write_entry(archive)
    return folder


def _symlink(archive: zipfile.ZipFile) -> None:
    entry = zipfile.ZipInfo("train/COCO_train2014_000000000001.png")
    entry.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive.writestr(entry, "/etc/passwd")


@pytest.mark.parametrize(
    ("entry", "write_entry", "reason"),
    [
        ("../evil.png", lambda a: a.writestr("../evil.png", b"x"), "'..'"),
        ("train/../../evil.png", lambda a: a.writestr("train/../../evil.png", b"x"), "'..'"),
        ("/tmp/evil.png", lambda a: a.writestr(zipfile.ZipInfo("/tmp/evil.png"), b"x"), "absolute"),
        ("train/COCO_train2014_000000000001.png", _symlink, "symbolic link"),
    ],
)
def test_unsafe_archive_entries_are_refused(tmp_path, zips, existing, entry, write_entry, reason):
    folder = _with_entry(zips, tmp_path / "evil", write_entry)
    with pytest.raises(ArchiveError, match=re.escape(repr(entry)) + ".*" + reason):
        download.run(_params(tmp_path, folder), progress=False)
    _assert_untouched(tmp_path, existing)
    assert not (tmp_path / "evil.png").exists()


def _bomb(archive: zipfile.ZipFile) -> None:
    """A 50 MB map of zeros that deflates to about 50 KB: the shape of a zip bomb."""
    archive.writestr("train/COCO_train2014_000000000999.png", bytes(50 << 20), compress_type=zipfile.ZIP_DEFLATED)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({}, r"compressed \d+:1, over download.max_compression_ratio 200"),
        ({"max_entry_bytes": 1 << 20}, "over download.max_entry_bytes"),
    ],
)
def test_archive_entries_that_inflate_past_the_limits_are_refused(tmp_path, zips, existing, overrides, reason):
    folder = _with_entry(zips, tmp_path / "bomb", _bomb)
    with pytest.raises(ArchiveError, match="COCO_train2014_000000000999.png.*" + reason):
        download.run(_params(tmp_path, folder, **overrides), progress=False)
    _assert_untouched(tmp_path, existing)


def test_an_entry_that_understates_its_size_is_stopped_at_the_limit(tmp_path):
    from salgan.download import _copy_bounded

    sink = io.BytesIO()
    with pytest.raises(ArchiveError, match="inflates past download.max_entry_bytes 1000"):
        _copy_bounded(io.BytesIO(bytes(5000)), sink, 1000, "maps.zip: entry 'x.png'")
    assert len(sink.getvalue()) <= 1000


def _many_small_zero_maps(archive: zipfile.ZipFile) -> None:
    """The issue's archive: 300 entries of 1 MiB of zeros, each under the per-entry ratio floor (350 KB)."""
    for i in range(300):
        name = f"train/COCO_train2014_{900000 + i:012d}.png"
        archive.writestr(name, bytes(1 << 20), compress_type=zipfile.ZIP_DEFLATED)


def test_an_archive_of_many_small_bombs_is_refused_as_a_whole(tmp_path, zips, existing):
    folder = _with_entry(zips, tmp_path / "many", _many_small_zero_maps)
    assert (folder / "maps.zip").stat().st_size < 1 << 20  # 300 MiB inside
    with pytest.raises(ArchiveError, match=r"maps.zip: its 3\d\d entries are compressed \d+:1 together, over download"):
        download.run(_params(tmp_path, folder), progress=False)
    _assert_untouched(tmp_path, existing)
    assert not list(tmp_path.glob(".raw.*/maps/train/*.png"))  # nothing of it extracted


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"max_archive_entries": 5}, r"images.zip: 9 entries, over download.max_archive_entries 5"),
        ({"max_archive_bytes": 50_000}, r"images.zip: its entries inflate to \d+ bytes together, over download.max_"),
    ],
)
def test_an_archive_over_its_entry_count_or_total_size_is_refused(tmp_path, zips, existing, limits, reason):
    with pytest.raises(ArchiveError, match=reason):
        download.run(_params(tmp_path, _copy_zips(zips, tmp_path / "zips"), **limits), progress=False)
    _assert_untouched(tmp_path, existing)


def test_salicons_real_archives_are_well_inside_the_default_limits():
    """docs/reference.md §2: 20,000 images in images.zip (3 GB); maps and fixations 15,000 files each."""
    limits = DownloadParams()
    assert limits.max_archive_entries >= 4 * 20_000 and limits.max_archive_bytes >= 4 * 3_000_000_000


def test_a_tree_file_swapped_for_a_link_after_the_check_is_refused_while_copying(tmp_path, tree, existing, monkeypatch):
    """The link check is made on the file as it is opened: a file that looked regular when the folder was
    listed (here: every look before the copy is told "no link") and is a link when copied is refused."""
    copy = tmp_path / "swapped"
    shutil.copytree(tree, copy)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for data/raw")
    victim = sorted((copy / "maps" / "train").glob("*.png"))[0]
    victim.unlink()
    victim.symlink_to(secret)
    monkeypatch.setattr(Path, "is_symlink", lambda self: False)  # what a look before the swap saw
    with pytest.raises(DownloadError, match=re.escape(f"{victim.name}: a link out of the tree {copy} (to {secret})")):
        download.run(_params(tmp_path, copy), progress=False)
    monkeypatch.undo()
    _assert_untouched(tmp_path, existing)


def test_a_tree_source_with_a_link_out_of_the_tree_is_refused(tmp_path, tree, existing):
    copy = tmp_path / "linked"
    shutil.copytree(tree, copy)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for data/raw")
    victim = sorted((copy / "maps" / "train").glob("*.png"))[0]
    victim.unlink()
    victim.symlink_to(secret)
    with pytest.raises(DownloadError, match=f"{victim.name}: a link out of the tree"):
        download.run(_params(tmp_path, copy), progress=False)
    _assert_untouched(tmp_path, existing)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_truncated_or_corrupt_archive_is_refused(tmp_path, zips, existing, damage):
    folder = _copy_zips(zips, tmp_path / "damaged")
    data = bytearray((folder / "maps.zip").read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
        message = "not a readable zip archive"
    else:
        data[len(data) // 3] ^= 0xFF  # inside a stored member: its CRC no longer matches
        message = "cannot be extracted .*CRC"
    (folder / "maps.zip").write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=message):
        download.run(_params(tmp_path, folder), progress=False)
    _assert_untouched(tmp_path, existing)


def test_incomplete_layout_names_the_missing_files(tmp_path, tree, existing):
    partial = tmp_path / "partial"
    shutil.copytree(tree, partial)
    missing = sorted((partial / "maps" / "val").glob("*.png"))[0]
    missing.unlink()
    shutil.rmtree(partial / "images" / "test")
    with pytest.raises(LayoutError) as failure:
        download.run(_params(tmp_path, partial), progress=False)
    assert "images/test: no images" in str(failure.value)
    assert f"maps/val: missing for 1 of 3 images ({missing.name}" in str(failure.value)
    _assert_untouched(tmp_path, existing)


# --- HTTP: resumable fetches --------------------------------------------------------------------


class _RangeServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` (path -> bytes) with Range and If-Range; ``break_once[path] = n`` makes the
    next full or partial GET of ``path`` stop after n body bytes and drop the connection."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.files: dict[str, bytes] = {}
        self.break_once: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        server = self.server
        server.requests.append((self.command, self.path, self.headers.get("Range")))
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        etag = '"' + hashlib.md5(data).hexdigest() + '"'
        start, wanted = 0, self.headers.get("Range")
        if wanted and self.headers.get("If-Range", etag) == etag:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if not body:
            return
        cut = server.break_once.pop(self.path, None)
        self.wfile.write(data[start:] if cut is None else data[start : start + cut])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = _RangeServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_interrupted_http_download_resumes_with_a_range_request(tmp_path, http_server):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    http_server.files["/big.zip"] = payload
    http_server.break_once["/big.zip"] = 1_000_000
    dest = tmp_path / "cache" / "big.zip"
    with pytest.raises(FetchError, match="run again to resume"):
        fetch.fetch_http(http_server.url + "/big.zip", dest, retries=0, progress=False)
    part = dest.with_name("big.zip.part")
    kept = part.stat().st_size  # what arrived, less the read that the break cut short
    assert 500_000 < kept <= 1_000_000 and not dest.exists()

    fetch.fetch_http(http_server.url + "/big.zip", dest, retries=0, progress=False)
    assert dest.read_bytes() == payload
    assert not part.exists()
    assert http_server.requests[-1] == ("GET", "/big.zip", f"bytes={kept}-")


def test_http_retry_resumes_within_one_call(tmp_path, http_server, monkeypatch):
    monkeypatch.setattr(fetch, "RETRY_DELAY_S", 0.0)
    payload = os.urandom(2 * 1024 * 1024)
    http_server.files["/f.zip"] = payload
    http_server.break_once["/f.zip"] = 700_000
    dest = fetch.fetch_http(http_server.url + "/f.zip", tmp_path / "f.zip", retries=2, progress=False)
    assert dest.read_bytes() == payload
    ranges = [r[2] for r in http_server.requests]
    assert len(ranges) == 2 and ranges[0] is None and re.fullmatch(r"bytes=\d+-", ranges[1])


def test_a_link_planted_at_the_partial_files_name_is_not_followed(tmp_path, http_server):
    http_server.files["/f.zip"] = b"payload"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "f.zip.part").symlink_to(victim)
    fetch.fetch_http(http_server.url + "/f.zip", tmp_path / "f.zip", retries=0, progress=False)
    assert victim.read_bytes() == b"keep" and (tmp_path / "f.zip").read_bytes() == b"payload"
    (tmp_path / "g.zip.part").symlink_to(victim)  # and when resuming (a note says whose bytes they are)
    (tmp_path / "g.zip.part.json").write_text(json.dumps({"origin": http_server.url + "/f.zip", "validator": "x"}))
    fetch.fetch_http(http_server.url + "/f.zip", tmp_path / "g.zip", retries=0, progress=False)
    assert victim.read_bytes() == b"keep" and (tmp_path / "g.zip").read_bytes() == b"payload"


def test_partial_file_of_a_changed_remote_file_is_discarded(tmp_path, http_server):
    http_server.files["/f.zip"] = b"a" * 500_000
    http_server.break_once["/f.zip"] = 200_000
    dest = tmp_path / "f.zip"
    with pytest.raises(FetchError):
        fetch.fetch_http(http_server.url + "/f.zip", dest, retries=0, progress=False)
    http_server.files["/f.zip"] = b"b" * 400_000  # new ETag: If-Range fails, the server sends it all
    fetch.fetch_http(http_server.url + "/f.zip", dest, retries=0, progress=False)
    assert dest.read_bytes() == b"b" * 400_000


def test_http_mirror_source(tmp_path, tree, zips, http_server):
    for path in zips.values():
        http_server.files[f"/salicon/{path.name}"] = path.read_bytes()
    sums = {path.name: _md5(path) for path in zips.values()}
    http_server.files["/salicon/checksums.json"] = json.dumps(sums).encode()
    record = download.run(_params(tmp_path, http_server.url + "/salicon/"), progress=False)
    assert _layout_files(tmp_path / "raw") == _snapshot(tree)
    checks = {a["kind"]: a["verified_against"] for a in record["archives"]}
    assert checks == {
        "images": ["published", "mirror"],
        "fixations": ["published", "mirror"],
        "maps": ["mirror"],
    }
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(sums)


def test_a_signed_url_prefix_works_and_its_signature_is_never_shown(tmp_path, tree, zips, http_server, capsys):
    """File names go into the URL's path, the query (the signature) stays at the end; no record, message
    or log line shows the signature."""
    query = "X-Amz-Signature=TOPSECRET&X-Amz-Expires=600"
    for path in zips.values():
        http_server.files[f"/salicon/{path.name}?{query}"] = path.read_bytes()
    record = download.run(_params(tmp_path, f"{http_server.url}/salicon?{query}"), progress=False)
    assert _layout_files(tmp_path / "raw") == _snapshot(tree)
    assert "TOPSECRET" not in (tmp_path / "raw" / "SOURCE.json").read_text() and "TOPSECRET" not in str(record)
    missing = _params(tmp_path / "other", f"{http_server.url}/nothing-here?{query}")
    assert (
        download.main(["--params", str(write_params_file(tmp_path / "p.yaml", {"download": missing.model_dump()}))])
        == 1
    )
    assert "TOPSECRET" not in capsys.readouterr().err


def test_source_json_has_no_credentials():
    assert redact_url("https://user:secret@host:8443/prefix/?X-Amz-Signature=abc") == "https://host:8443/prefix/"


# --- S3 through moto's server -------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint():
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch):
    """A fresh bucket on moto; the stage finds the endpoint through AWS_ENDPOINT_URL alone."""
    import boto3

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.client("s3")
    bucket = f"salicon-{os.urandom(4).hex()}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def test_boto3_honours_aws_endpoint_url(s3_bucket, moto_endpoint):
    client, _ = s3_bucket
    assert fetch.s3_client().meta.endpoint_url == moto_endpoint == client.meta.endpoint_url


def test_s3_mirror_source(tmp_path, tree, zips, s3_bucket):
    client, bucket = s3_bucket
    sums = {}
    for path in zips.values():
        client.upload_file(str(path), bucket, f"mirror/salicon/{path.name}")
        sums[path.name] = {"md5": _md5(path), "size": path.stat().st_size}
    client.put_object(Bucket=bucket, Key="mirror/salicon/checksums.json", Body=json.dumps(sums).encode())
    record = download.run(_params(tmp_path, f"s3://{bucket}/mirror/salicon"), progress=False)
    assert _layout_files(tmp_path / "raw") == _snapshot(tree)
    checks = {a["kind"]: a["verified_against"] for a in record["archives"]}
    assert checks == {
        "images": ["published", "mirror"],
        "fixations": ["published", "mirror"],
        "maps": ["mirror"],
    }
    saved = json.loads((tmp_path / "raw" / "SOURCE.json").read_text())
    assert saved["source"] == f"s3://{bucket}/mirror/salicon" and "testing" not in json.dumps(saved)


def test_s3_wrong_checksum_fails_and_leaves_existing_data(tmp_path, zips, s3_bucket, existing):
    client, bucket = s3_bucket
    for path in zips.values():
        client.upload_file(str(path), bucket, path.name)
    client.put_object(Bucket=bucket, Key="maps.zip.md5", Body=b"0123456789abcdef0123456789abcdef  maps.zip\n")
    with pytest.raises(ChecksumError, match="mirror's checksum"):
        download.run(_params(tmp_path, f"s3://{bucket}"), progress=False)
    _assert_untouched(tmp_path, existing)
    assert not (tmp_path / "cache" / "maps.zip").exists()  # a bad download is not kept


def test_s3_download_resumes_from_a_partial_file(tmp_path, zips, s3_bucket):
    client, bucket = s3_bucket
    data = zips["images"].read_bytes()
    client.put_object(Bucket=bucket, Key="images.zip", Body=data)
    etag = client.head_object(Bucket=bucket, Key="images.zip")["ETag"]
    dest = tmp_path / "images.zip"
    half = len(data) // 2
    dest.with_name("images.zip.part").write_bytes(data[:half])
    dest.with_name("images.zip.part.json").write_text(
        json.dumps({"origin": f"s3://{bucket}/images.zip", "validator": etag})
    )
    ranges = []
    client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: ranges.append(params["headers"].get("Range"))
    )
    fetch.fetch_s3(bucket, "images.zip", dest, client=client, progress=False)
    assert dest.read_bytes() == data
    assert ranges == [f"bytes={half}-{len(data) - 1}"]


def test_s3_missing_archive_is_named(tmp_path, s3_bucket):
    _, bucket = s3_bucket
    with pytest.raises(FetchError, match=r"no images archive on the mirror \(tried images.zip"):
        download.run(_params(tmp_path, f"s3://{bucket}/empty"), progress=False)
