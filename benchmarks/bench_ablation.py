"""Benchmark: the seed paper's ablation arms x seeds on the offline sample, as a user runs it.

In a fresh clone of this checkout (git clone of HEAD: commit first; nothing of the checkout's own DVC
cache, experiments or MLflow store is touched) it runs

    salgan ablation run --scores-only --arms ARMS --seeds N --profile <MLflow off>
    salgan ablation show --reference REFERENCE

that is one ``dvc exp run`` per arm and seed up to the evaluate stage (download of the generated sample,
prepare, train, evaluate: the scores the table reads), then the table of mean +- std over the seeds and each arm's
paired bootstrap interval against the reference arm. The ImageNet arms need torchvision's VGG16 ImageNet
weights in torch.hub's cache (``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``) and train the full-width
VGG16 (64 times the offline model's convolutions: hours per arm on a CPU); without the file they are left
out, with a line saying so.

    python benchmarks/bench_ablation.py                        # the four seed arms (those it can) x 3 seeds
    python benchmarks/bench_ablation.py --arms random-gan random-bce --seeds 3 --keep /tmp/ablation

Needs the pipeline's extras (DVC). Prints ``salgan ablation show``'s tables, each run's wall time, then,
last, one JSON line: ``{"arms": [...], "seeds": N, "skipped": [...], "seconds": {"<experiment>": s},
"metrics": {"<experiment>": {...}}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  -- makes the package importable from a checkout
import torch
import yaml

from salgan.ablation import ARMS, experiment_metrics, parse_arm
from salgan.models import imagenet_weights_url

REPO = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]


def imagenet_cached(encoder: str) -> bool:
    name = imagenet_weights_url(encoder).rsplit("/", 1)[1]
    return (Path(torch.hub.get_dir()) / "checkpoints" / name).is_file()


def runnable(arms: list[str]) -> tuple[list[str], list[str]]:
    """The arms whose encoder weights are at hand, and those left out (ImageNet weights not cached)."""
    keep, skip = [], []
    for arm in arms:
        encoder, init, _ = parse_arm(arm)
        (skip if init == "imagenet" and not imagenet_cached(encoder) else keep).append(arm)
    return keep, skip


def run(command: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode:
        output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{output}")
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reference", default="random-gan", help="the arm the others are compared with")
    parser.add_argument("--keep", type=Path, help="clone into this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    arms, skipped = runnable(args.arms)
    for arm in skipped:
        print(f"{arm}: left out, torchvision's ImageNet weights are not in {torch.hub.get_dir()}/checkpoints")
    if not arms:
        raise SystemExit("no arm can run here")
    root = args.keep or Path(tempfile.mkdtemp(prefix="salgan-ablation-"))
    clone = root / "repo"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env |= {"PYTHONPATH": str(clone), "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    root.mkdir(parents=True, exist_ok=True)
    try:
        commit = run(["git", "rev-parse", "HEAD"], REPO, env).strip()  # this checkout's, even in a git worktree
        run(["git", "clone", "-q", str(REPO), str(clone)], root, env)
        run(["git", "checkout", "-q", "-b", "bench-ablation", commit], clone, env)
        (clone / "no-mlflow.yaml").write_text(yaml.safe_dump({"mlflow": {"enabled": False}}))
        seconds: dict[str, float] = {}
        for arm in arms:  # one arm at a time, so that each run's wall time is its own
            started = time.perf_counter()
            command = [sys.executable, "-m", "salgan.cli", "ablation", "run", "--scores-only", "--arms", arm]
            run([*command, "--seeds", str(args.seeds), "--profile", "no-mlflow.yaml"], clone, env)
            seconds[arm] = round((time.perf_counter() - started) / args.seeds, 1)
            print(f"{arm}: {seconds[arm]} s per seed (the pipeline up to evaluate; the first run generates the sample)")
        reference = args.reference if args.reference in arms else arms[0]
        print(run([sys.executable, "-m", "salgan.cli", "ablation", "show", "--reference", reference], clone, env))
        shown = json.loads(run(["dvc", "exp", "show", "--json"], clone, env))
        metrics = {k: v for k, v in experiment_metrics(shown).items() if k not in ("workspace", "main", "master")}
        print(json.dumps({"arms": arms, "seeds": args.seeds, "skipped": skipped, "seconds_per_seed": seconds,
                          "load_average": os.getloadavg()[0], "metrics": metrics}))  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
