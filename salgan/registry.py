"""``salgan registry``: list the registered SalGAN versions and promote the challenger to champion.

Evaluation registers every trained model as a new version with alias ``challenger``, its validation
metrics as version tags and the version of the val split they were measured on as tag ``data_version``
(:func:`salgan.tracking.register`). Promotion compares the challenger with the current ``champion`` on
one metric, on the same data: a side whose tags were measured on another val split than the current one
is scored again on the current split with the evaluate stage's code (:func:`gate`). The alias moves only
when the challenger is better by more than ``--min-delta``. The alias is only ever re-pointed, never
deleted, so ``models:/salgan@champion`` keeps resolving throughout; the replaced champion keeps alias
``previous_champion`` for a rollback.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from salgan.errors import InputError
from salgan.layout import DATA_VERSION_TAG
from salgan.settings import Params, load_params

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"
LOWER_IS_BETTER = {"kld"}
LIST_METRICS = ("nss", "cc", "auc_judd", "auc_shuffled", "sim", "kld", "information_gain")
# A registered version's number -> its metrics on the current val split.
Rescore = Callable[[str], dict[str, float]]


class PromotionError(InputError):
    """Promotion cannot decide: no challenger, a version lacks the metric, or the data differ."""


def metric_value(version: ModelVersion, metric: str) -> float:
    """The version's ``metric`` tag (``val_<metric>`` accepted too) as a float."""
    for key in (metric, f"val_{metric}"):
        if key in version.tags:
            try:
                return float(version.tags[key])
            except ValueError:
                raise PromotionError(
                    f"version {version.version}: tag {key}={version.tags[key]!r} is not a number"
                ) from None
    known = ", ".join(sorted(version.tags)) or "none"
    raise PromotionError(f"version {version.version} has no tag {metric!r} (its tags: {known})")


def tag_metrics(version: ModelVersion) -> dict[str, float]:
    """Every numeric tag of a version (the metrics evaluation recorded)."""
    metrics = {}
    for key, text in version.tags.items():
        try:
            metrics[key] = float(text)
        except ValueError:
            continue
    return metrics


def _by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _side(version: ModelVersion, metric: str, data_version: str | None, rescore: Rescore | None) -> dict:
    """A version's metrics on the current val split: its tags when measured there, else a new score."""
    measured_on = version.tags.get(DATA_VERSION_TAG)
    side = {"version": str(version.version), "data_version": measured_on, "rescored": False}
    if data_version is None or measured_on == data_version:
        return side | {"value": metric_value(version, metric), "metrics": tag_metrics(version)}
    if rescore is None:
        raise PromotionError(
            f"version {version.version} was scored on val data {measured_on or '(unrecorded)'}, the current "
            f"val split is {data_version}; run the gate where the prepared data is, to score it again"
        )
    metrics = rescore(str(version.version))
    if metric not in metrics:
        raise PromotionError(f"version {version.version}: scoring gave no {metric!r} (it gave {sorted(metrics)})")
    return side | {"value": float(metrics[metric]), "metrics": metrics, "data_version": data_version, "rescored": True}


def promote(
    client: MlflowClient,
    name: str,
    metric: str = "nss",
    min_delta: float = 0.0,
    data_version: str | None = None,
    rescore: Rescore | None = None,
) -> dict:
    """Move ``champion`` to the ``challenger`` version if it beats the champion on ``metric`` by more than
    ``min_delta`` (lower is better for kld, higher for every other metric); the first model becomes
    champion.

    Both sides are compared on the val split whose version is ``data_version`` (the current one): a side
    measured on other data is scored again with ``rescore``. Without ``data_version`` the tags are compared
    as they are, provided both were measured on the same data.

    Returns the decision: ``{"decision": "promoted" | "kept", "reason", "metric", "higher_is_better",
    "min_delta", "data_version", "challenger": {"version", "value", "metrics", "data_version", "rescored"},
    "champion": {...} | None, "delta"}``. Raises :class:`PromotionError` when there is no challenger, a
    metric is missing, or the two sides cannot be put on the same data.
    """
    challenger = _by_alias(client, name, CHALLENGER)
    if challenger is None:
        raise PromotionError(
            f"registered model {name!r} has no {CHALLENGER!r} version; "
            "run the evaluate stage (dvc repro) to register one"
        )
    higher = metric not in LOWER_IS_BETTER
    new = _side(challenger, metric, data_version, rescore)
    champion = _by_alias(client, name, CHAMPION)
    result = {
        "metric": metric,
        "higher_is_better": higher,
        "min_delta": min_delta,
        "data_version": data_version or new["data_version"],
        "challenger": new,
        "champion": None,
        "delta": None,
    }
    if champion is None:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        return result | {"decision": "promoted", "reason": "no champion yet"}
    same = str(champion.version) == str(challenger.version)
    old = new if same else _side(champion, metric, data_version, rescore)
    if old["data_version"] != new["data_version"]:
        raise PromotionError(
            f"challenger v{new['version']} was scored on val data {new['data_version']}, champion "
            f"v{old['version']} on {old['data_version']}: not comparable without the current data"
        )
    delta = new["value"] - old["value"] if higher else old["value"] - new["value"]  # positive: challenger better
    result |= {"champion": old, "delta": delta}
    if old is new:
        return result | {"decision": "kept", "reason": "the challenger already is the champion"}
    if delta <= min_delta:
        return result | {"decision": "kept", "reason": f"improvement {delta:+.4g} is not above {min_delta:g}"}
    # The new alias first: champion always resolves; the old version stays reachable for a rollback.
    client.set_registered_model_alias(name, CHAMPION, challenger.version)
    client.set_registered_model_alias(name, PREVIOUS, champion.version)
    return result | {"decision": "promoted", "reason": f"improvement {delta:+.4g} is above {min_delta:g}"}


