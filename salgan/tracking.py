"""MLflow tracking and registration: one MLflow run per pipeline run.

The train stage creates the run (rank 0 only) and records its id in ``<train.output>/mlflow_run.json``;
evaluate, predict and package continue it through :func:`continue_run` (``MLFLOW_RUN_ID`` wins over the
file). Evaluate logs the generator as an MLflow pytorch model and registers it as a new version of
``mlflow.model_name`` with alias ``challenger`` (:func:`record_evaluation`).

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else ``mlflow.tracking_uri`` from params.yaml (the
embedded ``sqlite:///mlflow.db`` with artifacts in ./mlruns). MLflow is never allowed to stop the
pipeline: an unreachable or failing tracking server costs one warning, and everything that matters is on
disk anyway (history.json, snapshots, reports). Training retries now and then and backfills the epochs
it could not log once the server answers again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from salgan.layout import DATA_VERSION_TAG, ModelFiles
from salgan.settings import Params, flatten, to_dict
from salgan.urls import redact_text, redact_url

if TYPE_CHECKING:
    from salgan.distributed import DistInfo

EPOCH_METRICS = ("g_loss", "content_loss", "d_loss", "val_content_loss", "images_per_s", "lr")
CHALLENGER, CHAMPION = "challenger", "champion"
MODEL_NAME_IN_RUN = "model"
MODEL_FLAVOUR_TAG = "salgan-generator"  # in the MLmodel metadata, so predict knows it can rebuild a Generator
# Short client timeouts: MLflow's defaults (7 retries with exponential backoff, 120 s timeout) would stall
# every training epoch for minutes while a server is down. Set only where the user has not chosen.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
RETRY_SECONDS = 60.0  # while the server is unreachable, training tries again at most this often


class TrackingUnavailableWarning(UserWarning):
    """MLflow could not be reached or refused a request; the pipeline goes on without it."""


def _tracking_errors() -> tuple[type[BaseException], ...]:
    """What a failing store or server raises: MLflow's own errors, HTTP/socket errors, database errors."""
    errors: list[type[BaseException]] = [MlflowException, OSError]
    with contextlib.suppress(ImportError):
        import requests

        errors.append(requests.exceptions.RequestException)
    with contextlib.suppress(ImportError):
        import sqlalchemy.exc

        errors.append(sqlalchemy.exc.SQLAlchemyError)
    return tuple(errors)


TRACKING_ERRORS = _tracking_errors()


# --- settings and the run hand-over --------------------------------------------------------------------


def tracking_uri(params: Params) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else ``mlflow.tracking_uri`` from params."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri


