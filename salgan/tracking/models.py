"""The generator as an MLflow model: logged by evaluation with its metrics, fetched again by predict."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from salgan.layout import DATA_VERSION_TAG, LOGGED_WEIGHTS, MODEL_KIND, sha256_file
from salgan.settings import Params, PredictParams
from salgan.tracking.fingerprint import FINGERPRINT_TAG, encode
from salgan.tracking.registry import CHALLENGER, WEIGHTS_TAG, logged_model_id, register, version_with_weights
from salgan.tracking.runs import continue_run, git_commit, is_number
from salgan.tracking.store import TRACKING_ERRORS, configure, tracking_uri, warn_unavailable
from salgan.urls import REGISTRY_URI, redact_url

MODEL_NAME_IN_RUN = "model"


def record_evaluation(
    params: Params,
    metrics: dict[str, float],
    baselines: dict[str, dict[str, float]],
    artifacts: list[Path],
    generator_path: Path,
    data_version: str | None = None,
    fingerprint: dict | None = None,
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
        with continue_run(params) as run:
            mlflow.log_metrics(
                {
                    f"baseline_{side}_{k}": float(v)
                    for side, values in baselines.items()
                    for k, v in values.items()
                    if is_number(v)
                }
            )
            for path in artifacts:
                if Path(path).is_file():
                    mlflow.log_artifact(str(path), "evaluation")
            client = MlflowClient()
            weights = sha256_file(generator_path)
            existing = version_with_weights(client, name, weights)
            model_id = logged_model_id(existing) if existing is not None else None
            model_uri = None
            if model_id is None:
                info = log_generator(generator_path, params.prepare.size, options=params.predict)
                model_id, model_uri, existing = info.model_id, info.model_uri, None
            elif FINGERPRINT_TAG in existing.tags:
                client.delete_model_version_tag(name, existing.version, FINGERPRINT_TAG)
            mlflow.log_metrics({f"val_{k}": float(v) for k, v in metrics.items() if is_number(v)}, model_id=model_id)
            tags = {"run_id": run.info.run_id}
            if fingerprint:
                tags[FINGERPRINT_TAG] = encode(fingerprint)
            if data_version:
                tags[DATA_VERSION_TAG] = data_version
                mlflow.set_tag(DATA_VERSION_TAG, data_version)
            commit = git_commit()
            if commit:
                tags["git_commit"] = commit
            version = register(client, name, model_uri, weights, tags, existing)
    except TRACKING_ERRORS as exc:
        warn_unavailable("record the evaluation and register the model", exc, uri)
        return None
    how = "the same weights as" if existing is not None else "new"
    print(f"registered {name} version {version} ({how} version; alias {CHALLENGER}) in {redact_url(uri)}")
    return version


def log_generator(
    generator_path: str | Path,
    size: list[int] | tuple[int, int],
    name: str = MODEL_NAME_IN_RUN,
    options: PredictParams | None = None,
):
    """Log a generator state_dict as salgan's MLflow pyfunc model in the active run; returns its ModelInfo.

    The model (salgan/serving.py) takes encoded images and returns maps at each image's size, through
    ``mlflow.pyfunc.load_model`` and ``mlflow models serve``; its folder holds the plain state_dict as
    ``extra_files/generator.pt``, the one file salgan reads back (``torch.load(weights_only=True)``, see
    ``salgan.predict``). ``metadata.input_size`` = [W, H] tells ``salgan predict`` the training size,
    ``metadata.encoder`` the network and ``metadata.kind`` that salgan made it. ``options``: the
    ``predict`` settings the model serves with (blur, pixel limit).
    """
    from mlflow.models import Model

    from salgan import serving
    from salgan.models import load_generator

    options = options or PredictParams()
    generator = load_generator(generator_path).generator
    width, height = int(size[0]), int(size[1])
    return Model.log(
        artifact_path=None,
        name=name,
        flavor=serving,
        generator_path=str(generator_path),
        size=(width, height),
        options=options,
        metadata={
            "input_size": [width, height],
            "encoder": generator.encoder_name,
            "width": generator.width,
            "kind": MODEL_KIND,
        },
        # MLflow would load the model again through pyfunc and check every installed package's version
        # against its requirements to validate the input example (seconds per evaluation); tests/
        # test_serving.py serves the logged model for real instead.
        validate_serving_input=False,
    )


def download_model(model_uri: str, params: Params, dst: Path) -> Path:
    """Download an MLflow model (``models:/``, ``runs:/``, logged-model or artifact URI) into ``dst``."""
    configure(params)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # predict shows its own bar
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))


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
    copy is used only while its weights still hash to the version's ``weights_sha256`` tag. Other URIs are
    downloaded into a temporary folder, removed afterwards, as are registered names that are not plain
    folder names.
    """
    configure(params)
    match = REGISTRY_URI.fullmatch(model_uri)  # its name is safe as a folder name
    if match is None:
        with tempfile.TemporaryDirectory(prefix="salgan-model-") as tmp:
            yield download_model(model_uri, params, Path(tmp))
        return
    client = MlflowClient()
    name = match["name"]
    version = client.get_model_version_by_alias(name, match["alias"]) if match["alias"] else None
    version = version or client.get_model_version(name, match["version"])
    server = hashlib.sha256(redact_url(tracking_uri(params)).encode()).hexdigest()[:12]
    folder = cache_root() / "models" / server / name / str(version.version)
    expected = version.tags.get(WEIGHTS_TAG)
    weights = folder / LOGGED_WEIGHTS
    if not (weights.is_file() and expected and sha256_file(weights) == expected):
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder.parent) as tmp:
            local = download_model(f"models:/{name}/{version.version}", params, Path(tmp))
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(local, folder)  # whole or not at all: a killed fetch leaves no half model
    yield folder
