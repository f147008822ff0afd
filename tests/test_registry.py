"""Champion/challenger promotion on a real sqlite registry (versions without model files: fast)."""

import shutil

import pytest
from mlflow import MlflowClient

from salgan import registry
from salgan.tracking import registry as policy
from salgan.tracking.registry import CHALLENGER, CHAMPION, PREVIOUS, PromotionError, promote


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """A migrated sqlite store, made once: creating the tables costs seconds, copying the file does not."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def client(tmp_path, monkeypatch, empty_store):
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the CLI takes the defaults and the env URI
    client = MlflowClient(uri)
    client.create_registered_model("salgan")
    return client


def add_challenger(client: MlflowClient, data_version: str | None = None, **metrics) -> str:
    """A new version tagged with ``metrics`` (measured on ``data_version``) and aliased challenger, as
    evaluate registers it."""
    tags = {k: repr(float(v)) for k, v in metrics.items()}
    if data_version:
        tags["data_version"] = data_version
    version = client.create_model_version("salgan", source="file:///nowhere/model", tags=tags).version
    client.set_registered_model_alias("salgan", CHALLENGER, version)
    return str(version)


def champion(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias("salgan", CHAMPION).version)


def test_first_model_becomes_champion(client):
    add_challenger(client, nss=1.0)
    result = promote(client, "salgan")
    assert result["decision"] == "promoted" and result["champion"] is None
    assert champion(client) == "1"


def test_better_moves_worse_stays(client):
    add_challenger(client, nss=1.0, kld=1.0)
    promote(client, "salgan")
    add_challenger(client, nss=1.2, kld=1.5)
    better = promote(client, "salgan", "nss")
    assert better["decision"] == "promoted" and champion(client) == "2"
    assert str(client.get_model_version_by_alias("salgan", PREVIOUS).version) == "1"
    assert better["delta"] == pytest.approx(0.2)

    add_challenger(client, nss=1.1, kld=0.5)
    worse = promote(client, "salgan", "nss")
    assert worse["decision"] == "kept" and champion(client) == "2"
    # kld: lower is better, so the same version wins on it
    assert promote(client, "salgan", "kld")["decision"] == "promoted" and champion(client) == "3"


def test_min_delta_is_respected(client):
    add_challenger(client, nss=1.0)
    promote(client, "salgan")
    add_challenger(client, nss=1.05)
    assert promote(client, "salgan", "nss", min_delta=0.1)["decision"] == "kept"
    assert champion(client) == "1"
    assert promote(client, "salgan", "nss", min_delta=0.01)["decision"] == "promoted"
    assert champion(client) == "2"


def test_no_challenger_is_an_error(client, capsys):
    with pytest.raises(PromotionError, match="challenger"):
        promote(client, "salgan")
    assert registry.main(["promote"]) == 1
    assert "no 'challenger'" in capsys.readouterr().err


def test_missing_metric_tag_is_an_error(client):
    add_challenger(client, nss=1.0)
    with pytest.raises(PromotionError, match=r"version 1 has no metric 'cc' \(it has: nss\)"):
        promote(client, "salgan", "cc")


def test_cli_promote_and_list(client, capsys):
    add_challenger(client, nss=1.0, cc=0.4)
    assert registry.main(["promote", "--metric", "nss"]) == 0
    add_challenger(client, nss=0.9, cc=0.5)
    assert registry.main(["promote"]) == 0
    out = capsys.readouterr().out
    assert "promoted version 1 to champion" in out
    assert "kept version 1 as champion: nss 0.9000 (challenger v2) vs 1.0000 (champion v1)" in out

    assert registry.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["version", "aliases", "created", "run"]
    assert lines[1].split()[:2] == ["2", "challenger"] and "0.9000" in lines[1]
    assert lines[2].split()[:2] == ["1", "champion"] and "1.0000" in lines[2] and "0.4000" in lines[2]


def test_versions_scored_on_different_data_are_not_compared(client):
    add_challenger(client, data_version="aaaa", nss=1.0)
    promote(client, "salgan")
    add_challenger(client, data_version="bbbb", nss=2.0)
    with pytest.raises(PromotionError, match="aaaa"):
        promote(client, "salgan")
    with pytest.raises(PromotionError, match="scored on val data aaaa, the current val split is bbbb"):
        promote(client, "salgan", data_version="bbbb")  # and nothing to score the champion again with
    assert champion(client) == "1"


def test_a_champion_measured_on_older_data_is_scored_again_on_the_current_split(client):
    add_challenger(client, data_version="aaaa", nss=3.0)  # high on the old data
    promote(client, "salgan")
    add_challenger(client, data_version="bbbb", nss=2.0)
    scored = []

    def rescore(version: str) -> dict[str, float]:
        scored.append(version)
        return {"nss": 1.5, "cc": 0.6}  # what version 1 reaches on today's split

    result = promote(client, "salgan", data_version="bbbb", rescore=rescore)
    assert scored == ["1"]  # the challenger's tags are on today's data already
    assert result["decision"] == "promoted" and champion(client) == "2"
    assert result["champion"] == {
        "version": "1", "value": 1.5, "metrics": {"nss": 1.5, "cc": 0.6}, "data_version": "bbbb", "rescored": True
    }  # fmt: skip
    assert result["delta"] == pytest.approx(0.5) and result["data_version"] == "bbbb"
    assert "scored again" in policy.describe(result) and "on val data bbbb" in policy.describe(result)
