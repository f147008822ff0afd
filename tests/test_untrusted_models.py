"""Models from elsewhere run nothing: crafted MLflow models and ImageNet files are refused, no side effect."""

import os
import pickle
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from PIL import Image

from salgan import predict_tool
from salgan.models import EncoderWeightsError, Generator, load_encoder_weights
from salgan.registry import gate
from salgan.settings import Params
from salgan.tracking.models import record_evaluation
from salgan.tracking.store import client
from tests.conftest import write_prepared


class Payload:
    """Unpickling it creates ``marker``: the proof that a file's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def write_model(folder: Path, marker: Path, *, ours: bool, code: bool = False) -> Path:
    """An MLflow pytorch model folder whose every weights file is a pickle that creates ``marker``."""
    (folder / "data").mkdir(parents=True)
    (folder / "extra_files").mkdir()
    for path in (folder / "data" / "model.pth", folder / "extra_files" / "generator.pt"):
        path.write_bytes(pickle.dumps(Payload(marker)))
    flavor = {"model_data": "data", "pytorch_version": str(torch.__version__), "serialization_format": "pickle"}
    if code:
        (folder / "code").mkdir()
        (folder / "code" / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
        (folder / "data" / "pickle_module_info.txt").write_text("evil")
        flavor["code"] = "code"
    meta = {"flavors": {"pytorch": flavor, "python_function": {"loader_module": "mlflow.pytorch", "data": "data"}}}
    if ours:
        meta["metadata"] = {"kind": "salgan-generator", "input_size": [64, 48]}
    (folder / "MLmodel").write_text(yaml.safe_dump(meta))
    return folder


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    "kind,reason",
    [
        ({"ours": False}, "not a SalGAN model logged by salgan"),
        ({"ours": True}, "not a SalGAN generator state_dict (UnpicklingError"),
        ({"ours": True, "code": True}, "the model names code paths"),
    ],
)
def test_a_crafted_mlflow_model_folder_is_refused_and_runs_nothing(tmp_path, photo, capsys, monkeypatch, kind, reason):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # MLflow's default: salgan must not rely on it
    marker = tmp_path / "marker"
    model = write_model(tmp_path / "model", marker, **kind)
    code = predict_tool.main(["--model", str(model), "--output", str(tmp_path / "maps"), str(photo)])
    assert code == 1 and reason in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "maps").exists()


def test_a_crafted_model_in_the_registry_is_refused_by_the_loader_predict_and_the_gate_share(
    tmp_path, photo, capsys, monkeypatch
):
    marker = tmp_path / "marker"
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    client.create_registered_model("salgan")
    model = write_model(tmp_path / "model", marker, ours=True)
    version = client.create_model_version("salgan", source=model.as_uri(), tags={"data_version": "old"})
    client.set_registered_model_alias("salgan", "champion", version.version)

    assert predict_tool.main(["--output", str(tmp_path / "maps"), str(photo)]) == 1  # default: models:/salgan@champion
    assert "not a SalGAN generator state_dict" in capsys.readouterr().err
    with pytest.raises(predict_tool.ModelError):
        predict_tool.load_model("models:/salgan/1", Params(), None)

    # The gate opens the champion with the same loader before comparing anything with it: refused, the alias
    # left where it was, nothing of it run.
    params = Params()
    params.train.data = str(write_prepared(tmp_path / "prepared", n_train=2, n_val=4))
    params.mlflow.tracking_uri, params.evaluate.n_splits, params.prepare.size = uri, 5, [64, 48]
    torch.manual_seed(0)
    torch.save(Generator(width=0.0625).state_dict(), tmp_path / "generator.pt")
    challenger = record_evaluation(params, {"nss": 1.0}, {}, [], tmp_path / "generator.pt")
    result = gate(params)
    assert result["decision"] == "refused" and result["challenger"]["version"] == challenger
    assert "the champion cannot be opened" in result["reason"]
    assert "not a SalGAN generator state_dict" in result["reason"]
    assert client.get_model_version_by_alias("salgan", "champion").version == version.version
    assert not marker.exists()


@pytest.mark.parametrize(
    "weights,reason",
    [
        ("pickled", "not a SalGAN generator state_dict (UnpicklingError"),
        ("salgan's", "MLmodel's pyfunc loader is 'mlflow.pytorch'"),  # salgan predict alone would read it
    ],
)
def test_a_pickled_pyfunc_with_flattering_tags_is_never_promoted_and_runs_nothing(
    tmp_path, monkeypatch, capsys, weights, reason
):
    """A version whose tags say it was scored under today's fingerprint, with a flattering number, but
    whose model is MLflow's pickled pytorch pyfunc (loading it with mlflow.pyfunc would run its code)."""
    from salgan import registry
    from salgan.layout import sha256_file
    from salgan.tracking.fingerprint import FINGERPRINT_TAG, encode, fingerprint, today

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    marker = tmp_path / "marker"
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = Params()
    params.train.data = str(write_prepared(tmp_path / "data" / "prepared", n_train=2, n_val=4))
    model = write_model(tmp_path / "model", marker, ours=True)
    if weights == "salgan's":
        torch.save(Generator(width=0.0625).state_dict(), model / "extra_files" / "generator.pt")
    sha = sha256_file(model / "extra_files" / "generator.pt")
    recorded = fingerprint(today(params), (64, 48), sha)
    tags = {"data_version": recorded["val"], "nss": "99", "weights_sha256": sha, FINGERPRINT_TAG: encode(recorded)}
    client = MlflowClient(uri)
    client.create_registered_model("salgan")
    version = client.create_model_version("salgan", source=model.as_uri(), tags=tags).version
    client.set_registered_model_alias("salgan", "challenger", version)

    result = gate(params, floor=False)
    assert result["decision"] == "refused" and reason in result["reason"] and "never promoted" in result["reason"]
    assert registry.main(["promote", "--no-floor"]) == 1
    assert f"refused version {version}:" in capsys.readouterr().out
    assert client.get_registered_model("salgan").aliases == {"challenger": version}  # no champion
    assert not marker.exists()


