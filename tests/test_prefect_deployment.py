"""The deployments end to end, real parts only, as a new user would run them from the README.

``prefect server start`` on 127.0.0.1 with a temporary PREFECT_HOME, the ``gpu`` process pool and a
``prefect worker start`` serve the module. Each test makes a fresh checkout, ``prefect deploy``s the
repository's own prefect.yaml and flows/ from it and triggers runs with ``prefect deployment run``:

- a stand-in DVC project (test_flows.py's stage scripts, whose evaluate registers a tiny real generator as
  the evaluate stage does, on a tiny prepared dataset): retraining registers and promotes through the gate,
  then ``prefect flow-run cancel`` on a pipeline run mid-stage ends the stage's whole process tree;
- the real pipeline through a deployment (a copy of this repository on a tiny configuration, trained twice on
  different data, the report, the registry) runs in tests/test_stack.py, on the production stack.

Every process started here is stopped at the end (process groups killed).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_flows import REPO, make_project

from tests.conftest import free_port, write_prepared

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# The real pipeline at a size that trains in seconds on a CPU (the run's `overrides` parameter).
TINY_REAL = {
    "download.sample_train": 16,
    "download.sample_val": 8,
    "download.sample_test": 4,
    "prepare.size": [64, 48],
    "model.width": 0.0625,
    "train.epochs": 2,
    "train.bce_epochs": 1,
    "train.batch_size": 8,
    "train.device": "cpu",
    "train.nproc": 1,
    "evaluate.n_splits": 5,
    "evaluate.sauc_other_images": 2,
}


# ---------------------------------------------------------------------------------------------------------
# Processes


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A long-running ``prefect`` command in its own session (so its whole group can be ended), logging to ``log``."""
    with open(log, "w") as sink:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [str(BIN / "prefect"), *args], env=env, cwd=log.parent, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    """End a process started in its own session, and everything left in its group."""
    quiet = contextlib.suppress(ProcessLookupError, PermissionError)
    if proc.poll() is None:
        with quiet:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with quiet:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with quiet:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, e.g. a flow run's process


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(1)
    raise TimeoutError(f"no healthy Prefect server at {url} after {timeout} s")


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _prefect(env: dict, cwd: Path, *args: str, timeout: float = 180) -> str:
    result = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _api(env: dict, method: str, path: str, body: dict | None = None):
    """One request to the Prefect REST API that ``env`` points at (with its login, if it has one); the
    decoded JSON answer. Plain HTTP from this process: a polling loop costs milliseconds, not a Python
    start with Prefect's client imported each time."""
    import base64

    request = urllib.request.Request(
        env["PREFECT_API_URL"].rstrip("/") + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    if env.get("PREFECT_API_AUTH_STRING"):
        request.add_header(
            "Authorization", "Basic " + base64.b64encode(env["PREFECT_API_AUTH_STRING"].encode()).decode()
        )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or "null")


