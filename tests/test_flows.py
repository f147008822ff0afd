"""The Prefect flows on a throwaway DVC project whose stages are tiny scripts named like the real ones.

One ``prefect_test_harness`` serves the whole session (it costs ~18 s to start). The flows
drive real ``dvc`` and ``git`` subprocesses; only the stage commands and the registry gate are stand-ins,
so the machinery (order, failures, retries, GPU slots, cancellation, workspace lock, report) is tested
independently of the real pipeline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_params_file

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = ["download", "prepare", "train", "evaluate", "predict", "package"]

# The stand-in stage: logs an event line, prints to both streams, writes its output, and misbehaves on
# request (behaviour.json, read at run time and not a DVC dependency, so tests can change it freely).
STAGE_SCRIPT = """
import json, os, subprocess, sys, time
from pathlib import Path

import yaml

name = sys.argv[1]
tag = os.environ.get("RUN_TAG", "-")
behaviour = json.loads(Path("behaviour.json").read_text()).get(name, {})


def event(what):
    with open("events.log", "a") as log:
        log.write(f"{time.time():.6f} {tag} {name} {what}\\n")


event("start")
print(f"{name}: working on stdout", flush=True)
print(f"{name}: a note on stderr", file=sys.stderr, flush=True)
if behaviour.get("echo_source"):  # as requests' errors quote a signed URL, and its path?query alone
    source = yaml.safe_load(Path("params.yaml").read_text())["download"]["source"]
    print(f"{name}: fetching {source}; retrying /images.zip?{source.partition('?')[2]}", file=sys.stderr, flush=True)
if behaviour.get("fail"):
    print(f"{name}: boom, the stage broke", file=sys.stderr)
    sys.exit(3)
if behaviour.get("unusable"):  # as a salgan command whose input is unusable: status 1, handed over
    from salgan.cli import run_command
    from salgan.errors import InputError

    def refuse():
        raise InputError(f"{name}: data/raw/x.jpg is unusable")

    sys.exit(run_command(name, refuse))
if behaviour.get("flaky"):
    tries = Path(f"{name}.tries")
    count = int(tries.read_text()) + 1 if tries.exists() else 1
    tries.write_text(str(count))
    if count <= behaviour["flaky"]:
        print(f"{name}: transient failure {count}", file=sys.stderr)
        sys.exit(4)
if behaviour.get("spawn"):
    # A child in this group and a grandchild in its own session, as torchrun starts its workers.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    Path("pids.txt").write_text(f"{os.getpid()} {child.pid} {grandchild.pid}")
    time.sleep(300)
time.sleep(behaviour.get("sleep", 0))
params = yaml.safe_load(Path("params.yaml").read_text())
Path("out").mkdir(exist_ok=True)
Path(f"out/{name}.json").write_text(json.dumps({"stage": name, "epochs": params["train"]["epochs"]}))
if behaviour.get("register"):
    # As the evaluate stage registers: a real (tiny, untrained) generator logged with these metrics under
    # today's scoring fingerprint of the prepared data in train.data, as alias "challenger"; the gate opens
    # it with salgan's loader and checks the floor on that data.
    import torch
    from mlflow import MlflowClient

    from salgan.layout import sha256_file
    from salgan.models import build_generator
    from salgan.settings import load_params
    from salgan.tracking import fingerprint
    from salgan.tracking.models import record_evaluation

    salgan_params = load_params("params.yaml")
    weights = Path("out/generator.pt")
    torch.manual_seed(params["train"]["epochs"])
    torch.save(build_generator(salgan_params.model).state_dict(), weights)
    nss = 1.0 + 0.1 * params["train"]["epochs"]
    today = fingerprint.today(salgan_params)
    recorded = fingerprint.fingerprint(today, salgan_params.prepare.size, sha256_file(weights))
    metrics = {"nss": nss, "cc": nss / 3}
    version = record_evaluation(salgan_params, metrics, {}, [], weights, today["val"], recorded)
    for key, value in metrics.items():
        MlflowClient(tracking_uri="sqlite:///mlflow.db").set_model_version_tag("salgan", version, key, repr(value))
    Path("reports").mkdir(exist_ok=True)  # how the retraining flow finds the version this run made
    Path("reports/metrics.json").write_text(json.dumps({**metrics, "fingerprint": recorded}))
    print(f"registered salgan version {version} (nss {nss})")
