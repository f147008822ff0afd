"""The DVC remote and the SALICON mirror against a real S3 HTTP endpoint: moto's server on 127.0.0.1.

Server mode, not the in-process mock: DVC reaches S3 through s3fs/aiobotocore, which the mock does not
patch, and a real endpoint also proves that AWS_ENDPOINT_URL alone points boto3 and DVC at it. MLflow's
S3 artifacts are tested in tests/test_mlflow_s3.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUCKET = "salgan"  # the bucket infra/docker-compose.yml creates
SECRET = "salgan-test-secret-key"  # must never show up in any output


@pytest.fixture
def s3(s3_server, tmp_path_factory, monkeypatch):
    """The environment pointing boto3, DVC and MLflow at the server, for one test (other test modules
    never see it), and a client; the bucket exists."""
    # Only the standard AWS mechanisms, and none of the developer's own profiles or endpoints.
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    missing = str(tmp_path_factory.getbasetemp() / "no-aws-config")
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    import boto3

    client = boto3.client("s3")
    assert client.meta.endpoint_url == s3_server, "boto3 ignores AWS_ENDPOINT_URL"
    existing = {b["Name"] for b in client.list_buckets()["Buckets"]}
    if BUCKET not in existing:
        client.create_bucket(Bucket=BUCKET)
    return {"url": s3_server, "client": client}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digests(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (a file alone gives one entry, '.')."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): sha256(p) for p in files}


# --- DVC ----------------------------------------------------------------------------------------

DVC = str(Path(sys.executable).with_name("dvc"))
STAGE_SCRIPT = """\
import os, pathlib
out = pathlib.Path("out")
(out / "sub").mkdir(parents=True, exist_ok=True)
(out / "a.txt").write_text("stage output\\n")
(out / "sub" / "b.bin").write_bytes(os.urandom(50_000))
pathlib.Path("model.bin").write_bytes(os.urandom(20_000))
"""


def dvc(project: Path, *args: str) -> str:
    result = subprocess.run(
        [DVC, *args], cwd=project, capture_output=True, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"}
    )
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    assert SECRET not in result.stdout + result.stderr
    return result.stdout


def test_dvc_push_then_pull_restores_stage_outputs_from_the_s3_remote(s3, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    dvc(project, "init", "-q")
    # The repository's own remotes, with the endpoint override kept in config.local as documented.
    shutil.copy(REPO / ".dvc" / "config", project / ".dvc" / "config")
    dvc(project, "remote", "modify", "--local", "s3", "endpointurl", s3["url"])
    (project / "make.py").write_text(STAGE_SCRIPT)
    dvc(
        project,
        "stage",
        "add",
        "-n",
        "make",
        "-d",
        "make.py",
        "-o",
        "out",
        "-o",
        "model.bin",
        f"{sys.executable} make.py",
    )
    dvc(project, "repro", "-q")
    (project / "raw").mkdir()
    (project / "raw" / "input.bin").write_bytes(os.urandom(30_000))
    dvc(project, "add", "-q", "raw")
    outputs = ("out", "model.bin", "raw")
    before = {name: tree_digests(project / name) for name in outputs}

    dvc(project, "push", "-r", "s3")
    listed = s3["client"].list_objects_v2(Bucket=BUCKET, Prefix="dvc/files/md5/")
    assert listed["KeyCount"] >= 5  # 4 files and the directory listing of out/ (and raw/)

    shutil.rmtree(project / ".dvc" / "cache")
    for name in outputs:
        if (project / name).is_dir():
            shutil.rmtree(project / name)
        else:
            (project / name).unlink()
    # Pulled with the endpoint from AWS_ENDPOINT_URL alone, as inside the stack's worker image.
    dvc(project, "remote", "modify", "--local", "--unset", "s3", "endpointurl")
    dvc(project, "pull", "-r", "s3")
    after = {name: tree_digests(project / name) for name in outputs}
    assert after == before
    assert "in sync" in dvc(project, "status", "-c", "-r", "s3")


# --- the SALICON mirror and the s3:// download source -------------------------------------------


def make_release_zips(folder: Path, tree: Path) -> dict[str, Path]:
    """A sample SALICON tree zipped as the release is: images.zip, fixations_2017.zip, maps.zip."""
    from salgan.sample import generate_sample

    generate_sample(tree, 2, 2, 1, 0)
    folder.mkdir(parents=True)
    zips = {}
    for kind, name in (("images", "images.zip"), ("fixations", "fixations_2017.zip"), ("maps", "maps.zip")):
        zips[name] = folder / name
        with zipfile.ZipFile(zips[name], "w") as archive:
            for file in sorted((tree / kind).rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(tree).as_posix())
    return zips


@pytest.fixture
def release(tmp_path, monkeypatch):
    """Sample zips, with the release table's published md5s pointed at them."""
    from salgan import download

    tree = tmp_path / "tree"
    zips = make_release_zips(tmp_path / "zips", tree)
    for key, archive in download.RELEASE.items():
        if archive.md5 and archive.filename in zips:
            md5 = hashlib.md5(zips[archive.filename].read_bytes()).hexdigest()
            monkeypatch.setitem(download.RELEASE, key, dataclasses.replace(archive, md5=md5))
    return tree, zips


