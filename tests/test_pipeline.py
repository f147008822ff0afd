"""`dvc repro` end to end on a tiny configuration, in a temporary copy of the repository."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "download": {"sample_train": 24, "sample_val": 6, "sample_test": 4},
    "prepare": {"size": [64, 48], "workers": 1},
    "model": {"width": 0.0625},
    "train": {"epochs": 2, "bce_epochs": 1, "batch_size": 8, "nproc": 1, "device": "cpu"},
    "evaluate": {"n_splits": 10, "grid_images": 2},
}


def tracked_files() -> list[str]:
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    return [name for name in listing.stdout.split("\0") if name and (REPO / name).is_file()]


def run(command: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def set_params(workdir: Path, overrides: dict) -> None:
    path = workdir / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in overrides.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def project_checkout(workdir: Path, overrides: dict) -> dict:
    """The repository's tracked files committed in a fresh git repo at ``workdir`` with ``overrides`` in
    params.yaml; returns the environment its commands run in (no MLflow server named)."""
    for name in tracked_files():
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, workdir / name)
    set_params(workdir, overrides)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(workdir),
        "DVC_NO_ANALYTICS": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    for command in (["git", "init", "-q"], ["git", "add", "-A"]):
        run(command, workdir, env)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "tiny"], workdir, env)
    return env


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("project")
    env = project_checkout(workdir, TINY)
    first = run(["dvc", "repro"], workdir, env)
    return workdir, env, first


@pytest.mark.slow
def test_repro_produces_every_stage_output(project):
    workdir, _, log = project
    for stage in ("download", "prepare", "train", "evaluate", "predict", "package"):
        assert f"Running stage '{stage}'" in log
    metrics = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert {"auc_judd", "auc_shuffled", "nss", "cc", "kld", "sim", "information_gain"} <= set(metrics)
    assert "nss" in metrics["baselines"]["center_bias"]
    maps = sorted((workdir / "outputs" / "test_maps").glob("*.png"))
    assert len(maps) == 4 and all(Image.open(m).size == (640, 480) and Image.open(m).mode == "L" for m in maps)
    with zipfile.ZipFile(workdir / "outputs" / "submission" / "submission.zip") as archive:
        names = archive.namelist()
    assert sorted(names) == sorted(m.name for m in maps)  # the maps only: the server reads nothing else
    assert json.loads((workdir / "outputs" / "submission" / "manifest.json").read_text())["counts"] == {"test": 4}


@pytest.mark.slow
def test_dvc_plots_show_renders_every_plot(project, tmp_path):
    workdir, env, _ = project
    shown = subprocess.run(
        ["dvc", "plots", "show", "--json", "-o", str(tmp_path / "plots")], cwd=workdir, env=env, capture_output=True
    )
    plots = json.loads(shown.stdout)
    assert not plots.get("errors"), plots.get("errors")
    declared = {"models/history.json", "reports/examples.png", "reports/progression.png", "reports/progression.gif"}
    assert declared <= set(plots["data"]) and all(plots["data"][name] for name in declared)
    assert (workdir / "reports" / "report.html").is_file()
    # and against a committed run, as `dvc plots diff` compares two experiments
    commit = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "run"]
    for command in (["git", "add", "-A"], commit):
        run(command, workdir, env)
    diffed = subprocess.run(["dvc", "plots", "diff", "HEAD", "--json"], cwd=workdir, env=env, capture_output=True)
    diffed = json.loads(diffed.stdout)
    assert not diffed.get("errors"), diffed.get("errors")
    curves = diffed["data"]["models/history.json"][0]
    assert set(curves["revisions"]) == {"HEAD", "workspace"}


@pytest.mark.slow
def test_evaluate_registered_a_challenger(project):
    """The version the challenger alias names holds the trained weights and the val scores evaluate wrote;
    ``salgan registry list`` shows it so."""
    from mlflow import MlflowClient

    from salgan.layout import sha256_file
    from salgan.tracking.registry import recorded_metrics

    workdir, env, _ = project
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    version = client.get_model_version_by_alias("salgan", "challenger")
    metrics = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert version.tags["weights_sha256"] == sha256_file(workdir / "models" / "generator.pt")
    assert version.tags["data_version"] == metrics["data_version"]
    recorded = recorded_metrics(client, version)
    assert {name: recorded[name] for name in ("nss", "cc", "kld")} == pytest.approx(
        {name: metrics[name] for name in ("nss", "cc", "kld")}
    )
    listing = run([sys.executable, "-m", "salgan.cli", "registry", "list"], workdir, env).splitlines()
    row = next(line.split() for line in listing if line.split()[:1] == [str(version.version)])
    assert row[1] == "challenger" and f"{metrics['nss']:.4f}" in row


@pytest.mark.slow
def test_second_repro_does_nothing_and_a_training_change_skips_the_data_stages(project):
    workdir, env, _ = project
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], workdir, env)
    set_params(workdir, {"train": {"epochs": 3}})
    log = run(["dvc", "repro"], workdir, env)
    assert "Running stage 'download'" not in log and "Running stage 'prepare'" not in log
    for stage in ("train", "evaluate", "predict", "package"):
        assert f"Running stage '{stage}'" in log
    assert json.loads((workdir / "models" / "history.json").read_text())[-1]["epoch"] == 3


def experiment_params(workdir: Path, env: dict) -> dict[str, dict]:
    """``{experiment name: its params.yaml}`` from ``dvc exp show --json``."""
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=workdir, env=env, capture_output=True, check=True)
    found = {}
    for baseline in json.loads(shown.stdout):
        for group in baseline.get("experiments") or []:
            for revision in group.get("revs") or []:
                if revision.get("name"):
                    found[revision["name"]] = revision["data"]["params"]["params.yaml"]["data"]
    return found


@pytest.mark.slow
def test_ablation_arms_record_the_same_params_in_either_order_and_show_beside_table_one(project):
    """`dvc exp run -S` leaves each arm's values in the workspace; the next arm must not inherit them.
    ab- runs (its GAN arm after the BCE arm has run); ba- is queued from the workspace ab- left, GAN arm
    first (queued experiments record their params without running): both ways of inheriting are caught."""
    workdir, env, _ = project
    ablation = [sys.executable, "-m", "salgan.cli", "ablation", "run"]
    run([*ablation, "--arms", "random-bce", "random-gan", "--prefix", "ab-", "--scores-only"], workdir, env)
    run([*ablation, "--arms", "random-gan", "random-bce", "--prefix", "ba-", "--queue"], workdir, env)
    recorded = experiment_params(workdir, env)
    run(["dvc", "queue", "remove", "--queued"], workdir, env)
    for arm in ("random-bce", "random-gan"):
        assert recorded[f"ab-{arm}"] == recorded[f"ba-{arm}"], arm
    # Each experiment's MLflow run names its DVC experiment and sits under its ablation's parent run.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("salgan").experiment_id], max_results=500)
    parents = {run.info.run_name: run.info.run_id for run in runs if run.info.run_name.startswith("ablation ")}
    arms = {run.data.tags.get("dvc.experiment"): run for run in runs}
    for arm in ("ab-random-bce", "ab-random-gan"):
        assert arms[arm].data.tags["mlflow.parentRunId"] == parents["ablation ab-random-bce,random-gan"], arm
    committed = yaml.safe_load(
        subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=workdir, capture_output=True, text=True).stdout
    )
    assert recorded["ab-random-gan"]["train"]["bce_epochs"] == committed["train"]["bce_epochs"]
    assert recorded["ab-random-bce"]["train"]["bce_epochs"] == committed["train"]["epochs"]

    table = run([sys.executable, "-m", "salgan.cli", "ablation", "show"], workdir, env)
    assert "ours: ab-random-bce" in table and "published: SalGAN (Pan et al.)" in table
    row = next(line for line in table.splitlines() if line.startswith("ours: ab-random-bce"))
    assert len(row.split()) == 2 + 8 + 3 and "-" not in row.split()  # name, eight metrics, params, GFLOPs, img/s


def snapshots(workdir: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((workdir / "models" / "snapshots").glob("epoch_*.png"))]


@pytest.mark.slow
def test_new_data_with_the_same_settings_trains_a_new_model(project):
    """The data change under unchanged training settings: a model trained from scratch on the new data."""
    workdir, env, _ = project
    run(["dvc", "repro"], workdir, env)
    weights, before = (workdir / "models" / "generator.pt").read_bytes(), snapshots(workdir)
    epochs = yaml.safe_load((workdir / "params.yaml").read_text())["train"]["epochs"]
    log = run(["dvc", "exp", "run", "-S", "download.sample_seed=7"], workdir, env)
    assert "made from other data" in log and "already finished" not in log
    assert (workdir / "models" / "generator.pt").read_bytes() != weights
    history = json.loads((workdir / "models" / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    after = snapshots(workdir)
    assert len(after) == epochs and all(a != b for a, b in zip(after, before, strict=True))


@pytest.mark.slow
def test_a_collaborators_clone_pulls_the_results_and_has_nothing_to_rerun(project, tmp_path):
    """What the README says to commit, `dvc push`; a fresh clone, `dvc pull`: clean status, metrics and plots
    show, `dvc repro` does nothing. The default remote is a local folder beside the repository."""
    workdir, env, _ = project
    run(["dvc", "repro"], workdir, env)
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], workdir, env)
    untracked = sorted(line[3:] for line in status.splitlines() if line.startswith("??"))
    assert not [name for name in untracked if name.endswith((".pt", ".db")) or "checkpoint" in name], untracked
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    run([*git, "add", "-A"], workdir, env)
    run([*git, "commit", "-qm", "results"], workdir, env)
    run(["dvc", "push"], workdir, env)

    clone = workdir.parent / f"{workdir.name}-clone"  # a sibling: the relative default remote is the same
    run(["git", "clone", "-q", str(workdir), str(clone)], tmp_path, env)
    run(["dvc", "pull"], clone, env)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone, env)
    metrics = run(["dvc", "metrics", "show", "--json"], clone, env)
    assert '"nss"' in metrics
    shown = subprocess.run(
        ["dvc", "plots", "show", "--json", "-o", str(tmp_path / "plots")], cwd=clone, env=env, capture_output=True
    )
    plots = json.loads(shown.stdout)
    assert not plots.get("errors") and plots["data"]["models/history.json"]
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], clone, env)


@pytest.mark.slow
def test_an_encoder_and_a_metric_loss_run_the_whole_pipeline_as_a_dvc_experiment(project):
    """The issue's own command: `dvc exp run -S model.encoder=... -S train.content_loss={...}` (at 64x64, a
    size ResNet's stride 32 allows), every stage rerun, and the arm in `salgan ablation show` with its cost.
    Last in this file: the experiment leaves its settings in the workspace."""
    workdir, env, _ = project
    overrides = ["-S", "model.encoder=resnet18", "-S", "model.width=1.0", "-S", "prepare.size=[64,64]"]
    overrides += ["-S", "train.content_loss={kld:1.0,cc:-0.2,nss:-0.1}"]
    log = run(["dvc", "exp", "run", "--name", "resnet-metric", *overrides], workdir, env)
    for stage in ("prepare", "train", "evaluate", "predict", "package"):
        assert f"Running stage '{stage}'" in log
    recorded = experiment_params(workdir, env)["resnet-metric"]
    assert recorded["model"]["encoder"] == "resnet18"
    assert recorded["train"]["content_loss"] == {"kld": 1.0, "cc": -0.2, "nss": -0.1}
    table = run([sys.executable, "-m", "salgan.cli", "ablation", "show", "--prefix", "resnet-"], workdir, env)
    row = next(line for line in table.splitlines() if line.startswith("ours: resnet-metric")).split()
    assert len(row) == 2 + 8 + 3 and "-" not in row
    assert float(row[-3]) == pytest.approx(11.8, abs=0.1)  # ResNet-18 and its skip decoder: 11.8 M parameters
