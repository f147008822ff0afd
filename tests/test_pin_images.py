"""infra/pin-images against a real registry: Debian's docker-registry (the CNCF distribution server) on
127.0.0.1, with images pushed over the Registry HTTP API as `docker push` would."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port, running_server

REPO = Path(__file__).resolve().parents[1]
PIN_IMAGES = REPO / "infra" / "pin-images"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@contextlib.contextmanager
def serve_registry(root: Path, auth: str = ""):
    """docker-registry on a free port, storing under root/data; `auth` is extra YAML for its config.
    Yields its host:port."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry; .ci/run does)")
    port = free_port()
    config = root / f"config-{port}.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    with running_server([binary, "serve", str(config)], f"http://127.0.0.1:{port}/v2/", root / f"{port}.log"):
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("registry")


@pytest.fixture(scope="module")
def registry(registry_root) -> str:
    """An open registry, as a local one usually is: the tests push through it."""
    with serve_registry(registry_root) as host:
        yield host


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def token_registry(registry_root, registry):
    """The same storage behind a registry that works like Docker Hub and ghcr.io: 401 with a Bearer
    challenge, and only tokens from its token service accepted (JWTs signed by a key whose certificate it
    trusts). Yields its host and the list of scopes the token service was asked for."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "salgan test token service")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    bundle = registry_root / "token-ca.pem"
    bundle.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    asked: list[str] = []

    class TokenService(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            scope = query["scope"][0]
            asked.append(f"{query['service'][0]} {scope}")
            kind, repository, actions = scope.split(":")
            header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(certificate.public_bytes(
                serialization.Encoding.DER)).decode()]}  # fmt: skip
            issued = int(time.time())
            claims = {"iss": "salgan-test-issuer", "sub": "", "aud": "salgan-test", "iat": issued,
                      "nbf": issued - 10, "exp": issued + 300, "jti": str(issued),
                      "access": [{"type": kind, "name": repository, "actions": actions.split(",")}]}  # fmt: skip
            signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
            signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
            body = json.dumps({"token": f"{signing_input}.{b64url(signature)}"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    service = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenService)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    auth = (
        f"auth:\n  token:\n    realm: http://127.0.0.1:{service.server_port}/token\n    service: salgan-test\n"
        f"    issuer: salgan-test-issuer\n    rootcertbundle: {bundle}\n"
    )
    try:
        with serve_registry(registry_root, auth) as host:
            yield host, asked
    finally:
        service.shutdown()


def push_blob(host: str, repository: str, data: bytes) -> dict:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    start = urllib.request.Request(f"http://{host}/v2/{repository}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(start) as response:
        location = response.headers["Location"]
    upload = urllib.request.Request(
        f"{location}&digest={digest}", data=data, method="PUT", headers={"Content-Type": "application/octet-stream"}
    )
    urllib.request.urlopen(upload).close()
    return {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": len(data)}


def push_manifest(host: str, repository: str, reference: str, manifest: dict) -> dict:
    """Push a manifest (or index) under a tag or digest; its descriptor, the digest computed here."""
    body = json.dumps(manifest).encode()
    request = urllib.request.Request(
        f"http://{host}/v2/{repository}/manifests/{reference}", data=body, method="PUT",
        headers={"Content-Type": manifest["mediaType"]},
    )  # fmt: skip
    urllib.request.urlopen(request).close()
    return {"mediaType": manifest["mediaType"], "digest": f"sha256:{hashlib.sha256(body).hexdigest()}",
            "size": len(body)}  # fmt: skip


def push_image(host: str, repository: str, tag: str, content: bytes, arch: str = "amd64") -> dict:
    """A one-layer image under `tag`; its manifest's descriptor."""
    config = push_blob(host, repository, json.dumps({"architecture": arch, "os": "linux"}).encode())
    config["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                "layers": [push_blob(host, repository, content)]}  # fmt: skip
    return push_manifest(host, repository, tag, manifest)


def push_multiplatform(host: str, repository: str, tag: str) -> dict:
    """Two platform images behind one index under `tag`; the index's descriptor."""
    entries = [
        push_image(host, repository, f"{tag}-{arch}", arch.encode(), arch)
        | {"platform": {"architecture": arch, "os": "linux"}}
        for arch in ("amd64", "arm64")
    ]
    return push_manifest(host, repository, tag, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})


def run(*args: str, infra: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PIN_IMAGES), *args, "--infra", str(infra)],
        capture_output=True, text=True, env=os.environ | {"NO_PROXY": "*"},
    )  # fmt: skip


def stack_files(infra: Path, host: str) -> None:
    """A compose file and a Dockerfile naming the registry's images the ways the real ones do."""
    infra.mkdir()
    (infra / "docker-compose.yml").write_text(
        "services:\n"
        "  db:\n"
        f"    image: {host}/library/base:1.0\n"
        "  check:\n"
        f"    image: {host}/library/base:1.0\n"
        "  server:\n"
        "    build:\n"
        "      dockerfile_inline: |\n"
        f"        FROM {host}/tools/server:2\n"
        "        USER 1000\n"
        "    image: salgan/server:2\n"
    )
    (infra / "Dockerfile").write_text(
        f"ARG RUNTIME_IMAGE={host}/library/base:1.0\n"
        f"FROM {host}/tools/uv:0.8 AS uv\n"
        "FROM ${RUNTIME_IMAGE}\n"
        "COPY --from=uv /uv /usr/local/bin/uv\n"
    )


