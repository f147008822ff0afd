"""The production stack's definitions are wired as infra/README.md describes them.

infra/docker-compose.yml is parsed with PyYAML and checked service by service (and by `docker compose
config` where a compose client runs without an engine); the Kubernetes job and the DVC remotes likewise.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
COMPOSE_FILE = INFRA / "docker-compose.yml"
ENV_EXAMPLE = INFRA / ".env.example"
SERVICES = {"check-secrets", "postgres", "minio", "minio-init", "mlflow", "prefect-server", "prefect-worker"}
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    return dict(item.split("=", 1) for item in env) if isinstance(env, list) else env


def command(service: dict) -> str:
    cmd = service.get("command") or ""
    return " ".join(cmd) if isinstance(cmd, list) else cmd


def test_every_service_is_there(services):
    assert set(services) == SERVICES


def test_start_up_order_waits_for_health(services):
    expected = {
        "minio-init": {"minio": "service_healthy"},
        "mlflow": {"postgres": "service_healthy", "minio-init": "service_completed_successfully"},
        "prefect-server": {"postgres": "service_healthy"},
        "prefect-worker": {
            "prefect-server": "service_healthy",
            "mlflow": "service_healthy",
            "minio-init": "service_completed_successfully",
        },
    }
    for name, needs in expected.items():
        depends = services[name]["depends_on"]
        assert {dep: spec["condition"] for dep, spec in depends.items()} == needs, name
    waited_for = {dep for s in services.values() for dep, spec in (s.get("depends_on") or {}).items()
                  if spec["condition"] == "service_healthy"}  # fmt: skip
    for name in waited_for:
        assert services[name]["healthcheck"]["test"], f"{name} is waited for but has no health check"
    for name in SERVICES - {"minio-init", "check-secrets"}:
        assert "healthcheck" in services[name], f"{name}: no health check"
    assert services["minio-init"]["restart"] == services["check-secrets"]["restart"] == "no"
    # Nothing starts before the placeholder check has passed.
    for name in ("postgres", "minio"):
        assert services[name]["depends_on"] == {"check-secrets": {"condition": "service_completed_successfully"}}


def test_ports_are_published_on_the_bind_address(services):
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            host, _, container = port.rpartition(":")
            assert host.startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {port} is not bound to BIND_ADDRESS"
            published[int(container)] = name
    assert published == {9000: "minio", 9001: "minio", 5000: "mlflow", 4200: "prefect-server"}


def test_data_lives_in_named_volumes_and_mounted_files_exist(compose, services):
    declared = set(compose["volumes"])
    assert {"postgres-data", "minio-data", "worker-dvc-cache"} <= declared
    mounts = {name: [v.split(":")[:2] for v in s.get("volumes", [])] for name, s in services.items()}
    assert ["postgres-data", "/var/lib/postgresql/data"] in mounts["postgres"]
    assert ["minio-data", "/var/lib/minio"] in mounts["minio"]
    for name, pairs in mounts.items():
        for source, _ in pairs:
            if source.startswith("."):
                assert (INFRA / source).is_file(), f"{name}: mounts {source}, which does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
    init = [t for s, t in mounts["postgres"] if t.startswith("/docker-entrypoint-initdb.d/")]
    assert init, "postgres: no init script creates the mlflow and prefect databases"
    script = (INFRA / "postgres" / Path(init[0]).name).read_text()
    assert "CREATE DATABASE mlflow" in script and "CREATE DATABASE prefect" in script


def test_servers_use_postgres_and_s3(services):
    mlflow = services["mlflow"]
    # The driver named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, older releases to psycopg2.
    assert environment(mlflow)["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://mlflow:${")
    assert environment(mlflow)["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert "--artifacts-destination=s3://${S3_BUCKET:-salgan}/mlflow --serve-artifacts" in command(mlflow)
    assert environment(mlflow)["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "psycopg[binary]" in mlflow["build"]["dockerfile_inline"]  # the official image lacks the driver
    assert "mlflow" in environment(mlflow)["MLFLOW_SERVER_ALLOWED_HOSTS"]  # other containers call it so

    url = environment(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert re.fullmatch(r"postgresql\+asyncpg://prefect:\$\{PREFECT_DB_PASSWORD:\?[^}]*\}@postgres:5432/prefect", url)
    init = command(services["minio-init"])
    assert 'mc mb --ignore-existing "local/$$S3_BUCKET"' in init


def test_worker_serves_the_gpu_pool_on_the_gpus(services):
    worker = services["prefect-worker"]
    assert worker["build"] == {"context": "..", "dockerfile": "infra/Dockerfile"}
    assert "--pool ${PREFECT_WORK_POOL:-gpu}" in command(worker)
    env = environment(worker)
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "worker-dvc-cache:/opt/salgan/.dvc/cache" in worker["volumes"]
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-runtime-", dockerfile, re.M)
    assert "pip install --require-hashes --no-deps -r /tmp/requirements-worker.lock && pip check" in dockerfile
    assert "pip install --no-deps --no-build-isolation ." in dockerfile  # nothing fetched without a hash
    assert "WORKDIR /opt/salgan" in dockerfile and "dvc remote default --local s3" in dockerfile
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().split()
    # The image is a checkout (DVC needs .git) without secrets or host-only settings.
    assert {"infra/.env", ".dvc/config.local", "data", "models"} <= set(ignored) and ".git" not in ignored


def pins(text: str) -> dict[str, str]:
    """{normalised name: version} of a pip requirements file's `name==version` lines."""
    found = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, flags=re.M)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in found}


