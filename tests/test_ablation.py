import pytest

from salgan.ablation import ARMS, arm_overrides, exp_run_command, experiment_metrics, format_table, load_profile
from salgan.config import ConfigError


def test_bce_arms_train_bce_only_and_random_arms_freeze_nothing():
    overrides = arm_overrides("random-bce", {"train.epochs": 40}, epochs=40)
    assert overrides["train.bce_epochs"] == 40 and overrides["model.encoder_weights"] == "none"
    assert overrides["model.freeze_blocks"] == 0
    assert "train.bce_epochs" not in arm_overrides("imagenet-gan", {}, epochs=40)
    assert set(ARMS) == {"imagenet-gan", "imagenet-bce", "random-gan", "random-bce"}


def test_exp_run_command_sets_each_override_as_json():
    command = exp_run_command("x", {"prepare.size": [256, 192], "download.source": "salicon"}, queue=True)
    assert command[:6] == ["dvc", "exp", "run", "--name", "x", "--queue"]
    assert "prepare.size=[256, 192]" in command and 'download.source="salicon"' in command


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