event("end")
"""


def _git(root: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True)


_TEMPLATES: dict[str, Path] = {}  # one committed project per extra_params, copied for each test


def make_project(root: Path, behaviour: dict | None = None, extra_params: dict | None = None) -> Path:
    """A git + DVC repository with six stand-in stages chained download -> ... -> package (a copy of one made
    once per session: ``git init`` and ``dvc init`` cost most of a second)."""
    key = json.dumps(extra_params, sort_keys=True)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = _new_project(Path(tempfile.mkdtemp(prefix="salgan-flow-template-")) / "p", extra_params)
    shutil.copytree(_TEMPLATES[key], root, symlinks=True, dirs_exist_ok=True)
    (root / "behaviour.json").write_text(json.dumps(behaviour or {}))  # git-ignored: no commit needed
    return root


def _new_project(root: Path, extra_params: dict | None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "stage.py").write_text(STAGE_SCRIPT)
    params = {"train": {"epochs": 1, "bce_epochs": 0}, "mlflow": {"enabled": False}, **(extra_params or {})}
    write_params_file(root / "params.yaml", params)
    stages = {}
    for i, name in enumerate(STAGES):
        stage = {"cmd": f"{sys.executable} stage.py {name}", "deps": ["stage.py"], "outs": [f"out/{name}.json"]}
        if i:
            stage["deps"].append(f"out/{STAGES[i - 1]}.json")
        if name == "train":
            stage["params"] = ["train.epochs"]
        stages[name] = stage
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (root / ".gitignore").write_text("events.log\n*.tries\npids.txt\nbehaviour.json\nmlflow.db\nmlruns/\nreports/\n")
    _git(root, "init", "-q", "-b", "main")
    subprocess.run([BIN / "dvc", "init", "-q"], cwd=root, check=True, capture_output=True)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "tiny project")
    return root


def events(root: Path) -> list[tuple[float, str, str, str]]:
    """(time, run tag, stage, start|end) for every event the stand-in stages logged."""
    path = root / "events.log"
    rows = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return [(float(t), tag, stage, what) for t, tag, stage, what in rows]


@pytest.fixture(autouse=True)
def _path(monkeypatch):
    """``dvc`` from this interpreter's environment, whatever the caller's PATH."""
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("SALGAN_RETRY_DELAY_S", "0")
    monkeypatch.setenv("SALGAN_WORKDIRS", tempfile.gettempdir())  # the tests' projects live there


def _flow_logs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    messages: list[str] = []
    with get_client(sync_client=True) as client:
        while True:  # page through: the API returns at most its default limit (200) per call
            page = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), offset=len(messages)
            )
            messages += [log.message for log in page]
            if not page:
                return messages


# ---------------------------------------------------------------------------------------------------------
# Pure helpers


def test_overrides_become_dvc_set_arguments():
    from flows.pipeline import build_parser, experiment_command, parse_overrides

    parser = build_parser()
    args = parser.parse_args(["-S", "train.epochs=2", "-S", "prepare.size=[64, 48]", "-S", "download.source=s3://b/p"])
    overrides = parse_overrides(parser, args)
    assert overrides == {"train.epochs": 2, "prepare.size": [64, 48], "download.source": "s3://b/p"}
    assert experiment_command({"model": {"width": 0.5}, **overrides}) == [
        sys.executable, "-m", "dvc", "exp", "run",
        "-S", "model.width=0.5", "-S", "train.epochs=2", "-S", "prepare.size=[64,48]", "-S", "download.source='s3://b/p'",
    ]  # fmt: skip
    with pytest.raises(SystemExit):
        parse_overrides(parser, parser.parse_args(["-S", "train.epochs"]))


def test_stage_selection_keeps_pipeline_order():
    from flows.pipeline import select_stages

    assert select_stages(["train", "download"], STAGES) == ["download", "train"]
    assert select_stages(None, STAGES) == STAGES
    with pytest.raises(ValueError, match="unknown stage"):
        select_stages(["deploy"], STAGES)


def test_relative_stores_resolve_against_the_workspace(tmp_path):
    from flows.retrain import absolute_store

    assert absolute_store("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert absolute_store("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert absolute_store("http://mlflow:5000", tmp_path) == "http://mlflow:5000"
    assert absolute_store("mlruns", tmp_path) == str(tmp_path / "mlruns")


def test_decision_markdown_tabulates_both_models():
    from flows.retrain import decision_markdown

    # The shape of salgan.registry.promote's result, with the metrics run_promotion adds.
    result = {
        "decision": "promoted",
        "reason": "improvement +0.1 is above 0.05",
        "metric": "nss",
        "higher_is_better": True,
        "delta": 0.1,
        "challenger": {"version": "3", "value": 1.6, "metrics": {"nss": 1.6, "cc": 0.7}},
        "champion": {"version": "2", "value": 1.5, "metrics": {"nss": 1.5, "cc": 0.72}},
    }
    text = decision_markdown(result, "nss", 0.05)
    assert "**Decision: promoted: improvement +0.1 is above 0.05**" in text
    assert "improvement +0.1000" in text
    assert "| metric | challenger (v3) | champion (v2) |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "metric" not in line]
    assert rows == ["| **nss** | 1.6000 | 1.5000 |", "| cc | 0.7000 | 0.7200 |"]  # the gate's metric first
    first = {"decision": "promoted", "reason": "no champion yet", "challenger": {"version": "1", "value": 1.0}}
    text = decision_markdown(first | {"champion": None}, "nss", 0)
    assert "| **nss** | 1.0000 | — |" in text and "champion (v—)" in text


def test_download_retries_back_off_exponentially(monkeypatch):
    from flows.pipeline import retry_delays

    monkeypatch.setenv("SALGAN_RETRY_DELAY_S", "30")
    assert retry_delays() == [30, 60, 120]


def test_work_pool_templates_request_gpus(harness):
    """Both templates are accepted by the API as ``gpu`` pools, and render to settings that ask for NVIDIA GPUs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.utilities.templating import apply_values

    def render(name: str) -> dict:
        template = json.loads((REPO / "infra" / "work-pools" / name).read_text())
        with get_client(sync_client=True) as client:
            pool = client.create_work_pool(
                WorkPoolCreate(name=f"gpu-{name.split('-')[0]}", type=name.split("-")[0], base_job_template=template)
            )
        assert pool.base_job_template == template
        defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
        return apply_values(template["job_configuration"], defaults)

    docker = render("docker-gpu.json")
    (request,) = docker["container_create_kwargs"]["device_requests"]
    assert request["capabilities"] == [["gpu"]] and request["count"] == -1
    pod = render("kubernetes-gpu.json")["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


# ---------------------------------------------------------------------------------------------------------
# The pipeline flow


def test_stages_run_in_order_with_output_in_the_logs(harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from flows.pipeline import salgan_pipeline

    project = make_project(tmp_path / "p")
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu", limit=1))
    try:
        state = salgan_pipeline(workdir=str(project), return_state=True)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name("gpu")
    assert state.is_completed(), state.message
    assert state.result() == STAGES
    assert [(stage, what) for _, _, stage, what in events(project)] == [
        (s, w) for s in STAGES for w in ("start", "end")
    ]
    assert "out/package.json" in (project / "dvc.lock").read_text()
    # Prefect ships log records to the API in the background: wait until the last stage's have arrived.
    deadline = time.monotonic() + 30
    while True:
        logs = _flow_logs(state.state_details.flow_run_id)
        if sum("holding a 'gpu' slot" in line for line in logs) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "[train] train: working on stdout" in logs
    assert "[train] train: a note on stderr" in logs
    assert any(line.startswith(f"[download] $ {sys.executable} -m dvc repro --single-item download") for line in logs)
    assert sum("holding a 'gpu' slot" in line for line in logs) == 2  # train and predict


def test_a_failing_stage_names_itself_and_its_stderr(harness, tmp_path):
    from flows.pipeline import salgan_pipeline
    from flows.processes import StageFailed

    project = make_project(tmp_path / "p", behaviour={"prepare": {"fail": True}})
    state = salgan_pipeline(stages=["download", "prepare", "train"], workdir=str(project), return_state=True)
    assert state.is_failed()
    with pytest.raises(StageFailed) as failure:
        state.result()
    message = str(failure.value)
    assert "stage 'prepare' failed with exit code 255" in message  # dvc's code for a failed command
    assert "prepare: boom, the stage broke" in message  # the stage's own stderr, via dvc
    assert "exited with 3" in message  # dvc's account of it
    assert [stage for _, _, stage, what in events(project) if what == "start"] == ["download", "prepare"]


def test_the_flows_exit_with_the_salgan_statuses(harness, tmp_path, capsys):
    """``python -m flows.X`` exits as the ``salgan`` commands do: 2 for invalid parameters, 1 when a stage
    found its input unusable (the status its command handed over, through DVC's 255), 3 for any other
    failure, 0 when done; the reason is one line on stderr."""
    from flows import batch_predict, pipeline, retrain

    project = make_project(tmp_path / "p", behaviour={"prepare": {"unusable": True}})
    assert pipeline.main(["--workdir", str(project), "download"]) == 0
    assert "ran download" in capsys.readouterr().out
    assert pipeline.main(["--workdir", str(project), "download", "prepare"]) == 1
    assert "prepare: data/raw/x.jpg is unusable" in capsys.readouterr().err
    (project / "behaviour.json").write_text(json.dumps({"prepare": {"fail": True}}))
    assert pipeline.main(["--workdir", str(project), "prepare"]) == 3
    assert pipeline.main(["--workdir", "/", "prepare"]) == 2
    assert "python -m flows.pipeline: workdir '/' is neither this flow's checkout" in capsys.readouterr().err
    assert pipeline.main(["--workdir", str(project), "deploy"]) == 2
    assert retrain.main(["--workdir", str(project), "--metric", "rm -rf"]) == 2
    assert batch_predict.main(["s3://bucket/in; rm -rf ~", "s3://bucket/out"]) == 2
    assert "images 's3://bucket/in; rm -rf ~': expected s3://bucket/prefix" in capsys.readouterr().err
    assert [stage for _, _, stage, what in events(project) if what == "start"] == ["download", "prepare", "prepare"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"dvc.yaml:stages.package.cmd": "'touch marker; salgan package --params params.yaml'"},
        {"/tmp/elsewhere.yaml:foo": 1},
        {"download.source": "${oc.env:AWS_SECRET_ACCESS_KEY}"},
    ],
)
def test_an_override_that_dvc_would_read_as_syntax_is_refused_before_anything_runs(harness, tmp_path, overrides):
    """The security review's overrides: each is refused with the key named, and the workspace is untouched."""
    from flows.pipeline import salgan_pipeline
    from flows.retrain import salgan_retrain
    from salgan.settings import ConfigError

    project = make_project(tmp_path / "p")
    before = {name: (project / name).read_text() for name in ("dvc.yaml", "params.yaml")}
    for flow in (salgan_pipeline, salgan_retrain):  # the retraining checks them before its data refresh
        state = flow(overrides=overrides, workdir=str(project), return_state=True)
        assert state.is_failed()
        with pytest.raises(ConfigError, match="override"):
            state.result()
    assert {name: (project / name).read_text() for name in before} == before
    assert not (project / "marker").exists() and not (project / "out").exists() and events(project) == []


