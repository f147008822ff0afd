"""The promotion gate end to end: two trained models, the data changing in between, a real sqlite registry."""

import json
import shutil

import pytest

from salgan.evaluate import evaluate, score_generator
from salgan.layout import split_version
from salgan.models import load_generator
from salgan.registry import gate
from salgan.train import run
from tests.conftest import write_prepared
from tests.test_tracking import tracked_params


def test_the_gate_scores_a_champion_from_older_data_again_on_todays_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    params = tracked_params(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", epochs=2, bce_epochs=1)
    params.evaluate.output, params.evaluate.n_splits = str(tmp_path / "reports"), 10
    data = params.train.data
    run(params)
    evaluate(params)
    first = gate(params)
    assert first["decision"] == "promoted" and first["champion"] is None
    old_data = split_version(data, "val")
    shutil.copy(tmp_path / "models" / "generator.pt", tmp_path / "champion.pt")

    write_prepared(tmp_path / "prepared", seed=7)  # new data: retrain, evaluate, register v2
    run(params)
    metrics = evaluate(params)
    new_data = split_version(data, "val")
    assert new_data != old_data and metrics["data_version"] == new_data

    result = gate(params)
    champion, challenger = result["champion"], result["challenger"]
    assert champion["version"] == "1" and champion["rescored"] and champion["data_version"] == new_data
    assert challenger["version"] == "2" and not challenger["rescored"] and challenger["data_version"] == new_data
    expected = score_generator(load_generator(tmp_path / "champion.pt"), params)[1]
    assert champion["value"] == pytest.approx(expected["nss"], rel=1e-6)
    assert challenger["value"] == pytest.approx(json.loads((tmp_path / "reports" / "metrics.json").read_text())["nss"])
    assert result["decision"] == ("promoted" if challenger["value"] > champion["value"] else "kept")
