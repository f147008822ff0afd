"""Benchmark: adversarial-phase settings side by side, per seed, from one BCE phase per seed.

docs/adversarial-phase.md's table of the content term's weight was made this way. For each seed the
offline default (params.yaml, MLflow off) trains its ``train.bce_epochs`` BCE epochs once; each setting then
resumes that checkpoint and trains the adversarial epochs, and the evaluate stage's scorer scores the val
split. Only settings the BCE phase never reads may vary (:data:`ADVERSARIAL_ONLY`), so every setting of a
seed starts from the same generator; ``salgan train`` itself would refuse the checkpoint (its settings
differ), which this script allows for those keys alone. One process per run, pinned to one core
(``taskset``), ``--parallel`` runs at a time.

    python benchmarks/bench_adversarial.py --seeds 3 --setting alpha=0.05 --setting alpha=20 \\
        --setting "alpha=20 d_steps_per_g=4"

Needs the generated sample (made here with the product's download and prepare stages). Prints a line per
run (NSS, CC, KLD, D's held-out accuracy per adversarial epoch, val content loss), then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common  # noqa: F401  -- makes the package importable from a checkout
import yaml

from salgan.settings import load_params

REPO = Path(__file__).resolve().parents[1]
# train.* keys read in adversarial epochs only (D's rate is not: its optimiser comes back from the checkpoint)
ADVERSARIAL_ONLY = {
    "alpha", "lr_generator", "d_steps_per_g", "adversarial_schedule", "g_warmup_steps", "discriminator_flip",
    "discriminator_loss",
}  # fmt: skip


def parse_setting(text: str) -> dict:
    """``"alpha=20 d_steps_per_g=4"`` -> ``{"alpha": 20.0, "d_steps_per_g": 4}`` (YAML values)."""
    setting = {}
    for item in text.split():
        key, _, value = item.partition("=")
        if key not in ADVERSARIAL_ONLY:
            raise SystemExit(f"--setting {key}: only {sorted(ADVERSARIAL_ONLY)} leave the BCE phase unchanged")
        setting[key] = yaml.safe_load(value)
    return setting


def params_file(work: Path, seed: int, output: Path, setting: dict, epochs: int | None = None) -> Path:
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"] |= {"seed": seed, "output": str(output), **setting} | ({"epochs": epochs} if epochs else {})
    output.mkdir(parents=True, exist_ok=True)
    path = output / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def one_run(path: Path) -> dict:
    """Train (resuming the BCE checkpoint in its output) and score the val split; in this process."""
    import salgan.train as train
    from salgan.evaluate import evaluate_model

    train.settings_version = lambda params: "bench_adversarial"  # the checkpoint check, for ADVERSARIAL_ONLY keys
    params = load_params(str(path))
    tic = time.perf_counter()
    train.run(params)
    seconds = time.perf_counter() - tic
    out = Path(params.train.output)
    scores = evaluate_model(params, str(out / "generator.pt"), out / "reports")
    history = json.loads((out / "history.json").read_text())
    adversarial = [h for h in history if h["phase"] == "adversarial"]
    return {
        "train_s": round(seconds, 1),
        **{name: round(scores[name], 4) for name in ("nss", "cc", "kld", "auc_borji", "information_gain")},
        "d_accuracy": [round(h["d_accuracy"], 2) for h in adversarial],
        "val_content_loss": [round(h["val_content_loss"], 4) for h in history[params.train.bce_epochs - 1 :]],
    }


def run_pinned(path: Path, core: int, log: Path) -> dict:
    command = ["taskset", "-c", str(core), sys.executable, __file__, "--one", str(path)]
    with log.open("w") as out:
        if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=path.parents[2]).returncode:
            raise SystemExit(f"{path.parent.name} failed: {log}")
    return json.loads(log.read_text().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", action="append", default=[], help='train.* overrides, e.g. "alpha=20"')
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=min(2, common.usable_cpus()))
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one)))
        return 0
    settings = {text: parse_setting(text) for text in args.setting or ["alpha=20"]}
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-adversarial-"))
    work.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["mlflow"]["enabled"] = False
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("download", "prepare"):
        subprocess.run([sys.executable, "-m", f"salgan.{stage}", "--params", "params.yaml"], cwd=work, check=True)
    cores = list(range(args.parallel))
    seeds = range(args.seeds)

    def pinned(jobs: list[tuple[Path, Path]]) -> list[dict]:
        with ThreadPoolExecutor(len(cores)) as pool:
            futures = [pool.submit(run_pinned, path, cores[i % len(cores)], log) for i, (path, log) in enumerate(jobs)]
            return [f.result() for f in futures]

    bce_epochs = load_params(str(work / "params.yaml")).train.bce_epochs
    bce = [params_file(work, s, work / "runs" / f"bce-s{s}", {}, epochs=bce_epochs) for s in seeds]
    results = {f"bce-s{s}": r for s, r in zip(seeds, pinned([(p, p.parent / "log.txt") for p in bce]), strict=True)}
    jobs, names = [], []
    for text, setting in settings.items():
        for s in seeds:
            name = f"{text.replace(' ', ',')}-s{s}"
            output = work / "runs" / name
            shutil.rmtree(output, ignore_errors=True)
            shutil.copytree(work / "runs" / f"bce-s{s}", output, ignore=shutil.ignore_patterns("reports", "log.txt"))
            jobs.append((params_file(work, s, output, setting), output / "log.txt"))
            names.append(name)
    results |= dict(zip(names, pinned(jobs), strict=True))
    for name, result in results.items():
        print(name, json.dumps(result))
    print(json.dumps({"settings": list(settings), "seeds": args.seeds, "runs": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