def test_pin_rewrites_each_tag_to_the_digest_the_registry_serves(registry, tmp_path):
    base = push_image(registry, "library/base", "1.0", b"base layer")["digest"]
    server = push_multiplatform(registry, "tools/server", "2")["digest"]
    uv = push_image(registry, "tools/uv", "0.8", b"uv binary")["digest"]
    infra = tmp_path / "infra"
    stack_files(infra, registry)

    before = run("check", infra=infra)
    assert before.returncode == 1
    assert before.stdout.count("UNPINNED") == 5 and "salgan/server" not in before.stdout  # built here: not pulled

    pinned = run("pin", infra=infra)
    assert pinned.returncode == 0, pinned.stderr
    compose, dockerfile = (infra / "docker-compose.yml").read_text(), (infra / "Dockerfile").read_text()
    assert compose.count(f"image: {registry}/library/base:1.0@{base}\n") == 2
    assert f"FROM {registry}/tools/server:2@{server}\n" in compose  # the index: every platform stays pullable
    assert f"ARG RUNTIME_IMAGE={registry}/library/base:1.0@{base}\n" in dockerfile
    assert f"FROM {registry}/tools/uv:0.8@{uv} AS uv\n" in dockerfile
    assert "FROM ${RUNTIME_IMAGE}\n" in dockerfile and "image: salgan/server:2\n" in compose
    assert run("check", infra=infra).returncode == 0

    # The tag moves to new content: a pinned file keeps what it had until asked to update.
    moved = push_image(registry, "library/base", "1.0", b"patched base layer")["digest"]
    assert run("pin", infra=infra).returncode == 0
    assert (infra / "docker-compose.yml").read_text() == compose
    assert run("pin", "--update", infra=infra).returncode == 0
    assert (infra / "docker-compose.yml").read_text().count(f"base:1.0@{moved}\n") == 2
    assert base not in (infra / "Dockerfile").read_text()


def test_a_tag_the_registry_lacks_stops_before_any_file_changes(registry, tmp_path):
    push_image(registry, "library/base", "1.0", b"base layer")
    push_multiplatform(registry, "tools/server", "2")
    infra = tmp_path / "infra"
    stack_files(infra, registry)
    (infra / "Dockerfile").write_text((infra / "Dockerfile").read_text().replace("tools/uv:0.8", "tools/uv:9.9"))
    before = {p.name: p.read_text() for p in infra.iterdir()}

    result = run("pin", infra=infra)
    assert result.returncode == 1
    assert f"{registry}/tools/uv:9.9: the registry answered 404" in result.stderr
    assert {p.name: p.read_text() for p in infra.iterdir()} == before


def test_a_registry_that_wants_a_token_gets_the_anonymous_pull_token(registry, token_registry, tmp_path):
    """Docker Hub's and ghcr.io's way: the 401's challenge names the token service and the scope to ask."""
    host, asked = token_registry
    base = push_image(registry, "library/base", "1.0", b"token base")["digest"]
    server = push_multiplatform(registry, "tools/server", "2")["digest"]
    uv = push_image(registry, "tools/uv", "0.8", b"token uv")["digest"]
    request = urllib.request.Request(f"http://{host}/v2/library/base/manifests/1.0")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 401  # this registry serves nothing without a token
    infra = tmp_path / "infra"
    stack_files(infra, host)

    result = run("pin", infra=infra)
    assert result.returncode == 0, result.stderr
    compose, dockerfile = (infra / "docker-compose.yml").read_text(), (infra / "Dockerfile").read_text()
    assert f"{host}/library/base:1.0@{base}" in compose and f"{host}/tools/server:2@{server}" in compose
    assert f"{host}/tools/uv:0.8@{uv}" in dockerfile
    assert "salgan-test repository:library/base:pull" in asked and "salgan-test repository:tools/uv:pull" in asked


def test_every_third_party_image_of_the_stack_is_seen():
    """The real infra files: the check lists each pulled image (pinned or not) and none the stack builds."""
    result = subprocess.run([sys.executable, str(PIN_IMAGES), "check"], capture_output=True, text=True)
    listed = [line.split(maxsplit=1) for line in result.stdout.splitlines() if line.startswith(("pinned", "UNPINNED"))]
    seen = {where.split(": ", 1)[1].split("@")[0] for _, where in listed}
    assert seen == {
        "postgres:16",
        "minio/minio:RELEASE.2025-09-07T16-13-09Z",
        "minio/mc:RELEASE.2025-08-13T08-35-41Z",
        "ghcr.io/mlflow/mlflow:v3.17.2",
        "prefecthq/prefect:3.9.1-python3.11",
        "nvidia/cuda:13.0.1-runtime-ubuntu24.04",
        "ghcr.io/astral-sh/uv:0.8",
    }
