"""The model registry: how evaluated generators become versions, and the alias policy over them.

Registration (:func:`register`): evaluation registers its generator as a version of ``mlflow.model_name``
with alias ``challenger``, tagged with the sha256 of its weights, the version of the val split it was
scored on (``data_version``), the run and the git commit; its metrics are linked to its logged model
(MLflow 3), not stored as tags. When a version with the same weights exists, it is reused (its tags and
metrics updated, the alias moved) instead of a duplicate being made.

The alias policy, in one place (:data:`CHAMPION`, :data:`CHALLENGER`, :data:`PREVIOUS`): the gate
(:func:`promote`, :func:`gate`) moves ``champion`` to the challenger only when it beats the champion on one
metric by more than a margin, both measured on the same data: a side measured on another val split than
the current one is scored again on it with the evaluate stage's code. ``champion`` is only ever re-pointed,
never deleted, so ``models:/salgan@champion`` keeps resolving; the replaced champion keeps
``previous_champion`` for a rollback.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from salgan.errors import InputError
from salgan.layout import DATA_VERSION_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"
WEIGHTS_TAG = "weights_sha256"
LOWER_IS_BETTER = {"kld"}
LIST_METRICS = ("nss", "cc", "auc_judd", "auc_shuffled", "sim", "kld", "information_gain")
# A registered version's number -> its metrics on the current val split.
Rescore = Callable[[str], dict[str, float]]


class PromotionError(InputError):
    """Promotion cannot decide: no challenger, a version lacks the metric, or the data differ."""


# --- registration ---------------------------------------------------------------------------------------


def register(
    client: MlflowClient,
    name: str,
    model_uri: str,
    weights_sha256: str,
    tags: dict[str, str],
    existing: ModelVersion | None = None,
) -> str:
    """``existing`` (a version with these weights) updated with ``tags``, or a new version of ``name``
    from ``model_uri``; either way it becomes the ``challenger``. Returns the version number."""
    if existing is not None:
        for key, value in tags.items():
            client.set_model_version_tag(name, existing.version, key, value)
        version = str(existing.version)
    else:
        import mlflow

        version = str(mlflow.register_model(model_uri, name, tags={**tags, WEIGHTS_TAG: weights_sha256}).version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    return version


def version_with_weights(client: MlflowClient, name: str, weights_sha256: str) -> ModelVersion | None:
    """The newest version of ``name`` registered with exactly these weights, if any."""
    found = client.search_model_versions(f"name='{name}' and tags.{WEIGHTS_TAG}='{weights_sha256}'")
    return max(found, key=lambda v: int(v.version), default=None)


def logged_model_id(version: ModelVersion) -> str | None:
    """The MLflow 3 logged model behind a version (its source ``models:/m-...``), if it has one."""
    source = version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def version_metrics(client: MlflowClient, version: ModelVersion) -> dict[str, float]:
    """A version's validation metrics: the latest value of each ``val_*`` metric of its logged model
    (without the prefix), else its numeric tags (versions registered before metrics moved there)."""
    model_id = logged_model_id(version)
    if model_id:
        latest: dict[str, float] = {}
        for metric in sorted(client.get_logged_model(model_id).metrics or [], key=lambda m: (m.timestamp, m.step)):
            if metric.key.startswith("val_"):
                latest[metric.key.removeprefix("val_")] = float(metric.value)
        if latest:
            return latest
    numbers: dict[str, float] = {}
    for key, text in version.tags.items():
        try:
            numbers[key.removeprefix("val_")] = float(text)
        except ValueError:
            continue
    return numbers


def metric_value(client: MlflowClient, version: ModelVersion, metric: str) -> float:
    metrics = version_metrics(client, version)
    if metric not in metrics:
        known = ", ".join(sorted(metrics)) or "none"
        raise PromotionError(f"version {version.version} has no metric {metric!r} (it has: {known})")
    return metrics[metric]


# --- the promotion gate ---------------------------------------------------------------------------------


def _by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _side(
    client: MlflowClient, version: ModelVersion, metric: str, data_version: str | None, rescore: Rescore | None
) -> dict:
    """A version's metrics on the current val split: its recorded ones when measured there, else a new score."""
    measured_on = version.tags.get(DATA_VERSION_TAG)
    side = {"version": str(version.version), "data_version": measured_on, "rescored": False}
    if data_version is None or measured_on == data_version:
        return side | {"value": metric_value(client, version, metric), "metrics": version_metrics(client, version)}
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
    new = _side(client, challenger, metric, data_version, rescore)
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
    old = new if same else _side(client, champion, metric, data_version, rescore)
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
    """Versions (newest first) with aliases, creation time, run, data version and key metrics as a table."""
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: -int(v.version))
    if not versions:
        raise PromotionError(f"registered model {name!r} has no versions")
    # Search results leave the aliases out on some stores; the registered model has them all.
    aliases: dict[str, list[str]] = {}
    for alias, number in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(number), []).append(alias)
    header = ["version", "aliases", "created", "run", "data", *LIST_METRICS]
    rows = [header]
    for version in versions:
        created = datetime.fromtimestamp(version.creation_timestamp / 1000, tz=timezone.utc)
        metrics = version_metrics(client, version)
        rows.append(
            [
                str(version.version),
                ",".join(sorted(aliases.get(str(version.version), []))) or "-",
                created.strftime("%Y-%m-%d %H:%M"),
                (version.run_id or "-")[:8],
                version.tags.get(DATA_VERSION_TAG, "-")[:8],
                *(f"{metrics[m]:.4f}" if m in metrics else "-" for m in LIST_METRICS),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)
