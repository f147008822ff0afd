"""What the benchmark scripts share: the package import from a checkout, the machine's CPUs and load, the
device, and the SALICON-format data they measure on (generated once, prepared by the product's own stage).

Each script imports it as ``common`` (its own folder is first on sys.path when it runs as a script).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

try:
    import salgan  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from salgan import prepare as prepare_stage  # noqa: E402
from salgan.cpus import usable_cpus  # noqa: E402,F401  -- the benchmarks size themselves by it
from salgan.predict_tool import parse_size  # noqa: E402,F401  -- the CLI's own WxH parser
from salgan.sample import generate_sample  # noqa: E402
from salgan.settings import PrepareParams  # noqa: E402


def load_average() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def process_pool(workers: int):
    """Fork while this process runs one thread and has not touched the GPU (as salgan.prepare does): the
    children start in milliseconds instead of re-importing torch; otherwise spawn."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1 else "spawn"
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method)) as pool:
        yield pool


def generate_raw(root: Path, n_train: int, workers: int, seed: int = 0) -> None:
    """A SALICON-format train split of ``n_train`` 640x480 JPEGs (with maps and fixations) under ``root``.

    ``salgan.sample`` draws about 40 images/s per core, so the images are made in ``workers`` parts, each
    a sample tree of its own seed, then moved into one tree with a part prefix that keeps names unique.
    """
    parts = max(1, min(workers, n_train // 8))
    counts = [n_train // parts + (k < n_train % parts) for k in range(parts)]
    part_roots = [root / f".part{k:02d}" for k in range(parts)]
    if parts == 1:
        generate_sample(part_roots[0], counts[0], 0, 0, seed)
    else:
        with process_pool(parts) as pool:
            jobs = [pool.submit(generate_sample, part_roots[k], counts[k], 0, 0, seed + k) for k in range(parts)]
            for job in jobs:
                job.result()
    for kind, suffix in (("images", ".jpg"), ("maps", ".png"), ("fixations", ".mat")):
        folder = root / kind / "train"
        folder.mkdir(parents=True, exist_ok=True)
        for k, part in enumerate(part_roots):
            for path in (part / kind / "train").glob(f"*{suffix}"):
                os.replace(path, folder / f"p{k:02d}_{path.name}")
    for part in part_roots:
        shutil.rmtree(part)


def ensure_data(folder: Path, n_images: int, size: tuple[int, int], workers: int) -> tuple[Path, Path, float]:
    """The raw tree of ``n_images`` and its prepared arrays at ``size``, under ``folder/<n_images>``, made
    unless a previous run left them there (the GPU script's runs share one generation). Returns (raw,
    prepared, seconds spent making them)."""
    start = time.perf_counter()
    base = folder / str(n_images)
    raw, prepared = base / "raw", base / f"prepared-{size[0]}x{size[1]}"
    done = raw / "complete"  # written last: a run killed while generating leaves no half tree behind
    if not done.is_file():
        shutil.rmtree(base, ignore_errors=True)
        generate_raw(raw, n_images, workers)
        done.touch()
    if not (prepared / "train" / "images.npy").is_file():
        params = PrepareParams(input=str(raw), output=str(prepared), size=list(size), workers=workers)
        prepare_stage.prepare(params, progress=False)  # atomic: the folder appears only when complete
    return raw, prepared, time.perf_counter() - start


def result_line(benchmark: str, device: str, **figures) -> str:
    """The last line every benchmark prints: one JSON object with its name, the device, torch's version,
    the UTC date and its ``figures``."""
    import datetime
    import json

    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return json.dumps({"benchmark": benchmark, "device": device, "torch": torch.__version__, "date": date, **figures})
