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
import json
import subprocess
from pathlib import Path
from typing import NamedTuple

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
)
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
    return overrides


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


def exp_run_command(name: str, overrides: dict[str, object], queue: bool) -> list[str]:
    """``dvc exp run --name NAME`` with the overrides validated and written by :func:`salgan.settings.override_args`."""
    return [
        *python_tool("dvc"),
        "exp",
        "run",
        "--name",
        name,
        *(["--queue"] if queue else []),
        *override_args(overrides),
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
    commands = [exp_run_command(args.prefix + arm, arm_overrides(arm, profile, base), args.queue) for arm in args.arms]
    if args.dry_run or args.queue:
        return _run_all(args.arms, commands, args.dry_run)
    from salgan.tracking.runs import parent_run

    with parent_run(base, f"ablation {args.prefix}{','.join(args.arms)}", {"ablation.arms": ",".join(args.arms)}):
        return _run_all(args.arms, commands, dry_run=False)


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
    found: dict[str, dict[str, float]] = {}

    def collect(entry: dict, fallback: str) -> None:
        name = entry.get("name") or fallback
        data = entry.get("data") or {}
        for metrics in (data.get("metrics") or {}).values():
            values = metrics.get("data") or {}
            if any(key in values for key in COLUMNS):
                cost = values.get("cost") or {}
                found[name] = {key: values[key] for key in COLUMNS if key in values}
                found[name] |= {key: cost[key] for key in COST_COLUMNS if cost.get(key) is not None}

    for baseline in exp_show:
        collect(baseline, baseline.get("rev", "workspace"))
        for group in baseline.get("experiments") or []:
            for revision in group.get("revs") or []:
                collect(revision, revision.get("rev", "?"))
    return found


def format_table(ours: dict[str, dict[str, float]]) -> str:
    rows = {**{f"ours: {k}": v for k, v in ours.items()}, **{f"published: {k}": v for k, v in TABLE_I.items()}}
    width = max(len(name) for name in rows) + 2
    headers = {**{c: c for c in COLUMNS}, **COST_COLUMNS}
    cell = {c: max(12, len(header)) + 2 for c, header in headers.items()}
    lines = [f"{'model':<{width}}" + "".join(f"{header:>{cell[c]}}" for c, header in headers.items())]
    for name, values in rows.items():
        cells = "".join(f"{values[c]:>{cell[c]}.3f}" if c in values else f"{'-':>{cell[c]}}" for c in COLUMNS)
        cells += "".join(f"{values[c]:>{cell[c]}.1f}" if c in values else f"{'-':>{cell[c]}}" for c in COST_COLUMNS)
        lines.append(f"{name:<{width}}{cells}")
    lines.append(
        "(published: SALICON test set; ours: the validation split of the data the pipeline ran on. GFLOPs: one "
        "forward pass of a 256x192 image; train img/s: measured on the machine that trained the arm)"
    )
    return "\n".join(lines)


def show(args: argparse.Namespace) -> int:
    result = subprocess.run([*python_tool("dvc"), "exp", "show", "--json"], capture_output=True, text=True)
    if result.returncode != 0:
        raise CommandFailed(f"dvc exp show failed: {result.stderr.strip()}", EXIT_FAILURE)
    ours = experiment_metrics(json.loads(result.stdout))
    if args.prefix:
        ours = {k: v for k, v in ours.items() if k.startswith(args.prefix) or k == "workspace"}
    print(format_table(ours))
    return 0


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
    run.add_argument("--queue", action="store_true", help="queue the runs (start them with `dvc queue start`)")
    run.add_argument("--dry-run", action="store_true", help="print the dvc commands without running them")
    show_parser = sub.add_parser("show", help="metrics of the workspace and experiments beside Table I")
    show_parser.add_argument("--prefix", default="", help="only experiments whose name starts with this")
    args = parser.parse_args(argv)
    return run_command("ablation", lambda: run_arms(args) if args.command == "run" else show(args))


if __name__ == "__main__":
    raise SystemExit(main())
