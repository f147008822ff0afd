import subprocess

import pytest
import yaml

from salgan.ablation import (
    ARMS,
    PINNED,
    arm_overrides,
    base_params,
    exp_run_command,
    experiment_metrics,
    format_table,
    load_profile,
)
from salgan.settings import ConfigError, params_from_dict

BASE = params_from_dict(
    {"model": {"encoder_weights": "none", "width": 0.125}, "train": {"epochs": 40, "bce_epochs": 10}}
)


def test_every_arm_pins_every_setting_in_which_arms_differ():
    arms = {arm: arm_overrides(arm, {"train.epochs": 40}, BASE) for arm in ARMS}
    assert all(set(PINNED) <= set(overrides) for overrides in arms.values())
    assert arms["random-bce"]["train.bce_epochs"] == 40 and arms["random-gan"]["train.bce_epochs"] == 10
    assert arms["random-gan"]["model.width"] == 0.125 and arms["imagenet-gan"]["model.width"] == 1.0
    assert arms["imagenet-bce"]["model.freeze_blocks"] == 3 and arms["random-bce"]["model.freeze_blocks"] == 0
    assert arms["imagenet-gan"]["model.encoder_weights"] == "imagenet"


def test_the_base_is_params_yaml_as_committed_not_as_the_last_experiment_left_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"epochs": 20, "bce_epochs": 5}}))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([*git, "add", "params.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"epochs": 20, "bce_epochs": 20}}))  # a BCE arm ran
    base, source = base_params("params.yaml", {"train.epochs": 30})
    assert source == "params.yaml at HEAD" and (base.train.epochs, base.train.bce_epochs) == (30, 5)


def test_exp_run_command_sets_each_override_as_json():
    command = exp_run_command("x", {"prepare.size": [256, 192], "download.source": "salicon"}, queue=True)
    assert command == [
        "dvc", "exp", "run", "--name", "x", "--queue", "-S", "prepare.size=[256,192]", "-S", "download.source='salicon'"
    ]  # fmt: skip


def test_repository_gpu_profile_is_valid():
    profile = load_profile("profiles/salicon-gpu.yaml")
    assert profile["model.encoder_weights"] == "imagenet" and profile["prepare.size"] == [256, 192]


def test_bad_profile_key_is_named(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="train.epoch"):
        load_profile(str(path))


def test_metrics_are_read_from_dvc_exp_show_json():
    exp_show = [
        {
            "rev": "workspace",
            "name": None,
            "data": {"metrics": {"reports/metrics.json": {"data": {"nss": 1.0, "cc": 0.5}}}},
        },
        {
            "rev": "abc",
            "data": {"metrics": {}},
            "experiments": [
                {"revs": [{"rev": "def", "name": "random-gan", "data": {"metrics": {"m": {"data": {"nss": 2.0}}}}}]}
            ],
        },
    ]
    assert experiment_metrics(exp_show) == {"workspace": {"nss": 1.0, "cc": 0.5}, "random-gan": {"nss": 2.0}}
    table = format_table({"random-gan": {"nss": 2.0}})
    assert "ours: random-gan" in table and "2.000" in table and "published: SalGAN (Pan et al.)" in table
