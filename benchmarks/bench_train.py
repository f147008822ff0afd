"""Benchmark: SalGAN adversarial training-step throughput, a naive input/precision path against the product's.

Both paths run the same adversarial step (seed paper Eqs. 2-3: a discriminator step on real and generated
maps, then a generator step through the frozen discriminator) on the same generated SALICON-format data:

  naive  fp32, NCHW, ``cudnn.benchmark`` off, a ``torch.utils.data.DataLoader`` that opens, decodes and
         resizes every JPEG and PNG map on each access (``--workers`` processes), and a ``loss.item()`` per
         step, as a first implementation logs it;
  fast   the product: the prepared uint8 arrays (``salgan.prepare`` on the same JPEGs) loaded once onto
         the device by ``salgan.data.load_split``, then ``salgan.train.build_models`` and
         ``salgan.train.train_one_epoch`` on an adversarial epoch (bf16 autocast, channels_last and cuDNN
         autotuning on CUDA, as ``salgan.train.run`` sets them; ``--compile`` for torch.compile);

Warm-up steps (cuDNN autotuning, compilation, DataLoader start-up) are excluded; CUDA work is synchronised
around the timed region. The input pipeline is measured on its own: for naive, the time the loop waits for
the DataLoader's next batch (and copies it to the device); for fast, the index + uint8->float conversion of
the same batches timed alone. Model FLOP utilisation (MFU) is reported where the GPU's bf16 dense peak is
known, against two FLOP counts per image: docs/reference.md §4's 240 GFLOP generator training step at 256x192
and width 1.0 (scaled by width^2 and input area), and the adversarial step as it is, counted by
``torch.utils.flop_counter`` on the meta device (convolutions and matmuls: what the peak refers to).

    python benchmarks/bench_train.py --quick          # CPU, about a minute on 2 cores
    python benchmarks/bench_train.py                  # GPU: 256x192, width 1.0, batch 32
    python benchmarks/bench_train.py --compile --skip-naive

Prints a table and, last, one JSON line with every figure, the device, the torch version and the date.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from common import ensure_data, load_average, parse_size, resolve_device, synchronize, usable_cpus
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from salgan.data import PreparedSplit, load_split
from salgan.distributed import DistInfo
from salgan.imaging import RESAMPLE  # what the prepare stage uses, so both paths see the same pixels
from salgan.losses import content_loss, discriminator_loss, generator_loss
from salgan.models import build_discriminator, build_generator
from salgan.settings import Params, params_from_dict
from salgan.train import build_models, epoch_batches, train_one_epoch

# docs/reference.md §4: a generator training step (forward + backward) costs about 240 GFLOP per image at 256x192
# and width 1.0. Convolution FLOPs scale with in x out channels (width^2) and with the pixel count.
REFERENCE_GFLOP = 240.0
REFERENCE_PIXELS = 256 * 192
# Dense bf16 peak (FLOP/s) by a substring of torch.cuda.get_device_name(). H100/H200: the ~800 TFLOP/s that
# docs/reference.md §4 measures "here" (the SXM data sheet says 989; power and clocks keep real work below it).
PEAK_BF16 = (("H200", 790e12), ("H100", 790e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12))


# --- data -----------------------------------------------------------------------------------------------


class DecodingDataset(Dataset):
    """The naive input pipeline: every access opens the JPEG and the PNG map, decodes them at full
    resolution, resizes them and converts them to float CHW tensors (torchvision's ``to_tensor``)."""

    def __init__(self, raw: Path, size: tuple[int, int]):
        self.size = size
        images = sorted((raw / "images" / "train").glob("*.jpg"))
        self.items = [(path, raw / "maps" / "train" / f"{path.stem}.png") for path in images]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms.functional import to_tensor

        image_path, map_path = self.items[index]
        with Image.open(image_path) as img:
            image = img.convert("RGB").resize(self.size, RESAMPLE)
        with Image.open(map_path) as img:
            saliency = img.convert("L").resize(self.size, RESAMPLE)
        return to_tensor(image), to_tensor(saliency)


# --- FLOP model -----------------------------------------------------------------------------------------


def reference_flops(width: float, size: tuple[int, int]) -> float:
    """docs/reference.md §4's generator-step FLOPs per image, scaled to ``width`` and ``size``."""
    return REFERENCE_GFLOP * 1e9 * width**2 * size[0] * size[1] / REFERENCE_PIXELS


def counted_flops(params: Params, size: tuple[int, int], epoch_fn: Callable) -> float | None:
    """FLOPs per image of one adversarial step of ``epoch_fn``, counted on the meta device.

    The meta device runs every operator for its shapes only, in milliseconds even at full width. The epoch
    ends in ``.tolist()``, which a meta tensor cannot answer: that error comes after the last step and is
    expected. None when counting fails (an older torch without a meta kernel, say): MFU is then reported
    against the reference figure only.
    """
    try:
        from torch.utils.flop_counter import FlopCounterMode

        meta = torch.device("meta")
        models = build_models(_without_compile(params), size, DistInfo(0, 1, 0, 1, meta))
        batch, (w, h) = 2, size
        split = PreparedSplit(
            torch.empty(batch, h, w, 3, dtype=torch.uint8, device=meta),
            torch.empty(batch, h, w, dtype=torch.uint8, device=meta),
            ["a", "b"],
            meta,
        )
        with FlopCounterMode(display=False) as counter, contextlib.suppress(NotImplementedError, RuntimeError):
            epoch_fn(models, split, [torch.arange(batch, device=meta)], True, params)
        flops = counter.get_total_flops() / batch
    except Exception as exc:  # noqa: BLE001 -- an estimate, never a reason to stop the benchmark
        print(f"note: FLOP counting failed ({type(exc).__name__}: {exc}); MFU against the reference only")
        return None
    return float(flops) if flops > 0 else None


def _without_compile(params: Params) -> Params:
    return params.model_copy(update={"train": params.train.model_copy(update={"compile": False})})


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


# --- the naive path -------------------------------------------------------------------------------------


def naive_step(g, d, opt_g, opt_d, images, targets, params: Params) -> float:
    """train_one_epoch's adversarial step in fp32, as a first implementation writes it (loss logged with
    ``.item()``, which waits for the GPU every step)."""
    cfg = params.train
    with torch.no_grad():
        fake = g(images)
    logits = d(torch.cat([images, images]), torch.cat([targets, fake]))
    real_logits, fake_logits = logits.chunk(2)
    d_loss = discriminator_loss(real_logits, fake_logits, reduction=cfg.discriminator_loss)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    d.requires_grad_(False)
    predicted = g(images, return_logits=True)
    fake_logits = d(images, torch.sigmoid(predicted))
    g_loss, _ = generator_loss(content_loss(predicted, targets, cfg.content_downsample), fake_logits, cfg.alpha)
    d.requires_grad_(True)
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    return g_loss.item()


def run_naive(params: Params, raw: Path, size, device, warmup: int, steps: int, workers: int) -> dict:
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(params.train.seed)
    g = build_generator(params.model).to(device)
    d = build_discriminator(params.model, size).to(device)
    cfg = params.train
    opt_g = torch.optim.Adagrad(
        [p for p in g.parameters() if p.requires_grad], lr=cfg.lr_generator, weight_decay=cfg.weight_decay
    )
    opt_d = torch.optim.Adagrad(d.parameters(), lr=cfg.lr_discriminator, weight_decay=cfg.weight_decay)
    dataset = DecodingDataset(raw, size)
    total = warmup + steps
    # One sampler spanning as many shuffled passes as the run needs: a single long epoch, as a 10,000-image
    # SALICON epoch is, rather than a worker restart every few batches of the small benchmark set.
    sampler = RandomSampler(
        dataset, num_samples=total * cfg.batch_size, generator=torch.Generator().manual_seed(cfg.seed)
    )
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers, drop_last=True)
    g.train()
    d.train()
    iterator = iter(loader)
    wait = 0.0
    start = time.perf_counter()
    for step in range(total):
        if step == warmup:
            synchronize(device)
            wait, start = 0.0, time.perf_counter()
        tic = time.perf_counter()
        images, targets = next(iterator)
        images, targets = images.to(device), targets.to(device)
        wait += time.perf_counter() - tic
        naive_step(g, d, opt_g, opt_d, images, targets, params)
    synchronize(device)
    seconds = time.perf_counter() - start
    del iterator  # stops the workers
    return timing("naive", steps, cfg.batch_size, seconds, wait, workers=workers)


