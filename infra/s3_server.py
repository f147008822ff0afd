"""The process stack's S3 endpoint: moto's S3 server, with its buckets kept on disk and its access key checked.

MinIO is the production store (docker-compose.yml); what installs here is moto, which holds objects in
memory. This wraps moto's WSGI application so that the stack behaves like a store:

- every bucket and object is written to ``--data`` after each request that changes them, and read back at
  start, so ``infra/stack down`` / ``up`` (or a crash) keeps the bucket's contents;
- requests must carry the stack's access key id (``AWS_ACCESS_KEY_ID``; moto itself accepts any key), so a
  client with the wrong or no credentials is refused as MinIO would refuse it (signatures are not checked).

    python infra/s3_server.py --host 127.0.0.1 --port 9000 --data infra/.stack/s3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path

from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

from salgan.layout import write_atomic  # a fresh exclusive temporary name, synced, then renamed

REGION = "us-east-1"
CHANGING_METHODS = {"PUT", "POST", "DELETE"}
CREDENTIAL = re.compile(r"Credential=([^/\s,]+)/")


def _backend():
    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


class DiskMirror:
    """Keeps ``<data>/index.json`` and one file per object in step with moto's in-memory buckets."""

    def __init__(self, data: Path):
        self.data = data
        self.index_path = data / "index.json"
        self.lock = threading.Lock()
        self.index: dict[str, dict[str, dict]] = {}

    def _object_file(self, bucket: str, key: str) -> Path:
        return self.data / "objects" / bucket / hashlib.sha256(key.encode()).hexdigest()

    def restore(self) -> int:
        """Load every bucket and object of the index into moto; returns the number of objects."""
        if not self.index_path.is_file():
            return 0
        self.index = json.loads(self.index_path.read_text())
        backend, count = _backend(), 0
        for bucket, objects in self.index.items():
            backend.create_bucket(bucket, REGION)
            for key, meta in objects.items():
                stored = backend.put_object(bucket, key, self._object_file(bucket, key).read_bytes())
                if meta.get("content_type"):
                    stored.set_metadata({"Content-Type": meta["content_type"]})
                count += 1
        return count

    def sync(self) -> None:
        """Write what changed since the last sync: new or rewritten objects, then the index; drop the rest."""
        with self.lock:
            current: dict[str, dict[str, dict]] = {}
            for bucket_name, bucket in list(_backend().buckets.items()):
                objects = current.setdefault(bucket_name, {})
                for key, stored in list(bucket.keys.items()):
                    meta = {"etag": stored.etag, "content_type": stored.metadata.get("Content-Type", "")}
                    objects[key] = meta
                    if self.index.get(bucket_name, {}).get(key) != meta:
                        write_atomic(self._object_file(bucket_name, key), stored.value)
            write_atomic(self.index_path, json.dumps(current).encode())
            for bucket_name, objects in self.index.items():
                for key in objects.keys() - current.get(bucket_name, {}).keys():
                    self._object_file(bucket_name, key).unlink(missing_ok=True)
            self.index = current


def _access_key(environ: dict) -> str | None:
    """The access key id a request was signed with (header or presigned-URL query), or None."""
    found = CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    if found:
        return found.group(1)
    query = re.search(r"X-Amz-Credential=([^/&%]+)", environ.get("QUERY_STRING", ""))
    return query.group(1) if query else None


def make_app(mirror: DiskMirror, access_key_id: str):
    moto_app = DomainDispatcherApplication(create_backend_app)

    def app(environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not served here"]
        if _access_key(environ) != access_key_id:
            start_response("403 Forbidden", [("Content-Type", "application/xml")])
            return [
                b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidAccessKeyId</Code>"
                b"<Message>The AWS access key id you provided does not exist in our records.</Message></Error>"
            ]
        body = list(moto_app(environ, start_response))
        if environ.get("REQUEST_METHOD") in CHANGING_METHODS:
            mirror.sync()
        return body

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="folder holding the buckets between starts")
    args = parser.parse_args(argv)
    access_key_id = os.environ.get("AWS_ACCESS_KEY_ID")
    if not access_key_id:
        sys.exit("s3_server: AWS_ACCESS_KEY_ID is not set: it is the one access key this endpoint accepts")
    os.environ.setdefault("MOTO_PORT", str(args.port))
    mirror = DiskMirror(args.data)
    restored = mirror.restore()
    print(f"s3_server: {restored} objects restored from {args.data}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(args.host, args.port, make_app(mirror, access_key_id), threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
