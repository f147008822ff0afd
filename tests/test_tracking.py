"""MLflow tracking against a real sqlite store in a temporary folder."""

import base64
import copy
import io
import json
import os
import socket
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image

from salgan.distributed import DistInfo
from salgan.layout import ModelFiles, sha256_file
from salgan.tracking import runs
from salgan.tracking.models import record_evaluation
from salgan.tracking.registry import CHALLENGER, recorded_metrics
from salgan.tracking.runs import TrainingTracker
from salgan.tracking.store import TrackingUnavailableWarning
from salgan.train import run
from salgan.urls import redact_url
from tests.conftest import tiny_params

RUN_FILE = ModelFiles(Path()).run_record.name
DVC_LOCK = """schema: '2.0'
stages:
  download:
    outs:
    - path: data/raw
      md5: 1111aaaa.dir
  prepare:
    outs:
    - path: data/prepared
      md5: 2222bbbb.dir
"""
SIGNED_SOURCE = "https://data.example/salicon?X-Amz-Credential=AKIDEXAMPLE&X-Amz-Signature=0123signature4567"
METRICS = {"nss": 1.25, "cc": 0.5, "kld": 0.9, "auc_judd": 0.8}
BASELINES = {"center_bias": {"nss": 0.7, "cc": 0.3}, "ground_truth": {"nss": 3.0}}