def configure(params: Params) -> str:
    """Short HTTP timeouts (unless set) and the tracking URI for the fluent API; returns the URI."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    return uri


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
    path = run_file(params)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": redact_url(tracking_uri(params))}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def _warn(action: str, exc: BaseException, uri: str) -> None:
    first_line = redact_text(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
    warnings.warn(
        f"MLflow at {redact_url(uri)}: could not {action} ({first_line[:300]}); carrying on without it",
        TrackingUnavailableWarning,
        stacklevel=3,
    )


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
    """Git commit, data version, world size and device."""
    tags = dict(data_versions())
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit  # shown by the MLflow UI
        tags["git_commit"] = commit
    if info is not None:
        tags["world_size"] = str(info.world_size)
        tags["device"] = info.device.type
        if info.device.type == "cuda":
            import torch

            tags["device_name"] = torch.cuda.get_device_name(info.device)
    return tags


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
        self.pending: list[tuple[dict, Path | None]] = []
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

    def _attempt(self, action: str, fn) -> None:
        try:
            fn()
        except TRACKING_ERRORS as exc:
            self.failed_at = time.monotonic()
            if not self.warned:
                self.warned = True
                _warn(action, exc, self.uri)
        else:
            if self.failed_at is not None and self.warned:
                print(f"MLflow at {redact_url(self.uri)} answers again; logging resumed")
            self.failed_at = None

    def _open(self) -> None:
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        client = MlflowClient(self.uri)
        experiment = client.get_experiment_by_name(self.params.mlflow.experiment)
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment(self.params.mlflow.experiment)
        )
        run_id = recorded_run_id(self.params) if self.resumed_epochs else None
        if run_id:
            try:
                client.update_run(run_id, status="RUNNING")
            except MlflowException:
                run_id = None  # deleted, or from another store: start afresh
        if not run_id:
            run = client.create_run(experiment_id, tags=self.tags)
            run_id = run.info.run_id
            params = [Param(k, _param_value(v)) for k, v in flatten(to_dict(self.params)).items()]
            client.log_batch(run_id, params=params)
        else:
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in self.tags.items()])
        if self.resumed_epochs:
            client.set_tag(run_id, "resumed_after_epoch", str(self.resumed_epochs))
        _write_run_file(self.params, run_id, experiment_id)
        self.client, self.run_id = client, run_id

    def _flush(self) -> None:
        if self.run_id is None:
            self._open()
        while self.pending:
            record, snapshot = self.pending[0]
            step, now = int(record["epoch"]), int(time.time() * 1000)
            metrics = [Metric(k, float(record[k]), now, step) for k in EPOCH_METRICS if _is_number(record.get(k))]
            self.client.log_batch(self.run_id, metrics=metrics)
            if snapshot is not None and snapshot.is_file():
                self.client.log_artifact(self.run_id, str(snapshot), "snapshots")
            self.pending.pop(0)

    def _close(self, generator_path: Path) -> None:
        import yaml

        self.client.log_text(self.run_id, yaml.safe_dump(to_dict(self.params), sort_keys=False), "params.yaml")
        if generator_path.is_file():
            self.client.set_tag(self.run_id, "generator_bytes", str(generator_path.stat().st_size))
        self.client.set_terminated(self.run_id, "FINISHED")


def _param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --- later stages ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def continue_run(params: Params) -> Iterator[mlflow.ActiveRun]:
    """The pipeline's run as the active fluent run: ``MLFLOW_RUN_ID``, else the one train recorded, else
    a new run in ``mlflow.experiment``. The run is marked finished (or failed) on exit."""
    configure(params)
    run_id = os.environ.get("MLFLOW_RUN_ID") or recorded_run_id(params)
    if run_id:
        try:
            MlflowClient().get_run(run_id)
        except MlflowException as exc:
            if os.environ.get("MLFLOW_RUN_ID"):
                raise
            warnings.warn(f"{run_file(params)}: run {run_id} not found ({exc}); starting a new run", stacklevel=3)
            run_id = None
    if not run_id:
        mlflow.set_experiment(params.mlflow.experiment)
    # An explicit run_id also overrides a stale MLFLOW_RUN_ID that mlflow.start_run would otherwise read.
    with mlflow.start_run(run_id=run_id, tags=None if run_id else run_tags()) as run:
        yield run


def record_evaluation(
    params: Params,
    metrics: dict[str, float],
    baselines: dict[str, dict[str, float]],
    artifacts: list[Path],
    generator_path: Path,
    data_version: str | None = None,
) -> str | None:
    """Log val metrics, baselines and report files to the pipeline's run, log the generator as an MLflow
    model and register it as a new version of ``mlflow.model_name`` with alias ``challenger``, tagged with
    the ``data_version`` of the val split the metrics were measured on.

    Returns the new version, or None (after one warning) when MLflow is unreachable.
    """
    uri = tracking_uri(params)
    try:
        with continue_run(params) as run:
            mlflow.log_metrics({f"val_{k}": float(v) for k, v in metrics.items() if _is_number(v)})
            mlflow.log_metrics(
                {
                    f"baseline_{name}_{k}": float(v)
                    for name, values in baselines.items()
                    for k, v in values.items()
                    if _is_number(v)
                }
            )
            for path in artifacts:
                if Path(path).is_file():
                    mlflow.log_artifact(str(path), "evaluation")
            info = log_generator(generator_path, params.prepare.size)
            if data_version:
                mlflow.set_tag(DATA_VERSION_TAG, data_version)
            version = register(
                MlflowClient(), params.mlflow.model_name, info.model_uri, metrics, run.info.run_id, data_version
            )
    except TRACKING_ERRORS as exc:
        _warn("record the evaluation and register the model", exc, uri)
        return None
    print(f"registered {params.mlflow.model_name} version {version} (alias {CHALLENGER}) in {redact_url(uri)}")
    return version


def log_generator(generator_path: str | Path, size: list[int] | tuple[int, int], name: str = MODEL_NAME_IN_RUN):
    """Log a generator state_dict as an MLflow pytorch model in the active run; returns its ModelInfo.

    Saved with ``serialization_format="pt2"`` (torch.export; loads on CPU without unpickling code, with
    both ``mlflow.pytorch.load_model`` and ``mlflow.pyfunc.load_model``). The signature fixes the input at
    (N, 3, H, W) float32 RGB in [0, 1]; the input example has a batch of 2 because torch.export freezes a
    batch dimension of 1. ``metadata.input_size`` = [W, H] tells ``salgan predict`` the training size.
    """
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from salgan.models import load_generator

    generator = load_generator(generator_path, map_location="cpu")
    width, height = int(size[0]), int(size[1])
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, height, width))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, height, width))]),
    )
    torch_version = torch.__version__.split("+")[0]  # "2.14.1+cu130" is not installable from PyPI
    return mlflow.pytorch.log_model(
        generator,
        name=name,
        serialization_format="pt2",
        signature=signature,
        input_example=example_input(height, width),
        pip_requirements=[f"torch=={torch_version}", f"numpy=={np.__version__}"],  # skips slow inference
        metadata={"input_size": [width, height], "width": generator.width, "kind": MODEL_FLAVOUR_TAG},
    )


def example_input(height: int, width: int):
    """(2, 3, H, W) float32 in [0, 1]: a smooth pattern on a 1/8 grid, so its JSON copy stays small."""
    import numpy as np

    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    channels = [rows * cols, rows * (1 - cols), (1 - rows) * cols]
    image = np.round(np.stack(channels) * 8) / 8
    return np.stack([image, 1 - image]).astype(np.float32)


def register(
    client: MlflowClient,
    name: str,
    model_uri: str,
    metrics: dict[str, float],
    run_id: str | None = None,
    data_version: str | None = None,
) -> str:
    """A new version of ``name`` from ``model_uri``, its metrics as version tags (with the version of the
    val split they were measured on as ``data_version``), alias ``challenger``."""
    tags = {k: repr(float(v)) for k, v in metrics.items() if _is_number(v)}
    if data_version:
        tags[DATA_VERSION_TAG] = data_version
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    if run_id:
        tags["run_id"] = run_id
    version = mlflow.register_model(model_uri, name, tags=tags).version
    client.set_registered_model_alias(name, CHALLENGER, version)
    return str(version)


def record_prediction(params: Params, files: list[Path], artifact_dir: str = "predictions", max_files: int = 4) -> None:
    """Log how many files a stage wrote (metric ``n_<artifact_dir>``) and the first few as artifacts."""
    uri = tracking_uri(params)
    try:
        with continue_run(params):
            mlflow.log_metric(f"n_{artifact_dir}", len(files))
            for path in sorted(files)[:max_files]:
                mlflow.log_artifact(str(path), artifact_dir)
    except TRACKING_ERRORS as exc:
        _warn(f"log {artifact_dir}", exc, uri)


def download_model(model_uri: str, params: Params, dst: Path) -> Path:
    """Download an MLflow model (``models:/``, ``runs:/``, logged-model or artifact URI) into ``dst``."""
    configure(params)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # predict shows its own bar
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
