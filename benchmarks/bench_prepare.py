"""Benchmark: the prepare stage's fast path against a naive PIL loop.

Generates K photo-like 640x480 JPEGs (SALICON's size, COCO's typical file size) in a temporary SALICON
tree and times
  1. naive: one process, ``Image.open(p).convert('RGB').resize(size)`` at full decode resolution;
  2. draft: one process, the stage's decoder (JPEG draft mode: DCT-domain downscale before the resize);
  3. stage: the whole ``prepare`` stage on that tree (draft + process pool + memory-mapped output).
Each is timed --repeat times (best kept). Prints a table, then, last, one JSON line with images/s of the
naive loop and of the stage, and their ratio.

    python benchmarks/bench_prepare.py            # 200 images
    python benchmarks/bench_prepare.py --quick    # 60 images
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  -- makes the package importable from a checkout
import numpy as np
from PIL import Image

from salgan import prepare as stage
from salgan.imaging import RESAMPLE
from salgan.settings import PrepareParams


def photo_like(rng: np.random.Generator, decay: float = 1.35) -> np.ndarray:
    """A 640x480 RGB texture with a natural image's falling spectrum: octaves of smooth noise, each
    ``decay`` times weaker than the next coarser one."""
    pixels = np.full((480, 640, 3), 128.0, dtype=np.float32)
    for octave, (h, w) in enumerate([(6, 8), (12, 16), (30, 40), (60, 80), (120, 160), (240, 320), (480, 640)]):
        noise = rng.normal(0, 60 / decay**octave, (h, w, 3)).astype(np.float32)
        for channel in range(3):
            layer = Image.fromarray(noise[..., channel], mode="F").resize((640, 480), Image.Resampling.BICUBIC)
            pixels[..., channel] += np.asarray(layer)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """JPEGs at quality 90 of about 150 KB, the mean size of MS COCO 2014 files (JPEG decoding time
    follows the compressed size, so tiny flat test images would flatter the decoder)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"COCO_test2014_{i:012d}.jpg"
        Image.fromarray(photo_like(rng)).save(path, quality=90)
        paths.append(path)
    return paths


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the stage's pool workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def time_loop(function, paths: list[Path], size: tuple[int, int]) -> tuple[float, float]:
    """(wall, CPU) seconds to resize every path into one preallocated array."""
    out = np.empty((len(paths), size[1], size[0], 3), dtype=np.uint8)
    start, cpu = time.perf_counter(), cpu_seconds()
    for i, path in enumerate(paths):
        out[i] = function(path, size)
    return time.perf_counter() - start, cpu_seconds() - cpu


def time_stage(root: Path, size: tuple[int, int], workers: int) -> tuple[float, float]:
    """(wall, CPU) seconds for the whole prepare stage (pool start-up and output files included)."""
    output = root.parent / "prepared"
    shutil.rmtree(output, ignore_errors=True)  # time a fresh run, not the removal of the previous one
    params = PrepareParams(input=str(root), output=str(output), size=list(size), workers=workers)
    start, cpu = time.perf_counter(), cpu_seconds()
    stage.prepare(params, progress=False)
    return time.perf_counter() - start, cpu_seconds() - cpu


def best_of(repeat: int, run) -> tuple[float, float]:
    """The fastest of ``repeat`` runs: on a shared machine the least disturbed measurement."""
    return min((run() for _ in range(max(1, repeat))), key=lambda times: times[0])


def print_table(count: int, kilobytes: float, size: tuple[int, int], rows: list, load: float) -> None:
    print(f"{count} JPEGs 640x480 ({kilobytes:.0f} KB each) -> {size[0]}x{size[1]}; load average {load:.2f}")
    print(f"{'method':<30} {'workers':>7} {'wall s':>7} {'images/s':>9} {'speed-up':>8} {'CPU ms/img':>10}")
    naive_wall = rows[0][2]
    for name, procs, wall, cpu in rows:
        speed_up, cpu_ms = naive_wall / wall, cpu / count * 1e3
        print(f"{name:<30} {procs:>7} {wall:>7.2f} {count / wall:>9.1f} {speed_up:>7.2f}x {cpu_ms:>10.2f}")
    if load > 0.5:
        # Other processes take cores from the pool, not from the one-process loops: the wall-clock ratio
        # then understates the stage; CPU ms per image is the steadier figure.
        print(f"warning: the machine was busy (load average {load:.2f}); wall-clock speed-ups are understated")


def resize_naive(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The reference path: full-resolution decode, then convert and resize (no draft)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize(size, RESAMPLE), dtype=np.uint8)


def resize_draft(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The stage's decode of one image: draft mode, RGB, resize."""
    return stage.load_image(path, size, PrepareParams().max_pixels)[0]


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="number of JPEGs (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="60 images")
    parser.add_argument("--workers", type=int, default=0, help="stage workers, 0: one per core (default)")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 192], metavar=("W", "H"))
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs (default: %(default)s)")
    args = parser.parse_args(argv)
    count = 60 if args.quick else args.count
    size = (args.size[0], args.size[1])
    workers = stage.resolve_workers(args.workers)
    load = load_average()  # before generating: that work would count as load
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        root = Path(tmp) / "raw"
        paths = make_images(root / "images" / "test", count)
        kilobytes = sum(p.stat().st_size for p in paths) / count / 1e3
        time_loop(resize_naive, paths[:5], size)  # warm caches and imports
        naive = best_of(args.repeat, lambda: time_loop(resize_naive, paths, size))
        draft = best_of(args.repeat, lambda: time_loop(resize_draft, paths, size))
        fast = best_of(args.repeat, lambda: time_stage(root, size, workers))
    rows = [
        ("naive open+convert+resize", 1, *naive),
        ("draft decode + resize", 1, *draft),
        ("prepare stage (draft + pool)", workers, *fast),
    ]
    print_table(count, kilobytes, size, rows, load)
    result = {
        "images": count,
        "workers": workers,
        "naive_images_per_s": round(count / naive[0], 1),
        "draft_serial_images_per_s": round(count / draft[0], 1),
        "fast_images_per_s": round(count / fast[0], 1),
        "ratio": round(naive[0] / fast[0], 2),
        "cpu_ms_per_image": {
            "naive": round(naive[1] / count * 1e3, 2),
            "fast": round(fast[1] / count * 1e3, 2),
        },
        "load_average": round(load, 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
