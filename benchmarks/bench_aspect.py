"""Stretch or pad: how prepare should fit images of any aspect ratio into the training size.

SalGAN stretches (the original code resizes every image to 256x192 whatever its shape), as prepare does.
The alternative is letterboxing: scale to fit, pad the rest (grey for images, zero for maps), and crop the
prediction back to the image's area before resizing it to the original size. This script measures both on
the same small dataset of mixed aspect ratios (the offline sample's scenes cropped to 8:3, 1:1, 3:4 and
4:3, written as a fixations CSV dataset and read by the product's own download and prepare stages), training
the same model on each and scoring the val split at each image's original resolution with the evaluate
stage's scoring.

    PYTHONPATH=. python benchmarks/bench_aspect.py --images 160 --epochs 10 --seeds 0 1

The last line is one JSON object with each arm's mean metrics and the pad/stretch ratios.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  -- puts the checkout on sys.path

from salgan import download, prepare, sample, train  # noqa: E402
from salgan.datasets import render_map  # noqa: E402
from salgan.evaluate import centre_bias_scores, scoring_inputs  # noqa: E402
from salgan.inference import postprocess  # noqa: E402
from salgan.layout import read_split  # noqa: E402
from salgan.models import load_generator  # noqa: E402
from salgan.scoring import score_split  # noqa: E402
from salgan.settings import params_from_dict  # noqa: E402

CROPS = ((640, 240), (480, 480), (360, 480), (640, 480))  # (W, H) of the 640x480 scene kept: 8:3, 1:1, 3:4, 4:3
SCALE = 0.25  # the written images: 160x60, 120x120, 90x120, 160x120
PAD_GREY = 128


def write_dataset(root: Path, count: int, seed: int) -> None:
    """``count`` images of mixed aspect ratio and fixations.csv (the fixations inside each crop)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        shapes = sample.random_shapes(rng)
        pixels = sample.render_image(rng, shapes)
        xy = np.concatenate([o["fixations"] for o in sample.simulate_observers(rng, shapes)]) - 1.0
        width, height = CROPS[i % len(CROPS)]
        x0, y0 = (640 - width) // 2, (480 - height) // 2
        inside = (xy[:, 0] >= x0) & (xy[:, 0] < x0 + width) & (xy[:, 1] >= y0) & (xy[:, 1] < y0 + height)
        if not inside.any():
            inside[:] = False
            xy = np.array([[x0 + width / 2, y0 + height / 2]])
            inside = np.array([True])
        size = (round(width * SCALE), round(height * SCALE))
        crop = Image.fromarray(pixels[y0 : y0 + height, x0 : x0 + width]).resize(size, Image.Resampling.BILINEAR)
        name = f"{i:04d}.jpg"
        crop.save(root / name, quality=90)
        for x, y in (xy[inside] - [x0, y0] + 0.5) * SCALE - 0.5:
            rows.append([name, f"{x:.2f}", f"{y:.2f}"])
    with open(root / "fixations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "x", "y"])
        writer.writerows(rows)


def letterbox_box(original: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, rows, cols) of an image of ``original`` (rows, cols) fitted into ``size`` (W, H)."""
    rows, cols = original
    scale = min(size[0] / cols, size[1] / rows)
    fitted = (max(1, round(rows * scale)), max(1, round(cols * scale)))
    return (size[1] - fitted[0]) // 2, (size[0] - fitted[1]) // 2, fitted[0], fitted[1]


def padded_copy(stretched: Path, padded: Path, raw: Path, size: tuple[int, int]) -> None:
    """The prepared tree with images and maps letterboxed instead of stretched (the rest unchanged)."""
    shutil.copytree(stretched, padded)
    report = json.loads((stretched / "report.json").read_text())
    bilinear = Image.Resampling.BILINEAR  # as prepare resizes
    for split in ("train", "val"):
        arrays = read_split(padded, split, "fixations")
        images = np.full((len(arrays), size[1], size[0], 3), PAD_GREY, np.uint8)
        maps = np.zeros((len(arrays), size[1], size[0]), np.uint8)
        for i, relative in enumerate(report["sources"][split]):
            original = tuple(int(v) for v in arrays.original_sizes[i])
            top, left, rows, cols = letterbox_box(original, size)
            with Image.open(raw / relative) as img:
                fitted = img.convert("RGB").resize((cols, rows), bilinear)
            images[i, top : top + rows, left : left + cols] = np.asarray(fitted)
            coords = arrays.coords[arrays.offsets[i] : arrays.offsets[i + 1]]
            full = render_map(coords, original, 19.0)  # the map prepare made at the original size
            maps[i, top : top + rows, left : left + cols] = np.asarray(
                Image.fromarray(full).resize((cols, rows), bilinear)
            )
        np.save(padded / split / "images.npy", images)
        np.save(padded / split / "maps.npy", maps)


def padded_predictions(generator, val, size: tuple[int, int], blur: int) -> list[np.ndarray]:
    """Each val map cropped to its image's box, then post-processed to its original size."""
    generator = generator.eval()
    outputs = []
    with torch.no_grad():
        for i in range(len(val)):
            image = torch.as_tensor(np.asarray(val.images[i : i + 1])).permute(0, 3, 1, 2).float() / 255
            top, left, rows, cols = letterbox_box(tuple(val.original_sizes[i]), size)
            crop = generator(image)[:, :, top : top + rows, left : left + cols]
            outputs.append(postprocess(crop, tuple(int(v) for v in val.original_sizes[i]), blur)[0].numpy())
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=common.parse_size, default=(128, 96))
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="salgan-aspect-"))
    (work / "src").mkdir()
    write_dataset(work / "src", args.images, seed=0)
    base = {
        "download": {"dataset": "fixations_csv", "source": str(work / "src"), "output": str(work / "raw")}
        | {"val_fraction": 0.25},
        "prepare": {"input": str(work / "raw"), "output": str(work / "stretch"), "size": list(args.size), "workers": 1},
        "model": {"width": args.width},
        "train": {"epochs": args.epochs, "bce_epochs": args.epochs, "batch_size": 8, "device": "cpu", "nproc": 1},
        "evaluate": {"n_splits": 20},
        "mlflow": {"enabled": False},
    }
    params = params_from_dict(base)
    download.run(params.download, progress=False)
    prepare.prepare(params.prepare, progress=False, download=params.download)
    padded_copy(work / "stretch", work / "pad", work / "raw", args.size)
    results: dict[str, list[dict]] = {"stretch": [], "pad": []}
    centre = None
    for seed in args.seeds:
        for arm in ("stretch", "pad"):
            arm_params = params_from_dict(
                base | {"train": base["train"] | {"data": str(work / arm), "output": str(work / f"{arm}-{seed}")}
                        | {"seed": seed}}
            )  # fmt: skip
            train.run(arm_params)
            val, shared = scoring_inputs(arm_params)
            generator = load_generator(work / f"{arm}-{seed}" / "generator.pt").generator
            if arm == "stretch":
                from salgan.inference import predict_batches

                maps = list(predict_batches(generator, val.images, val.original_sizes, 8, 5, torch.device("cpu")))
            else:
                maps = padded_predictions(generator, val, args.size, 5)
            results[arm].append(score_split(maps, val.maps_full, progress=False, **shared)[1])
            centre = centre or centre_bias_scores(arm_params, val, shared)
    keys = ("nss", "cc", "auc_judd", "auc_shuffled", "kld", "sim", "information_gain")
    means = {arm: {k: statistics.mean(r[k] for r in runs) for k in keys} for arm, runs in results.items()}
    print(f"{'metric':<18}{'stretch':>10}{'pad':>10}{'centre':>10}")
    for key in keys:
        print(f"{key:<18}{means['stretch'][key]:>10.4f}{means['pad'][key]:>10.4f}{centre[key]:>10.4f}")
    shutil.rmtree(work, ignore_errors=True)
    record = {
        "images": args.images, "epochs": args.epochs, "size": list(args.size), "width": args.width,
        "seeds": args.seeds, "load_average": common.load_average(), "seconds": round(time.perf_counter() - began),
        "stretch": means["stretch"], "pad": means["pad"], "centre_bias": {k: centre[k] for k in keys},
        "pad_over_stretch": {k: means["pad"][k] / means["stretch"][k] for k in keys},
        "per_seed": results,
    }  # fmt: skip
    print(json.dumps(record))


if __name__ == "__main__":
    main()