def requirement_closure(name: str, extras: set[str]) -> set[str]:
    """Every distribution `name[extras]` needs on this platform, walked through the installed metadata."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement

    seen: dict[str, set[str]] = {}
    todo = [(name, extras)]
    while todo:
        current, wanted = todo.pop()
        key = re.sub(r"[-_.]+", "-", current).lower()
        if key in seen and wanted <= seen[key]:
            continue
        seen.setdefault(key, set()).update(wanted)
        for line in distribution(current).requires or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in wanted | {""}):
                todo.append((requirement.name, set(requirement.extras)))
    return set(seen)


def test_the_worker_installs_requirements_lock_with_every_hash():
    """infra/requirements-worker.lock: requirements.lock's versions, each with its sha256, and everything
    salgan[all] needs (walked independently through the installed packages' metadata)."""
    text = (INFRA / "requirements-worker.lock").read_text()
    worker, lock = pins(text), pins((REPO / "requirements.lock").read_text())
    assert {name: lock.get(name) for name in worker} == worker, "regenerate infra/requirements-worker.lock"
    for entry in (e for e in re.split(r"\n(?=[A-Za-z])", text) if "==" in e):
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), f"no hash: {entry.splitlines()[0]}"
    assert len(worker) == text.count("==")  # every pin is name==version (no URL or path requirement)
    needed = requirement_closure("salgan", {"all"}) - {"salgan"}
    assert needed <= set(worker), f"missing from the worker's lock: {sorted(needed - set(worker))}"


def test_every_variable_is_in_the_example_env_file(compose):
    text = yaml.safe_dump(compose)  # the values compose interpolates, not the comments
    used = set(VARIABLE.findall(text))
    example = env_example()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    assert required <= set(example), f"required but not in .env.example: {sorted(required - set(example))}"
    commented = set(re.findall(r"^# ?([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    assert used <= set(example) | commented, (
        f"not documented in .env.example: {sorted(used - set(example) - commented)}"
    )


def test_no_secret_is_committed(services):
    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) or "://" in str(value):
                # A secret, or a URL that could carry one, only as a ${VAR} reference.
                creds = re.search(r"://[^/@]*:([^@/]*)@", str(value))
                secret = creds.group(1) if creds else value
                if SECRET_NAME.search(key) or creds:
                    assert str(secret).startswith("${"), f"{name}: {key} holds a literal secret"
    for key, value in env_example().items():
        if SECRET_NAME.search(key):
            assert value == "change-me", f".env.example: {key} must be a placeholder"
    for path in INFRA.rglob("*"):
        if path.is_file() and path.name != ".env":
            assert not re.search(r"(?i)(password|secret)\s*[:=]\s*['\"]?[a-z0-9]{8,}", path.read_text()), path