def _flow_run_state(env: dict, run_id: str) -> str:
    return _api(env, "GET", f"/flow_runs/{run_id}")["state"]["type"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A Prefect server, the ``gpu`` process pool and one worker; yields (env for clients, worker log)."""
    root = tmp_path_factory.mktemp("prefect-stack")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_HOME": str(root / "home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "false",
        "SALGAN_RETRY_DELAY_S": "1",
        # The worker looks for scheduled runs every second (Prefect's default: 10 s, so each triggered run
        # waited up to 10 s to be picked up; infra/stack sets the same setting).
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    for leaked in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_PROFILE"):
        env.pop(leaked, None)
    port = free_port()
    started: list[subprocess.Popen] = []
    try:
        started.append(
            _start(["server", "start", "--host", "127.0.0.1", "--port", str(port)], env, root / "server.log")
        )
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        _wait_healthy(env["PREFECT_API_URL"], started[0])
        _prefect(env, root, "work-pool", "create", "gpu", "--type", "process")
        started.append(_start(["worker", "start", "--pool", "gpu", "--limit", "1"], env, root / "worker.log"))
        yield env, root / "worker.log"
    finally:
        for proc in reversed(started):
            _stop(proc)


# ---------------------------------------------------------------------------------------------------------
# Checkouts


def _commit(project: Path, message: str) -> None:
    subprocess.run(["git", "add", "-A"], cwd=project, check=True, capture_output=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], cwd=project, check=True
    )


def _stand_in_checkout(root: Path) -> Path:
    """The stand-in DVC project with this repository's prefect.yaml and flows/ in it."""
    tiny = {"mlflow": {}, "prepare": {"size": [64, 48]}, "model": {"width": 0.0625}}
    project = make_project(root, behaviour={"evaluate": {"register": True}}, extra_params=tiny)
    write_prepared(project / "data" / "prepared")  # the data the gate values versions on
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    shutil.copytree(REPO / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    _commit(project, "flows")
    return project


def _repository_checkout(root: Path) -> Path:
    """A fresh checkout of this repository's working tree: tracked and untracked files, none that git ignores."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    _commit(root, "checkout")
    return root


def _deploy_and_run(env: dict, project: Path, deployment: str, params: dict) -> str:
    """``prefect deploy`` from ``project``, then ``prefect deployment run --watch``; returns the run's output."""
    out = _prefect(env, project, "deploy", "--name", deployment)
    assert f"{deployment}/{deployment}" in out, out
    return _prefect(
        env, project.parent, "deployment", "run", f"{deployment}/{deployment}", "--params", json.dumps(params),
        "--watch", "--watch-timeout", "500", timeout=560,
    )  # fmt: skip


def _registry(project: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")


# ---------------------------------------------------------------------------------------------------------
# Tests


def test_retraining_deployment_then_cancelling_a_pipeline_run(stack, tmp_path):
    """Stand-in stages: deploy, run on the worker, register and promote; then cancel a pipeline run mid-stage."""
    env, worker_log = stack
    project = _stand_in_checkout(tmp_path / "checkout")
    run = _deploy_and_run(env, project, "salgan-retrain", {"overrides": {"train.epochs": 2}})
    assert "Completed" in run, run + worker_log.read_text()[-5000:]

    deployment = _api(env, "GET", "/deployments/name/salgan-retrain/salgan-retrain")
    schedule = deployment["schedules"][0]["schedule"]
    assert (schedule["cron"], schedule["timezone"]) == ("0 3 * * 1", "UTC")
    (pull,) = deployment["pull_steps"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == str(project)

    client = _registry(project)
    (version,) = client.search_model_versions("name='salgan'")
    assert version.tags["nss"] == repr(1.2)  # 1 + 0.1 * train.epochs, with the run's override epochs=2
    assert client.get_model_version_by_alias("salgan", "champion").version == version.version
    assert "epochs: 2" in (project / "params.yaml").read_text()
    assert "gate decision: promoted: no champion yet" in worker_log.read_text()

    _cancel_a_running_stage(env, project)


def _cancel_a_running_stage(env: dict, project: Path) -> None:
    """``prefect flow-run cancel`` on a pipeline run mid-stage: the worker's SIGTERM must end the stage's tree."""
    _prefect(env, project, "deploy", "--name", "salgan-pipeline")
    (project / "behaviour.json").write_text(json.dumps({"train": {"spawn": True}}))
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace("epochs: 2", "epochs: 4"))
    out = _prefect(env, project.parent, "deployment", "run", "salgan-pipeline/salgan-pipeline")
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    pids_file = project / "pids.txt"
    deadline = time.monotonic() + 180
    while not (pids_file.exists() and pids_file.read_text()):
        assert time.monotonic() < deadline, "the train stage never started"
        time.sleep(0.5)
    pids = [int(pid) for pid in pids_file.read_text().split()]
    _prefect(env, project.parent, "flow-run", "cancel", run_id)
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"stage processes {pids} outlived the cancellation"
        time.sleep(0.5)
    while (state := _flow_run_state(env, run_id)) != "CANCELLED":
        assert time.monotonic() < deadline, f"flow run ended {state}, not CANCELLED"
        time.sleep(1)
    assert '"epochs": 4' not in (project / "out" / "evaluate.json").read_text()  # evaluate never ran again
