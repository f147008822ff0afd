"""Time the metric suite: the evaluate stage's scoring of a split, or one image's metrics against pysaliency.

Usage:
    python benchmarks/bench_metrics.py [--images K | --quick] [--fixations F] [--splits S] [--workers W]
    python benchmarks/bench_metrics.py --vs-pysaliency [--cases C] [--rounds R]
    ... --numpy-passes: either mode on numpy's and torch's passes instead of numba's compiled ones

Default mode: ``score_split`` (what ``salgan evaluate`` runs three times) on a synthetic SALICON-val-like
split of K 640x480 images: uint8 ground-truth maps (blurred fixation counts), F centre-biased fixations
per image (default 500, about SALICON's order), smooth float32 predictions at the same size (as the evaluate
stage hands them over, post-processed). At most 250 distinct images are generated; a larger split cycles through them
(the work per image does not depend on which image it is). ``--workers`` as ``score_split``'s (default:
one per usable CPU). Prints ms per image for the split and for each public metric called on its own, then
one JSON line.

``--vs-pysaliency``: pysaliency (matthias-k/pysaliency 0.2.22, the field's reference) against this
package on the same saved cases: C 640x480 float64 saliency maps, uint8 ground truths, ~F fixations per
image and the ~10 F fixations of the next 10 images as sAUC negatives. pysaliency runs in its own virtual
environment (built on first use under ``~/.cache/salgan-bench/pysaliency-venv``: it needs numpy<2.4 and
setuptools<81), in a child process. Both sides run one thread each on the same core and take turns by
whole rounds (each side scores every case; the order alternates from round to round), R rounds after a
warm-up. Per image: pysaliency's seven metrics (AUC-Judd, all-pixel AUC, sAUC, NSS, CC, KLD, SIM)
against ``image_metrics`` (all eight, inputs prepared as the scorer prepares them) and against each
public function alone. The values that share a definition (AUC-Judd, NSS, CC, KLD and SIM, the maps
having a minimum of 0) are checked to agree. The JSON line has the medians over rounds, the per-metric
and total ratios and every round's total ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import common  # noqa: F401  -- makes the package importable from a checkout
import numpy as np
from common import load_average, result_line, usable_cpus
from scipy.ndimage import gaussian_filter

from salgan import metrics, scoring

GT_SHAPE = (480, 640)
TARGET_IMAGES = 5000
DISTINCT_IMAGES = 250
PYSALIENCY = "pysaliency==0.2.22"
DEFAULT_NUMPY = "<2.4"
PYSALIENCY_BUILD = ["setuptools<81", "cython", "wheel"]
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
VALUE_TOLERANCE = 1e-12
SHARED_DEFINITIONS = ("auc_judd", "nss", "cc", "kld", "sim")
CLOCKS = (
    "cpu: the scoring thread's CPU time (time.thread_time: user and system, page faults included), which "
    "other jobs on a shared machine inflate far less than wall time; wall: time.perf_counter"
)
OTHER_IMAGES = 10  # sAUC negatives: the fixations of the next 10 images (Borji's choice, the scorer's default)


def synthetic_split(n_images: int, fixations: int, seed: int = 0):
    """Predictions, uint8 GT maps, coords and offsets of a random centre-biased split."""
    rng = np.random.default_rng(seed)
    h, w = GT_SHAPE
    counts = rng.integers(fixations // 2, fixations * 3 // 2 + 1, n_images)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rows = np.clip(rng.normal(h / 2, h / 5, offsets[-1]), 0, h - 1)
    cols = np.clip(rng.normal(w / 2, w / 5, offsets[-1]), 0, w - 1)
    coords = np.stack([rows, cols], axis=1).astype(np.int32)
    gt = np.empty((n_images, h, w), dtype=np.uint8)
    for i in range(n_images):
        # Blur at quarter resolution and upsample: realistic smooth maps, generated quickly.
        small = metrics.fixation_map_from_coords(coords[offsets[i] : offsets[i + 1]] // 4, (h // 4, w // 4))
        blurred = metrics.resize_map(gaussian_filter(small.astype(float), 6), GT_SHAPE)
        gt[i] = np.round(255 * blurred / blurred.max())
    # Predictions as the evaluate stage hands them to the scorer: float32 maps in [0, 1] at the ground
    # truth's size (post-processed), smooth like a model's output: the image's map mixed with smooth noise.
    predictions = np.empty((n_images, h, w), dtype=np.float32)
    for i in range(n_images):
        noise = metrics.resize_map(gaussian_filter(rng.random((h // 8, w // 8)), 2), GT_SHAPE)
        predictions[i] = np.clip(0.6 * gt[i] / 255.0 + 0.8 * (noise - noise.mean()) + 0.1, 0.0, 1.0)
    return predictions, gt, coords, offsets


class Cycled(Sequence):
    """``items`` repeated to ``length``: a large split made of a few distinct images."""

    def __init__(self, items, length: int):
        self.items, self.length = items, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.items[index % len(self.items)]


def cycled_split(n_images: int, fixations: int):
    predictions, gt, coords, offsets = synthetic_split(min(n_images, DISTINCT_IMAGES), fixations)
    distinct = len(gt)
    if n_images == distinct:
        return predictions, gt, coords, offsets
    parts = [coords[offsets[i % distinct] : offsets[i % distinct + 1]] for i in range(n_images)]
    counts = [len(part) for part in parts]
    all_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Cycled(predictions, n_images), Cycled(gt, n_images), np.concatenate(parts), all_offsets


def time_score_split(predictions, gt, coords, offsets, baseline, n_splits: int, workers: int | None) -> float:
    start = time.perf_counter()
    scoring.score_split(predictions, gt, coords, offsets, baseline, n_splits=n_splits, progress=False, workers=workers)
    return time.perf_counter() - start


def public_calls(n_splits: int, baseline: np.ndarray) -> dict:
    """Each public metric on (saliency, fixation count map, ground truth, other images' count map)."""
    return {
        "auc_judd": lambda s, f, q, o: metrics.auc_judd(s, f),
        "auc_borji": lambda s, f, q, o: metrics.auc_borji(s, f, n_splits=n_splits),
        "auc_shuffled": lambda s, f, q, o: metrics.auc_shuffled(s, f, o, n_splits=n_splits, seed=1),
        "nss": lambda s, f, q, o: metrics.nss(s, f),
        "cc": lambda s, f, q, o: metrics.cc(s, q),
        "kld": lambda s, f, q, o: metrics.kld(s, q),
        "sim": lambda s, f, q, o: metrics.sim(s, q),
        "information_gain": lambda s, f, q, o: metrics.information_gain(s, f, baseline),
    }


def time_single_metrics(predictions, gt, coords, offsets, baseline, n_splits: int, n: int) -> dict:
    """Seconds per image of each public metric called on its own (each re-resizes and re-prepares)."""
    n_images = len(gt)
    inputs = []
    for i in range(n):
        f = metrics.fixation_map_from_coords(coords[offsets[i] : offsets[i + 1]], GT_SHAPE)
        j = (i + 1) % n_images
        other = metrics.fixation_map_from_coords(coords[offsets[j] : offsets[j + 1]], GT_SHAPE)
        inputs.append((predictions[i], f, gt[i], other))
    seconds = {}
    for name, call in public_calls(n_splits, baseline).items():
        start = time.perf_counter()
        for args in inputs:
            call(*args)
        seconds[name] = (time.perf_counter() - start) / n
    return seconds


def split_mode(args) -> int:
    n_images = 20 if args.quick else args.images
    predictions, gt, coords, offsets = cycled_split(n_images, args.fixations)
    baseline = scoring.fixation_density_baseline(coords, offsets, GT_SHAPE, sigma=20)
    load_before = load_average()
    seconds = time_score_split(predictions, gt, coords, offsets, baseline, args.splits, args.workers)
    per_image = seconds / n_images
    singles = time_single_metrics(predictions, gt, coords, offsets, baseline, args.splits, min(n_images, 20))
    workers = max(1, min(args.workers or usable_cpus(), n_images // 8))  # as score_split sizes its pool

    print(
        f"{n_images} images, GT and predictions {GT_SHAPE[1]}x{GT_SHAPE[0]}, "
        f"{(offsets[-1] / n_images):.0f} fixations/image, {args.splits} splits, {workers} scoring processes"
    )
    print(f"{'what':<34}{'ms/image':>10}")
    print(f"{'score_split (all 8 metrics)':<34}{1e3 * per_image:>10.2f}")
    for name, value in singles.items():
        print(f"{'  ' + name + ' alone':<34}{1e3 * value:>10.2f}")
    print(f"{'  sum of the 8 alone':<34}{1e3 * sum(singles.values()):>10.2f}")
    figures = {
        "images": n_images,
        "fixations_per_image": round(float(offsets[-1] / n_images), 1),
        "n_splits": args.splits,
        "workers": workers,
        "seconds": round(seconds, 3),
        "ms_per_image": round(1e3 * per_image, 2),
        "images_per_s": round(n_images / seconds, 2),
        "extrapolated_s_for_5000": round(TARGET_IMAGES * per_image, 1),
        "single_ms": {name: round(1e3 * value, 3) for name, value in singles.items()},
        "load_average": [load_before, load_average()],
    }
    print(result_line("metrics", f"CPU ({usable_cpus()} cores)", passes=passes(), **figures))
    return 0


# --- against pysaliency ----------------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "salgan-bench"


def pysaliency_python(venv: Path, numpy_spec: str) -> tuple[Path, dict]:
    """The interpreter of a virtual environment holding pysaliency, built there unless it already is, and
    the versions of pysaliency and numpy it runs.

    pysaliency 0.2.22 compiles a Cython extension and calls ``np.trapz`` (gone in numpy 2.4), so numpy
    (``numpy_spec``, within <2.4), setuptools<81 and Cython are installed first and pysaliency is built
    against them (no build isolation). pip uses its configured index.
    """
    python = venv / "bin" / "python"
    check = [str(python), str(Path(__file__).with_name("pysaliency_side.py")), "--check"]
    found = subprocess.run(check, capture_output=True, text=True) if python.exists() else None
    if found is None or found.returncode != 0:
        print(f"building pysaliency's virtual environment in {venv} (about a minute)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, f"numpy{numpy_spec}", *PYSALIENCY_BUILD], check=True)
        subprocess.run([*pip, "--no-build-isolation", PYSALIENCY, "threadpoolctl"], check=True)
        found = subprocess.run(check, capture_output=True, text=True, check=True)
    return python, json.loads(found.stdout)


def venv_suffix(numpy_spec: str) -> str:
    if numpy_spec == DEFAULT_NUMPY:
        return ""
    return "-numpy" + "".join(c if c.isalnum() or c == "." else "_" for c in numpy_spec)


def comparison_cases(n_cases: int, fixations: int) -> Path:
    """The saved cases both sides score (made once per setting under the cache folder).

    A synthetic split of ``n_cases + OTHER_IMAGES`` images (:func:`synthetic_split`) whose first
    ``n_cases`` are scored; case i's sAUC negatives are the fixations of images i+1 ... i+10, as the
    scorer takes them. Saliency maps: float64, a mix of the image's ground truth and smooth noise like a
    model's output, min-max normalised (minimum 0: SIM's MIT and pysaliency definitions then agree).
    """
    key = hashlib.sha256(f"{n_cases}-{fixations}-{OTHER_IMAGES}-v2".encode()).hexdigest()[:12]
    path = cache_dir() / f"metrics-cases-{key}.npz"
    if path.is_file():
        return path
    _, gt, coords, offsets = synthetic_split(n_cases + OTHER_IMAGES, fixations, seed=1)
    rng = np.random.default_rng(2)
    saliency = np.empty((n_cases, *GT_SHAPE))
    for i in range(n_cases):
        noise = metrics.resize_map(gaussian_filter(rng.random((60, 80)), 2), GT_SHAPE)
        mix = gt[i] / 255.0 + 2.0 * (noise - noise.mean())
        saliency[i] = (mix - mix.min()) / (mix.max() - mix.min())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, saliency=saliency, gt=gt[:n_cases], coords=coords, offsets=offsets)
    os.replace(tmp, path)
    return path


class OurSide:
    """This package on the saved cases: ``image_metrics`` as the scorer runs it, and the public functions."""

    def __init__(self, cases, n_splits: int):
        self.n_splits, self.saliency, self.gt = n_splits, cases["saliency"], cases["gt"]
        self.coords, self.offsets = cases["coords"], cases["offsets"]
        self.flat = self.coords[:, 0].astype(np.int64) * GT_SHAPE[1] + self.coords[:, 1]
        self.baseline = scoring.fixation_density_baseline(self.coords, self.offsets, GT_SHAPE, sigma=20)
        self.log2_baseline = metrics.PreparedMap(self.baseline).log2_density
        self.buffers = np.empty((2, GT_SHAPE[0] * GT_SHAPE[1]))
        self.calls = public_calls(n_splits, self.baseline)

    def image_metrics(self, i: int) -> tuple[list[float], dict]:
        """[wall, thread CPU] seconds and values of all eight metrics of case i, from its raw arrays, as
        the scorer does it."""
        wall, cpu = time.perf_counter(), time.thread_time()
        fix = metrics.Fixations.from_flat_indices(self.flat[self.offsets[i] : self.offsets[i + 1]], GT_SHAPE, "f")
        values = metrics.image_metrics(
            metrics.PreparedMap(self.saliency[i], shape=GT_SHAPE, buffer=self.buffers[0]),
            fix,
            metrics.PreparedMap(self.gt[i], buffer=self.buffers[1]),
            scoring._sauc_negatives(i, self.flat, self.offsets, OTHER_IMAGES),
            self.log2_baseline,
            n_splits=self.n_splits,
            borji_seed=0,
            shuffled_seed=1,
        )
        return [time.perf_counter() - wall, time.thread_time() - cpu], values

    def public(self, i: int) -> tuple[dict, dict]:
        """[wall, CPU] seconds and values of each public function alone on case i (count maps made
        beforehand)."""
        f = metrics.fixation_map_from_coords(self.coords[self.offsets[i] : self.offsets[i + 1]], GT_SHAPE)
        other = metrics.fixation_map_from_coords(
            self.coords[self.offsets[i + 1] : self.offsets[i + 1 + OTHER_IMAGES]], GT_SHAPE
        )
        args = (self.saliency[i], f, self.gt[i], other)
        seconds, values = {}, {}
        for name, call in self.calls.items():
            wall, cpu = time.perf_counter(), time.thread_time()
            values[name] = call(*args)
            seconds[name] = [time.perf_counter() - wall, time.thread_time() - cpu]
        return seconds, values


class PysaliencySide:
    """pysaliency in its own interpreter (``pysaliency_side.py``), one case per request."""

    def __init__(self, python: Path, cases_path: Path, cpu: int | None):
        script = Path(__file__).with_name("pysaliency_side.py")
        env = {**os.environ, **ONE_THREAD}
        env.pop("PYTHONPATH", None)
        self.process = subprocess.Popen(
            [str(python), str(script), str(cases_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        if cpu is not None:
            os.sched_setaffinity(self.process.pid, {cpu})

    def score(self, i: int) -> dict:
        self.process.stdin.write(f"time {i}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"pysaliency's side stopped (exit status {self.process.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
        self.process.wait(timeout=60)


def vs_pysaliency_mode(args) -> int:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    cpu = None
    if hasattr(os, "sched_setaffinity"):
        cpu = max(os.sched_getaffinity(0))  # both sides on one core, taking turns
        os.sched_setaffinity(0, {cpu})
    venv = args.pysaliency_venv or cache_dir() / ("pysaliency-venv" + venv_suffix(args.pysaliency_numpy))
    python, versions = pysaliency_python(Path(venv).expanduser(), args.pysaliency_numpy)
    cases_path = comparison_cases(args.cases, args.fixations)
    cases = dict(np.load(cases_path))
    ours, theirs = OurSide(cases, args.splits), PysaliencySide(python, cases_path, cpu)
    load_before = load_average()
    try:
        for i in range(min(2, args.cases)):  # warm-up: numba compiles pysaliency's ROC on first use
            theirs.score(i), ours.image_metrics(i), ours.public(i)
        rounds, values = [], {i: [None, None, None] for i in range(args.cases)}
        for r in range(args.rounds):
            totals = {"pysaliency": {}, "image_metrics": np.zeros(2), "public": {}}
            # Whole rounds alternate, each side scoring every case in turn: its steady state, caches included.
            for side in ("pysaliency", "image_metrics", "public")[:: 1 if r % 2 == 0 else -1]:
                for i in range(args.cases):
                    if side == "pysaliency":
                        answer = theirs.score(i)
                        add(totals["pysaliency"], answer["seconds"])
                        values[i][0] = answer["values"]
                    elif side == "image_metrics":
                        seconds, values[i][1] = ours.image_metrics(i)
                        totals["image_metrics"] += np.array(seconds)
                    else:
                        seconds, values[i][2] = ours.public(i)
                        add(totals["public"], seconds)
            rounds.append(totals)
    finally:
        theirs.close()
    check = check_values(values)
    figures = {clock: summarise(rounds, args.cases, k) for k, clock in enumerate(("wall", "cpu"))}
    print_table(figures, check)
    config = {"cases": args.cases, "rounds": args.rounds, "fixations": args.fixations, "n_splits": args.splits}
    print(
        result_line(
            "metrics_vs_pysaliency",
            f"CPU, one core ({usable_cpus()} usable)",
            pysaliency=versions,
            passes=passes(),
            config=config,
            load_average=[load_before, load_average()],
            values=check,
            clocks=CLOCKS,
            **figures,
        )
    )
    return 0 if check["agree"] else 1


def passes() -> str:
    """Which implementation of the metrics' passes over the pixels ran (salgan.metrics._kernels)."""
    if metrics._kernels() is None:
        return "numpy and torch"
    import numba

    return f"compiled (numba {numba.__version__})"


def add(totals: dict, seconds: dict) -> None:
    for name, value in seconds.items():
        totals[name] = totals.get(name, 0.0) + np.array(value)


def check_values(values: dict) -> dict:
    """Largest |pysaliency - ours| of each shared definition, and whether image_metrics equals each public
    function bit for bit."""
    diffs = {name: 0.0 for name in SHARED_DEFINITIONS}
    identical = True
    for theirs, ours, public in values.values():
        for name in SHARED_DEFINITIONS:
            diffs[name] = max(diffs[name], abs(theirs[name] - ours[name]))
        identical &= all(public[name] == ours[name] for name in ours)
    agree = identical and all(diff <= VALUE_TOLERANCE for diff in diffs.values())
    return {"max_abs_diff": diffs, "public_equals_image_metrics": identical, "agree": agree}


def summarise(rounds: list[dict], n_cases: int, clock: int) -> dict:
    """Milliseconds per image (median over rounds) by ``clock`` (0: wall, 1: thread CPU) and the ratios
    pysaliency / ours."""

    def ms(values: list) -> float:
        return 1e3 * statistics.median(float(value[clock]) for value in values) / n_cases

    names = list(rounds[0]["public"])
    theirs = {name: ms([r["pysaliency"][name] for r in rounds]) for name in rounds[0]["pysaliency"]}
    public = {name: ms([r["public"][name] for r in rounds]) for name in names}
    theirs_total = ms([sum(r["pysaliency"].values()) for r in rounds])
    ours_total = ms([r["image_metrics"] for r in rounds])
    public_total = ms([sum(r["public"].values()) for r in rounds])
    round_ratios = [sum(r["pysaliency"].values())[clock] / r["image_metrics"][clock] for r in rounds]
    return {
        "ms_per_image": {
            "pysaliency_seven": round(theirs_total, 3),
            "image_metrics_eight": round(ours_total, 3),
            "public_functions_eight": round(public_total, 3),
        },
        "ratio_total": round(theirs_total / ours_total, 2),
        "ratio_public": round(theirs_total / public_total, 2),
        "round_ratios": [round(float(ratio), 2) for ratio in round_ratios],
        "per_metric_ms": {
            name: {"pysaliency": round(theirs.get(name, float("nan")), 3), "public": round(public[name], 3)}
            for name in names
        },
        "per_metric_ratio": {name: round(theirs[name] / public[name], 2) for name in names if name in theirs},
    }


def print_table(figures: dict, check: dict) -> None:
    cpu, wall = figures["cpu"], figures["wall"]
    print(f"{'CPU ms per image':<26}{'pysaliency':>12}{'salgan':>10}{'ratio':>8}")
    for name, row in cpu["per_metric_ms"].items():
        ratio = cpu["per_metric_ratio"].get(name)
        shown = "" if ratio is None else f"{ratio:.2f}"
        print(f"{name + ' (alone)':<26}{row['pysaliency']:>12.2f}{row['public']:>10.2f}{shown:>8}")
    for label, key, ratio in (
        ("all, one by one", "public_functions_eight", "ratio_public"),
        ("all, image_metrics", "image_metrics_eight", "ratio_total"),
    ):
        totals = cpu["ms_per_image"]
        print(f"{label:<26}{totals['pysaliency_seven']:>12.2f}{totals[key]:>10.2f}{cpu[ratio]:>8.2f}")
    print(f"rounds' total ratios (CPU): {cpu['round_ratios']}")
    totals = wall["ms_per_image"]
    print(
        f"wall clock: pysaliency {totals['pysaliency_seven']:.2f} ms, image_metrics "
        f"{totals['image_metrics_eight']:.2f} ms, ratio {wall['ratio_total']:.2f} (rounds {wall['round_ratios']})"
    )
    print(f"largest |pysaliency - salgan|: {check['max_abs_diff']}; agree: {check['agree']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="synthetic images to score (default 200)")
    parser.add_argument("--quick", action="store_true", help="20 images")
    parser.add_argument("--fixations", type=int, default=500, help="mean fixations per image (default 500)")
    parser.add_argument("--splits", type=int, default=100, help="AUC-Borji/sAUC splits (default 100)")
    parser.add_argument("--workers", type=int, default=None, help="scoring processes (default: usable CPUs)")
    parser.add_argument("--vs-pysaliency", action="store_true", help="one image's metrics against pysaliency")
    parser.add_argument("--cases", type=int, default=30, help="--vs-pysaliency: saved cases (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="--vs-pysaliency: timed rounds (default 3)")
    parser.add_argument(
        "--pysaliency-numpy",
        default=DEFAULT_NUMPY,
        help=f"--vs-pysaliency: the numpy pysaliency runs on, a pip version specifier (default {DEFAULT_NUMPY!r}, "
        "the newest it supports; '<2' gives 1.26, whose sort is several times slower on AVX2 machines)",
    )
    parser.add_argument(
        "--pysaliency-venv",
        default=None,
        help="--vs-pysaliency: pysaliency's virtual environment, built there if missing (default: "
        "~/.cache/salgan-bench/pysaliency-venv, with a suffix for another --pysaliency-numpy)",
    )
    parser.add_argument(
        "--numpy-passes",
        action="store_true",
        help="time the metrics on numpy's and torch's passes (SALGAN_METRICS_KERNELS=numpy), as without numba",
    )
    args = parser.parse_args(argv)
    if args.numpy_passes:
        os.environ["SALGAN_METRICS_KERNELS"] = "numpy"  # read at the first metric, in this process and its workers
    if args.vs_pysaliency:
        if args.cases < 1 or args.rounds < 1:
            parser.error("--cases and --rounds must be at least 1")
        return vs_pysaliency_mode(args)
    if (20 if args.quick else args.images) < 2:
        parser.error("--images must be at least 2")
    return split_mode(args)


if __name__ == "__main__":
    raise SystemExit(main())
