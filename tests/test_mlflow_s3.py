"""MLflow artifacts on S3, against a real S3 HTTP endpoint: moto's server mode on 127.0.0.1."""

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient

from salgan.layout import sha256_file
from salgan.models import Generator
from salgan.settings import PredictParams
from salgan.tracking.models import log_generator
from salgan.tracking.registry import register

BUCKET = "salgan-artifacts"


def test_model_artifacts_round_trip_through_s3(s3_server, tmp_path, monkeypatch):
    s3_endpoint = s3_server
    import boto3

    for key, value in {
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=BUCKET)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("s3", artifact_location=f"s3://{BUCKET}/mlflow")
    torch.manual_seed(0)
    weights = tmp_path / "generator.pt"
    torch.save(Generator(width=0.0625).state_dict(), weights)
    run_id = client.create_run(experiment_id).info.run_id
    client.log_text(run_id, "hello", "notes/hello.txt")
    model_id = log_generator(client, run_id, weights, [64, 48], PredictParams())
    version = register(client, "salgan-s3", model_id, run_id, sha256_file(weights), {"run_id": run_id})

    keys = [obj["Key"] for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix="mlflow/")["Contents"]]
    assert any(k.endswith("notes/hello.txt") for k in keys)
    assert any(k.endswith("extra_files/generator.pt") for k in keys) and any(k.endswith("/MLmodel") for k in keys)
    assert not list(tmp_path.glob("mlruns/**/generator.pt"))  # nothing fell back to local storage

    served = mlflow.pyfunc.load_model("models:/salgan-s3@challenger").get_raw_model()
    expected = Generator(width=0.0625)
    expected.load_state_dict(torch.load(weights, weights_only=True))
    batch = torch.from_numpy(np.random.default_rng(0).random((2, 3, 48, 64), dtype=np.float32))
    torch.testing.assert_close(served.cpu()(batch), expected.eval()(batch))
    assert version == "1"
