"""Fine-tuning from the registry (``model.init_from``): SALICON pre-training registered in MLflow (a real
sqlite store), then MIT1003 fine-tuning from ``models:/salgan/1``; and cross-dataset evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from salgan import download, finetune, prepare
from salgan.distributed import DistInfo
from salgan.evaluate import evaluate, evaluate_model
from salgan.settings import params_from_dict
from salgan.train import build_models, run
from tests import dataset_trees as trees
from tests.conftest import same_weights, weights, write_prepared

TINY_MODEL = {"encoder_weights": "none", "freeze_blocks": 0, "width": 0.0625}
TINY_TRAIN = {"epochs": 1, "bce_epochs": 1, "batch_size": 4, "device": "cpu", "nproc": 1}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A SALICON-format model trained, evaluated and registered as version 1 (tests/conftest.py's tree)."""
    root = tmp_path_factory.mktemp("finetune")
    params = params_from_dict(
        {
            "prepare": {"size": [64, 48]},
            "model": TINY_MODEL,
            "train": TINY_TRAIN | {"data": str(write_prepared(root / "salicon")), "output": str(root / "models")},
            "evaluate": {"output": str(root / "reports"), "n_splits": 5, "grid_images": 2},
            "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
        }
    )
    run(params)
    evaluate(params)
    return root, params


@pytest.fixture(scope="module")
def mit1003(pretrained):
    """A prepared MIT1003 tree and settings that fine-tune from version 1 with another width in model.*."""
    root, base = pretrained
    trees.write_mit1003(root / "src", 12)
    settings = params_from_dict(
        {
            "download": {"dataset": "mit1003", "source": str(root / "src"), "output": str(root / "raw")}
            | {"val_fraction": 0.25},
            "prepare": {"input": str(root / "raw"), "output": str(root / "mit1003"), "size": [64, 48], "workers": 1},
            "model": TINY_MODEL | {"width": 0.125, "init_from": "models:/salgan/1"},  # the width is the model's
            "train": TINY_TRAIN | {"data": str(root / "mit1003"), "output": str(root / "finetuned")},
            "evaluate": {"output": str(root / "reports-mit1003"), "n_splits": 5, "grid_images": 2},
            "mlflow": {"tracking_uri": base.mlflow.tracking_uri},
        }
    )
    download.run(settings.download, progress=False)
    prepare.prepare(settings.prepare, progress=False, download=settings.download)
    return root, settings


def registered_weights(params, version: int) -> dict:
    """A registered version's generator weights, fetched with MLflow itself (not salgan's loader), through an
    explicit client: no process-wide tracking URI is set (salgan sets none either)."""
    import mlflow
    from mlflow import MlflowClient

    uri = params.mlflow.tracking_uri
    source = MlflowClient(uri, registry_uri=uri).get_model_version("salgan", str(version)).source
    folder = mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=uri)
    return weights(Path(folder) / "extra_files" / "generator.pt")


def test_training_starts_from_the_registered_weights_and_architecture(mit1003):
    _, params = mit1003
    init = finetune.resolve(params)
    info = DistInfo(0, 1, 0, 1, torch.device("cpu"))
    models = build_models(params, (64, 48), info, init)
    # step 0: exactly version 1's weights, at its width 1/16 (model.width 0.125 does not apply)
    assert same_weights(models.generator.state_dict(), registered_weights(params, 1))
    assert models.generator.width == 0.0625
    assert init.trained_on == ["salicon"]  # version 1's trained_on tag
    # without init_from: a fresh generator of model.width
    fresh = build_models(params.model_copy(update={"model": params.model.model_copy(update={"init_from": "none"})}),
                         (64, 48), info)  # fmt: skip
    assert fresh.generator.width == 0.125


def test_a_fine_tuned_version_names_both_datasets_and_the_gate_rescoring_the_other_dataset(mit1003, pretrained):
    root, params = mit1003
    _, base = pretrained
    run(params)
    lineage = json.loads((root / "finetuned" / "lineage.json").read_text())
    assert lineage["trained_on"] == ["salicon", "mit1003"] and lineage["init_from"] == "models:/salgan/1"
    trained = weights(root / "finetuned" / "generator.pt")
    assert trained.keys() == registered_weights(params, 1).keys()  # the registered architecture, trained on
    assert not same_weights(trained, registered_weights(params, 1))
    metrics = evaluate(params)
    assert metrics["datasets"] == {
        "trained_on": "salicon,mit1003",
        "scored_on": "mit1003",
        "init_from": "models:/salgan/1",
    }

    from mlflow import MlflowClient

    from salgan.registry import gate

    client = MlflowClient(params.mlflow.tracking_uri)
    first, second = client.get_model_version("salgan", "1"), client.get_model_version("salgan", "2")
    assert (first.tags["trained_on"], first.tags["scored_on"]) == ("salicon", "salicon")
    assert (second.tags["trained_on"], second.tags["scored_on"]) == ("salicon,mit1003", "mit1003")
    assert second.tags["init_from"] == "models:/salgan/1"
    # The gate compares on today's data only: version 1's SALICON scores differ from MIT1003's in the val
    # split's version, so it is scored again on MIT1003; version 2's were taken on MIT1003 and are used.
    client.set_registered_model_alias("salgan", "champion", "1")
    result = gate(params, version=2)
    assert "val" in result["champion"]["differs"] and result["champion"]["rescored"]
    assert not result["challenger"]["rescored"]
    assert result["data_version"] == metrics["data_version"]


def test_a_salicon_model_scored_on_mit1003_without_training(mit1003, pretrained):
    """`salgan evaluate --model models:/salgan/1` on the MIT1003 val split: same metrics and baselines."""
    root, params = mit1003
    metrics = evaluate_model(params, "models:/salgan/1", root / "cross")
    written = json.loads((root / "cross" / "metrics.json").read_text())
    assert written == metrics and metrics["datasets"] == {"scored_on": "mit1003"}
    assert metrics["n_images"] == 3 and set(metrics["baselines"]) == {"center_bias", "ground_truth"}
    assert metrics["baselines"]["ground_truth"]["cc"] == pytest.approx(1.0)
    assert (root / "cross" / "per_image.csv").read_text().count("\n") == 1 + 3
    # the same model file scores the same: the URI and the weights file are one model
    again = evaluate_model(params, str(pretrained[0] / "models" / "generator.pt"), root / "cross-file")
    assert again["nss"] == pytest.approx(metrics["nss"]) and again["cc"] == pytest.approx(metrics["cc"])
