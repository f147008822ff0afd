"""The model registry: how evaluated generators become versions, and the alias policy over them.

Registration (:func:`register`): evaluation registers its generator as a version of ``mlflow.model_name``
with alias ``challenger``, tagged with the sha256 of its weights, the version of the val split it was
scored on (``data_version``), the scoring fingerprint (:mod:`salgan.tracking.fingerprint`), the run and the git
commit; its metrics are linked to its logged model (MLflow 3), not stored as tags. When a version with the
same weights exists, it is reused (its tags and metrics updated, the alias moved) instead of a duplicate
being made.

The alias policy, in one place (:data:`CHAMPION`, :data:`CHALLENGER`, :data:`PREVIOUS`): the gate
(:func:`promote`; :func:`salgan.registry.gate` wires it to the data) moves ``champion`` to a version only
when it beats the champion on one metric by more than a margin, both valued under today's scoring
fingerprint by versions the gate itself opened, and only if ``champion`` did not move meanwhile (a
compare-and-set under the registry's lock, :mod:`salgan.tracking.lock`). The first champion must beat the
centre-bias baseline. ``champion`` is only ever re-pointed, never deleted, so ``models:/salgan@champion``
keeps resolving; the replaced champion keeps ``previous_champion`` for a rollback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from salgan.errors import ConfigError, InputError
from salgan.layout import DATA_VERSION_TAG
from salgan.metrics import LOWER_IS_BETTER, METRIC_NAMES
from salgan.tracking.fingerprint import FINGERPRINT_TAG, decode, differences, fingerprint

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"
WEIGHTS_TAG = "weights_sha256"
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # a logged model's registered versions, as MLflow writes them
_LOGGED_MODEL_FOLDER = re.compile(r"/models/(?P<id>m-[0-9a-f]+)/artifacts/?$")  # where MLflow 3 keeps one


class PromotionError(InputError):
    """Promotion cannot decide: no such version, or the champion kept moving."""


# --- registration ---------------------------------------------------------------------------------------


def register(
    client: MlflowClient,
    name: str,
    model_id: str,
    run_id: str | None,
    weights_sha256: str,
    tags: dict[str, str],
    existing: ModelVersion | None = None,
) -> str:
    """``existing`` (a version with these weights) updated with ``tags``, or a new version of ``name`` from
    the logged model ``model_id`` (of run ``run_id``); either way it becomes the ``challenger``. Returns the
    version number."""
    from mlflow.exceptions import MlflowException

    if existing is not None:
        for key, value in tags.items():
            client.set_model_version_tag(name, existing.version, key, value)
        version = str(existing.version)
    else:
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        # The logged model's own folder as the source (and its id, which a server checks the folder against):
        # a "models:/<id>" source would make MLflow's local registry look the model up through its
        # process-wide tracking URI, which salgan never sets.
        model = client.get_logged_model(model_id)
        version = str(
            client.create_model_version(
                name,
                model.artifact_location,
                run_id=run_id,
                tags={**tags, WEIGHTS_TAG: weights_sha256},
                model_id=model_id,
            ).version
        )
        # The logged model names its versions, as mlflow.register_model records them (the UI links the two).
        listed = json.loads(model.tags.get(MODEL_VERSIONS_TAG) or "[]")
        client.set_logged_model_tags(
            model_id, {MODEL_VERSIONS_TAG: json.dumps([*listed, {"name": name, "version": version}])}
        )
    client.set_registered_model_alias(name, CHALLENGER, version)
    return version


def version_with_weights(client: MlflowClient, name: str, weights_sha256: str) -> ModelVersion | None:
    """The newest version of ``name`` registered with exactly these weights, if any."""
    found = client.search_model_versions(f"name='{name}' and tags.{WEIGHTS_TAG}='{weights_sha256}'")
    return max(found, key=lambda v: int(v.version), default=None)


def logged_model_id(client: MlflowClient, version: ModelVersion) -> str | None:
    """The MLflow 3 logged model behind a version, if it has one.

    salgan registers a version with its logged model's own folder as the source (:func:`register`); the
    folder's path names the model (``.../models/m-<id>/artifacts``), and the model's artifact location must
    be that very source, which no one can change once the version exists (its tags they can)."""
    found = _LOGGED_MODEL_FOLDER.search(version.source or "")
    if found is None:
        return None
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_logged_model(found["id"])
    except MlflowException:
        return None
    return model.model_id if model.artifact_location.rstrip("/") == version.source.rstrip("/") else None


# --- the promotion gate ---------------------------------------------------------------------------------


@dataclass
class Opened:
    """A version as the gate loaded it: the generator, its input size (W, H) and its weights' sha256."""

    generator: Any
    input_size: tuple[int, int]
    weights_sha256: str


class Judge(Protocol):
    """What the gate needs from today's data, settings and code (:class:`salgan.registry.Judge`)."""

    common: dict  # today's fingerprint fields that do not depend on the model (salgan.tracking.fingerprint.today)

    def open(self, version: ModelVersion) -> Opened:
        """Load a version through salgan's own loader; raises :class:`Unloadable` with the reason."""

    def score(self, opened: Opened) -> dict[str, float]:
        """The version's metrics under today's settings and code, at its own input size."""

    def floor(self) -> dict[str, float]:
        """The centre-bias baseline's metrics today: the bar the first champion must clear."""


