"""Benchmark: training images/s of each ``model.encoder`` at 256x192, against VGG16 (the paper) in the same
process, with each generator's parameters and forward GFLOPs per image.

Every encoder runs the product's adversarial step (``salgan.train.train_one_epoch`` on an adversarial
epoch, ``both`` schedule: a D step then a G step per batch) on the same prepared arrays, at full width, as
``bench_train.py``'s fast path does (bf16 autocast, channels_last and cuDNN autotuning on CUDA). The ratio
column divides each encoder's images/s by VGG16's: the ablation table's speed column, measured.

    python benchmarks/bench_encoders.py --quick     # CPU: 256x192, batch 2, 2 timed steps, about 3 minutes
    python benchmarks/bench_encoders.py             # GPU: 256x192, batch 32, 30 timed steps

Prints a table and, last, one JSON line with every figure, the device, the torch version and the date.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from bench_train import run_fast
from common import ensure_data, load_average, resolve_device, result_line, usable_cpus

from salgan.data import load_split
from salgan.models import ENCODERS, Generator, model_cost
from salgan.settings import params_from_dict
from salgan.train import train_one_epoch

SIZE = (256, 192)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke size: batch 2, 2 timed steps")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--encoders", nargs="+", choices=ENCODERS, default=list(ENCODERS))
    parser.add_argument("--batch-size", type=int, help="32 on GPU, 2 on CPU")
    parser.add_argument("--steps", type=int, help="timed steps per encoder: 30 on GPU, 2 on CPU")
    parser.add_argument("--data", type=Path, help="keep generated data here and reuse it (default: a temp dir)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch_size or (32 if gpu else 2)
    steps = args.steps or (30 if gpu else 2)
    warmup = 3 if gpu else 1
    if device.type == "cpu":
        torch.set_num_threads(usable_cpus())
    encoders = ["vgg16", *(name for name in args.encoders if name != "vgg16")]  # the baseline first
    load_before = load_average()
    rows = []
    with TemporaryDirectory(prefix="bench-encoders-") as tmp:
        folder = args.data or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        _, prepared, _ = ensure_data(folder, max(batch * (warmup + steps), 16), SIZE, usable_cpus())
        split = load_split(prepared, "train", device)
        for name in encoders:
            params = params_from_dict(
                {
                    "model": {"encoder": name, "encoder_weights": "none", "width": 1.0},
                    "train": {"batch_size": batch, "device": "auto", "adversarial_schedule": "both"},
                    "prepare": {"size": list(SIZE)},
                }
            )
            row = run_fast(name, params, split, device, warmup, steps, train_one_epoch)
            row |= {key: round(value, 2) for key, value in model_cost(Generator(1.0, name), SIZE).items()}
            rows.append(row)
            if gpu:
                torch.cuda.empty_cache()
    baseline = rows[0]["images_per_s"]
    for row in rows:
        row["speed_vs_vgg16"] = round(row["images_per_s"] / baseline, 2)
    device_name = torch.cuda.get_device_name(device) if gpu else f"CPU ({usable_cpus()} cores)"
    print(f"{device_name}, torch {torch.__version__}: adversarial step, {SIZE[0]}x{SIZE[1]}, width 1, batch {batch}")
    print(f"{'encoder':<20}{'params (M)':>12}{'GFLOPs':>10}{'img/s':>10}{'vs vgg16':>10}")
    for row in rows:
        print(
            f"{row['path']:<20}{row['params_m']:>12.1f}{row['gflops']:>10.1f}{row['images_per_s']:>10.2f}"
            f"{row['speed_vs_vgg16']:>9.2f}x"
        )
    config = {"size": list(SIZE), "width": 1.0, "batch_size": batch, "steps": steps, "warmup": warmup}
    encoders = {row["path"]: {k: v for k, v in row.items() if k != "path"} for row in rows}
    load = [load_before, load_average()]
    print(result_line("encoders", device_name, config=config, load_average=load, encoders=encoders))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