@pytest.mark.parametrize(
    "overrides,reason",
    [
        ({"predict.output": "VICTIM"}, "override predict.output: .* outside the workspace"),
        ({"predict.output": "linked"}, "override predict.output: 'linked' resolves to .*victim, outside the workspace"),
        ({"train.output": "stage.py"}, r"override train.output: 'stage.py' holds files of the checkout itself"),
        (
            {"mlflow.tracking_uri": "http://collector.example:5000"},
            r"override mlflow.tracking_uri: .*\(trust class host",
        ),
        ({"mlflow.model_name": "another-teams-model"}, r"override mlflow.model_name: .*\(trust class host"),
        ({"download.source": "http://169.254.169.254/latest/meta-data/"}, r"override download.source: .*\(trust class"),
        ({"model.encoder_weights": "/etc/passwd"}, r"override model.encoder_weights: '/etc/passwd' names a server"),
        ({"prepare.max_pixels": 50_000_000 * 10**6}, "override prepare.max_pixels: .* raises the workspace's limit"),
        ({"download.max_compression_ratio": 2e8}, "override download.max_compression_ratio: .* raises the"),
        ({"prepare.workers": 10**6}, "override prepare.workers: input should be less than or equal to 256"),
        ({"download.sample_train": 10**9}, "override download.sample_train: input should be less than or equal"),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else None,
)
def test_overrides_beyond_their_trust_class_are_refused_and_nothing_anywhere_changes(
    harness, tmp_path, overrides, reason
):
    """The second probe's overrides (places outside, hosts, raised limits, absurd sizes): each is refused by
    both flows before anything runs, naming the key and the reason; the workspace and a folder outside it
    (which predict.output would have emptied and filled) are as they were."""
    from flows.pipeline import salgan_pipeline
    from flows.retrain import salgan_retrain
    from salgan.settings import ConfigError

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    project = make_project(tmp_path / "p")
    (project / "linked").symlink_to(victim)
    overrides = {key: str(victim) if value == "VICTIM" else value for key, value in overrides.items()}
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file() and ".git" not in p.parts}
    for flow in (salgan_pipeline, salgan_retrain):
        state = flow(overrides=overrides, workdir=str(project), return_state=True)
        assert state.is_failed()
        with pytest.raises(ConfigError, match=reason):
            state.result()
    after = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file() and ".git" not in p.parts}
    assert after == before and events(project) == []


