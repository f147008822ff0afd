"""Scheduled retraining: refresh the data, train a challenger as a DVC experiment, gate its promotion.

1. refresh: re-run the download stage (``dvc repro --force --single-item download``, retried with backoff),
   or ``dvc pull`` the versions dvc.lock names from the remote, or leave the data as it is;
2. train: the pipeline as one ``dvc exp run`` with the flow's overrides (the ``salgan-pipeline`` flow as a
   subflow), whose evaluate stage registers the model as the registry's ``challenger``;
3. gate: ``salgan.registry.gate`` on the version this run's evaluate stage registered (found by the weights
   hash in ``reports/metrics.json``, whatever the ``challenger`` alias names by then): it moves ``champion``
   there only when it beats the champion on ``metric`` by more than ``min_delta``, both opened with salgan's
   loader and valued under the workspace's scoring fingerprint (a side recorded under another one is scored
   again), the first champion only above the centre-bias baseline (``floor``), under the registry's lock;
4. report: a markdown artifact (key ``salgan-retrain``) with both sides' metrics and fingerprints and the
   decision.

The whole flow holds the workspace lock (``flows.workspace.workspace_lock``): two triggers at once run
one after the other instead of interleaving their writes to params.yaml, dvc.lock and the outputs.

Run locally on the ephemeral API server: ``python -m flows.retrain`` (``--help`` for the options).
"""

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.pipeline import (
    DOWNLOAD_RETRIES,
    DVC,
    add_set_argument,
    checked_overrides,
    checked_workdir,
    parse_overrides,
    repro_command,
    retry_delays,
    salgan_pipeline,
)
from flows.processes import end_recorded_stage, run_streaming
from flows.workspace import workspace_lock
from salgan.cli import EXIT_INPUT, run_command
from salgan.errors import ConfigError
from salgan.layout import ReportFiles
from salgan.registry import check_metric, gate
from salgan.settings import load_params
from salgan.tracking.registry import PromotionError, check_min_delta, version_with_weights
from salgan.urls import redact_url

ARTIFACT_KEY = "salgan-retrain"
REFRESH_MODES = ("download", "pull", "none")


@task(name="refresh-data", task_run_name="refresh-{mode}", cache_policy=NO_CACHE)
def refresh_data(mode: str, workdir: str) -> None:
    """Bring the raw data up to date: re-run the download stage, or pull what dvc.lock names."""
    logger = get_run_logger()
    if mode == "download":
        command = repro_command("download", force=True)
    elif mode == "pull":
        command = [*DVC, "pull"]
    else:
        logger.info("refresh=none: training on the data already in the workspace")
        return
    run_streaming(command, workdir, f"refresh ({mode})", logger)


def workspace_params(workdir: str | Path):
    """params.yaml of ``workdir`` as the pipeline's stages see it: they run with ``workdir`` as their
    current directory, so the prepared data and a relative sqlite or file store are resolved against it,
    not against wherever this flow process happens to run. The tracking URI is the stages' own
    (:func:`salgan.tracking.store.tracking_uri`), made absolute.
    """
    from salgan.tracking.store import tracking_uri

    base = Path(workdir).resolve()
    params = load_params(base / "params.yaml")
    params.train.data = str(base / params.train.data)
    params.prepare.input = str(base / params.prepare.input)  # the raw images a version of another size needs
    params.evaluate.output = str(base / params.evaluate.output)
    params.mlflow.tracking_uri = absolute_store(tracking_uri(params), base)
    return params