class Unloadable(InputError):
    """A version the gate cannot open with salgan's loader: it is never promoted."""


def _by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def recorded_metrics(client: MlflowClient, version: ModelVersion) -> dict[str, float]:
    """The val metrics evaluate logged on the version's logged model (never its tags: anyone who can tag a
    version could write a number there)."""
    model_id = logged_model_id(client, version)
    if not model_id:
        return {}
    latest: dict[str, float] = {}
    for metric in sorted(client.get_logged_model(model_id).metrics or [], key=lambda m: (m.timestamp, m.step)):
        if metric.key.startswith("val_"):
            latest[metric.key.removeprefix("val_")] = float(metric.value)
    return latest


def _side(client: MlflowClient, version: ModelVersion, metric: str, judge: Judge) -> dict:
    """A version opened and valued under today's fingerprint: its recorded numbers when they were taken
    under exactly today's fingerprint for its weights, else a new score. ``refused`` says why it cannot be."""
    side: dict[str, Any] = {"version": str(version.version), "rescored": False, "differs": []}
    side["fingerprint"] = decode(version.tags.get(FINGERPRINT_TAG))
    try:
        opened = judge.open(version)
    except Unloadable as exc:
        return side | {"refused": str(exc)}
    tagged = version.tags.get(WEIGHTS_TAG)
    if tagged != opened.weights_sha256:
        return side | {
            "refused": f"version {version.version}'s weights hash to {opened.weights_sha256[:12]}, its "
            f"{WEIGHTS_TAG} tag says {(tagged or 'nothing')[:12]}"
        }
    current = fingerprint(judge.common, opened.input_size, opened.weights_sha256)
    differs = differences(side["fingerprint"], current)
    metrics = {} if differs else recorded_metrics(client, version)
    if not differs and metric not in metrics:
        differs = [f"no recorded {metric}"]
    if differs:
        metrics = judge.score(opened)
    side |= {"input_size": list(opened.input_size), "differs": differs, "rescored": bool(differs)}
    return side | {"value": float(metrics[metric]), "metrics": metrics, "data_version": current["val"]}