def test_env_file_is_ignored_by_git():
    if shutil.which("git") is None:
        pytest.skip("no git")
    result = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=REPO)
    assert result.returncode == 0, "add infra/.env to .gitignore: it holds the stack's passwords"


def compose_client() -> list[str] | None:
    for candidate in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(candidate[0]) is None:
            continue
        if subprocess.run([*candidate, "version"], capture_output=True).returncode == 0:
            return candidate
    return None


def test_docker_compose_accepts_the_file():
    client = compose_client()
    if client is None:
        pytest.skip("no docker compose client here")
    # `config` resolves and validates the file without an engine; the example env fills every variable.
    result = subprocess.run(
        [*client, "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_placeholder_secrets_stop_the_stack_and_the_servers_require_logins(services):
    """check-secrets refuses .env.example's change-me (run here with sh, as its container would); the
    MLflow and Prefect servers demand basic auth and the worker presents it."""
    check = services["check-secrets"]
    script = check["command"][0].replace("$$", "$")
    names = [k for k in environment(check)]
    good = {name: "a" * 24 for name in names}
    assert subprocess.run(["sh", "-ec", script], env=good, capture_output=True).returncode == 0
    for bad, reason in (("x-change-me-x-change-me", "still the placeholder"), ("s3cr3t", "shorter than 12")):
        result = subprocess.run(["sh", "-ec", script], env=good | {names[-1]: bad}, capture_output=True, text=True)
        assert result.returncode == 1 and f"{names[-1]} is {reason}" in result.stderr
        assert bad not in result.stderr  # the value itself is never printed
    assert set(names) == {k for k in env_example() if SECRET_NAME.search(k) and k != "AWS_ACCESS_KEY_ID"}

    assert "--app-name basic-auth" in command(services["mlflow"])
    server, worker = environment(services["prefect-server"]), environment(services["prefect-worker"])
    assert server["PREFECT_SERVER_API_AUTH_STRING"] == worker["PREFECT_API_AUTH_STRING"]
    assert "PREFECT_SERVER_API_AUTH_STRING" in " ".join(services["prefect-server"]["healthcheck"]["test"])
    assert worker["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")


def run_as_user(service: dict) -> str | None:
    """The user a service's container starts as: compose's `user`, else the last USER of the image it builds
    (None: the base image's, which is root for every base image used here)."""
    if "user" in service:
        return str(service["user"])
    build = service.get("build")
    if not build:
        return None
    dockerfile = build.get("dockerfile_inline") or (REPO / build["dockerfile"]).read_text()  # context: the repo
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    return users[-1] if users else None


def test_no_service_runs_as_root(services):
    for name, service in services.items():
        user = run_as_user(service)
        assert user is not None and user.split(":")[0] not in ("root", "0"), f"{name} runs as root"
    # MinIO's data folder is one the image gives to that user (a new named volume takes its owner).
    minio = services["minio"]
    assert "chown 1000:1000 /var/lib/minio" in minio["build"]["dockerfile_inline"]
    assert "/var/lib/minio" in minio["command"]


# --- Kubernetes ---------------------------------------------------------------------------------


def test_multinode_job_rendezvous_at_pod_0_and_requests_gpus():
    docs = list(yaml.safe_load_all((INFRA / "k8s" / "train-multinode.yaml").read_text()))
    by_kind = {doc["kind"]: doc for doc in docs}
    job, service = by_kind["Job"], by_kind["Service"]
    assert job["spec"]["completionMode"] == "Indexed"
    nodes = job["spec"]["completions"]
    assert nodes == job["spec"]["parallelism"] == 2
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]

    (train,) = pod["containers"]
    args = train["command"]
    assert args[0] == "torchrun" and args[-4:] == ["-m", "salgan.train", "--params", "params.yaml"]
    options = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
    assert int(options["nnodes"]) == nodes and options["rdzv-backend"] == "c10d"
    host = f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert options["rdzv-endpoint"] == f"{host}:{service['spec']['ports'][0]['port']}"
    gpus = int(options["nproc-per-node"])
    assert train["resources"]["limits"]["nvidia.com/gpu"] == gpus == 8
    for container in [*pod["initContainers"], train]:
        for var in container["env"]:
            if SECRET_NAME.search(var["name"]) or var["name"] == "AWS_ACCESS_KEY_ID":
                assert "secretKeyRef" in var["valueFrom"], f"{var['name']} must come from a Secret"
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 1000
    policy = by_kind["NetworkPolicy"]["spec"]
    only_the_job = {"podSelector": {"matchLabels": {"job-name": job["metadata"]["name"]}}}
    assert policy["podSelector"] == only_the_job["podSelector"] and policy["ingress"] == [{"from": [only_the_job]}]


# --- DVC remotes --------------------------------------------------------------------------------


def test_dvc_remotes_default_to_a_local_folder_and_offer_s3():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dvc")), "config", "--project", "--list"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    config = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    default = config["core.remote"]
    local = (REPO / ".dvc" / config[f"remote.{default}.url"]).resolve()
    assert "://" not in config[f"remote.{default}.url"]
    assert not local.is_relative_to(REPO), "the default remote must live outside the repository"
    assert config["remote.s3.url"] == "s3://salgan/dvc"
    # Endpoint and credentials belong in .dvc/config.local or the AWS settings, not in git.
    assert not {k for k in config if k.startswith("remote.s3.") and k != "remote.s3.url"}


# ---------------------------------------------------------------------------------------------------------
# infra/stack, the same stack as processes: it must not drift from the compose file.

# What only the process stack sets: the worker's state folder and its health endpoint's address (compose
# fixes both inside the container).
STACK_ONLY = {"prefect-worker": {"PREFECT_HOME", "PREFECT_WORKER_WEBSERVER_HOST", "PREFECT_WORKER_WEBSERVER_PORT"}}
COMPOSE_TO_STACK = {"postgres": "postgres", "minio": "s3", "mlflow": "mlflow", "prefect-server": "prefect-server",
                    "prefect-worker": "prefect-worker"}  # fmt: skip


@pytest.fixture(scope="module")
def stack_plan() -> dict:
    import json

    result = subprocess.run([sys.executable, str(INFRA / "stack"), "plan"], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def _defaults(text: str) -> str:
    """``${NAME:-default}`` replaced by its default, as compose does when .env leaves it unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)


def test_process_stack_runs_the_same_services_with_the_same_variables(services, stack_plan):
    assert set(COMPOSE_TO_STACK.values()) <= set(stack_plan)
    for compose_name in ("mlflow", "prefect-server", "prefect-worker"):
        compose_vars = set(environment(services[compose_name]))
        stack_vars = set(stack_plan[compose_name]["environment"])
        assert stack_vars - compose_vars == STACK_ONLY.get(compose_name, set()), compose_name
        assert compose_vars <= stack_vars, f"{compose_name}: infra/stack lacks {compose_vars - stack_vars}"
    postgres_env = set(environment(services["postgres"]))
    assert postgres_env == set(stack_plan["postgres"]["environment"])
    mounted = [volume.split(":")[0] for volume in services["postgres"]["volumes"]]
    assert "./" + stack_plan["postgres"]["init"].removeprefix("infra/") in mounted  # the same init script


def test_process_stack_runs_the_same_commands(services, stack_plan):
    mlflow_compose = _defaults(services["mlflow"]["command"][0])
    for flag in ("--app-name", "basic-auth", "--serve-artifacts"):
        assert flag in mlflow_compose and flag in stack_plan["mlflow"]["command"]
    destination = re.search(r"--artifacts-destination=(\S+)", mlflow_compose).group(1)
    assert f"--artifacts-destination={destination}" in stack_plan["mlflow"]["command"]
    assert stack_plan["prefect-server"]["command"][:3] == services["prefect-server"]["command"][:3]
    worker = [_defaults(part) for part in services["prefect-worker"]["command"]]
    assert stack_plan["prefect-worker"]["command"] == worker


def test_process_stack_secrets_are_those_of_the_env_file(services, stack_plan):
    example = env_example()
    assert set(stack_plan["secrets"]) <= set(example)
    checked = set(environment(services["check-secrets"])) - {"MINIO_ROOT_PASSWORD"}  # no MinIO root in moto
    assert checked <= set(stack_plan["secrets"])
    assert {"MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY"} <= set(stack_plan["client_environment"])  # fmt: skip
    # What the compose worker gets to reach the servers, a client shell gets from `infra/stack env`.
    worker_only = {"PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"}
    worker_only |= {"PREFECT_WORKER_QUERY_SECONDS"}
    reach = set(environment(services["prefect-worker"])) - worker_only
    assert reach <= set(stack_plan["client_environment"])


def _stack(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    import os

    environment = {k: v for k, v in os.environ.items() if not k.endswith("_PORT")}
    environment.update({"SALGAN_STACK_HOME": str(home), **env})
    return subprocess.run(
        [sys.executable, str(INFRA / "stack"), *args], env=environment, capture_output=True, text=True, timeout=60
    )


def test_stack_commands_before_up_say_to_run_up(tmp_path):
    for command in ("status", "env", "down"):
        result = _stack(tmp_path / "home", command)
        assert result.returncode == 1
        assert f"no stack at {tmp_path / 'home'} yet: run infra/stack up" in result.stderr
    assert not (tmp_path / "home").exists()


def test_stack_names_a_taken_port_and_the_variable_that_moves_it(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _stack(tmp_path / "home", "up", "s3", MINIO_PORT=str(port))
    assert result.returncode == 1
    assert f"s3: port {port} on 127.0.0.1 is taken by another program" in result.stderr
    assert "MINIO_PORT=" in result.stderr
    secrets = (tmp_path / "home" / ".env").stat()
    assert oct(secrets.st_mode & 0o777) == "0o600"


def test_the_stacks_waits_are_settings_with_productions_defaults_and_a_floor(monkeypatch):
    """infra/stack's waits (infra/README.md): Prefect's defaults unless set; the zombie window never under
    two heartbeats, so one late beat cannot mark a live run Crashed; a value that is not whole seconds is
    named."""
    from importlib.machinery import SourceFileLoader
    from importlib.util import module_from_spec, spec_from_loader

    loader = SourceFileLoader("infra_stack", str(INFRA / "stack"))
    stack = module_from_spec(spec_from_loader("infra_stack", loader))
    loader.exec_module(stack)
    for name in stack.TIMING_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    assert [stack.timing(name) for name in stack.TIMING_DEFAULTS] == [10, 30, 90]
    monkeypatch.setenv("SALGAN_STACK_ZOMBIE_WINDOW_S", "60")
    assert stack.timing("SALGAN_STACK_ZOMBIE_WINDOW_S") == 60
    monkeypatch.setenv("SALGAN_STACK_ZOMBIE_WINDOW_S", "59")
    with pytest.raises(stack.StackError, match=r"SALGAN_STACK_ZOMBIE_WINDOW_S=59: at least 60 s \(two heartbeats"):
        stack.timing("SALGAN_STACK_ZOMBIE_WINDOW_S")
    monkeypatch.setenv("SALGAN_STACK_SLOT_WAIT_S", "2.5")
    with pytest.raises(stack.StackError, match=r"SALGAN_STACK_SLOT_WAIT_S='2.5': expected whole seconds"):
        stack.timing("SALGAN_STACK_SLOT_WAIT_S")
