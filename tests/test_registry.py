"""Champion/challenger promotion on a real sqlite registry (versions without model files: fast)."""

import shutil

import pytest
from mlflow import MlflowClient

from salgan import registry
from salgan.registry import CHALLENGER, CHAMPION, PREVIOUS, PromotionError, promote


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


def add_challenger(client: MlflowClient, **metrics) -> str:
    """A new version tagged with ``metrics`` and aliased challenger, as evaluate registers it."""
    tags = {k: repr(float(v)) for k, v in metrics.items()}
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
    with pytest.raises(PromotionError, match="no tag 'cc'"):
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