def check_min_delta(min_delta: float) -> float:
    """``min_delta`` as a float if it is finite and >= 0; else :class:`ConfigError` (exit status 2)."""
    try:
        value = float(min_delta)
    except (TypeError, ValueError):
        raise ConfigError(f"min_delta must be a number, got {min_delta!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"min_delta must be finite and >= 0, got {min_delta!r}")
    return value


def candidate_version(client: MlflowClient, name: str, version: str | int | None) -> ModelVersion:
    """Version ``version`` of ``name``, or the one the ``challenger`` alias names when it is None."""
    from mlflow.exceptions import MlflowException

    if version is None:
        found = _by_alias(client, name, CHALLENGER)
        if found is None:
            raise PromotionError(
                f"registered model {name!r} has no {CHALLENGER!r} version; "
                "run the evaluate stage (dvc repro) to register one"
            )
        return found
    if not str(version).isdigit():
        raise ConfigError(f"version must be a version number, got {version!r}")
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise PromotionError(f"registered model {name!r} has no version {version}") from None


def _decide(result: dict, champion: dict | None, judge: Judge, floor: bool) -> dict:
    """The decision on the sides as valued: ``promoted`` (to be applied), ``kept`` or ``refused``."""
    metric, min_delta, new = result["metric"], result["min_delta"], result["challenger"]
    sign = 1.0 if result["higher_is_better"] else -1.0
    if champion is None:
        if not floor:
            return result | {"decision": "promoted", "reason": "no champion yet (no floor asked)"}
        bar = float(judge.floor()[metric])
        delta = sign * (new["value"] - bar)
        result = result | {"floor": {"center_bias": bar, "delta": delta}}
        if delta <= min_delta:
            return result | {
                "decision": "kept",
                "reason": f"no champion yet, and its {metric} {new['value']:.4f} does not beat the centre-bias "
                f"baseline {bar:.4f} by more than {min_delta:g} (the floor for a first champion; --no-floor "
                "skips it)",
            }
        return result | {"decision": "promoted", "reason": "no champion yet"}
    result = result | {"champion": champion}
    if "refused" in champion:
        return result | {
            "decision": "refused",
            "reason": f"the champion cannot be opened, so nothing is compared: {champion['refused']}; point the "
            f"{CHAMPION} alias at a loadable version",
        }
    delta = sign * (new["value"] - champion["value"])  # positive: challenger better
    result |= {"delta": delta}
    if champion["version"] == new["version"]:
        return result | {"decision": "kept", "reason": "the challenger already is the champion"}
    if delta <= min_delta:
        return result | {"decision": "kept", "reason": f"improvement {delta:+.4g} is not above {min_delta:g}"}
    return result | {"decision": "promoted", "reason": f"improvement {delta:+.4g} is above {min_delta:g}"}


def promote(
    client: MlflowClient,
    name: str,
    judge: Judge,
    metric: str = "nss",
    min_delta: float = 0.0,
    version: str | int | None = None,
    floor: bool = True,
    lock: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    attempts: int = 5,
) -> dict:
    """Move ``champion`` to ``version`` (default: the ``challenger`` alias's) if it beats the champion on
    ``metric`` by more than ``min_delta`` (lower is better for kld, higher for every other metric).

    Both versions are opened with ``judge`` (salgan's weights-only loader; one that cannot be opened is
    never promoted) and valued under today's scoring fingerprint: a recorded number is used only when its
    fingerprint equals today's for those weights, otherwise the version is scored again at its own input
    size. With no champion yet, the version must beat the centre-bias baseline by more than ``min_delta``
    (``floor``). The decision is applied under ``lock`` and only if ``champion`` still names the version it
    was compared with; otherwise the gate compares again (up to ``attempts`` times). The replaced champion
    gets ``previous_champion``.

    Returns ``{"decision": "promoted" | "kept" | "refused", "reason", "metric", "higher_is_better",
    "min_delta", "today", "data_version", "challenger": side, "champion": side | None, "delta", "floor",
    "lock"}``, a side being ``{"version", "value", "metrics", "fingerprint" (recorded), "differs",
    "rescored", "input_size", "data_version"}`` or ``{"version", "refused", ...}``. Raises
    :class:`PromotionError` (no such version) or :class:`ConfigError` (a bad min_delta).
    """
    min_delta = check_min_delta(min_delta)
    target = candidate_version(client, name, version)
    sides: dict[str, dict] = {}

    def side(found: ModelVersion) -> dict:
        if str(found.version) not in sides:
            sides[str(found.version)] = _side(client, found, metric, judge)
        return sides[str(found.version)]

    new = side(target)
    result = {
        "metric": metric,
        "higher_is_better": metric not in LOWER_IS_BETTER,
        "min_delta": min_delta,
        "today": judge.common,
        "data_version": judge.common.get("val"),
        "challenger": new,
        "champion": None,
        "delta": None,
        "floor": None,
    }
    if "refused" in new:
        return result | {"decision": "refused", "reason": f"{new['refused']}; it is never promoted"}
    for _ in range(attempts):
        found = _by_alias(client, name, CHAMPION)
        decided = _decide(result, None if found is None else side(found), judge, floor)
        if decided["decision"] != "promoted":
            return decided
        with lock() as held:
            now = _by_alias(client, name, CHAMPION)
            if _number(now) == _number(found):
                # The new alias first: champion always resolves; the old version stays reachable for a rollback.
                client.set_registered_model_alias(name, CHAMPION, target.version)
                if found is not None:
                    client.set_registered_model_alias(name, PREVIOUS, found.version)
                return decided | {"lock": held}
        log.info(
            "the %s alias moved from v%s to v%s meanwhile; comparing again", CHAMPION, _number(found), _number(now)
        )
    raise PromotionError(
        f"the {CHAMPION} alias of {name!r} moved {attempts} times while the gate compared; run it again"
    )


def _number(version: ModelVersion | None) -> str | None:
    return None if version is None else str(version.version)


def describe(result: dict) -> str:
    """One line of decision and numbers, e.g. ``promoted version 3 to champion: nss 2.10 vs 1.95 ...``."""
    metric, new, old = result["metric"], result["challenger"], result["champion"]
    if result["decision"] == "refused":
        return f"refused version {new['version']}: {result['reason']}"
    direction = "higher" if result["higher_is_better"] else "lower"
    numbers = f"{metric} {new['value']:.4f} (challenger v{new['version']}{', scored again' if new['rescored'] else ''})"
    if old is not None:
        numbers += f" vs {old['value']:.4f} (champion v{old['version']}{', scored again' if old['rescored'] else ''})"
    elif result.get("floor"):
        numbers += f" vs {result['floor']['center_bias']:.4f} (centre-bias baseline)"
    if result.get("data_version"):
        numbers += f" on val data {result['data_version']}"
    if result["decision"] == "promoted":
        head = f"promoted version {new['version']} to {CHAMPION}"
    elif old is None:
        head = f"did not promote version {new['version']} ({CHAMPION} stays unset)"
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
    header = ["version", "aliases", "created", "run", "data", *METRIC_NAMES]
    rows = [header]
    for version in versions:
        created = datetime.fromtimestamp(version.creation_timestamp / 1000, tz=timezone.utc)
        metrics = recorded_metrics(client, version)
        rows.append(
            [
                str(version.version),
                ",".join(sorted(aliases.get(str(version.version), []))) or "-",
                created.strftime("%Y-%m-%d %H:%M"),
                (version.run_id or "-")[:8],
                version.tags.get(DATA_VERSION_TAG, "-")[:8],
                *(f"{metrics[m]:.4f}" if m in metrics else "-" for m in METRIC_NAMES),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)
