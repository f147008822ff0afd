"""Benchmark: predict throughput at SALICON's 640x480 output, PNG writing included.

Generates K SALICON-format 640x480 JPEGs, prepares them to the model's input size with the prepare stage,
and runs what the predict stage runs on them (``salgan.inference.write_split_maps``): ``predict_batches`` (generator
at the configured width, bf16 autocast on CUDA, bicubic resize to 640x480, 5x5 Gaussian blur, clip, copy to
the host), ``to_uint8`` and a PIL PNG save per map into a temporary folder. The generator has random weights:
speed does not depend on them. Timed twice after one warm-up batch:

  serial    as the stage does it: one map after the other in the loop that drives the generator;
  threads   the same, with ``to_uint8`` + PNG encoding handed to ``--png-threads`` threads (zlib releases
            the GIL), so that encoding overlaps the model and other encodings.

Each row splits the wall time into the model's share (waiting for the next map: forward, post-processing,
device-to-host copy) and the writing share (``to_uint8`` + PNG, or for threads the wait for them at the end).

    python benchmarks/bench_predict.py --quick     # CPU: width 0.125, 128x96, 16 images
    python benchmarks/bench_predict.py             # GPU: width 1.0, 256x192, 256 images

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch
from common import ensure_data, load_average, parse_size, resolve_device, synchronize, usable_cpus
from PIL import Image

from salgan.imaging import to_uint8
from salgan.inference import predict_batches
from salgan.models import Generator


def write_png(saliency: np.ndarray, path: Path) -> None:
    """What the predict stage writes: the map as 8-bit grey PNG (mode L inferred from the 2-D uint8 array)."""
    Image.fromarray(to_uint8(saliency)).save(path)


def run_serial(generator, images, sizes, args, device, out: Path) -> dict:
    """The stage's loop: the next map, then its PNG, one after the other."""
    model_s = write_s = 0.0
    start = time.perf_counter()
    maps = predict_batches(generator, images, sizes, args.batch_size, args.blur_size, device)
    for index in range(len(images)):
        tic = time.perf_counter()
        saliency = next(maps)
        toc = time.perf_counter()
        write_png(saliency, out / f"{index:06d}.png")
        model_s += toc - tic
        write_s += time.perf_counter() - toc
    return row("serial (stage)", len(images), time.perf_counter() - start, model_s, write_s, threads=1)


def run_threads(generator, images, sizes, args, device, out: Path) -> dict:
    """PNG encoding in a thread pool; at most 4 maps per thread in flight to bound host memory."""
    model_s = 0.0
    start = time.perf_counter()
    pending: collections.deque = collections.deque()
    with ThreadPoolExecutor(args.png_threads) as pool:
        maps = predict_batches(generator, images, sizes, args.batch_size, args.blur_size, device)
        for index in range(len(images)):
            tic = time.perf_counter()
            saliency = next(maps)
            model_s += time.perf_counter() - tic
            pending.append(pool.submit(write_png, saliency, out / f"{index:06d}.png"))
            while len(pending) > 4 * args.png_threads:
                pending.popleft().result()
        tail = time.perf_counter()
        for future in pending:
            future.result()
        write_wait = time.perf_counter() - tail
    seconds = time.perf_counter() - start
    return row(f"{args.png_threads} PNG threads", len(images), seconds, model_s, write_wait, threads=args.png_threads)


def smooth_map_png(raw: Path, count: int = 32) -> tuple[float, float]:
    """(ms, KB) to encode a smooth SALICON-like map: the sample's ground-truth maps at 640x480, re-encoded
    as the stage saves. A random generator's maps are rougher, so larger and slower to write than a trained
    one's; this bounds the writing cost from the other side."""
    paths = sorted((raw / "maps" / "train").glob("*.png"))[:count]
    maps = [np.asarray(Image.open(path).convert("L")) for path in paths]
    sizes = []
    start = time.perf_counter()
    for array in maps:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        sizes.append(buffer.tell())
    return (time.perf_counter() - start) / len(maps) * 1e3, sum(sizes) / len(sizes) / 1e3