def test_a_signed_source_the_operator_allows_never_reaches_the_flow_logs_or_the_workspace(
    harness, tmp_path, monkeypatch
):
    """With ``download.source`` allowed by the worker's operator, a signed mirror URL (a parenthesis in its
    path) runs; neither the logged command line, nor the stages' output quoting the URL and its bare
    ``path?query``, nor a failure's message holds the signature; params.yaml alone holds the setting."""
    from flows.pipeline import salgan_pipeline
    from flows.processes import StageFailed

    monkeypatch.setenv("SALGAN_FLOW_ALLOWED_KEYS", "download.source")
    secrets = ("5ecretSignature0123", "AKIDSECRETEXAMPLE")
    signed = f"https://mirror.example/sal(icon)/v2?X-Amz-Credential={secrets[1]}&X-Amz-Signature={secrets[0]}"
    project = make_project(tmp_path / "p", behaviour={"download": {"echo_source": True}})
    state = salgan_pipeline(overrides={"download.source": signed}, workdir=str(project), return_state=True)
    assert state.is_completed(), state.message
    assert yaml.safe_load((project / "params.yaml").read_text())["download"]["source"] == signed  # the setting
    (project / "behaviour.json").write_text(json.dumps({"train": {"echo_source": True, "fail": True}}))
    failed = salgan_pipeline(
        overrides={"download.source": signed, "train.epochs": 2}, workdir=str(project), return_state=True
    )
    with pytest.raises(StageFailed) as failure:
        failed.result()
    assert "fetching https://mirror.example/sal(icon)/v2; retrying /images.zip" in str(failure.value)
    logs = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("retrying /images.zip" in line for line in logs):
        logs = _flow_logs(state.state_details.flow_run_id)
        time.sleep(0.5)
    logs += _flow_logs(failed.state_details.flow_run_id)
    assert any("download.source='https://mirror.example/sal(icon)/v2'" in line for line in logs), logs
    assert any("fetching https://mirror.example/sal(icon)/v2; retrying /images.zip" in line for line in logs)
    written = [p for p in project.rglob("*") if p.is_file() and not {".git", ".dvc"} & set(p.parts)]
    for secret in secrets:
        assert not any(secret in line for line in logs), secret
        assert secret not in str(failure.value) and secret not in str(failed.message)
        assert [p.name for p in written if secret.encode() in p.read_bytes()] == ["params.yaml"]