# --- the fast path --------------------------------------------------------------------------------------


def run_fast(name: str, params: Params, split: PreparedSplit, device, warmup: int, steps: int, epoch_fn) -> dict:
    """Time ``epoch_fn`` (train_one_epoch) on ``steps`` batches after ``warmup`` others."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as salgan.train.run sets it
    else:
        torch.set_flush_denormal(True)  # as salgan.train.run sets it on CPU
    models = build_models(params, split.size, DistInfo(0, 1, 0, 1, device))
    sampler = DistributedSampler(range(len(split)), num_replicas=1, rank=0, shuffle=True, seed=params.train.seed)
    batches: list[torch.Tensor] = []
    epoch = 0
    while len(batches) < warmup + steps:  # consecutive shuffled passes, as for the naive path
        batches += epoch_batches(sampler, epoch, params.train.batch_size, split.index_device)
        epoch += 1
    synchronize(device)
    tic = time.perf_counter()
    epoch_fn(models, split, batches[:warmup], True, params)  # autotuning / compilation happen here
    synchronize(device)
    warmup_seconds = time.perf_counter() - tic
    timed = batches[warmup : warmup + steps]
    start = time.perf_counter()
    losses = epoch_fn(models, split, timed, True, params)
    synchronize(device)
    seconds = time.perf_counter() - start
    # The input pipeline alone on the same batches: what each step spends before the generator runs.
    start = time.perf_counter()
    for indices in timed:
        split.take(indices)
    synchronize(device)
    input_seconds = time.perf_counter() - start
    result = timing(name, steps, params.train.batch_size, seconds, input_seconds)
    result["warmup_s"] = round(warmup_seconds, 2)
    result["g_loss"] = round(losses["g_loss"], 4)
    del models
    return result


# --- measuring and reporting ----------------------------------------------------------------------------


def timing(name: str, steps: int, batch: int, seconds: float, input_seconds: float, **extra) -> dict:
    return {
        "path": name,
        "steps": steps,
        "batch_size": batch,
        "step_ms": round(seconds / steps * 1e3, 3),
        "images_per_s": round(steps * batch / seconds, 2),
        "input_ms_per_step": round(input_seconds / steps * 1e3, 3),
        "input_share": round(input_seconds / seconds, 4),
        **extra,
    }


def add_mfu(result: dict, flops: dict, peak: float | None) -> None:
    """Achieved TFLOP/s (counted step FLOPs) and MFU against each FLOP model where the peak is known."""
    rate = result["images_per_s"]
    counted = flops.get(result["path"])
    if counted:
        result["achieved_tflops"] = round(rate * counted / 1e12, 3)
    if peak:
        result["mfu_reference"] = round(rate * flops["reference"] / peak, 4)
        result["mfu_counted"] = round(rate * counted / peak, 4) if counted else None


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    print(
        f"{'path':<31} {'steps':>5} {'batch':>5} {'ms/step':>9} {'images/s':>9} {'input ms':>9} "
        f"{'input %':>7} {'TFLOP/s':>8} {'MFU ref':>7} {'MFU cnt':>7}"
    )

    def pct(value) -> str:
        return f"{100 * value:.1f}" if value is not None else "-"

    for r in rows:
        tflops = f"{r['achieved_tflops']:.2f}" if "achieved_tflops" in r else "-"
        print(
            f"{r['path']:<31} {r['steps']:>5} {r['batch_size']:>5} {r['step_ms']:>9.1f} {r['images_per_s']:>9.1f} "
            f"{r['input_ms_per_step']:>9.2f} {pct(r['input_share']):>7} {tflops:>8} "
            f"{pct(r.get('mfu_reference')):>7} {pct(r.get('mfu_counted')):>7}"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Defaults: GPU values, CPU values in brackets, --quick after."
    )
    parser.add_argument("--quick", action="store_true", help="CPU smoke size: width 0.125, 128x96, 48 images")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--batch-size", type=int, help="32 on GPU (8 on CPU)")
    parser.add_argument("--steps", type=int, help="timed steps per path: 100 on GPU (4 on CPU, 8 quick)")
    parser.add_argument("--warmup", type=int, help="untimed steps first: 5 (1 on CPU)")
    parser.add_argument("--width", type=float, help="channel multiplier: 1.0 (0.125 quick)")
    parser.add_argument("--size", type=parse_size, help="model input WxH: 256x192 (128x96 quick)")
    parser.add_argument("--images", type=int, help="generated 640x480 images: 512 (64 on CPU, 48 quick)")
    parser.add_argument("--workers", type=int, help="naive DataLoader workers: 4 on GPU (0 on CPU)")
    parser.add_argument(
        "--freeze-blocks",
        type=int,
        default=0,
        help="freeze VGG blocks 1..N as the ImageNet "
        "profile does (a random VGG16-layout weights file stands in for ImageNet's); default 0",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path's models")
    parser.add_argument("--skip-naive", action="store_true", help="time the fast path(s) only")
    parser.add_argument(
        "--streamed",
        action="store_true",
        help="also time the fast path with the split in (pinned) host memory, each batch copied over ahead of "
        "its step (train.data_placement: stream, for splits larger than the device)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads: one per usable core, as salgan.train.run sets")
    parser.add_argument("--data", type=Path, help="keep generated data here and reuse it (default: a temp dir)")
    parser.add_argument("--peak-tflops", type=float, help="bf16 dense peak for MFU when the GPU is not in the table")
    return parser


def resolve_args(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    gpu = device.type == "cuda"
    quick = args.quick
    defaults = {
        "batch_size": 32 if gpu else 8,
        "steps": 100 if gpu else (8 if quick else 4),
        "warmup": 5 if gpu else 1,
        "width": 0.125 if quick else 1.0,
        "size": (128, 96) if quick else (256, 192),
        "images": 48 if quick else (512 if gpu else 64),
        "workers": 4 if gpu else 0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup < 1 or args.steps < 1:
        raise SystemExit("--warmup and --steps must be at least 1")
    if args.images < args.batch_size:
        raise SystemExit(f"--images {args.images} is fewer than one batch of {args.batch_size}")
    return args


def make_params(args: argparse.Namespace, weights: Path | None) -> Params:
    model = {"encoder_weights": str(weights) if weights else "none", "width": args.width}
    model["freeze_blocks"] = args.freeze_blocks
    # "both": every step is a D step then a G step, the step the naive path runs (and the figures in
    # benchmarks/README.md measure); the default "alternate" schedule spends each batch on one network.
    train = {"batch_size": args.batch_size, "compile": args.compile, "device": "auto", "adversarial_schedule": "both"}
    return params_from_dict({"model": model, "train": train, "prepare": {"size": list(args.size)}})


def random_encoder_file(folder: Path, width: float) -> Path:
    """Random weights in torchvision's VGG16 ``features.N`` layout: the ImageNet profile's code path (load,
    then freeze blocks) without the download."""
    from salgan.models import Generator

    path = folder / "vgg16-random.pth"
    torch.save({f"features.{k}": v for k, v in Generator(width).encoder.state_dict().items()}, path)
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    args = resolve_args(args, device)
    load_before = load_average()
    if device.type == "cpu":
        # One per core, as salgan.train.run does for one process. On a shared machine fewer can be faster:
        # a parallel region waits for its slowest thread, and a thread that lost its core stalls it.
        torch.set_num_threads(args.threads or usable_cpus())
    with TemporaryDirectory(prefix="bench-train-") as tmp:
        folder = args.data or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        # Generate before any CUDA work, so that the pool may fork.
        raw, prepared, data_seconds = ensure_data(folder, args.images, args.size, usable_cpus())
        weights = random_encoder_file(Path(tmp), args.width) if args.freeze_blocks else None
        params = make_params(args, weights)
        epoch_fns = {"fast": train_one_epoch}
        flops = {"reference": reference_flops(args.width, args.size)}
        for name, fn in epoch_fns.items():
            flops[name] = counted_flops(params, args.size, fn)
        flops["naive"] = flops["fast"]  # the same step, in another precision and layout
        if args.compile:
            epoch_fns = {f"{name} (compiled)": fn for name, fn in epoch_fns.items()}
            flops.update({f"{name} (compiled)": flops[name] for name in list(flops) if name.startswith("fast")})
        rows = []
        if not args.skip_naive:
            rows.append(run_naive(params, raw, args.size, device, args.warmup, args.steps, args.workers))
        split = load_split(prepared, "train", device)
        for name, fn in epoch_fns.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            rows.append(run_fast(name, params, split, device, args.warmup, args.steps, fn))
            if device.type == "cuda":
                rows[-1]["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                torch.cuda.empty_cache()
        if args.streamed:
            del split
            streamed = load_split(prepared, "train", device, stream=True)
            name, fn = next(iter(epoch_fns.items()))
            flops[f"{name} (streamed)"] = flops[name]
            rows.append(run_fast(f"{name} (streamed)", params, streamed, device, args.warmup, args.steps, fn))
    peak = peak_flops(device, args.peak_tflops)
    for row in rows:
        add_mfu(row, flops, peak)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({usable_cpus()} cores)"
    load_after = load_average()
    header = (
        f"{device_name}, torch {torch.__version__}: adversarial step, {args.size[0]}x{args.size[1]}, width "
        f"{args.width}, batch {args.batch_size}, freeze_blocks {args.freeze_blocks}, {args.images} images; "
        f"{flops['reference'] / 1e9:.1f} GFLOP/image reference, "
        + (f"{flops['fast'] / 1e9:.1f} counted" if flops["fast"] else "not counted")
        + (f"; peak {peak / 1e12:.0f} TFLOP/s" if peak else "")
        + f"; load average {load_before:.2f} -> {load_after:.2f}"
    )
    print_table(rows, header)
    by_path = {row["path"]: row for row in rows}
    naive = by_path.get("naive")
    fast = next(row for row in rows if row["path"].startswith("fast"))
    best = max((row for row in rows if row["path"].startswith("fast")), key=lambda row: row["images_per_s"])
    ratio = round(fast["images_per_s"] / naive["images_per_s"], 2) if naive else None
    if naive:
        print(
            f"fast / naive: {ratio:.2f}x; input pipeline share: naive {100 * naive['input_share']:.1f}%, "
            f"fast {100 * fast['input_share']:.2f}% (target <= 5%)"
        )
    if load_after > usable_cpus() * 0.75 and device.type == "cpu":
        print(f"warning: the machine was busy (load average {load_after:.2f}); CPU timings are pessimistic")
    result = {
        "benchmark": "train",
        "device": device_name,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "size": list(args.size),
            "width": args.width,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "images": args.images,
            "naive_workers": args.workers,
            "freeze_blocks": args.freeze_blocks,
            "compile": args.compile,
            "quick": args.quick,
            "threads": torch.get_num_threads(),
        },
        "gflop_per_image": {k: round(v / 1e9, 3) if v else None for k, v in flops.items()},
        "peak_bf16_tflops": round(peak / 1e12) if peak else None,
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
        "paths": rows,
        "fast_images_per_s": fast["images_per_s"],
        "best_images_per_s": best["images_per_s"],
        "best_path": best["path"],
        "naive_images_per_s": naive["images_per_s"] if naive else None,
        "ratio": ratio,
        "input_share": {row["path"]: row["input_share"] for row in rows},
        # held on the device / streamed from host memory, images/s: what streaming costs per step
        "streamed_cost": next(
            (round(fast["images_per_s"] / r["images_per_s"], 3) for r in rows if r["path"].endswith("(streamed)")),
            None,
        ),
        "data_setup_s": round(data_seconds, 1),
        "load_average": [load_before, load_after],
        "cpus": usable_cpus(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
