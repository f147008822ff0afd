"""The generator as an MLflow model: logged by evaluation with its metrics, fetched again by predict."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from salgan.layout import DATA_VERSION_TAG, MODEL_KIND, sha256_file
from salgan.settings import Params
from salgan.tracking.registry import CHALLENGER, logged_model_id, register, version_with_weights
from salgan.tracking.runs import continue_run, git_commit, is_number
from salgan.tracking.store import TRACKING_ERRORS, configure, tracking_uri, warn_unavailable
from salgan.urls import redact_url

MODEL_NAME_IN_RUN = "model"


def record_evaluation(
    params: Params,
    metrics: dict[str, float],
    baselines: dict[str, dict[str, float]],
    artifacts: list[Path],
    generator_path: Path,
    data_version: str | None = None,
) -> str | None:
    """Log the evaluation to the pipeline's run and register the generator as the ``challenger``.

    The run gets the baselines' metrics and the report files; the generator's logged model gets the val
    metrics (``val_<metric>``, linked to both the run and the model); the registered version gets its
    weights' hash, the val split's ``data_version``, the run and the git commit as tags. When the same
    weights are registered already (evaluate rerun on other data, or with other scoring settings), that
    version is reused. Returns the version, or None (after one warning) when MLflow is unreachable.
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
                info = log_generator(generator_path, params.prepare.size)
                model_id, model_uri, existing = info.model_id, info.model_uri, None
            mlflow.log_metrics({f"val_{k}": float(v) for k, v in metrics.items() if is_number(v)}, model_id=model_id)
            tags = {"run_id": run.info.run_id}
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


def log_generator(generator_path: str | Path, size: list[int] | tuple[int, int], name: str = MODEL_NAME_IN_RUN):
    """Log a generator state_dict as an MLflow pytorch model in the active run; returns its ModelInfo.

    Saved with ``serialization_format="pt2"`` (torch.export; it serves through ``mlflow.pyfunc`` and
    ``mlflow models serve``), plus the plain state_dict as ``extra_files/generator.pt``: the one file
    salgan itself reads back (``torch.load(weights_only=True)``, see ``salgan.predict``). The signature
    fixes the input at (N, 3, H, W) float32 RGB in [0, 1]; the input example has a batch of 2 because
    torch.export freezes a batch dimension of 1. ``metadata.input_size`` = [W, H] tells ``salgan predict``
    the training size and ``metadata.kind`` that salgan made it.
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
        metadata={
            "input_size": [width, height],
            "encoder": generator.encoder_name,
            "width": generator.width,
            "kind": MODEL_KIND,
        },
        extra_files=[str(generator_path)],
    )


def example_input(height: int, width: int):
    """(2, 3, H, W) float32 in [0, 1]: a smooth pattern on a 1/8 grid, so its JSON copy stays small."""
    import numpy as np

    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    channels = [rows * cols, rows * (1 - cols), (1 - rows) * cols]
    image = np.round(np.stack(channels) * 8) / 8
    return np.stack([image, 1 - image]).astype(np.float32)


def download_model(model_uri: str, params: Params, dst: Path) -> Path:
    """Download an MLflow model (``models:/``, ``runs:/``, logged-model or artifact URI) into ``dst``."""
    configure(params)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # predict shows its own bar
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