def test_a_workdir_outside_the_checkout_and_the_listed_folders_is_refused(harness, tmp_path, monkeypatch):
    from flows.pipeline import salgan_pipeline
    from flows.retrain import salgan_retrain

    project = make_project(tmp_path / "p")
    monkeypatch.setenv("SALGAN_WORKDIRS", str(tmp_path / "elsewhere"))
    state = salgan_pipeline(workdir=str(project), return_state=True)
    assert state.is_failed() and "is neither this flow's checkout" in state.message
    state = salgan_retrain(workdir=str(project), metric="nss", return_state=True)
    assert state.is_failed() and "is neither this flow's checkout" in state.message
    assert events(project) == [] and not (project / "out").exists()
    monkeypatch.setenv("SALGAN_WORKDIRS", str(tmp_path))
    state = salgan_retrain(workdir=str(project), metric="rm -rf", return_state=True)
    assert state.is_failed() and "metric must be one of" in state.message


def test_a_flaky_download_is_retried(harness, tmp_path):
    from flows.pipeline import salgan_pipeline

    project = make_project(tmp_path / "p", behaviour={"download": {"flaky": 2}})
    state = salgan_pipeline(stages=["download", "prepare"], workdir=str(project), return_state=True)
    assert state.is_completed(), state.message
    starts = [stage for _, _, stage, what in events(project) if what == "start"]
    assert starts == ["download"] * 3 + ["prepare"]


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _flow_process(harness: str, code: str, tag: str, home: Path) -> subprocess.Popen:
    """A flow run in its own Python process (as a worker starts one), against the session's API server."""
    env = {**os.environ, "PREFECT_API_URL": harness, "PREFECT_HOME": str(home), "RUN_TAG": tag}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_sigterm_ends_the_stage_and_all_its_children(harness, tmp_path):
    """A worker cancels a run with SIGTERM to the flow process: every stage process must go with it."""
    project = make_project(tmp_path / "p", behaviour={"train": {"spawn": True}})
    code = f"from flows.pipeline import salgan_pipeline; salgan_pipeline(workdir={str(project)!r})"
    flow = _flow_process(harness, code, "cancel", tmp_path / "home")
    try:
        pids_file = project / "pids.txt"
        text = _wait_for(lambda: pids_file.exists() and pids_file.read_text(), 120, "the train stage's processes")
        pids = [int(pid) for pid in text.split()]
        assert all(_alive(pid) for pid in pids)
        os.kill(flow.pid, signal.SIGTERM)
        output, _ = flow.communicate(timeout=60)
        _wait_for(lambda: not any(_alive(pid) for pid in pids), 20, "the stage processes to end")
        assert "interrupted: ending process group" in output
    finally:
        if flow.poll() is None:
            os.killpg(flow.pid, signal.SIGKILL)
    assert not (project / "out" / "evaluate.json").exists()