def test_mirror_round_trips_the_zips_and_the_s3_source_verifies_them(s3, tmp_path, release, capsys, caplog):
    from salgan import cli, download

    tree, zips = release
    client = s3["client"]
    assert (
        cli.main(["mirror", f"s3://{BUCKET}/salicon", "--source", str(zips["images.zip"].parent), "--no-progress"]) == 0
    )

    sums = json.loads(client.get_object(Bucket=BUCKET, Key="salicon/checksums.json")["Body"].read())
    assert set(sums) == set(zips)
    for name, path in zips.items():
        body = client.get_object(Bucket=BUCKET, Key=f"salicon/{name}")["Body"].read()
        assert body == path.read_bytes()
        assert sums[name] == {
            "md5": hashlib.md5(body).hexdigest(),
            "sha256": hashlib.sha256(body).hexdigest(),
            "size": len(body),
        }

    params = download.DownloadParams(
        source=f"s3://{BUCKET}/salicon", output=str(tmp_path / "raw"), cache_dir=str(tmp_path / "cache")
    )
    record = download.run(params, progress=False)
    assert {a["file"]: a["verified_against"] for a in record["archives"]} == {
        "images.zip": ["published", "mirror"],
        "fixations_2017.zip": ["published", "mirror"],
        "maps.zip": ["mirror"],  # no published md5: the mirror's sidecar is its only check
    }
    extracted = tree_digests(tmp_path / "raw")
    extracted.pop(download.SOURCE_FILE)
    assert extracted == tree_digests(tree)

    # A damaged object on the mirror is caught by the sidecar (maps.zip has no published md5).
    client.put_object(Bucket=BUCKET, Key="salicon/maps.zip", Body=b"not the zip that was mirrored")
    damaged = params.model_copy(update={"output": str(tmp_path / "raw2"), "cache_dir": str(tmp_path / "cache2")})
    with pytest.raises(download.ChecksumError, match="maps.zip"):
        download.run(damaged, progress=False)

    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err + caplog.text


def test_mirror_uploads_large_files_in_parts_and_skips_what_is_there(s3, tmp_path, caplog):
    from salgan.mirror import mirror

    source = tmp_path / "zips"
    source.mkdir()
    big = source / "maps.zip"  # no published md5, so any bytes may be mirrored
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    client = s3["client"]
    sums = mirror(source, f"s3://{BUCKET}/multipart/", part_size_mib=5, progress=False)
    head = client.head_object(Bucket=BUCKET, Key="multipart/maps.zip")
    assert head["ETag"].strip('"').endswith("-3")  # 11 MiB in 5 MiB parts: a 3-part upload
    assert head["Metadata"]["sha256"] == sums["maps.zip"]["sha256"] == sha256(big)
    body = client.get_object(Bucket=BUCKET, Key="multipart/maps.zip")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha256(big)

    caplog.clear()
    with caplog.at_level("INFO", logger="salgan.mirror"):
        mirror(source, f"s3://{BUCKET}/multipart", part_size_mib=5, progress=False)
    assert "up to date" in caplog.text and "uploaded" not in caplog.text


def test_mirror_refuses_a_zip_that_is_not_the_release(s3, tmp_path):
    from salgan.mirror import MirrorError, mirror

    source = tmp_path / "zips"
    source.mkdir()
    (source / "images.zip").write_bytes(b"a truncated download")
    with pytest.raises(MirrorError, match=r"images\.zip: md5 .* not the published md5"):
        mirror(source, f"s3://{BUCKET}/refused", progress=False)
    assert s3["client"].list_objects_v2(Bucket=BUCKET, Prefix="refused/")["KeyCount"] == 0


def test_mirror_names_a_missing_bucket(s3, tmp_path):
    from salgan.mirror import MirrorError, mirror

    source = tmp_path / "zips"
    source.mkdir()
    (source / "maps.zip").write_bytes(b"maps")
    with pytest.raises(MirrorError, match="create the bucket no-such-bucket first"):
        mirror(source, "s3://no-such-bucket/salicon", progress=False)
