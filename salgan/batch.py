"""Batch prediction over S3: ``salgan predict --model URI --output s3://bucket/maps s3://bucket/images/``.

Inputs are ``s3://bucket/prefix`` listings (every image object under the prefix, page by page) and local
files, folders and globs; the output is an ``s3://bucket/prefix`` (or a local folder). Images are read,
predicted and written one batch at a time, so memory holds one batch whatever the number of images. Each
map lands at ``<output>/<key relative to its input prefix, suffix replaced>.png`` (``_overlay.jpg`` beside
it with ``--overlay``), tagged in its S3 metadata with the model's identity (the sha256 of its weights): a
rerun with the same model skips every map already written, so a killed job resumes where it stopped. The
run ends by writing ``<output>/manifest.json``: the model, and what was written, skipped and failed (with
the reason). The decoding (:mod:`salgan.imaging`) and the batch loop (:func:`salgan.inference.predict_images`)
are those of every other prediction.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from salgan.errors import InputError
from salgan.imaging import IMAGE_SUFFIXES, Decoded, decode_rgb, encoded, save_map, save_overlay
from salgan.inference import failure_reason, predict_images
from salgan.inputs import collect
from salgan.progress import progress
from salgan.settings import PredictParams
from salgan.urls import is_s3_url, parse_s3_url

MODEL_METADATA = "salgan-model"  # S3 user metadata of a written map: the weights' sha256
MANIFEST = "manifest.json"


@dataclass
class Item:
    """One input: where it comes from (for messages), the output stem, and how to read its bytes."""

    label: str
    stem: str
    read: Callable[[], bytes]


def name_problem(stem: str) -> str | None:
    """Why ``stem`` (an output name: a key relative to its input prefix, without suffix) may not name a
    file under an output, or None: an absolute name, or a ``..``, ``.`` or empty component (``a//b``) would
    write outside it, or somewhere other than the key says."""
    if not stem or stem.startswith("/"):
        return f"the key's name {stem!r} is empty or absolute; refused"
    if any(part in ("", ".", "..") for part in stem.split("/")):
        return f"the key's name {stem!r} has a '..', '.' or empty path component; refused"
    return None


def model_identity(generator: torch.nn.Module) -> str:
    """sha256 over the generator's state_dict (names and bytes, in order): the same weights, the same id,
    whichever file or registry version they came from."""
    digest = hashlib.sha256()
    for name, tensor in generator.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def s3_items(client, url: str) -> Iterator[Item]:
    """The image objects under ``s3://bucket/prefix``, listed page by page (never all at once)."""
    bucket, prefix = parse_s3_url(url)
    start = f"{prefix}/" if prefix else ""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start):
        for entry in page.get("Contents", []):
            key = PurePosixPath(entry["Key"])
            if key.suffix.lower() in IMAGE_SUFFIXES:
                # From the key as written (PurePosixPath folds "a//b" and keeps ".."): name_problem judges it.
                raw = entry["Key"][len(start) :]
                stem = raw[: len(raw) - len(key.suffix)]
                yield Item(f"s3://{bucket}/{entry['Key']}", stem, _object_reader(client, bucket, entry["Key"]))


def _object_reader(client, bucket: str, key: str) -> Callable[[], bytes]:
    return lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read()


def local_items(inputs: list[str], exclude: Path | None) -> tuple[list[Item], list[str]]:
    jobs, errors = collect(inputs, exclude)
    return [Item(str(job.path), job.stem.as_posix(), job.path.read_bytes) for job in jobs], errors


class S3Output:
    """Maps under ``s3://bucket/prefix``; knows which were written by which model."""

    def __init__(self, client, url: str):
        self.client, (self.bucket, prefix) = client, parse_s3_url(url)
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = url.rstrip("/")
        self._present: set[str] | None = None

    def has(self, name: str, identity: str) -> bool:
        """Whether ``name`` was written by the model ``identity`` (one listing of the prefix, then one HEAD
        per map that exists)."""
        if self._present is None:
            self._present = set()
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                self._present.update(entry["Key"] for entry in page.get("Contents", []))
        key = self.prefix + name
        if key not in self._present:
            return False
        metadata = self.client.head_object(Bucket=self.bucket, Key=key).get("Metadata", {})
        return metadata.get(MODEL_METADATA) == identity

    def write(self, name: str, data: bytes, content_type: str, identity: str) -> str:
        key = self.prefix + name
        self.client.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, Metadata={MODEL_METADATA: identity}
        )
        return f"s3://{self.bucket}/{key}"