def gate(params: Params, metric: str = "nss", min_delta: float = 0.0, name: str | None = None) -> dict:
    """:func:`promote` on the val split in ``train.data`` (scoring again any side measured on other data).

    Without a prepared val split the tags are compared as recorded, if they are on the same data.
    """
    from mlflow import MlflowClient

    from salgan.layout import split_version
    from salgan.tracking import configure

    client = MlflowClient(configure(params))
    name = name or params.mlflow.model_name
    if not (Path(params.train.data) / "val").is_dir():
        return promote(client, name, metric, min_delta)
    return promote(client, name, metric, min_delta, split_version(params.train.data, "val"), _rescorer(params, name))


def _rescorer(params: Params, name: str) -> Rescore:
    """Score a registered version on the current val split with the evaluate stage's code."""
    inputs: list = []

    def rescore(version: str) -> dict[str, float]:
        from salgan.evaluate import score_generator, scoring_inputs
        from salgan.predict import load_model

        if not inputs:
            inputs.extend(scoring_inputs(params))  # the val arrays and IG baseline, loaded once
        generator, _ = load_model(f"models:/{name}/{version}", params, None)
        print(f"scoring version {version} of {name} on the current val split")
        return score_generator(generator, params, *inputs)[1]

    return rescore


def describe(result: dict) -> str:
    """One line of decision and numbers, e.g. ``promoted version 3 to champion: nss 2.10 vs 1.95 ...``."""
    metric, new = result["metric"], result["challenger"]
    old = result["champion"]
    direction = "higher" if result["higher_is_better"] else "lower"
    numbers = f"{metric} {new['value']:.4f} (challenger v{new['version']})"
    if old is not None:
        numbers += f" vs {old['value']:.4f} (champion v{old['version']}{', scored again' if old['rescored'] else ''})"
    if result.get("data_version"):
        numbers += f" on val data {result['data_version']}"
    if result["decision"] == "promoted":
        head = f"promoted version {new['version']} to {CHAMPION}"
    else:
        head = f"kept version {old['version']} as {CHAMPION}"
    return f"{head}: {numbers}, {direction} is better; {result['reason']}"


def list_versions(client: MlflowClient, name: str) -> str:
    """Versions (newest first) with aliases, creation time, run and key metrics as an aligned table."""
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: -int(v.version))
    if not versions:
        raise PromotionError(f"registered model {name!r} has no versions")
    # Search results leave the aliases out on some stores; the registered model has them all.
    aliases: dict[str, list[str]] = {}
    for alias, number in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(number), []).append(alias)
    header = ["version", "aliases", "created", "run", *LIST_METRICS]
    rows = [header]
    for version in versions:
        created = datetime.fromtimestamp(version.creation_timestamp / 1000, tz=timezone.utc)
        rows.append(
            [
                str(version.version),
                ",".join(sorted(aliases.get(str(version.version), []))) or "-",
                created.strftime("%Y-%m-%d %H:%M"),
                (version.run_id or "-")[:8],
                *(_format_tag(version.tags.get(metric)) for metric in LIST_METRICS),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def _format_tag(value: str | None) -> str:
    if value is None:
        return "-"
    try:
        return f"{float(value):.4f}"
    except ValueError:
        return value


def main(argv: list[str] | None = None) -> int:
    """``salgan registry list|promote`` (exit statuses: salgan/cli.py)."""
    from salgan.cli import command_parser, run_command

    parser = command_parser(
        "registry",
        "The MLflow model registry of SalGAN versions. The tracking URI is MLFLOW_TRACKING_URI when set, else "
        "mlflow.tracking_uri in params.yaml (its defaults where there is no params.yaml).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="versions, aliases and key metrics as a table")
    listing.add_argument("--name", help="registered model name (default: mlflow.model_name)")
    promoting = sub.add_parser(
        "promote",
        help="move the champion alias to the challenger when it is better on a metric, both measured on the "
        "current val split (train.data; a version scored on older data is scored again)",
    )
    promoting.add_argument("--name", help="registered model name (default: mlflow.model_name)")
    promoting.add_argument("--metric", default="nss", help="metric tag to compare (default: nss; kld: lower wins)")
    promoting.add_argument(
        "--min-delta", type=float, default=0.0, help="required improvement, strictly exceeded (default: 0)"
    )
    args = parser.parse_args(argv)

    def work() -> int:
        from mlflow import MlflowClient

        from salgan.tracking import configure

        params = load_params(args.params, require_all=False) if Path(args.params).is_file() else Params()
        name = args.name or params.mlflow.model_name
        if args.command == "list":
            print(list_versions(MlflowClient(configure(params)), name))
        else:
            print(describe(gate(params, args.metric, args.min_delta, name)))
        return 0

    return run_command("registry", work)


if __name__ == "__main__":
    raise SystemExit(main())
