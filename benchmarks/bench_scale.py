"""Benchmark: every data stage at two split sizes, its wall time and peak memory (profiles/salicon-scale.yaml).

Runs the product's stages as a user does (``salgan <stage> --params params.yaml`` in a fresh workspace) on
SALICON-format data from the sample generator at 640x480, prepared at 256x192: download (generating the
tree), prepare, evaluate, predict and package, at a small and a large size. Train runs once, at the small
size, for one epoch of a tiny model; the large workspace reuses that model, since the stages measured
here only read it. Peak memory is the largest sum of resident memory over the stage's process and its
children (prepare's workers), sampled every 20 ms. A stage whose memory does not grow with the number of
images has a ``peak_rss_ratio`` (large / small) near 1.

    python benchmarks/bench_scale.py --quick    # 100/50/50 and 1,000/500/500 images (train/val/test)
    python benchmarks/bench_scale.py            # 1,000/500/500 and SALICON's 10,000/5,000/5,000

Prints a table, then, last, one JSON line:
``{"stages": {"<stage>": {"small": {"images": n, "seconds": s, "peak_rss_mb": m}, "large": {...},
"peak_rss_ratio": r}, ...}, "train_small": {...}}`` (``images``: the split the stage works through).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common  # noqa: F401  -- makes the package importable from a checkout
import psutil
import yaml

from salgan.settings import load_params, to_dict

REPO = Path(__file__).resolve().parents[1]
STAGES = ("download", "prepare", "evaluate", "predict", "package")
# The split each stage works through, for the "images" figure.
STAGE_SPLIT = {"download": "all", "prepare": "all", "evaluate": "val", "predict": "test", "package": "test"}


def workspace_params(root: Path, counts: tuple[int, int, int]) -> Path:
    """params.yaml of the repository with profiles/salicon-scale.yaml and ``counts`` applied, MLflow off."""
    params = to_dict(load_params(REPO / "params.yaml"))
    for section, values in yaml.safe_load((REPO / "profiles" / "salicon-scale.yaml").read_text()).items():
        params[section].update(values)
    params["download"].update(dict(zip(("sample_train", "sample_val", "sample_test"), counts, strict=True)))
    params["mlflow"]["enabled"] = False
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def peak_rss_of(process: subprocess.Popen) -> tuple[float, float]:
    """Wait for ``process``; return (seconds, peak MB of resident memory summed over it and its children)."""
    started, peak, done = time.perf_counter(), 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            root = psutil.Process(process.pid)
        except psutil.Error:
            return
        while not done.is_set():
            total = 0
            try:
                for member in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):  # a child that has just exited
                        total += member.memory_info().rss
            except psutil.Error:
                break
            peak = max(peak, total)
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    process.wait()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return seconds, peak / 2**20


def run_stage(root: Path, stage: str) -> tuple[float, float]:
    env = {**os.environ, "SALGAN_PROGRESS": "0", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    log = open(root / f"{stage}.log", "w")  # noqa: SIM115 -- closed below, after the child exits
    process = subprocess.Popen(
        [sys.executable, "-m", "salgan.cli", stage, "--params", "params.yaml"], cwd=root, env=env, stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    seconds, peak = peak_rss_of(process)
    log.close()
    if process.returncode != 0:
        raise SystemExit(f"{stage} failed in {root}; its log:\n{(root / f'{stage}.log').read_text()[-3000:]}")
    return seconds, peak


def images_of(stage: str, counts: tuple[int, int, int]) -> int:
    split = STAGE_SPLIT[stage]
    return sum(counts) if split == "all" else counts[("train", "val", "test").index(split)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes (1,000/500/500 at most)")
    parser.add_argument("--keep", type=Path, help="keep the two workspaces under this folder")
    args = parser.parse_args()
    small, large = ((100, 50, 50), (1000, 500, 500)) if args.quick else ((1000, 500, 500), (10000, 5000, 5000))
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results: dict = {"stages": {stage: {} for stage in STAGES}}
    try:
        for label, counts in (("small", small), ("large", large)):
            root = base / label
            root.mkdir(parents=True, exist_ok=True)
            workspace_params(root, counts)
            for stage in STAGES:
                if stage == "evaluate" and label == "small":
                    seconds, peak = run_stage(root, "train")
                    results["train_small"] = {"images": counts[0], "seconds": round(seconds, 1),
                                              "peak_rss_mb": round(peak)}  # fmt: skip
                elif stage == "evaluate":
                    shutil.copytree(base / "small" / "models", root / "models", dirs_exist_ok=True)
                seconds, peak = run_stage(root, stage)
                figures = {"images": images_of(stage, counts), "seconds": round(seconds, 1), "peak_rss_mb": round(peak)}
                results["stages"][stage][label] = figures
                print(f"{label:5} {stage:9} {figures['images']:6} images {seconds:8.1f} s {peak:8.0f} MB", flush=True)
        for figures in results["stages"].values():
            figures["peak_rss_ratio"] = round(figures["large"]["peak_rss_mb"] / figures["small"]["peak_rss_mb"], 2)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    print(f"{'stage':9} {'small':>22} {'large':>22} {'RSS ratio':>10}")
    for stage, figures in results["stages"].items():
        cells = [f"{figures[k]['seconds']:7.1f} s {figures[k]['peak_rss_mb']:6} MB" for k in ("small", "large")]
        print(f"{stage:9} {cells[0]:>22} {cells[1]:>22} {figures['peak_rss_ratio']:>10}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