def row(name: str, count: int, seconds: float, model_s: float, write_s: float, threads: int) -> dict:
    return {
        "variant": name,
        "png_threads": threads,
        "images": count,
        "seconds": round(seconds, 3),
        "images_per_s": round(count / seconds, 1),
        "model_ms_per_image": round(model_s / count * 1e3, 2),
        "write_ms_per_image": round(write_s / count * 1e3, 2),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Defaults: GPU values, CPU values in brackets, --quick after."
    )
    parser.add_argument("--quick", action="store_true", help="CPU smoke size: width 0.125, 128x96, 16 images")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--width", type=float, help="generator channel multiplier: 1.0 (0.125 quick)")
    parser.add_argument("--size", type=parse_size, help="model input WxH: 256x192 (128x96 quick)")
    parser.add_argument("--images", type=int, help="generated 640x480 images: 256 (32 on CPU, 16 quick)")
    parser.add_argument("--batch-size", type=int, default=16, help="predict.batch_size (default: %(default)s)")
    parser.add_argument("--blur-size", type=int, default=5, help="predict.blur_size (default: %(default)s)")
    parser.add_argument("--png-threads", type=int, help="threads of the second variant, 0: skip it: 8 (2 on CPU)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, one per core)")
    parser.add_argument("--data", type=Path, help="keep generated data here and reuse it (default: a temp dir)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    for key, value in {
        "width": 0.125 if args.quick else 1.0,
        "size": (128, 96) if args.quick else (256, 192),
        "images": 16 if args.quick else (256 if gpu else 32),
        "png_threads": min(8, usable_cpus()),
    }.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load_average()
    with TemporaryDirectory(prefix="bench-predict-") as tmp:
        folder = args.data or Path(tmp) / "data"
        folder.mkdir(parents=True, exist_ok=True)
        raw, prepared, data_seconds = ensure_data(folder, args.images, args.size, usable_cpus())
        # As run_stage reads them: lazily mapped ("c": writable pages, as torch.as_tensor wants).
        images = np.load(prepared / "train" / "images.npy", mmap_mode="c")
        sizes = np.load(prepared / "train" / "original_sizes.npy")
        torch.manual_seed(0)
        generator = Generator(width=args.width).eval()  # what load_generator builds from a weights file
        warm = slice(0, args.batch_size)
        for _ in predict_batches(generator, images[warm], sizes[warm], args.batch_size, args.blur_size, device):
            pass
        synchronize(device)
        rows = []
        for run in (run_serial, run_threads) if args.png_threads else (run_serial,):
            out = Path(tmp) / run.__name__
            out.mkdir()
            rows.append(run(generator, images, sizes, args, device, out))
            rows[-1]["png_kb"] = round(sum(p.stat().st_size for p in out.glob("*.png")) / len(images) / 1e3, 1)
        smooth_ms, smooth_kb = smooth_map_png(raw)
    device_name = torch.cuda.get_device_name(device) if gpu else f"CPU ({usable_cpus()} cores)"
    load_after = load_average()
    rows_out = {int(s) for s in sizes[:, 0]}, {int(s) for s in sizes[:, 1]}
    print(
        f"{device_name}, torch {torch.__version__}: predict {len(images)} images, model {args.size[0]}x{args.size[1]} "
        f"width {args.width}, output {'/'.join(map(str, rows_out[1]))}x{'/'.join(map(str, rows_out[0]))}, "
        f"batch {args.batch_size}, blur {args.blur_size}; load average {load_before:.2f} -> {load_after:.2f}"
    )
    print(f"{'variant':<20} {'images/s':>9} {'model ms/img':>12} {'write ms/img':>12} {'PNG KB':>7}")
    for r in rows:
        print(
            f"{r['variant']:<20} {r['images_per_s']:>9.1f} {r['model_ms_per_image']:>12.2f} "
            f"{r['write_ms_per_image']:>12.2f} {r['png_kb']:>7.1f}"
        )
    print(
        f"for scale: one PNG of a smooth ground-truth-like map takes {smooth_ms:.2f} ms to encode "
        f"({smooth_kb:.1f} KB); the random generator's maps above are rougher"
    )
    result = {
        "benchmark": "predict",
        "device": device_name,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "size": list(args.size),
            "width": args.width,
            "images": len(images),
            "batch_size": args.batch_size,
            "blur_size": args.blur_size,
            "quick": args.quick,
        },
        "images_per_s": rows[0]["images_per_s"],
        "threads_images_per_s": rows[1]["images_per_s"] if len(rows) > 1 else None,
        "variants": rows,
        "smooth_map_png": {"ms": round(smooth_ms, 2), "kb": round(smooth_kb, 1)},
        "data_setup_s": round(data_seconds, 1),
        "load_average": [load_before, load_after],
        "cpus": usable_cpus(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