def absolute_store(uri: str, base: Path) -> str:
    """A store relative to ``base`` made absolute (``sqlite:///mlflow.db``, ``mlruns``); other URIs unchanged."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{base / uri[len('sqlite:///') :]}"
    if "://" not in uri and not Path(uri).is_absolute():
        return str(base / uri)
    return uri


def this_runs_version(params) -> str:
    """The registry version of the model this workspace's evaluate stage scored: the one registered with
    the weights ``reports/metrics.json``'s fingerprint names (not whatever ``challenger`` names by now)."""
    import json

    from salgan.tracking.store import client

    metrics = ReportFiles(Path(params.evaluate.output)).metrics
    try:
        weights = json.loads(metrics.read_text())["fingerprint"]["weights"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PromotionError(
            f"{metrics}: no evaluation with a scoring fingerprint ({exc!r}); run the pipeline"
        ) from None
    found = version_with_weights(client(params), params.mlflow.model_name, weights)
    if found is None:
        raise PromotionError(
            f"the model evaluated in {metrics} (weights {weights[:12]}) is not registered; was MLflow unreachable? "
            "salgan track registers it"
        )
    return str(found.version)


def run_promotion(params, metric: str, min_delta: float, floor: bool = True) -> dict[str, Any]:
    """``salgan.registry.gate`` on this run's version (:func:`this_runs_version`).

    Imported here: mlflow and the scoring code are heavy, and running stages does not need them.
    """

    return gate(params, metric, min_delta, version=this_runs_version(params), floor=floor)


@task(name="promotion-gate", task_run_name="promotion-gate", cache_policy=NO_CACHE)
def promotion_gate(workdir: str, metric: str, min_delta: float, floor: bool = True) -> dict[str, Any]:
    """Compare this run's registered model with the champion on ``metric``; promote when it is better."""

    logger = get_run_logger()
    params = workspace_params(workdir)
    if not params.mlflow.enabled:
        logger.info("mlflow.enabled is false: no registry, no promotion")
        return {"promoted": False, "reason": "MLflow is disabled in params.yaml", "metric": metric}
    logger.info(
        "promotion gate on %s (model %r, metric %s, min_delta %s, floor %s)",
        redact_url(params.mlflow.tracking_uri),
        params.mlflow.model_name,
        metric,
        min_delta,
        floor,
    )
    result = run_promotion(params, metric, min_delta, floor)
    logger.info("gate decision: %s", decision_text(result))
    return result


def record_decision(workdir: str, run_id: str, result: dict[str, Any], metric: str) -> None:
    """The gate's decision on the retraining's parent MLflow run: tags, and both sides' compared values."""
    from salgan.tracking.store import TRACKING_ERRORS, client

    mlflow_client = client(workspace_params(workdir))
    tags = {"decision": str(result.get("decision")), "reason": str(result.get("reason"))}
    for side in ("challenger", "champion"):
        if isinstance(result.get(side), dict):
            tags[f"{side}_version"] = str(result[side]["version"])
            if result[side].get("value") is not None:
                with contextlib.suppress(*TRACKING_ERRORS):
                    mlflow_client.log_metric(run_id, f"{side}_{metric}", float(result[side]["value"]))
    with contextlib.suppress(*TRACKING_ERRORS):
        for key, value in tags.items():
            mlflow_client.set_tag(run_id, key, value)


# ---------------------------------------------------------------------------------------------------------
# The report


def decision_text(result: dict[str, Any]) -> str:
    """One line: promoted or kept, and why."""
    verdict = result.get("decision") or ("promoted" if result.get("promoted") else "not promoted")
    reason = result.get("reason")
    return f"{verdict}: {reason}" if reason else str(verdict)


def _metrics_of(entry: Any, metric: str) -> dict[str, Any]:
    """A challenger/champion entry's metrics: its ``metrics`` and the gate's ``value`` of ``metric``."""
    if not isinstance(entry, dict):
        return {}
    metrics = dict(entry.get("metrics") or {})
    if entry.get("value") is not None:
        metrics[metric] = entry["value"]
    return metrics


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def decision_markdown(result: dict[str, Any], metric: str, min_delta: float) -> str:
    """The artifact: the decision, a table of both sides' metrics (the gate's metric first) and one of their
    recorded scoring fingerprints beside today's, with which side was scored again and why."""
    challenger, champion = result.get("challenger") or {}, result.get("champion") or {}
    ours, theirs = _metrics_of(challenger, metric), _metrics_of(champion, metric)
    names = sorted(set(ours) | set(theirs), key=lambda name: (name != metric, name))
    direction = "lower" if result.get("higher_is_better") is False else "higher"
    gate = (
        f"Gate: the challenger's `{metric}` ({direction} is better) must beat the champion's by more than {min_delta}"
    )
    if result.get("delta") is not None:
        gate += f"; improvement {result['delta']:+.4f}"
    if result.get("data_version"):
        gate += f". Both measured on the val split of data version `{result['data_version']}`"
        rescored = [f"v{side['version']}" for side in (challenger, champion) if side.get("rescored")]
        if rescored:
            gate += f" ({', '.join(rescored)} scored again: recorded under another fingerprint)"
    lines = ["# SalGAN retraining", "", f"**Decision: {decision_text(result)}**", "", gate + "."]
    if result.get("floor"):
        bar = result["floor"]
        lines += ["", f"Floor (no champion yet): the centre-bias baseline's `{metric}` is {bar['center_bias']:.4f}."]
    if result.get("lock"):
        lines += ["", f"Applied under the registry's lock: {result['lock']}."]
    lines += [
        "",
        f"| metric | challenger (v{_cell(challenger.get('version'))}) | champion (v{_cell(champion.get('version'))}) |",
        "|---|---:|---:|",
    ]
    for name in names:
        label = f"**{name}**" if name == metric else name
        lines.append(f"| {label} | {_cell(ours.get(name))} | {_cell(theirs.get(name))} |")
    if not names:
        lines.append("| (no metrics recorded) | — | — |")
    if result.get("today"):
        lines += ["", *fingerprint_markdown(result["today"], challenger, champion)]
    return "\n".join(lines) + "\n"


def fingerprint_markdown(today: dict[str, Any], challenger: dict[str, Any], champion: dict[str, Any]) -> list[str]:
    """Both sides' recorded scoring fingerprints beside today's, and why a side was scored again."""

    def fields(fingerprint: dict | None) -> dict[str, str]:
        if not fingerprint:
            return {}
        flat = {key: str(value) for key, value in fingerprint.items() if key != "settings"}
        flat |= {key: str(value) for key, value in (fingerprint.get("settings") or {}).items()}
        if "weights" in flat:
            flat["weights"] = flat["weights"][:12]
        return flat

    now, ours, theirs = fields(today), fields(challenger.get("fingerprint")), fields(champion.get("fingerprint"))
    order = [*now, *(key for key in (*ours, *theirs) if key not in now)]
    lines = [
        "Scoring fingerprints (recorded with each version's numbers; today's for the scores the gate takes):",
        "",
        f"| fingerprint | today | challenger (v{_cell(challenger.get('version'))}) | "
        f"champion (v{_cell(champion.get('version'))}) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {key} | {now.get(key, '—')} | {ours.get(key, '—')} | {theirs.get(key, '—')} |" for key in order]
    lines.append("")
    for role, side in (("challenger", challenger), ("champion", champion)):
        if side.get("refused"):
            lines.append(f"- {role} v{side['version']}: not opened: {side['refused']}")
        elif side.get("rescored"):
            differs = ", ".join(side["differs"])
            lines.append(f"- {role} v{side['version']}: scored again; its fingerprint differs in {differs}")
        elif side.get("version") is not None:
            lines.append(f"- {role} v{side['version']}: its recorded numbers, taken under today's fingerprint")
    return lines


# ---------------------------------------------------------------------------------------------------------
# The flow


@flow(name="salgan-retrain", on_cancellation=[end_recorded_stage], on_crashed=[end_recorded_stage])
def salgan_retrain(
    refresh: Literal["download", "pull", "none"] = "download",
    overrides: dict | None = None,
    workdir: str = ".",
    metric: str = "nss",
    min_delta: float = 0.0,
    floor: bool = True,
) -> dict[str, Any]:
    """Refresh the data, train a challenger as a DVC experiment, promote it only when it is better.

    Args:
        refresh: ``download`` re-runs the download stage, ``pull`` runs ``dvc pull``, ``none`` skips it.
        overrides: params.yaml overrides for the experiment, ``{"train.epochs": 60}``.
        workdir: the DVC repository (a checkout of this project).
        metric: the validation metric the gate compares (higher is better, but for kld).
        min_delta: how much better the challenger must be to become champion (finite, >= 0).
        floor: a first champion must beat the centre-bias baseline (False lets any first model through).

    Returns the gate's result (``salgan.tracking.registry.promote``).
    """

    if refresh not in REFRESH_MODES:
        raise ConfigError(f"refresh must be one of {REFRESH_MODES}, got {refresh!r}")
    check_metric(metric)  # ConfigError, a ValueError: checked before anything runs
    check_min_delta(min_delta)
    workdir = checked_workdir(workdir)  # the parameters are checked before the refresh touches anything
    overrides = checked_overrides(overrides, workdir)
    from prefect.runtime import flow_run

    from salgan.tracking.runs import parent_run

    logger = get_run_logger()
    with (
        workspace_lock(workdir, logger),
        parent_run(workspace_params(workdir), f"retrain {flow_run.get_name()}") as run,
    ):
        refresh_task = refresh_data
        if refresh == "download":
            # The download stage is the one exposed to networks and mirrors: retry it with backoff.
            refresh_task = refresh_data.with_options(
                retries=DOWNLOAD_RETRIES, retry_delay_seconds=retry_delays(), retry_jitter_factor=0.5
            )
        refresh_task(refresh, workdir)
        salgan_pipeline(overrides=overrides, workdir=workdir, experiment=True)
        result = promotion_gate(workdir, metric, min_delta, floor)
        if run:
            record_decision(workdir, run, result, metric)
    create_markdown_artifact(
        markdown=decision_markdown(result, metric, min_delta),
        key=ARTIFACT_KEY,
        description="Challenger vs champion and the promotion decision",
    )
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.retrain",
        description="Retrain SalGAN as a DVC experiment and promote it if it beats the champion (Prefect "
        "flow; the ephemeral API server unless PREFECT_API_URL points at a server).",
    )
    parser.add_argument("--refresh", choices=REFRESH_MODES, default="download", help="how to refresh the data")
    add_set_argument(parser, "params.yaml override for the experiment (repeatable)")
    parser.add_argument("--metric", default="nss", help="metric the promotion gate compares (default: nss)")
    parser.add_argument("--min-delta", type=float, default=0.0, help="required improvement (default: 0)")
    parser.add_argument(
        "--no-floor", action="store_true", help="let a first champion through below the centre-bias baseline"
    )
    parser.add_argument("--workdir", default=".", help="the DVC repository (default: .)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.retrain`` (exit statuses: salgan/cli.py; a refused version: 1, as ``salgan registry
    promote``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = parse_overrides(parser, args)

    def work() -> int:
        result = salgan_retrain(
            refresh=args.refresh,
            overrides=overrides,
            workdir=args.workdir,
            metric=args.metric,
            min_delta=args.min_delta,
            floor=not args.no_floor,
        )
        print(decision_text(result))
        return EXIT_INPUT if result.get("decision") == "refused" else 0

    return run_command("retrain", work, prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
