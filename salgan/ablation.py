"""The seed paper's ablation, extended over encoders and losses, as DVC experiments beside its Table I.

Arms: ImageNet vs randomly initialised encoder (the seed paper's modification) crossed with BCE-only
vs adversarial training (Pan et al. 2017, Table 2): ``imagenet-gan``, ``imagenet-bce``, ``random-gan``,
``random-bce``, all on VGG16. Beyond the paper, an arm ``ENCODER-INIT-OBJECTIVE`` picks any encoder of
``model.encoder`` (``resnet50-imagenet-gan``), and the objective may also be ``metric`` or
``metric_gan``: the SAM loss KLD - 0.2 CC - 0.1 NSS (:data:`METRIC_LOSS`) in place of BCE, without or
with the adversarial term. Each arm is one ``dvc exp run`` named after it, with a profile's settings
(e.g. profiles/salicon-gpu.yaml) and the arm's own overrides applied as ``-S section.key=value``;
``salgan ablation show`` reads ``dvc exp show --json``.

``dvc exp run -S`` leaves its values in the workspace's params.yaml, so an arm must not inherit what the
previous arm set: every arm pins every setting in which any two arms differ (:data:`PINNED`), with the
values of the base settings, params.yaml as committed at HEAD plus the profile. The arms' order does not
matter.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
import subprocess
from pathlib import Path
from typing import NamedTuple

from salgan.bootstrap import paired_bootstrap
from salgan.cli import EXIT_FAILURE, call, command_parser, python_tool, run_command, tool_env
from salgan.encoder_table import ENCODERS, WIDTH_ENCODERS
from salgan.errors import CommandFailed
from salgan.metrics import METRIC_NAMES, TABLE_I
from salgan.settings import (
    ConfigError,
    Params,
    flatten,
    load_params,
    nest,
    override_args,
    params_from_dict,
    read_yaml,
    validate_overrides,
)
from salgan.trust import check_untrusted
from salgan.urls import redact_text

ARMS = ("imagenet-gan", "imagenet-bce", "random-gan", "random-bce")  # the seed paper's, on VGG16
INITS = ("imagenet", "random")
# objective -> (train.content_loss, adversarial phase)
METRIC_LOSS = {"kld": 1.0, "cc": -0.2, "nss": -0.1}  # SAM (Cornia et al. 2018): 10 KLD - 2 CC - 1 NSS, scaled
OBJECTIVES = {
    "bce": ("bce", False),
    "gan": ("bce", True),
    "metric": (METRIC_LOSS, False),
    "metric_gan": (METRIC_LOSS, True),
}
# The settings in which arms differ; each arm sets all of them.
PINNED = (
    "model.encoder",
    "model.encoder_weights",
    "model.freeze_blocks",
    "model.width",
    "train.bce_epochs",
    "train.content_loss",
    "train.seed",
)
SEED_SUFFIX = re.compile(r"-seed(\d+)$")  # ARM-seedK: the K-th seed of an arm run with --seeds
COLUMNS = METRIC_NAMES
COST_COLUMNS = {"params_m": "params (M)", "gflops": "GFLOPs", "train_images_per_s": "train img/s"}


class Arm(NamedTuple):
    encoder: str
    init: str
    objective: str


def parse_arm(name: str) -> Arm:
    """``imagenet-gan`` (a seed arm, VGG16) or ``ENCODER-INIT-OBJECTIVE``; raises naming what is wrong."""
    parts = name.split("-")
    if len(parts) == 2:
        parts = ["vgg16", *parts]
    if len(parts) != 3:
        raise ConfigError(f"arm {name!r}: expected INIT-OBJECTIVE or ENCODER-INIT-OBJECTIVE (resnet50-imagenet-gan)")
    kinds = (("encoder", ENCODERS), ("init", INITS), ("objective", tuple(OBJECTIVES)))
    for value, (what, known) in zip(parts, kinds, strict=True):
        if value not in known:
            raise ConfigError(f"arm {name!r}: unknown {what} {value!r}; known: {', '.join(known)}")
    return Arm(*parts)


def arm_overrides(arm: str, profile: dict[str, object], base: Params) -> dict[str, object]:
    """The profile's settings, then the arm's :data:`PINNED` values.

    ImageNet arms: the encoder's ImageNet weights, its first three stages frozen (the paper's conv1-conv3
    of VGG16; up to stride 8 in every encoder), full width. Random arms: a freshly initialised encoder,
    nothing frozen, the base width (1.0 for the ResNets, which have no width multiplier). BCE-only and
    metric arms train on the content loss for every epoch; adversarial arms keep the base's content-only
    pre-training epochs.
    """
    encoder, init, objective = parse_arm(arm)
    content, adversarial = OBJECTIVES[objective]
    imagenet = init == "imagenet"
    overrides = dict(profile)
    overrides["model.encoder"] = encoder
    overrides["model.encoder_weights"] = "imagenet" if imagenet else "none"
    overrides["model.freeze_blocks"] = 3 if imagenet else 0
    overrides["model.width"] = base.model.width if encoder in WIDTH_ENCODERS and not imagenet else 1.0
    overrides["train.bce_epochs"] = base.train.bce_epochs if adversarial else base.train.epochs
    overrides["train.content_loss"] = content
    overrides["train.seed"] = base.train.seed
    return overrides


def seeded_runs(arm: str, seeds: int, profile: dict[str, object], base: Params) -> list[tuple[str, dict]]:
    """``(experiment suffix, overrides)`` per seed: the arm's own name for one seed, else ``ARM-seedK`` with
    ``train.seed`` the base's + K, K = 0 .. seeds - 1 (``train.seed`` seeds both the initial weights and
    the order of the training batches)."""
    overrides = arm_overrides(arm, profile, base)
    if seeds == 1:
        return [(arm, overrides)]
    return [(f"{arm}-seed{k}", overrides | {"train.seed": base.train.seed + k}) for k in range(seeds)]


def load_profile(path: str | None, params_file: str = "params.yaml") -> dict[str, object]:
    """A partial params file flattened to ``section.key`` overrides, validated like params.yaml.

    A profile from outside the checkout (the current directory, links followed) is untrusted, as a flow's
    overrides are: each setting is held to its trust class against ``params_file`` (salgan/trust.py)."""
    if path is None:
        return {}
    data = read_yaml(Path(path).read_text()) or {}
    try:
        params_from_dict(data)
        if Path.cwd().resolve() not in Path(path).resolve().parents:
            check_untrusted(validate_overrides(data), load_params(params_file, require_all=False), Path.cwd())
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return flatten(data)


def exp_run_command(name: str, overrides: dict[str, object], queue: bool, scores_only: bool = False) -> list[str]:
    """``dvc exp run --name NAME`` with the overrides validated and written by :func:`salgan.settings.override_args`;
    with ``scores_only``, up to the evaluate stage (what ``ablation show`` reads), not the test-set stages."""
    return [
        *python_tool("dvc"),
        "exp",
        "run",
        "--name",
        name,
        *(["--queue"] if queue else []),
        *override_args(overrides),
        *(["evaluate"] if scores_only else []),
    ]


def base_params(params_file: str, profile: dict[str, object]) -> tuple[Params, str]:
    """The settings every arm starts from: ``params_file`` as committed at HEAD (the workspace copy may
    hold the last experiment's values), else as it is on disk, with the profile applied; and where the
    file came from."""

    committed = subprocess.run(["git", "show", f"HEAD:./{params_file}"], capture_output=True, text=True, check=False)
    if committed.returncode == 0:
        data, source = read_yaml(committed.stdout) or {}, f"{params_file} at HEAD"
    else:
        data, source = read_yaml(Path(params_file).read_text()) or {}, f"{params_file} (not committed)"
    try:
        return params_from_dict(nest(flatten(data) | profile)), source
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def run_arms(args: argparse.Namespace) -> int:
    """Each arm as a DVC experiment; their MLflow runs are grouped under one parent run (not for
    ``--queue``, whose runs start later, nor ``--dry-run``)."""
    profile = load_profile(args.profile, args.params)
    base, source = base_params(args.params, profile)
    print(f"ablation base: {source}" + (f" with {args.profile}" if args.profile else ""), flush=True)
    runs = [run for arm in args.arms for run in seeded_runs(arm, args.seeds, profile, base)]
    names = [name for name, _ in runs]
    commands = [
        exp_run_command(args.prefix + name, overrides, args.queue, args.scores_only) for name, overrides in runs
    ]
    if args.dry_run or args.queue:
        return _run_all(names, commands, args.dry_run)
    from salgan.tracking.runs import parent_run

    tags = {"ablation.arms": ",".join(args.arms), "ablation.seeds": str(args.seeds)}
    with parent_run(base, f"ablation {args.prefix}{','.join(args.arms)}", tags):
        return _run_all(names, commands, dry_run=False)


def _run_all(arms: list[str], commands: list[list[str]], dry_run: bool) -> int:
    for arm, command in zip(arms, commands, strict=True):
        print("$ " + redact_text(" ".join(command)), flush=True)  # a profile may set a signed source
        status = 0 if dry_run else call(command, env=tool_env())
        if status:
            raise CommandFailed(f"arm {arm} failed (its dvc exp run output is above)", status)
    return 0


def experiment_metrics(exp_show: list[dict]) -> dict[str, dict[str, float]]:
    """``{experiment name: metrics}`` from ``dvc exp show --json`` (the workspace and every experiment): the
    :data:`COLUMNS` and the model's cost (:data:`COST_COLUMNS`, reports/metrics.json's ``cost``)."""
    return {name: values for name, (values, _, _) in _experiments(exp_show).items()}


def experiment_sources(exp_show: list[dict]) -> dict[str, tuple[str | None, str]]:
    """``{experiment name: (git revision, its per-image scores' path)}``; the revision is None for the
    workspace. The per-image file is ``per_image.csv`` beside the metrics file (``evaluate.output``)."""
    return {name: (rev, path) for name, (_, rev, path) in _experiments(exp_show).items()}


def _experiments(exp_show: list[dict]) -> dict[str, tuple[dict[str, float], str | None, str]]:
    found: dict[str, tuple[dict[str, float], str | None, str]] = {}

    def collect(entry: dict, fallback: str) -> None:
        name = entry.get("name") or fallback
        data = entry.get("data") or {}
        for file, metrics in (data.get("metrics") or {}).items():
            values = metrics.get("data") or {}
            if any(key in values for key in COLUMNS):
                cost = values.get("cost") or {}
                row = {key: values[key] for key in COLUMNS if key in values}
                row |= {key: cost[key] for key in COST_COLUMNS if cost.get(key) is not None}
                rev = entry.get("rev")
                found[name] = (
                    row,
                    None if rev in (None, "workspace") else rev,
                    str(Path(file).parent / "per_image.csv"),
                )

    for baseline in exp_show:
        collect(baseline, baseline.get("rev", "workspace"))
        for group in baseline.get("experiments") or []:
            for revision in group.get("revs") or []:
                collect(revision, revision.get("rev", "?"))
    return found


def arm_groups(names: list[str]) -> dict[str, list[str]]:
    """Experiment names grouped by arm: ``random-gan-seed0``, ``random-gan-seed1`` -> ``random-gan``, in
    seed order; a name without the suffix is a group of its own."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(SEED_SUFFIX.sub("", name), []).append(name)
    return {arm: sorted(members, key=_seed_number) for arm, members in groups.items()}


def _seed_number(name: str) -> int:
    match = SEED_SUFFIX.search(name)
    return int(match[1]) if match else -1


def summarise(ours: dict[str, dict[str, float]], groups: dict[str, list[str]]):
    """Per arm, the mean and the standard deviation (n - 1; absent for one seed) of each value over its seeds."""
    means, spreads = {}, {}
    for arm, members in groups.items():
        keys = [key for key in (*COLUMNS, *COST_COLUMNS) if all(key in ours[name] for name in members)]
        means[arm] = {key: statistics.fmean(ours[name][key] for name in members) for key in keys}
        if len(members) > 1:
            spreads[arm] = {
                key: statistics.stdev(ours[name][key] for name in members) for key in COLUMNS if key in keys
            }
    return means, spreads


def format_table(
    ours: dict[str, dict[str, float]], spreads: dict[str, dict[str, float]] | None = None, seeds: dict | None = None
) -> str:
    """Our arms beside the seed paper's Table I; an arm with several seeds shows ``mean+-std`` and ``xN``."""
    spreads, seeds = spreads or {}, seeds or {}
    label = {k: f"ours: {k}" + (f" x{seeds[k]}" if seeds.get(k, 1) > 1 else "") for k in ours}
    rows = {**{label[k]: (v, spreads.get(k, {})) for k, v in ours.items()}}
    rows |= {f"published: {k}": (v, {}) for k, v in TABLE_I.items()}
    width = max(len(name) for name in rows) + 2
    headers = {**{c: c for c in COLUMNS}, **COST_COLUMNS}
    wide = 6 if spreads else 0  # room for +-0.000
    cell = {c: max(12, len(header)) + 2 + (wide if c in COLUMNS else 0) for c, header in headers.items()}
    lines = [f"{'model':<{width}}" + "".join(f"{header:>{cell[c]}}" for c, header in headers.items())]
    for name, (values, spread) in rows.items():
        cells = "".join(
            f"{_cell(values[c], spread.get(c)):>{cell[c]}}" if c in values else f"{'-':>{cell[c]}}" for c in COLUMNS
        )
        cells += "".join(f"{values[c]:>{cell[c]}.1f}" if c in values else f"{'-':>{cell[c]}}" for c in COST_COLUMNS)
        lines.append(f"{name:<{width}}{cells}")
    lines.append(
        "(published: SALICON test set; ours: the validation split of the data the pipeline ran on"
        + ("; xN: mean+-std over N seeds" if spreads else "")
        + ". GFLOPs: one forward pass of a 256x192 image; train img/s: measured on the machine that trained the arm)"
    )
    return "\n".join(lines)


def _cell(value: float, spread: float | None) -> str:
    return f"{value:.3f}" if spread is None else f"{value:.3f}+-{spread:.3f}"


def read_per_image(rev: str | None, path: str) -> dict[str, dict[str, float]]:
    """``{image name: {metric: score}}`` from an experiment's per-image scores: the workspace's file, or the
    version of ``path`` that experiment ``rev`` produced, read from DVC's cache (``dvc.api``)."""
    if rev is None:
        text = Path(path).read_text()
    else:
        import dvc.api

        text = dvc.api.read(path, rev=rev)
    rows = csv.DictReader(io.StringIO(text))
    return {row.get("name") or row["index"]: {c: float(row[c]) for c in COLUMNS if row.get(c)} for row in rows}


def arm_differences(
    groups: dict[str, list[str]], scores: dict[str, dict[str, dict[str, float]]], reference: str
) -> dict[str, dict[str, object]]:
    """Per arm other than ``reference``, per metric, the paired bootstrap interval of (arm - reference) over
    the images both scored and the seeds of each (:func:`salgan.bootstrap.paired_bootstrap`)."""

    def matrix(arm: str, images: list[str], metric: str):
        return [[scores[name][image][metric] for image in images] for name in groups[arm]]

    found = {}
    for arm in groups:
        if arm == reference:
            continue
        images = sorted(set.intersection(*(set(scores[name]) for name in groups[arm] + groups[reference])))
        if not images:
            continue
        metrics = [c for c in COLUMNS if all(c in scores[n][images[0]] for n in groups[arm] + groups[reference])]
        found[arm] = {"images": len(images)}
        found[arm] |= {c: paired_bootstrap(matrix(arm, images, c), matrix(reference, images, c)) for c in metrics}
    return found


def format_differences(differences: dict[str, dict[str, object]], reference: str, seeds: dict[str, int]) -> str:
    """Rows: metrics; columns: arms; each cell the difference to ``reference`` and its 95% interval, ``*``
    where the interval excludes zero."""
    if not differences:
        return ""
    arms = list(differences)
    cells = {arm: {c: _interval(v) for c, v in differences[arm].items() if c != "images"} for arm in arms}
    width = {arm: max(len(arm), *(len(text) for text in cells[arm].values())) + 2 for arm in arms}
    images = sorted({differences[arm]["images"] for arm in arms})
    lines = [
        f"difference to {reference} (x{seeds[reference]}): mean and paired bootstrap 95% interval over "
        f"{'/'.join(map(str, images))} val images and the seeds; * the interval excludes 0",
        f"{'metric':<18}" + "".join(f"{arm:>{width[arm]}}" for arm in arms),
    ]
    for metric in COLUMNS:
        if any(metric in cells[arm] for arm in arms):
            lines.append(f"{metric:<18}" + "".join(f"{cells[arm].get(metric, '-'):>{width[arm]}}" for arm in arms))
    return "\n".join(lines)


def _interval(value) -> str:
    mark = "*" if value.excludes_zero else " "
    return f"{value.difference:+.3f} [{value.low:+.3f}, {value.high:+.3f}]{mark}"


def show(args: argparse.Namespace) -> int:
    result = subprocess.run([*python_tool("dvc"), "exp", "show", "--json"], capture_output=True, text=True)
    if result.returncode != 0:
        raise CommandFailed(f"dvc exp show failed: {result.stderr.strip()}", EXIT_FAILURE)
    shown = json.loads(result.stdout)
    ours, sources = experiment_metrics(shown), experiment_sources(shown)
    if args.prefix:
        ours = {k: v for k, v in ours.items() if k.startswith(args.prefix) or k == "workspace"}
    groups = arm_groups(list(ours))
    means, spreads = summarise(ours, groups)
    seeds = {arm: len(members) for arm, members in groups.items()}
    print(format_table(means, spreads, seeds))
    arms = [arm for arm in groups if arm != "workspace"]
    reference = _reference(args.reference, arms, args.prefix)
    if reference is None:
        return 0
    scores = {}
    for arm in arms:
        for name in groups[arm]:
            try:
                scores[name] = read_per_image(*sources[name])
            except Exception as error:  # noqa: BLE001 -- gone from the cache, another machine's run: say so, go on
                print(f"{name}: per-image scores unavailable ({type(error).__name__}: {error}); no interval for it")
    usable = {arm: groups[arm] for arm in arms if all(name in scores for name in groups[arm])}
    if reference not in usable:
        return 0
    print()
    print(format_differences(arm_differences(usable, scores, reference), reference, seeds))
    return 0


def _reference(wanted: str | None, arms: list[str], prefix: str) -> str | None:
    """The arm the others are compared with: ``--reference`` (with or without the prefix), else the first of
    the seed paper's arms present (SalGAN itself first), else the first arm; None with fewer than two."""
    if len(arms) < 2:
        return None
    if wanted:
        for name in (wanted, prefix + wanted):
            if name in arms:
                return name
        raise ConfigError(f"--reference {wanted}: no such arm among {', '.join(arms)}")
    return next((prefix + arm for arm in ARMS if prefix + arm in arms), arms[0])


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _arm_name(text: str) -> str:
    try:
        parse_arm(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def main(argv: list[str] | None = None) -> int:
    """``salgan ablation run|show`` (exit statuses: salgan/cli.py)."""

    parser = command_parser(
        "ablation",
        "Run the ablation (ImageNet vs random encoder, BCE-only vs adversarial; other encoders and the metric "
        "loss beyond the paper) as DVC experiments and print their metrics and costs beside the seed paper's "
        "Table I.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one `dvc exp run` per arm")
    run.add_argument("--profile", help="partial params file applied to every arm, e.g. profiles/salicon-gpu.yaml")
    run.add_argument(
        "--arms",
        nargs="+",
        type=_arm_name,
        default=list(ARMS),
        metavar="ARM",
        help=f"arms to run (default: the seed paper's four, {' '.join(ARMS)}); beyond them ENCODER-INIT-OBJECTIVE "
        f"with ENCODER one of {', '.join(ENCODERS)}, INIT imagenet or random, OBJECTIVE one of "
        f"{', '.join(OBJECTIVES)} (metric: KLD - 0.2 CC - 0.1 NSS), e.g. resnet50-imagenet-gan",
    )
    run.add_argument("--prefix", default="", help="prefix for the experiment names")
    run.add_argument(
        "--seeds",
        type=_positive,
        default=1,
        metavar="N",
        help="run each arm N times, as ARM-seedK with train.seed the base's + K (another initialisation and "
        "data order); `salgan ablation show` then gives mean+-std and intervals",
    )
    run.add_argument(
        "--scores-only",
        action="store_true",
        help="stop each arm at the evaluate stage: its val scores and costs, which `ablation show` reads, without "
        "the test-set predictions and submission (`dvc exp apply NAME && dvc repro` makes them later)",
    )
    run.add_argument("--queue", action="store_true", help="queue the runs (start them with `dvc queue start`)")
    run.add_argument("--dry-run", action="store_true", help="print the dvc commands without running them")
    show_parser = sub.add_parser(
        "show",
        help="metrics of the workspace and experiments beside Table I: mean+-std over each arm's seeds, and each "
        "arm's difference to a reference arm with its paired bootstrap 95%% interval over the val images",
    )
    show_parser.add_argument("--prefix", default="", help="only experiments whose name starts with this")
    show_parser.add_argument(
        "--reference", help="the arm the others are compared with (default: imagenet-gan if present, else the first)"
    )
    args = parser.parse_args(argv)
    return run_command("ablation", lambda: run_arms(args) if args.command == "run" else show(args))


if __name__ == "__main__":
    raise SystemExit(main())
