"""The generator as an MLflow model: logged by evaluation with its metrics, fetched again by predict."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow.artifacts
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, Metric
from mlflow.models import Model

from salgan.layout import DATA_VERSION_TAG, LOGGED_WEIGHTS, MODEL_KIND, sha256_file
from salgan.settings import Params, PredictParams
from salgan.tracking.fingerprint import FINGERPRINT_TAG, encode
from salgan.tracking.registry import CHALLENGER, WEIGHTS_TAG, logged_model_id, register, version_with_weights
from salgan.tracking.runs import continued_run, git_commit, is_number
from salgan.tracking.store import TRACKING_ERRORS, client, configure_environment, tracking_uri, warn_unavailable
from salgan.urls import REGISTRY_URI, redact_url

log = logging.getLogger(__name__)

MODEL_NAME_IN_RUN = "model"


def record_evaluation(
    params: Params,
    metrics: dict[str, float],
    baselines: dict[str, dict[str, float]],
    artifacts: list[Path],
    generator_path: Path,
    data_version: str | None = None,
    fingerprint: dict | None = None,
    extra_tags: dict[str, str] | None = None,
) -> str | None:
    """Log the evaluation to the pipeline's run and register the generator as the ``challenger``.

    The run gets the baselines' metrics and the report files; the generator's logged model gets the val
    metrics (``val_<metric>``, linked to both the run and the model); the registered version gets its
    weights' hash, the val split's ``data_version``, the scoring ``fingerprint`` the metrics were taken
    under (:mod:`salgan.tracking.fingerprint`), the run and the git commit as tags. When the same weights are
    registered already (evaluate rerun on other data, or with other scoring settings), that version is
    reused: its fingerprint is removed before the new metrics are logged and set after, so that no reader
    pairs the new numbers with the old fingerprint. Returns the version, or None (after one warning) when
    MLflow is unreachable.
    """
    uri, name = tracking_uri(params), params.mlflow.model_name
    try:
        with continued_run(params) as (mlflow_client, run_id):
            baseline = {f"baseline_{side}_{k}": v for side, values in baselines.items() for k, v in values.items()}
            mlflow_client.log_batch(run_id, metrics=_metrics(baseline))
            for path in artifacts:
                if Path(path).is_file():
                    mlflow_client.log_artifact(run_id, str(path), "evaluation")
            weights = sha256_file(generator_path)
            existing = version_with_weights(mlflow_client, name, weights)
            model_id = logged_model_id(mlflow_client, existing) if existing is not None else None
            if model_id is None:
                model_id = log_generator(mlflow_client, run_id, generator_path, params.prepare.size, params.predict)
            elif FINGERPRINT_TAG in existing.tags:
                mlflow_client.delete_model_version_tag(name, existing.version, FINGERPRINT_TAG)
            val = _metrics({f"val_{k}": v for k, v in metrics.items()}, model_id=model_id)
            mlflow_client.log_batch(run_id, metrics=val)
            tags = {"run_id": run_id}
            if fingerprint:
                tags[FINGERPRINT_TAG] = encode(fingerprint)
            if data_version:
                tags[DATA_VERSION_TAG] = data_version
                mlflow_client.set_tag(run_id, DATA_VERSION_TAG, data_version)
            commit = git_commit()
            if commit:
                tags["git_commit"] = commit
            tags |= extra_tags or {}  # the datasets it was trained and scored on (salgan.finetune.dataset_tags)
            version = register(mlflow_client, name, model_id, run_id, weights, tags, existing)
    except TRACKING_ERRORS as exc:
        warn_unavailable("record the evaluation and register the model", exc, uri)
        return None
    how = "the same weights as" if existing is not None else "new"
    log.info("registered %s version %s (%s version; alias %s) in %s", name, version, how, CHALLENGER, redact_url(uri))
    return version


def _metrics(values: dict[str, float], model_id: str | None = None) -> list[Metric]:
    """The numbers of ``values`` as metrics at step 0 (linked to the logged model ``model_id``)."""
    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, 0, model_id=model_id) for key, value in values.items() if is_number(value)]


def log_generator(
    mlflow_client: MlflowClient,
    run_id: str,
    generator_path: str | Path,
    size: list[int] | tuple[int, int],
    options: PredictParams,
    name: str = MODEL_NAME_IN_RUN,
) -> str:
    """Log a generator state_dict as salgan's MLflow pyfunc model of run ``run_id``; returns its model id
    (``models:/<id>`` is its URI).

    The model (salgan/serving.py) takes encoded images and returns maps at each image's size, through
    ``mlflow.pyfunc.load_model`` and ``mlflow models serve``; its folder holds the plain state_dict as
    ``extra_files/generator.pt``, the one file salgan reads back (:func:`salgan.models.load_generator`).
    ``metadata.input_size`` = [W, H] tells ``salgan predict`` the training size, ``metadata.encoder`` the
    network, ``metadata.output`` whether it outputs a map or a density (``model.output``) and
    ``metadata.kind`` that salgan made it. ``options``: the ``predict`` settings the model serves with
    (batch size, blur, pixel limit; a density model's metric-map settings).

    Logged through the client API (as ``mlflow.models.Model.log`` does with the fluent API's state): a
    logged model made in the run's experiment, the folder written by salgan's flavor and uploaded, the
    model marked ready and named as the run's output.
    """
    from salgan import serving
    from salgan.models import load_generator
    from salgan.models.density import output_of

    generator = load_generator(generator_path).generator
    width, height = int(size[0]), int(size[1])
    run = mlflow_client.get_run(run_id)
    model = mlflow_client.create_logged_model(
        run.info.experiment_id, name=name, source_run_id=run_id, params=dict(run.data.params)
    )
    mlflow_client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    metadata = {"input_size": [width, height], "encoder": generator.encoder_name, "width": generator.width}
    metadata["output"] = output_of(generator)  # map | density (model.output)
    mlflow_model = Model(
        artifact_path=model.artifact_location,
        model_uuid=model.model_id,
        run_id=run_id,
        model_id=model.model_id,
        metadata=metadata | {"kind": MODEL_KIND},
    )
    with tempfile.TemporaryDirectory(prefix="salgan-model-") as tmp:
        serving.save_model(Path(tmp) / "model", mlflow_model, generator_path, (width, height), options)
        mlflow_client.log_model_artifacts(model.model_id, str(Path(tmp) / "model"))
    mlflow_client.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def download_model(model_uri: str, params: Params, dst: Path) -> Path:
    """Download an MLflow model (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-ID``,
    ``runs:/`` or an artifact URI) into ``dst``."""
    configure_environment()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # predict shows its own bar
    uri = tracking_uri(params)
    files = model_files_uri(client(params), model_uri)
    return Path(mlflow.artifacts.download_artifacts(files, dst_path=str(dst), tracking_uri=uri, registry_uri=uri))


def model_files_uri(mlflow_client: MlflowClient, model_uri: str) -> str:
    """Where the files of ``model_uri`` are, a ``models:/`` URI resolved through ``mlflow_client`` (MLflow's
    own resolution of one reads its process-wide registry URI, which salgan never sets)."""
    if not model_uri.startswith("models:/"):
        return model_uri
    if model_uri.startswith("models:/m-"):  # a logged model
        return mlflow_client.get_logged_model(model_uri.removeprefix("models:/")).artifact_location
    match = REGISTRY_URI.fullmatch(model_uri)
    if match is None:
        raise ValueError(f"{model_uri}: expected models:/NAME@ALIAS, models:/NAME/VERSION or models:/m-ID")
    version = match["version"] or mlflow_client.get_model_version_by_alias(match["name"], match["alias"]).version
    return mlflow_client.get_model_version_download_uri(match["name"], str(version))


# --- the local cache of registered models -------------------------------------------------------------

CACHE_ENV = "SALGAN_CACHE_DIR"


def cache_root() -> Path:
    """``$SALGAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/salgan``, else ``~/.cache/salgan``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "salgan"


@contextlib.contextmanager
def fetched_model(model_uri: str, params: Params) -> Iterator[Path]:
    """The MLflow model at ``model_uri`` as a local folder.

    A registry URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``) is resolved to its version first (one
    metadata call) and kept in :func:`cache_root` by tracking server, name and version: the next use of
    the same version downloads nothing, and an alias that moved fetches the version it now names. A cached
    copy is used only while its weights still hash to the version's ``weights_sha256`` tag; processes
    fetching one version take turns (a file lock beside its folder). Other URIs are
    downloaded into a temporary folder, removed afterwards, as are registered names that are not plain
    folder names.
    """
    match = REGISTRY_URI.fullmatch(model_uri)  # its name is safe as a folder name
    if match is None:
        with tempfile.TemporaryDirectory(prefix="salgan-model-") as tmp:
            yield download_model(model_uri, params, Path(tmp))
        return
    mlflow_client = client(params)
    name = match["name"]
    version = mlflow_client.get_model_version_by_alias(name, match["alias"]) if match["alias"] else None
    version = version or mlflow_client.get_model_version(name, match["version"])
    server = hashlib.sha256(redact_url(tracking_uri(params)).encode()).hexdigest()[:12]
    folder = cache_root() / "models" / server / name / str(version.version)
    expected = version.tags.get(WEIGHTS_TAG)
    weights = folder / LOGGED_WEIGHTS
    folder.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock  # torch's own dependency

    # One fetch per version at a time: a second process waits, then finds the copy valid and leaves it in
    # place, so a folder another process is reading is never removed under it.
    with FileLock(folder.parent / f".{folder.name}.fetch.lock"):
        if not (weights.is_file() and expected and sha256_file(weights) == expected):
            with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder.parent) as tmp:
                local = download_model(f"models:/{name}/{version.version}", params, Path(tmp))
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(local, folder)  # whole or not at all: a killed fetch leaves no half model
    yield folder
