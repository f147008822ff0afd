"""The promotion gate end to end: models trained and evaluated by the stages, a real sqlite registry."""

import json
import shutil

import numpy as np
import pytest

from flows.retrain import decision_markdown, run_promotion
from salgan import registry
from salgan.evaluate import evaluate, score_generator
from salgan.layout import split_version
from salgan.models import load_generator
from salgan.registry import gate
from salgan.tracking.registry import CHALLENGER, CHAMPION, describe
from salgan.train import run
from tests.conftest import write_params_file, write_prepared
from tests.test_registry import alias, register
from tests.test_tracking import tracked_params


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    params = tracked_params(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", epochs=2, bce_epochs=1)
    params.evaluate.output, params.evaluate.n_splits = str(tmp_path / "reports"), 10
    params.mlflow.experiment = "salgan"
    return params


def test_the_flow_gates_its_own_version_and_scores_a_champion_from_older_data_again(workspace, tmp_path):
    params = workspace
    data = params.train.data
    run(params)
    evaluate(params)
    register(params, 11, {"nss": 99.0})  # another checkout registers meanwhile: the challenger alias moves
    assert alias(params, CHALLENGER) == "2"
    first = run_promotion(params, "nss", 0.0, floor=False)  # the flow gates the version its evaluate registered
    assert first["decision"] == "promoted" and first["challenger"]["version"] == "1" and alias(params, CHAMPION) == "1"
    old_data = split_version(data, "val")
    shutil.copy(tmp_path / "models" / "generator.pt", tmp_path / "champion.pt")

    write_prepared(tmp_path / "prepared", seed=7)  # new data: retrain, evaluate, register v3
    run(params)
    metrics = evaluate(params)
    new_data = split_version(data, "val")
    assert new_data != old_data and metrics["data_version"] == new_data == metrics["fingerprint"]["val"]

    result = run_promotion(params, "nss", 0.0)
    champion, challenger = result["champion"], result["challenger"]
    assert champion["version"] == "1" and champion["rescored"] and champion["differs"] == ["val", "train"]
    assert challenger["version"] == "3" and not challenger["rescored"] and challenger["data_version"] == new_data
    expected = score_generator(load_generator(tmp_path / "champion.pt").generator, params)[1]
    assert champion["value"] == pytest.approx(expected["nss"], rel=1e-6)
    assert challenger["value"] == pytest.approx(json.loads((tmp_path / "reports" / "metrics.json").read_text())["nss"])
    assert result["decision"] == ("promoted" if challenger["value"] > champion["value"] else "kept")

    report = decision_markdown(result, "nss", 0.0)
    assert f"| val | {new_data} | {new_data} | {old_data} |" in report  # today, challenger, champion
    assert "- champion v1: scored again; its fingerprint differs in val, train" in report
    assert "- challenger v3: its recorded numbers, taken under today's fingerprint" in report
    assert "v1 scored again" in report and f"data version `{new_data}`" in report


def centre_biased_val(root) -> None:
    """Val fixations and maps in a central block of every 480x640 image, as real viewers' (the prepared
    images keep their off-centre squares: a model of them misses the centre)."""
    folder = root / "val"
    n = len(json.loads((folder / "names.json").read_text()))
    rng = np.random.default_rng(5)
    maps = np.zeros((n, 480, 640), dtype=np.uint8)
    maps[:, 180:300, 240:400] = 255
    coords = [np.stack([rng.integers(180, 300, 12), rng.integers(240, 400, 12)], axis=1) for _ in range(n)]
    np.save(folder / "maps_full.npy", maps)
    offsets = np.arange(n + 1) * 12
    np.savez(folder / "fixations.npz", coords=np.concatenate(coords).astype(np.int32), offsets=offsets)


def test_a_first_model_below_the_centre_bias_is_not_promoted_unless_asked(workspace, tmp_path, capsys):
    params = workspace
    params.train.epochs = params.train.bce_epochs = 1
    centre_biased_val(tmp_path / "prepared")
    run(params)
    metrics = evaluate(params)
    bar = metrics["baselines"]["center_bias"]["nss"]
    assert metrics["nss"] < bar  # evaluate's own numbers: the model is below the centre bias

    result = gate(params)
    assert result["decision"] == "kept" and result["champion"] is None
    assert result["floor"]["center_bias"] == pytest.approx(bar, rel=1e-9)
    assert result["challenger"]["value"] == pytest.approx(metrics["nss"], rel=1e-9)
    assert "does not beat the centre-bias baseline" in result["reason"] and "--no-floor" in result["reason"]
    assert "did not promote version 1 (champion stays unset)" in describe(result)
    with pytest.raises(Exception, match="alias"):
        alias(params, CHAMPION)

    write_params_file(tmp_path / "params.yaml", json.loads(params.model_dump_json()))
    assert registry.main(["promote", "--no-floor"]) == 0
    assert "promoted version 1 to champion" in capsys.readouterr().out and alias(params, CHAMPION) == "1"