def tracked_params(root: Path, uri: str, **train):
    params = tiny_params(root, **train)
    params.mlflow.enabled = True
    params.mlflow.tracking_uri = uri
    params.mlflow.experiment = "tiny"
    return params


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-epoch training run recorded in a fresh sqlite store (cwd moved there, so ./mlruns is too)."""
    root = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        (root / "dvc.lock").write_text(DVC_LOCK)
        params = tracked_params(root, uri, epochs=2, bce_epochs=1)
        params.download.source = SIGNED_SOURCE  # a signed prefix: its query string is a secret
        assert run(params) == 0
        yield params, root, uri


def test_training_records_params_metrics_and_artifacts(trained):
    params, root, uri = trained
    record = json.loads((root / "models" / RUN_FILE).read_text())
    assert record["tracking_uri"] == uri
    client = MlflowClient(uri)
    mlrun = client.get_run(record["run_id"])
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["train.epochs"] == "2"
    assert mlrun.data.params["prepare.size"] == "[64, 48]"
    assert mlrun.data.params["mlflow.experiment"] == "tiny"
    tags = mlrun.data.tags
    assert tags["world_size"] == "1" and tags["device"] == "cpu"
    assert tags["data.raw.md5"] == "1111aaaa.dir" and tags["data.prepared.md5"] == "2222bbbb.dir"
    for key in ("g_loss", "content_loss", "val_content_loss", "images_per_s", "lr"):
        assert [m.step for m in client.get_metric_history(record["run_id"], key)] == [1, 2], key
    assert [m.step for m in client.get_metric_history(record["run_id"], "d_loss")] == [2]  # adversarial only
    # the discriminator's held-out diagnostics, as history.json records them, adversarial epochs only
    history = json.loads((root / "models" / "history.json").read_text())
    for key in ("d_accuracy", "d_real", "d_fake", "d_dead_units"):
        logged = client.get_metric_history(record["run_id"], key)
        assert [(m.step, m.value) for m in logged] == [(2, pytest.approx(history[1][key]))], key
    snapshots = [f.path for f in client.list_artifacts(record["run_id"], "snapshots")]
    assert snapshots == ["snapshots/epoch_001.png", "snapshots/epoch_002.png"]
    assert "params.yaml" in [f.path for f in client.list_artifacts(record["run_id"])]


def test_a_signed_source_reaches_no_record_with_its_signature(trained):
    params, root, uri = trained
    run_id = json.loads((root / "models" / RUN_FILE).read_text())["run_id"]
    client = MlflowClient(uri)
    logged = client.get_run(run_id).data
    artifact = Path(client.download_artifacts(run_id, "params.yaml", str(root))).read_text()
    config = torch.load(root / "models" / "checkpoint.pt", weights_only=True)["config"]
    assert logged.params["download.source"] == "https://data.example/salicon"
    assert "source: https://data.example/salicon\n" in artifact
    assert config["download"]["source"] == "https://data.example/salicon"
    assert config["train"] == params.train.model_dump()  # only URLs change
    for place in (json.dumps([logged.params, logged.tags]), artifact, json.dumps(config)):
        assert "0123signature4567" not in place and "AKIDEXAMPLE" not in place


def test_a_signed_source_with_a_parenthesis_leaves_no_secret_in_any_file_of_the_store(tmp_path, monkeypatch, capsys):
    """The second probe: a ``(`` in the URL's path ended the old pattern before the query, and the signature
    reached the MLflow params, the params.yaml artifact and checkpoint.pt. Every file the run writes (the
    sqlite store, its artifacts, the models folder) and every message is searched for it."""
    secrets = (b"parenSignature987", b"AKIDPAREN0123")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    params = tracked_params(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", epochs=1, bce_epochs=1)
    params.download.source = (
        "https://data.example/sal(icon)/v1?X-Amz-Credential=AKIDPAREN0123&X-Amz-Signature=parenSignature987"
    )
    assert run(params) == 0
    run_id = json.loads((tmp_path / "models" / RUN_FILE).read_text())["run_id"]
    assert MlflowClient(params.mlflow.tracking_uri).get_run(run_id).data.params["download.source"] == (
        "https://data.example/sal(icon)/v1"
    )
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in files) and any(p.name == "checkpoint.pt" for p in files)
    out, err = capsys.readouterr()
    for secret in secrets:
        assert [p for p in files if secret in p.read_bytes()] == []
        assert secret.decode() not in out + err


def test_resumed_training_continues_the_recorded_run(trained):
    params, root, uri = trained
    run_id = json.loads((root / "models" / RUN_FILE).read_text())["run_id"]
    tracker = TrainingTracker(params)
    tracker.start(DistInfo(0, 1, 0, 1, torch.device("cpu")), resumed_epochs=2)
    assert tracker.run_id == run_id
    tracker.log_epoch({"epoch": 3, "g_loss": 0.5}, None)
    tracker.finish(root / "models" / "generator.pt")
    history = MlflowClient(uri).get_metric_history(run_id, "g_loss")
    assert [m.step for m in history] == [1, 2, 3]


def test_record_evaluation_registers_a_challenger(trained, monkeypatch):
    params, root, uri = trained
    reports = root / "reports"
    reports.mkdir(exist_ok=True)
    artifacts = [reports / "metrics.json", reports / "per_image.csv"]
    artifacts[0].write_text(json.dumps(METRICS))
    artifacts[1].write_text("index,nss\n0,1.25\n")
    version = record_evaluation(params, METRICS, BASELINES, artifacts, root / "models" / "generator.pt")
    assert version == "1"

    client = MlflowClient(uri)
    model_version = client.get_model_version_by_alias("salgan", CHALLENGER)
    assert str(model_version.version) == "1"
    # Metrics live on the logged model (MLflow 3), not in string tags; the weights' hash is a tag.
    assert recorded_metrics(client, model_version) == METRICS and "nss" not in model_version.tags
    assert model_version.tags["weights_sha256"] == sha256_file(root / "models" / "generator.pt")
    run_id = json.loads((root / "models" / RUN_FILE).read_text())["run_id"]
    assert model_version.run_id == run_id  # the pipeline's one run, continued
    data = client.get_run(run_id).data
    assert data.metrics["val_nss"] == 1.25 and data.metrics["baseline_center_bias_nss"] == 0.7
    logged = {f.path for f in client.list_artifacts(run_id, "evaluation")}
    assert logged == {"evaluation/metrics.json", "evaluation/per_image.csv"}

    # The same weights evaluated again (other data): the version is reused, its metrics and data updated.
    again = {**METRICS, "nss": 1.5}
    assert record_evaluation(params, again, BASELINES, [], root / "models" / "generator.pt", "d2") == "1"
    reused = client.get_model_version("salgan", "1")
    assert recorded_metrics(client, reused)["nss"] == 1.5 and reused.tags["data_version"] == "d2"
    assert len(client.search_model_versions("name='salgan'")) == 1

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    pyfunc = mlflow.pyfunc.load_model("models:/salgan@challenger")  # images in, maps out: test_serving.py
    assert pyfunc.metadata.metadata["input_size"] == [64, 48] and pyfunc.metadata.metadata["encoder"] == "vgg16"
    image = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(image, "PNG")
    served = pyfunc.predict(pd.DataFrame({"image": [image.getvalue()]}))
    assert Image.open(io.BytesIO(base64.b64decode(served.saliency[0]))).size == (50, 30)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_costs_one_warning(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = f"http://user:secret@127.0.0.1:{closed_port()}"
    params = tracked_params(tmp_path, uri, epochs=1, bce_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(params) == 0
        assert record_evaluation(params, METRICS, BASELINES, [], tmp_path / "models" / "generator.pt") is None
    messages = [str(w.message) for w in caught if issubclass(w.category, TrackingUnavailableWarning)]
    assert len(messages) == 2  # one for training, one for the evaluation
    assert all(redact_url(uri) in m and "secret" not in m for m in messages)
    assert (tmp_path / "models" / "generator.pt").is_file()
    assert len(json.loads((tmp_path / "models" / "history.json").read_text())) == 1
    assert not (tmp_path / "models" / RUN_FILE).exists()


def test_epochs_missed_while_the_server_was_down_are_backfilled(trained, monkeypatch):
    params, root, uri = trained
    params = copy.deepcopy(params)
    params.train.output = str(root / "flaky")
    real = MlflowClient.get_experiment_by_name
    calls = []

    def down_once(self, name):
        calls.append(name)
        if len(calls) == 1:
            raise MlflowException("connection refused")
        return real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", down_once)
    monkeypatch.setattr(runs, "RETRY_SECONDS", 0.0)
    tracker = TrainingTracker(params)
    with pytest.warns(TrackingUnavailableWarning, match="could not start a run"):
        tracker.start(DistInfo(0, 1, 0, 1, torch.device("cpu")))
    assert tracker.run_id is None
    tracker.log_epoch({"epoch": 1, "g_loss": 0.9}, None)
    tracker.log_epoch({"epoch": 2, "g_loss": 0.8}, None)
    tracker.finish(root / "models" / "generator.pt")
    history = MlflowClient(uri).get_metric_history(tracker.run_id, "g_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.9), (2, 0.8)]
    assert json.loads((root / "flaky" / RUN_FILE).read_text())["run_id"] == tracker.run_id


def test_a_snapshot_upload_that_failed_is_retried_without_logging_its_epoch_twice(trained, monkeypatch):
    """The artifact store down (S3 behind the server) while metrics still go through: the epoch's metrics
    are logged once, and its snapshot when the store is back."""
    params, root, uri = trained
    params = copy.deepcopy(params)
    params.train.output = str(root / "store-down")
    snapshot = root / "epoch_001.png"
    snapshot.write_bytes(b"png")
    real = MlflowClient.log_artifact
    calls = []

    def store_down_once(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise MlflowException("too many 500 error responses")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_artifact", store_down_once)
    monkeypatch.setattr(runs, "RETRY_SECONDS", 0.0)
    tracker = TrainingTracker(params)
    tracker.start(DistInfo(0, 1, 0, 1, torch.device("cpu")))
    with pytest.warns(TrackingUnavailableWarning, match="could not log an epoch"):
        tracker.log_epoch({"epoch": 1, "g_loss": 0.9}, snapshot)
    tracker.log_epoch({"epoch": 2, "g_loss": 0.8}, None)
    tracker.finish(root / "models" / "generator.pt")
    client = MlflowClient(uri)
    history = client.get_metric_history(tracker.run_id, "g_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.9), (2, 0.8)]
    assert [a.path for a in client.list_artifacts(tracker.run_id, "snapshots")] == ["snapshots/epoch_001.png"]


def test_track_logs_a_pipeline_run_made_while_the_server_was_down_and_nothing_twice(tmp_path, monkeypatch):
    """``salgan track``: training and evaluation ran with MLflow unreachable; once it answers, one run with
    every epoch and one registered version appear, and a second ``salgan track`` adds nothing."""
    from salgan.evaluate import evaluate
    from salgan.track import replay

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    params = tracked_params(tmp_path, f"http://127.0.0.1:{closed_port()}", epochs=3, bce_epochs=1)
    params.evaluate.output = str(tmp_path / "reports")
    params.evaluate.n_splits = 5
    with pytest.warns(TrackingUnavailableWarning, match="salgan track"):
        assert run(params) == 0
        metrics = evaluate(params)
    assert not (tmp_path / "models" / RUN_FILE).exists()

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the server is back
    params.mlflow.tracking_uri = uri
    assert int(replay(params)) == 1
    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "tiny"]
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.data.tags["replayed_from"] == "history.json"
    assert logged.data.params["train.epochs"] == "3"
    history = json.loads((tmp_path / "models" / "history.json").read_text())
    g_loss = sorted((m.step, m.value) for m in client.get_metric_history(logged.info.run_id, "g_loss"))
    assert g_loss == [(record["epoch"], pytest.approx(record["g_loss"])) for record in history]
    assert logged.data.metrics["baseline_center_bias_nss"] == pytest.approx(metrics["baselines"]["center_bias"]["nss"])
    version = client.get_model_version_by_alias("salgan", CHALLENGER)
    assert recorded_metrics(client, version)["nss"] == pytest.approx(metrics["nss"])

    assert int(replay(params)) == 1
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert len(client.get_metric_history(logged.info.run_id, "g_loss")) == len(history) == 3
    assert [str(v.version) for v in client.search_model_versions("name='salgan'")] == ["1"]


def test_one_process_running_stages_with_two_settings_records_each_in_its_own_store(tmp_path, monkeypatch):
    """salgan sets no process-wide MLflow state (a tracking URI, an experiment, an active run): a second stage
    in the same process (a notebook, a flow) records to its own params' store and continues the run its train
    recorded, by its id, whatever the first one did."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    uri_a, uri_b = (f"sqlite:///{tmp_path / name}.db" for name in ("a", "b"))
    first = tracked_params(tmp_path / "a", uri_a)
    second = tracked_params(tmp_path / "b", uri_b)
    second.mlflow.experiment = "other"
    # train's record of the second run: in the second experiment of b's store (another id than a's "tiny").
    client_b = MlflowClient(uri_b)
    client_b.create_experiment("first-in-b")
    experiment_b = client_b.create_experiment("other")
    recorded = client_b.create_run(experiment_b).info.run_id
    run_file = runs.run_file(second)
    run_file.parent.mkdir(parents=True)
    run_file.write_text(json.dumps({"run_id": recorded, "experiment_id": experiment_b, "tracking_uri": uri_b}))

    with runs.continued_run(first) as (client, run_id):
        client.log_metric(run_id, "stage", 1)
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_EXPERIMENT_ID" not in os.environ
    assert mlflow.active_run() is None and mlflow.get_tracking_uri() not in (uri_a, uri_b)
    with runs.continued_run(second) as (client, run_id):
        client.log_metric(run_id, "stage", 2)
    assert run_id == recorded and client_b.get_run(recorded).info.status == "FINISHED"

    (run_a,) = MlflowClient(uri_a).search_runs([MlflowClient(uri_a).get_experiment_by_name("tiny").experiment_id])
    assert run_a.data.metrics == {"stage": 1}
    assert client_b.get_run(recorded).data.metrics == {"stage": 2}