# ---------------------------------------------------------------------------------------------------------
# The retraining flow

FAKE_GATE = """
import flows.retrain as retrain

def fake_promotion(params, metric, min_delta, floor):
    return {{"decision": "promoted", "reason": "fake gate", "challenger": {{"version": "{tag}", "value": 1.5}},
            "champion": {{"version": "0", "value": 1.0}}}}

retrain.run_promotion = fake_promotion
state = retrain.salgan_retrain(workdir={workdir!r}, refresh="download", overrides={{"train.epochs": {epochs}}},
                               return_state=True)
print("FINAL", state.type.value, state.message)
"""


def test_two_retrain_triggers_take_turns_on_the_workspace(harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.retrain import ARTIFACT_KEY

    project = make_project(tmp_path / "p", behaviour={"train": {"sleep": 1.5}}, extra_params={"mlflow": {}})
    runs = {}
    for tag, epochs in (("first", 2), ("second", 3)):
        code = FAKE_GATE.format(tag=tag, workdir=str(project), epochs=epochs)
        runs[tag] = _flow_process(harness, code, tag, tmp_path / f"home-{tag}")
    outputs = {tag: proc.communicate(timeout=240)[0] for tag, proc in runs.items()}
    for output in outputs.values():
        assert "FINAL COMPLETED" in output, output[-3000:]

    spans = {}
    for t, tag, _, _ in events(project):
        start, end = spans.get(tag, (t, t))
        spans[tag] = (min(start, t), max(end, t))
    assert set(spans) == {"first", "second"}
    (a_start, a_end), (b_start, b_end) = sorted(spans.values())
    assert a_end < b_start, f"the two retraining runs overlapped: {spans}"
    trained = [tag for _, tag, stage, what in events(project) if stage == "train" and what == "end"]
    assert sorted(trained) == ["first", "second"]  # each run's override retrained the model
    last = max(spans, key=lambda tag: spans[tag][1])
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["epochs"] == {"first": 2, "second": 3}[last]

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])))
    reports = [artifact.data for artifact in artifacts]
    assert len(reports) == 2
    assert all(
        "**Decision: promoted: fake gate**" in text and "| **nss** | 1.5000 | 1.0000 |" in text for text in reports
    )


