"""Shared fixtures: tiny prepared datasets and settings that train in seconds on a CPU."""
# ruff: noqa: E402 (the xdist CPU share below runs before numpy is imported)

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def _share_the_cpus_between_xdist_workers() -> None:
    """Each pytest-xdist worker (and what it starts) gets its own share of the CPUs, before numpy or torch
    size their thread pools: two workers that each run 2-thread OpenMP on 2 cores oversubscribe them, and
    OpenMP's spinning threads then make training many times slower (12x for one test, measured)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker and count > 1 and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= count:
            os.sched_setaffinity(0, cpus[int(worker.removeprefix("gw")) :: count])


_share_the_cpus_between_xdist_workers()

# After the CPU share (numpy sizes its thread pool at import):
import numpy as np
import pytest

from salgan.settings import Params, flatten, nest, params_from_dict, to_dict

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# Registered models that `salgan predict` fetches are cached (salgan.tracking.models.cache_root): in a
# folder of this test session, not in the user's ~/.cache.
os.environ.setdefault("SALGAN_CACHE_DIR", tempfile.mkdtemp(prefix="salgan-test-cache-"))
# Longest files first: under pytest-xdist (`-n 2 --dist loadfile --no-loadscope-reorder`, pyproject.toml) each
# file runs on one worker, handed out in collection order, so the production stack's file (one stack for the
# file, its tests in file order) starts at once on one worker and no long file is left to run alone at the
# end while the other worker idles. Ordered by their time on 2 cores (`python -m pytest --durations=0`).
COLLECTED_FIRST = (
    "test_stack.py",
    "test_pipeline.py",
    "test_datasets_pipeline.py",
    "test_train.py",
    "test_encoders.py",
    "test_flows.py",
    "test_prefect_deployment.py",
    "test_batch_predict.py",
    "test_core_install.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(COLLECTED_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file stays


@pytest.fixture(params=["numba", "numpy"])
def metrics_backend(request, monkeypatch) -> str:
    """Runs a test under each implementation of the metrics' per-pixel passes: numba's compiled ones
    (salgan.metric_kernels; skipped where numba cannot be imported) and numpy's and torch's."""
    from salgan import metrics

    if request.param == "numba":
        if metrics._kernels() is None:
            pytest.skip("numba's compiled passes are not available here")
    else:
        monkeypatch.setattr(metrics, "_kernels_module", None)
    return request.param


def register_weights(uri: str, weights: Path, alias: str | None = None, name: str = "salgan", size=(64, 48)) -> str:
    """``weights`` logged as salgan's MLflow model in a new run and registered as a version of ``name`` (the
    challenger, and ``alias`` too) at the store ``uri``, through salgan's own client API (no process-wide
    MLflow state); returns the version."""
    from mlflow import MlflowClient

    from salgan.layout import sha256_file
    from salgan.settings import PredictParams
    from salgan.tracking.models import log_generator
    from salgan.tracking.registry import register
    from salgan.tracking.store import experiment_id

    client = MlflowClient(uri)
    run_id = client.create_run(experiment_id(client, "tests")).info.run_id
    model_id = log_generator(client, run_id, weights, size, PredictParams())
    version = register(client, name, model_id, run_id, sha256_file(weights), {"run_id": run_id})
    if alias:
        client.set_registered_model_alias(name, alias, version)
    client.set_terminated(run_id)
    return version


def write_prepared(root: Path, n_train: int = 32, n_val: int = 8, size: tuple[int, int] = (64, 48), seed: int = 0):
    """A prepared tree (docs/data-layout.md) whose maps mark a bright square in each image."""
    rng = np.random.default_rng(seed)
    width, height = size
    for split, count in (("train", n_train), ("val", n_val), ("test", 4)):
        images = rng.integers(0, 90, size=(count, height, width, 3), dtype=np.uint8)
        maps = np.zeros((count, height, width), dtype=np.uint8)
        for i in range(count):
            y, x = rng.integers(0, height - 12), rng.integers(0, width - 12)
            images[i, y : y + 12, x : x + 12] = (240, 200, 40)
            maps[i, y : y + 12, x : x + 12] = 255
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "images.npy", images)
        if split != "test":
            np.save(folder / "maps.npy", maps)
        (folder / "names.json").write_text(json.dumps([f"COCO_{split}2014_{i:012d}" for i in range(count)]))
        np.save(folder / "original_sizes.npy", np.tile(np.array([[480, 640]], dtype=np.int32), (count, 1)))
        if split != "test":
            _write_fixations(folder, maps, split == "val", rng)
    return root


def _write_fixations(folder: Path, maps: np.ndarray, full_maps: bool, rng) -> None:
    """Original-resolution (480x640) fixations inside each square, their counts at the training size, and
    for val the full-size maps."""
    from salgan.fixations import fixation_counts

    scale = 10  # 64x48 -> 640x480
    coords, offsets = [], [0]
    for square in maps:
        rows, cols = np.nonzero(square)
        picks = rng.integers(0, len(rows), size=12)
        coords.append(np.stack([rows[picks] * scale + 5, cols[picks] * scale + 5], axis=1))
        offsets.append(offsets[-1] + len(picks))
    np.savez(folder / "fixations.npz", coords=np.concatenate(coords).astype(np.int32), offsets=np.array(offsets))
    counts = [fixation_counts(c, (480, 640), square.shape) for c in coords]
    np.save(folder / "fixation_maps.npy", np.stack(counts))
    if full_maps:
        np.save(folder / "maps_full.npy", maps.repeat(scale, axis=1).repeat(scale, axis=2))


def write_release_zips(root: str | Path, out_dir: str | Path, edition: str = "2017") -> dict[str, Path]:
    """Pack a raw tree into zips laid out like the SALICON release (the download stage's input); return
    kind -> path.

    The release's layout (pysaliency external_datasets/salicon.py, datadings SALICON2015_write.py,
    MSI-Net download.py): the stimuli zip holds ``images/{train,val,test}/*.jpg``; the fixations zip
    ``{train,val}/*.mat``; the maps zip ``{train,val}/*.png``.
    """
    import zipfile

    root, out_dir = Path(root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = {
        "images": ("images.zip", root / "images", "images/"),
        "fixations": (f"fixations_{edition}.zip", root / "fixations", ""),
        "maps": ("maps.zip", root / "maps", ""),
    }
    written = {}
    for kind, (filename, folder, prefix) in plan.items():
        path = out_dir / filename
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for file in sorted(p for p in folder.rglob("*") if p.is_file()):
                archive.write(file, prefix + file.relative_to(folder).as_posix())
        written[kind] = path
    return written


def tiny_params(tmp_path: Path, **train_overrides):
    """Settings for a width-1/16 SalGAN on 64x48 inputs: a few seconds per epoch on a CPU."""
    data = write_prepared(tmp_path / "prepared")
    train = {
        "data": str(data),
        "output": str(tmp_path / "models"),
        "epochs": 3,
        "bce_epochs": 1,
        "batch_size": 8,
        "lr_generator": 3e-3,
        "lr_bce": None,  # the BCE phase at lr_generator too
        "lr_discriminator": 1e-3,
        "adversarial_schedule": "alternate",  # the original's schedule: what the schedule tests count
        "d_steps_per_g": 1,
        "alpha": 0.05,  # the original's content weight, which the adversarial tests were written against
        "device": "cpu",
        "nproc": 1,
    }
    train.update(train_overrides)
    return params_from_dict(
        {
            "prepare": {"size": [64, 48]},
            "model": {"encoder_weights": "none", "freeze_blocks": 0, "width": 0.0625},
            "train": train,
            "mlflow": {"enabled": False},
        }
    )


@pytest.fixture
def tiny(tmp_path):
    return tiny_params(tmp_path)


def write_params_file(path: Path, overrides: dict) -> Path:
    """A complete params file (every key, as stages require) with ``overrides`` (``{"train": {...}}``)."""
    import yaml

    merged = flatten(to_dict(Params())) | flatten(overrides)
    path.write_text(yaml.safe_dump(nest(merged)))
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(command: list[str], url: str, log: Path, env: dict | None = None, timeout: float = 30):
    """Start ``command`` (its output in ``log``), wait until ``url`` answers HTTP (any status), yield the
    process; stop it afterwards, killed if it does not end within 20 s."""
    import subprocess
    import time
    import urllib.error
    import urllib.request

    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(command[:4])} did not start at {url}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # any HTTP answer means the server is up
            except OSError:
                time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server (a real HTTP endpoint) on a free port for the whole session; stopped at the end."""
    import sys

    pytest.importorskip("moto.server")
    url = f"http://127.0.0.1:{(port := free_port())}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with running_server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], url, log):
        yield url


@contextlib.contextmanager
def on_one_cpu(cpu: int | None = None):
    """Run this process on one CPU (its affinity), so that salgan.train.run gives it one thread, as each
    rank of a gloo group gets on a 2-core machine. oneDNN sums a convolution's gradient in an order that
    depends on the thread count (and with several threads, on the batch size), and a few adversarial
    steps grow that rounding to ~1e-3 (measured on a 2-core AMD EPYC: one process on 1 thread against
    itself on 2): a DDP run and the single process it must equal run on one thread each."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before) if cpu is None else cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def weights(path: Path) -> dict:
    """A weights file's state_dict (weights_only, as the project loads them)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    """Two state_dicts with the same keys and bit-identical tensors."""
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="session")
def harness():
    """One temporary Prefect API server for the session (tests/test_flows.py, tests/test_batch_predict.py);
    yields its URL for subprocess flows."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()
