"""Encoders and losses beyond the paper, trained on the offline sample (SALICON's format, generated) and
scored by the evaluate stage: each must beat the centre bias on NSS, and what it trained must be usable
by whatever reads a model without repeating its settings."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from salgan import download, evaluate, predict_tool, prepare, train
from salgan.settings import load_params
from tests.conftest import write_params_file

SAMPLE = {
    "download": {"sample_train": 120, "sample_val": 16, "sample_test": 4},
    "prepare": {"size": [96, 64], "workers": 1},  # the smallest a stride-32 encoder takes at 3:2 (3x2 cells)
    "train": {"batch_size": 8, "nproc": 1, "device": "cpu"},
    "evaluate": {"n_splits": 10, "grid_images": 2},
}
METRIC_LOSS = {"kld": 1.0, "cc": -0.2, "nss": -0.1}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """The offline sample downloaded and prepared once at 96x64: 120 train, 16 val, 4 test images."""
    root = tmp_path_factory.mktemp("sample")
    params = write_params_file(root / "params.yaml", _absolute(root, SAMPLE | {"mlflow": {"enabled": False}}))
    assert download.main(["--params", str(params)]) == 0
    assert prepare.main(["--params", str(params)]) == 0
    return root


def _absolute(root: Path, settings: dict) -> dict:
    """``settings`` with every stage's folders under ``root``."""
    folders = {
        "download": {"output": "raw", "cache_dir": "downloads"},
        "prepare": {"input": "raw", "output": "prepared"},
        "train": {"data": "prepared", "output": "models"},
        "evaluate": {"output": "reports"},
        "predict": {"output": "test_maps"},
    }
    merged = {section: dict(values) for section, values in settings.items()}
    for section, paths in folders.items():
        merged.setdefault(section, {}).update({key: str(root / value) for key, value in paths.items()})
    return merged


def _train_and_evaluate(sample: Path, run: Path, model: dict, train_settings: dict, mlflow: dict) -> dict:
    settings = _absolute(sample, SAMPLE | {"model": model, "mlflow": mlflow})
    settings["train"] |= train_settings | {"output": str(run / "models")}
    settings["evaluate"]["output"] = str(run / "reports")
    params = load_params(write_params_file(run / "params.yaml", settings))
    assert train.run(params) == 0
    return evaluate.evaluate(params)


# Each arm: (model, content loss, epochs), its epochs what beats the centre bias's NSS by more than 0.5 with
# room to spare over train.seed 0-2 (NSS against the centre bias's 0.52: ResNet-18 3.51-3.76, MobileNet
# 2.85-3.45, VGG16 with the metric loss 2.70-2.87, where 4 epochs gave it 1.12-1.64).
ARMS = {
    "resnet18": ({"encoder": "resnet18", "width": 1.0}, "bce", 3),  # the ResNet family (resnet50 is deeper)
    "mobilenet_v3_large-0.5": ({"encoder": "mobilenet_v3_large", "width": 0.5}, "bce", 4),
    "vgg16-kld-cc-nss": ({"encoder": "vgg16", "width": 0.125}, METRIC_LOSS, 8),  # SAM's KLD - CC - NSS
}
REGISTERED = "resnet18"  # the arm evaluate registers in an MLflow store (the registry test predicts from it)


@pytest.fixture(scope="module")
def trained(sample, tmp_path_factory):
    """Each arm trained and evaluated once for the module, on demand: ``trained(arm)`` is its run folder,
    the metrics evaluate returned and the MLflow store it was registered in (None: MLflow off)."""
    done = {}

    def train_arm(arm: str) -> tuple[Path, dict, str | None]:
        if arm not in done:
            run = tmp_path_factory.mktemp(arm)
            model, content_loss, epochs = ARMS[arm]
            uri = f"sqlite:///{run / 'mlflow.db'}" if arm == REGISTERED else None
            mlflow = {"enabled": True, "tracking_uri": uri, "experiment": "encoders"} if uri else {"enabled": False}
            train_settings = {"epochs": epochs, "bce_epochs": epochs, "content_loss": content_loss}
            metrics = _train_and_evaluate(sample, run, model | {"encoder_weights": "none"}, train_settings, mlflow)
            done[arm] = run, metrics, uri
        return done[arm]

    return train_arm


@pytest.mark.slow
@pytest.mark.parametrize("arm", list(ARMS))
def test_each_encoder_and_the_metric_loss_beat_the_centre_bias_on_nss(trained, arm):
    run, metrics, _ = trained(arm)
    content_loss = ARMS[arm][1]
    centre = metrics["baselines"]["center_bias"]
    assert metrics["nss"] > centre["nss"] + 0.5, (metrics["nss"], centre["nss"])
    assert metrics["cc"] > centre["cc"]
    cost = metrics["cost"]
    assert cost["params_m"] > 0 and cost["gflops"] > 0 and cost["train_images_per_s"] > 0
    history = json.loads((run / "models" / "history.json").read_text())
    assert history[-1]["val_content_loss"] < history[0]["val_content_loss"]  # the configured loss fell
    if content_loss != "bce":  # the metric loss improves the metrics it is made of, KLD included
        assert metrics["kld"] < centre["kld"]


@pytest.mark.slow
def test_a_registered_resnet_predicts_from_the_registry_with_no_setting_repeated(trained, tmp_path, monkeypatch):
    """evaluate registers the ResNet model; `salgan predict --model models:/salgan/1` in another folder (no
    params.yaml there) rebuilds it from the model alone and writes the same maps as its weights file."""
    run, _, uri = trained(REGISTERED)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    image = elsewhere / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(image)
    assert predict_tool.main(["--model", "models:/salgan/1", "--output", "from_registry", str(image)]) == 0
    weights = str(run / "models" / "generator.pt")
    assert predict_tool.main(["--model", weights, "--output", "from_weights", str(image)]) == 0
    registry_map = np.asarray(Image.open(elsewhere / "from_registry" / "photo.png"))
    assert registry_map.shape == (150, 200) and registry_map.std() > 0
    assert np.array_equal(registry_map, np.asarray(Image.open(elsewhere / "from_weights" / "photo.png")))
    assert not os.path.exists(elsewhere / "params.yaml")