def test_salgan_turns_mlflows_pickle_deserialisation_off_where_it_uses_mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # MLflow's default
    params = Params()
    params.mlflow.tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client(params)
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"


def test_imagenet_weights_are_checked_against_torchvisions_hash_before_loading(tmp_path, monkeypatch):
    """A crafted vgg16-397923af.pth where the README tells offline users to put the real one."""
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch" / "hub"))
    marker = tmp_path / "marker"
    crafted = checkpoints / "vgg16-397923af.pth"
    crafted.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(EncoderWeightsError, match=r"sha256 .* does not start with 397923af"):
        load_encoder_weights(Generator(width=1.0), "imagenet")
    assert not marker.exists()


def test_a_local_weights_file_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "vgg.pth"
    path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(EncoderWeightsError, match="not a weights file"):
        load_encoder_weights(Generator(width=0.0625), str(path))
    assert not marker.exists()


def test_a_model_salgan_logged_still_predicts(tmp_path, photo, monkeypatch):
    """The refusals above do not refuse the real thing: a model logged by salgan.tracking predicts."""
    from salgan.models import load_generator
    from salgan.settings import PredictParams
    from salgan.tracking.models import log_generator
    from salgan.tracking.store import experiment_id

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = MlflowClient(uri)
    torch.manual_seed(0)
    weights = tmp_path / "generator.pt"
    torch.save(Generator(width=0.0625).state_dict(), weights)
    run_id = store.create_run(experiment_id(store, "logged-by-salgan")).info.run_id
    model_id = log_generator(store, run_id, weights, [64, 48], PredictParams())
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(tmp_path / "dl"), tracking_uri=uri)
    )
    generator, size = load_generator(local)
    assert size == (64, 48)
    expected = torch.load(weights, weights_only=True)
    assert all(torch.equal(generator.state_dict()[k], expected[k]) for k in expected)
