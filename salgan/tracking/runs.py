"""The MLflow run of a pipeline run: who opens it, how later stages find it, what it is tagged with.

The train stage creates the run (rank 0 only) and records its id in ``<train.output>/mlflow_run.json``;
evaluate, predict and package continue it by that id through :func:`continued_run` (``MLFLOW_RUN_ID`` wins
over the file), with the client of :mod:`salgan.tracking.store`: no fluent MLflow state is set. Each run is
tagged with what made it: the git commit, the data versions in dvc.lock, the DVC experiment (``dvc exp run``
tells its stages through ``DVC_EXP_NAME``), the Prefect flow run (the flows tell their stages through
``SALGAN_FLOW_RUN_ID``) and, inside an ablation or a retraining, the parent run that groups them
(:func:`parent_run`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from salgan.layout import FLOW_RUN_ENV, HISTORY_METRICS, PARENT_RUN_ENV, ModelFiles, write_atomic
from salgan.settings import Params, flatten, to_dict, to_record
from salgan.tracking.store import TRACKING_ERRORS, client, experiment_id, tracking_uri, warn_unavailable
from salgan.urls import redact_text, redact_url

if TYPE_CHECKING:
    from salgan.distributed import DistInfo

log = logging.getLogger(__name__)
# While the server is unreachable, training tries again at most this often ($SALGAN_TRACKING_RETRY_S).
RETRY_SECONDS = float(os.environ.get("SALGAN_TRACKING_RETRY_S", "60"))


# --- the hand-over between stages ----------------------------------------------------------------------


def run_file(params: Params) -> Path:
    return ModelFiles(Path(params.train.output)).run_record


def recorded_run_id(params: Params) -> str | None:
    """The run id train recorded, if the record is readable and was made against this tracking URI."""
    path = run_file(params)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        warnings.warn(f"{path}: unreadable MLflow run record ({exc}); starting a new run", stacklevel=2)
        return None
    if record.get("tracking_uri") not in (None, redact_url(tracking_uri(params))):
        return None  # made against another store: that run id means nothing here
    return record.get("run_id")


def _write_run_file(params: Params, run_id: str, experiment_id: str) -> None:
    record = {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": redact_url(tracking_uri(params))}
    write_atomic(run_file(params), json.dumps(record, indent=1) + "\n")


# --- tags ------------------------------------------------------------------------------------------


def git_commit() -> str | None:
    """HEAD's commit, or None outside a git checkout or without git."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def data_versions(lock_file: str | Path = "dvc.lock") -> dict[str, str]:
    """md5 of the raw and prepared data outs recorded in dvc.lock (``data.raw.md5`` ...); {} if absent."""
    import yaml

    try:
        lock = yaml.safe_load(Path(lock_file).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    versions = {}
    for stage in (lock.get("stages") or {}).values():
        for out in (stage or {}).get("outs") or []:
            path = str(out.get("path", "")).rstrip("/")
            if path in ("data/raw", "data/prepared") and out.get("md5"):
                versions[f"{path.replace('/', '.')}.md5"] = str(out["md5"])
    return versions


def run_tags(info: DistInfo | None = None) -> dict[str, str]:
    """Git commit, data versions, the DVC experiment, the Prefect flow run, the parent run, and with
    ``info`` the world size and device."""
    tags = dict(data_versions())
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit  # shown by the MLflow UI
        tags["git_commit"] = commit
    for tag, variable in (
        ("dvc.experiment", "DVC_EXP_NAME"),
        ("dvc.baseline_rev", "DVC_EXP_BASELINE_REV"),
        ("prefect.flow_run_id", FLOW_RUN_ENV),
        ("mlflow.parentRunId", PARENT_RUN_ENV),  # nests the run under it in the MLflow UI
    ):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    if info is not None:
        tags["world_size"] = str(info.world_size)
        tags["device"] = info.device.type
        if info.device.type == "cuda":
            import torch

            tags["device_name"] = torch.cuda.get_device_name(info.device)
    return tags


@contextlib.contextmanager
def parent_run(params: Params, name: str, tags: dict[str, str] | None = None) -> Iterator[str | None]:
    """A parent run grouping the pipeline runs started inside the block (an ablation's arms, a retraining):
    their stages find its id in ``SALGAN_MLFLOW_PARENT_RUN_ID`` and tag their runs as its children.

    Yields the run id (None, after one warning, when MLflow is unreachable or disabled); the run ends
    FINISHED, or FAILED if the block raised.
    """
    if not params.mlflow.enabled:
        yield None
        return
    uri = tracking_uri(params)
    try:
        mlflow_client = client(params)
        experiment = experiment_id(mlflow_client, params.mlflow.experiment)
        run_id = mlflow_client.create_run(experiment, run_name=name, tags=run_tags() | (tags or {})).info.run_id
    except TRACKING_ERRORS as exc:
        warn_unavailable(f"open the parent run {name!r}", exc, uri)
        yield None
        return
    previous = os.environ.get(PARENT_RUN_ENV)
    os.environ[PARENT_RUN_ENV] = run_id
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    finally:
        if previous is None:
            os.environ.pop(PARENT_RUN_ENV, None)
        else:
            os.environ[PARENT_RUN_ENV] = previous
        with contextlib.suppress(*TRACKING_ERRORS):
            mlflow_client.set_terminated(run_id, status)


# --- training ------------------------------------------------------------------------------------------


class TrainingTracker:
    """Logs one training run to MLflow from rank 0; never raises for tracking failures.

    Epochs that could not be logged (server down) are kept and logged, in order, when a later attempt
    succeeds; attempts are spaced by :data:`RETRY_SECONDS` so a dead server does not slow every epoch.
    """

    def __init__(self, params: Params):
        self.params = params
        self.uri = tracking_uri(params)
        self.client: MlflowClient | None = None
        self.run_id: str | None = None
        self.tags: dict[str, str] = {}
        self.resumed_epochs = 0
        self.pending: list[tuple[dict | None, Path | None]] = []  # (metrics not logged yet, snapshot)
        self.failed_at: float | None = None
        self.warned = False

    def start(self, info: DistInfo, resumed_epochs: int = 0) -> None:
        """Create the run (or continue the recorded one after a resume) and log params and tags."""
        self.tags = run_tags(info)
        self.resumed_epochs = resumed_epochs
        if not resumed_epochs:
            # A fresh training run must not be mistaken by evaluate for the previous one, even when
            # MLflow is down now and no new record gets written.
            run_file(self.params).unlink(missing_ok=True)
        self._attempt("start a run", self._open)

    def log_epoch(self, record: dict, snapshot_path: Path | None = None) -> None:
        """Per-epoch metrics at step=epoch, and the epoch's snapshot under ``snapshots/``."""
        self.pending.append((dict(record), Path(snapshot_path) if snapshot_path else None))
        if self.failed_at is None or time.monotonic() - self.failed_at >= RETRY_SECONDS:
            self._attempt("log an epoch", self._flush)

    def finish(self, generator_path: Path) -> None:
        """Last try for pending epochs, then the resolved params as YAML; the run is marked finished."""
        self._attempt("finish the run", self._flush)
        if self.run_id is None or self.pending:
            return
        self._attempt("log the resolved params", lambda: self._close(Path(generator_path)))

    def replay(self, history: list[dict], generator_path: Path) -> str:
        """Log a finished training afterwards (``salgan track``): a new run with the settings and every
        epoch of ``history``; raises when MLflow fails, unlike the live methods."""
        self.tags = {**run_tags(), "replayed_from": "history.json"}
        self._open()
        self.pending = [(dict(record), None) for record in history]
        self._flush()
        self._close(Path(generator_path))
        return self.run_id

    def _attempt(self, action: str, fn) -> None:
        try:
            fn()
        except TRACKING_ERRORS as exc:
            self.failed_at = time.monotonic()
            if not self.warned:
                self.warned = True
                warn_unavailable(action, exc, self.uri)
        else:
            if self.failed_at is not None and self.warned:
                log.info("MLflow at %s answers again; logging resumed", redact_url(self.uri))
            self.failed_at = None

    def _open(self) -> None:
        mlflow_client = client(self.params)
        experiment = experiment_id(mlflow_client, self.params.mlflow.experiment)
        run_id = recorded_run_id(self.params) if self.resumed_epochs else None
        if run_id:
            try:
                mlflow_client.update_run(run_id, status="RUNNING")
            except MlflowException:
                run_id = None  # deleted, or from another store: start afresh
        if not run_id:
            run = mlflow_client.create_run(experiment, tags=self.tags)
            run_id = run.info.run_id
            params = [Param(k, _param_value(v)) for k, v in flatten(to_dict(self.params)).items()]
            mlflow_client.log_batch(run_id, params=params)
        else:
            mlflow_client.log_batch(run_id, tags=[RunTag(k, v) for k, v in self.tags.items()])
        if self.resumed_epochs:
            mlflow_client.set_tag(run_id, "resumed_after_epoch", str(self.resumed_epochs))
        _write_run_file(self.params, run_id, experiment)
        self.client, self.run_id = mlflow_client, run_id

    def _flush(self) -> None:
        if self.run_id is None:
            self._open()
        while self.pending:
            record, snapshot = self.pending[0]
            if record is not None:
                step, now = int(record["epoch"]), int(time.time() * 1000)
                metrics = [Metric(k, float(record[k]), now, step) for k in HISTORY_METRICS if is_number(record.get(k))]
                self.client.log_batch(self.run_id, metrics=metrics)
                # Logged: a retry after the snapshot's upload failed (artifact store down) must not log it twice.
                self.pending[0] = (None, snapshot)
            if snapshot is not None and snapshot.is_file():
                self.client.log_artifact(self.run_id, str(snapshot), "snapshots")
            self.pending.pop(0)

    def _close(self, generator_path: Path) -> None:
        import yaml

        self.client.log_text(self.run_id, yaml.safe_dump(to_record(self.params), sort_keys=False), "params.yaml")
        if generator_path.is_file():
            self.client.set_tag(self.run_id, "generator_bytes", str(generator_path.stat().st_size))
        self.client.set_terminated(self.run_id, "FINISHED")


def _param_value(value: Any) -> str:
    """An MLflow param's text: lists as JSON, URLs redacted (a signed source URL is a secret)."""
    return redact_text(json.dumps(value) if isinstance(value, list | dict) else str(value))


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --- later stages ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def continued_run(params: Params) -> Iterator[tuple[MlflowClient, str]]:
    """(client, run id) of the pipeline's run: ``MLFLOW_RUN_ID``, else the one train recorded, else a new
    run in ``mlflow.experiment``. The run is marked running, and finished (or failed) on exit."""
    mlflow_client = client(params)
    run_id = os.environ.get("MLFLOW_RUN_ID") or recorded_run_id(params)
    if run_id:
        try:
            mlflow_client.update_run(run_id, status="RUNNING")
        except MlflowException as exc:
            if os.environ.get("MLFLOW_RUN_ID"):
                raise
            warnings.warn(f"{run_file(params)}: run {run_id} not found ({exc}); starting a new run", stacklevel=3)
            run_id = None
    if not run_id:
        experiment = experiment_id(mlflow_client, params.mlflow.experiment)
        run_id = mlflow_client.create_run(experiment, tags=run_tags()).info.run_id
    status = "FAILED"
    try:
        yield mlflow_client, run_id
        status = "FINISHED"
    finally:
        with contextlib.suppress(*TRACKING_ERRORS):
            mlflow_client.set_terminated(run_id, status)


def record_prediction(params: Params, files: list[Path], artifact_dir: str = "predictions", max_files: int = 4) -> None:
    """Log how many files a stage wrote (metric ``n_<artifact_dir>``) and the first few as artifacts."""
    uri = tracking_uri(params)
    try:
        with continued_run(params) as (mlflow_client, run_id):
            mlflow_client.log_metric(run_id, f"n_{artifact_dir}", len(files))
            for path in sorted(files)[:max_files]:
                mlflow_client.log_artifact(run_id, str(path), artifact_dir)
    except TRACKING_ERRORS as exc:
        warn_unavailable(f"log {artifact_dir}", exc, uri)