class LocalOutput:
    """Maps under a local folder (S3 inputs, local output); a rerun writes them again. Every write stays
    inside the folder: its name is checked (:func:`name_problem`), its folder must resolve inside the
    output, links followed, and the file itself is opened without following a link."""

    def __init__(self, folder: Path):
        self.folder, self.url = folder, str(folder)

    def has(self, name: str, identity: str) -> bool:
        return False

    def write(self, name: str, data: bytes, content_type: str, identity: str) -> str:
        problem = name_problem(name)
        if problem:
            raise ValueError(problem)
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        root = self.folder.resolve()
        if path.parent.resolve() != root and root not in path.parent.resolve().parents:
            raise ValueError(f"{path}: its folder resolves to {path.parent.resolve()}, outside the output {root}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, 0o666)
        except OSError as exc:
            raise ValueError(
                f"{path}: cannot be written ({exc.strerror}; a link planted there is not followed)"
            ) from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return str(path)


def run(
    generator: torch.nn.Module,
    size: tuple[int, int],
    items: Iterator[Item],
    output,
    options: PredictParams,
    with_overlay: bool = False,
    device: torch.device | None = None,
    model_uri: str = "",
) -> dict:
    """Predict every item in batches into ``output``; returns (and writes as ``manifest.json``) the manifest."""
    identity = model_identity(generator)
    manifest = {"model": model_uri, "model_sha256": identity, "written": [], "skipped": [], "failed": []}
    started = time.time()

    def to_predict(bar) -> Iterator[Item]:
        """The items that need a map: a name that may not be written fails, one already there is skipped."""
        for item in items:
            problem = name_problem(item.stem)
            if problem:
                manifest["failed"].append({"input": item.label, "reason": problem})
                bar.update(1)
            elif output.has(f"{item.stem}.png", identity):
                manifest["skipped"].append(item.label)
                bar.update(1)
            else:
                yield item

    def decode(item: Item) -> Decoded:
        data = io.BytesIO(item.read())  # an unreadable object fails alone, as an undecodable image does
        return decode_rgb(data, size, options.max_pixels, "predict.max_pixels", exif=True, keep_full=with_overlay)

    def write(item: Item, full, saliency) -> None:
        if with_overlay:
            heat = encoded(save_overlay, full, saliency)
            output.write(f"{item.stem}_overlay.jpg", heat, "image/jpeg", identity)
        manifest["written"].append(output.write(f"{item.stem}.png", encoded(save_map, saliency), "image/png", identity))

    with progress(unit="image", desc="predict") as bar, _manifest_written(output, manifest, identity, started):
        for outcome in predict_images(
            generator, to_predict(bar), decode, options.batch_size, options.blur_size, device
        ):
            try:
                if outcome.error is not None:
                    raise outcome.error
                write(outcome.item, outcome.decoded.full, outcome.saliency)
            except Exception as exc:  # noqa: BLE001 -- one item's failure is its own, named in the manifest
                manifest["failed"].append({"input": outcome.item.label, "reason": failure_reason(exc)})
            bar.update(1)
    return manifest


@contextlib.contextmanager
def _manifest_written(output, manifest: dict, identity: str, started: float) -> Iterator[None]:
    """Write ``manifest.json`` when the run ends, also when it stops early (what was written is named)."""
    try:
        yield
    finally:
        manifest["seconds"] = round(time.time() - started, 3)
        output.write(MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode(), "application/json", identity)


def open_output(text: str, client) -> S3Output | LocalOutput:
    if is_s3_url(text):
        return S3Output(client, text)
    if Path(text).exists() and not Path(text).is_dir():
        raise InputError(f"--output {text}: exists and is not a folder")
    return LocalOutput(Path(text))