def test_the_workspace_lock_is_reentrant_in_a_thread_and_excludes_other_processes(tmp_path):
    from flows.workspace import workspace_lock

    (tmp_path / ".dvc").mkdir()
    probe = (
        "import sys; from filelock import FileLock, Timeout\n"
        "try:\n    FileLock(sys.argv[1]).acquire(timeout=0.5)\nexcept Timeout:\n    sys.exit(3)\n"
    )
    lock_file = tmp_path / ".dvc" / "tmp" / "salgan-workspace.lock"
    with workspace_lock(tmp_path), workspace_lock(tmp_path):  # the retraining flow around the pipeline flow
        assert subprocess.run([sys.executable, "-c", probe, str(lock_file)]).returncode == 3
        assert json.loads((tmp_path / ".dvc" / "tmp" / "salgan-workspace.owner").read_text())["pid"] == os.getpid()
    assert subprocess.run([sys.executable, "-c", probe, str(lock_file)]).returncode == 0


# ---------------------------------------------------------------------------------------------------------
# The registry's lock on a server store: a Prefect global concurrency limit

LOCK_HOLDER = """
import json, sys, time
from pathlib import Path

from salgan.tracking.lock import registry_lock

me = sys.argv[1]
Path(me + ".ready").touch()
while not (Path("a.ready").exists() and Path("b.ready").exists()):  # both ask for the lock at once
    time.sleep(0.02)
with registry_lock("http://user:secret@mlflow.example:5000") as held:
    start = time.time()
    time.sleep(1.0)
    end = time.time()
print(json.dumps({"held": held, "start": start, "end": end}))
"""


def test_the_registry_lock_of_a_server_store_is_one_prefect_limit_for_every_process(harness, tmp_path):
    """Two processes (two machines' gates) on one MLflow server and one Prefect server hold the registry's
    lock one after the other; without a Prefect API there is no lock, and the gate says so."""
    from prefect.client.orchestration import get_client

    from salgan.tracking.lock import limit_name

    name = limit_name("http://user:secret@mlflow.example:5000")
    assert name == limit_name("http://other:login@mlflow.example:5000")  # credentials are not the key
    env = {**os.environ, "PREFECT_API_URL": harness, "PYTHONPATH": str(REPO)}
    holders = [
        subprocess.Popen(
            [sys.executable, "-c", LOCK_HOLDER, me], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
        )
        for me in ("a", "b")
    ]
    try:
        held = [json.loads(holder.communicate(timeout=120)[0].strip().splitlines()[-1]) for holder in holders]
        assert [h["held"] for h in held] == [f"Prefect global concurrency limit {name}"] * 2
        first, second = sorted(held, key=lambda h: h["start"])
        assert first["end"] <= second["start"], f"both held the registry lock at once: {held}"
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(name).limit == 1
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(name)

    alone = {key: value for key, value in env.items() if key != "PREFECT_API_URL"}
    code = (
        "from salgan.tracking.lock import registry_lock\n"
        "with registry_lock('http://mlflow.example:5000') as held:\n    print(held)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=alone, capture_output=True, text=True)
    assert done.stdout.strip() == "none (no Prefect API): re-checked only"
    assert "no registry-wide lock for http://mlflow.example:5000 outside Prefect" in done.stderr
