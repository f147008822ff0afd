"""``salgan registry``: list the registered SalGAN versions and promote the challenger to champion.

Evaluation registers every trained model as a new version with alias ``challenger`` and its validation
metrics as version tags (:func:`salgan.tracking.register`). Promotion compares the challenger with the
current ``champion`` on one metric and moves the alias only when the challenger is better by more than
``--min-delta``. The alias is only ever re-pointed, never deleted, so ``models:/salgan@champion`` keeps
resolving throughout; the replaced champion keeps alias ``previous_champion`` for a rollback.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from salgan.config import ConfigError, MlflowParams, Params, load_params

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"
LOWER_IS_BETTER = {"kld"}
LIST_METRICS = ("nss", "cc", "auc_judd", "auc_shuffled", "sim", "kld", "information_gain")


class PromotionError(RuntimeError):
    """Promotion cannot decide: no challenger, or a version lacks the metric tag."""


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


def _by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def promote(client: MlflowClient, name: str, metric: str = "nss", min_delta: float = 0.0) -> dict:
    """Move ``champion`` to the ``challenger`` version if it beats the champion on ``metric`` by more than
    ``min_delta`` (lower is better for kld, higher for every other metric); the first model becomes
    champion. Returns the decision: ``{"decision": "promoted" | "kept", "reason", "metric",
    "higher_is_better", "min_delta", "challenger": {"version", "value"}, "champion": {...} | None,
    "delta"}``. Raises :class:`PromotionError` when there is no challenger or a metric tag is missing.
    """
    challenger = _by_alias(client, name, CHALLENGER)
    if challenger is None:
        raise PromotionError(
            f"registered model {name!r} has no {CHALLENGER!r} version; "
            "run the evaluate stage (dvc repro) to register one"
        )
    higher = metric not in LOWER_IS_BETTER
    new_value = metric_value(challenger, metric)
    champion = _by_alias(client, name, CHAMPION)
    result = {
        "metric": metric,
        "higher_is_better": higher,
        "min_delta": min_delta,
        "challenger": {"version": str(challenger.version), "value": new_value},
        "champion": None,
        "delta": None,
    }
    if champion is None:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        return result | {"decision": "promoted", "reason": "no champion yet"}
    old_value = metric_value(champion, metric)
    delta = new_value - old_value if higher else old_value - new_value  # positive: challenger is better
    result |= {"champion": {"version": str(champion.version), "value": old_value}, "delta": delta}
    if str(champion.version) == str(challenger.version):
        return result | {"decision": "kept", "reason": "the challenger already is the champion"}
    if delta <= min_delta:
        return result | {"decision": "kept", "reason": f"improvement {delta:+.4g} is not above {min_delta:g}"}
    # The new alias first: champion always resolves; the old version stays reachable for a rollback.
    client.set_registered_model_alias(name, CHAMPION, challenger.version)
    client.set_registered_model_alias(name, PREVIOUS, champion.version)
    return result | {"decision": "promoted", "reason": f"improvement {delta:+.4g} is above {min_delta:g}"}


def describe(result: dict) -> str:
    """One line of decision and numbers, e.g. ``promoted version 3 to champion: nss 2.10 vs 1.95 ...``."""
    metric, new = result["metric"], result["challenger"]
    old = result["champion"]
    direction = "higher" if result["higher_is_better"] else "lower"
    numbers = f"{metric} {new['value']:.4f} (challenger v{new['version']})"
    if old is not None:
        numbers += f" vs {old['value']:.4f} (champion v{old['version']})"
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


def _params(path: str) -> Params:
    """params.yaml when present (for the tracking URI and model name); defaults otherwise."""
    try:
        return load_params(path)
    except ConfigError as exc:
        if "no such params file" in str(exc):
            return Params(mlflow=MlflowParams())
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="salgan registry",
        description="The MLflow model registry of SalGAN versions. The tracking URI is MLFLOW_TRACKING_URI "
        "when set, else mlflow.tracking_uri in params.yaml.",
    )
    parser.add_argument("--params", default="params.yaml", help="settings file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="versions, aliases and key metrics as a table")
    listing.add_argument("--name", help="registered model name (default: mlflow.model_name)")
    promoting = sub.add_parser(
        "promote", help="move the champion alias to the challenger when it is better on a metric"
    )
    promoting.add_argument("--name", help="registered model name (default: mlflow.model_name)")
    promoting.add_argument("--metric", default="nss", help="metric tag to compare (default: nss; kld: lower wins)")
    promoting.add_argument(
        "--min-delta", type=float, default=0.0, help="required improvement, strictly exceeded (default: 0)"
    )
    args = parser.parse_args(argv)
    try:
        params = _params(args.params)
    except ConfigError as exc:
        print(f"salgan registry: {exc}", file=sys.stderr)
        return 2
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from salgan.tracking import configure

    client = MlflowClient(configure(params))
    name = args.name or params.mlflow.model_name
    try:
        if args.command == "list":
            print(list_versions(client, name))
        else:
            print(describe(promote(client, name, args.metric, args.min_delta)))
    except PromotionError as exc:
        print(f"salgan registry: {exc}", file=sys.stderr)
        return 1
    except MlflowException as exc:
        from salgan.tracking import scrub

        print(f"salgan registry: MLflow error: {scrub(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
