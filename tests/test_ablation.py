import subprocess
import sys

import numpy as np
import pytest
import yaml

from salgan.ablation import (
    ARMS,
    METRIC_LOSS,
    PINNED,
    arm_overrides,
    base_params,
    exp_run_command,
    experiment_metrics,
    format_table,
    load_profile,
    parse_arm,
)
from salgan.metrics import METRIC_NAMES
from salgan.settings import ConfigError, flatten, nest, params_from_dict, to_dict

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
        sys.executable, "-m", "dvc", "exp", "run", "--name", "x", "--queue",
        "-S", "prepare.size=[256,192]", "-S", "download.source='salicon'",
    ]  # fmt: skip
    assert exp_run_command("x", {}, queue=False, scores_only=True)[-1] == "evaluate"  # the stage, as dvc's target


def test_repository_gpu_profile_is_valid():
    profile = load_profile("profiles/salicon-gpu.yaml")
    assert profile["model.encoder_weights"] == "imagenet" and profile["prepare.size"] == [256, 192]


@pytest.mark.parametrize(
    "profile,refused",
    [
        ({"download": {"source": "${oc.env:AWS_SECRET_ACCESS_KEY}"}}, "download.source"),
        ({"dvc.yaml:stages": {"package": "touch marker"}}, "unknown key dvc.yaml:stages (known: download"),
        ({"train": {"output": "runs/x'; touch marker; '"}}, "train.output"),
    ],
)
def test_a_crafted_profile_is_refused_before_any_command(tmp_path, monkeypatch, capsys, profile, refused):
    """The profile's settings become `dvc exp run -S` overrides: the flows' check guards them too."""
    from salgan import ablation

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(to_dict(BASE)))
    (tmp_path / "crafted.yaml").write_text(yaml.safe_dump(profile))
    assert ablation.main(["run", "--profile", "crafted.yaml", "--arms", "random-bce", "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert refused in err and "dvc exp run" not in out
    assert not (tmp_path / "marker").exists()


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


def test_arms_over_encoder_init_and_objective_pin_what_their_name_says():
    arms = {
        arm: arm_overrides(arm, {}, BASE)
        for arm in ("resnet50-imagenet-gan", "mobilenet_v3_large-random-metric", "resnet18-random-metric_gan")
    }
    assert all(set(PINNED) <= set(overrides) for overrides in arms.values())
    resnet = arms["resnet50-imagenet-gan"]
    assert (resnet["model.encoder"], resnet["model.encoder_weights"], resnet["model.freeze_blocks"]) == (
        "resnet50",
        "imagenet",
        3,
    )
    assert resnet["model.width"] == 1.0 and resnet["train.content_loss"] == "bce" and resnet["train.bce_epochs"] == 10
    mobile = arms["mobilenet_v3_large-random-metric"]
    assert mobile["model.width"] == 0.125 and mobile["model.freeze_blocks"] == 0  # a width encoder keeps the base's
    assert mobile["train.content_loss"] == METRIC_LOSS and mobile["train.bce_epochs"] == 40  # content only
    small = arms["resnet18-random-metric_gan"]
    assert small["model.width"] == 1.0 and small["train.bce_epochs"] == 10  # no width multiplier on a ResNet
    # the seed arms are VGG16 with the paper's BCE, as before
    assert arm_overrides("random-gan", {}, BASE)["model.encoder"] == "vgg16"
    assert arm_overrides("random-gan", {}, BASE)["train.content_loss"] == "bce"
    for overrides in arms.values():  # each arm's settings pass the schema and its rules
        params_from_dict(nest(flatten(to_dict(BASE)) | overrides))


@pytest.mark.parametrize(
    "arm,message",
    [("alexnet-imagenet-gan", "unknown encoder 'alexnet'"), ("imagenet-wgan", "unknown objective 'wgan'"),
     ("resnet50-gan", "unknown init 'resnet50'"), ("a-b-c-d", "expected INIT-OBJECTIVE or ENCODER-INIT-OBJECTIVE")],
)  # fmt: skip
def test_a_bad_arm_name_says_what_is_wrong(arm, message):
    with pytest.raises(ConfigError, match=message):
        parse_arm(arm)


def test_the_table_shows_each_arms_cost_from_its_metrics_file():
    values = {"nss": 2.0, "cost": {"params_m": 24.5167, "gflops": 11.39, "train_images_per_s": 310.2}}
    exp_show = [{"rev": "workspace", "data": {"metrics": {"reports/metrics.json": {"data": values}}}}]
    found = experiment_metrics(exp_show)
    assert found == {"workspace": {"nss": 2.0, "params_m": 24.5167, "gflops": 11.39, "train_images_per_s": 310.2}}
    lines = format_table(found).splitlines()
    header, row = lines[0].split(), next(line for line in lines if line.startswith("ours: workspace")).split()
    assert header[1:9] == list(METRIC_NAMES)  # the metrics in metrics.py's order ("ours: name" is two words)
    assert row[-3:] == ["24.5", "11.4", "310.2"] and row[header.index("nss") + 1] == "2.000"


# --- seeds and intervals ---------------------------------------------------------------------------------


def test_seeds_run_each_arm_under_its_own_train_seed(tmp_path, monkeypatch, capsys):
    from salgan import ablation

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(to_dict(BASE)))
    assert ablation.main(["run", "--arms", "random-gan", "random-bce", "--seeds", "3", "--dry-run"]) == 0
    commands = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ") and "dvc exp run" in line
    ]
    names = [line.split("--name ")[1].split()[0] for line in commands]
    assert names == [f"{arm}-seed{k}" for arm in ("random-gan", "random-bce") for k in range(3)]
    assert [line.split("train.seed=")[1].split()[0] for line in commands] == ["0", "1", "2"] * 2
    # one seed: the arm's own name, the base's seed pinned (a previous -S train.seed must not leak in)
    assert ablation.seeded_runs("random-gan", 1, {}, BASE) == [("random-gan", arm_overrides("random-gan", {}, BASE))]
    assert arm_overrides("random-gan", {}, BASE)["train.seed"] == BASE.train.seed
    with pytest.raises(SystemExit) as refused:  # a usage error, exit status 2, before anything runs
        ablation.main(["run", "--seeds", "0", "--dry-run"])
    assert refused.value.code == 2 and "--seeds: expected a positive integer, got '0'" in capsys.readouterr().err


def test_seeded_experiments_group_into_arms_with_mean_and_spread():
    from salgan.ablation import arm_groups, summarise

    names = ["x-random-gan-seed1", "x-random-gan-seed0", "x-random-bce", "workspace", "x-random-gan-seed10"]
    groups = arm_groups(names)
    assert groups == {
        "x-random-gan": ["x-random-gan-seed0", "x-random-gan-seed1", "x-random-gan-seed10"],
        "x-random-bce": ["x-random-bce"],
        "workspace": ["workspace"],
    }
    ours = {name: {"nss": 1.0, "cc": 0.5} for name in names}
    ours |= {"x-random-gan-seed0": {"nss": 2.0, "cc": 0.5}, "x-random-gan-seed1": {"nss": 2.2, "cc": 0.5}}
    ours["x-random-gan-seed10"] = {"nss": 2.4, "cc": 0.5, "params_m": 1.0}
    means, spreads = summarise(ours, groups)
    assert means["x-random-gan"] == pytest.approx({"nss": 2.2, "cc": 0.5})  # params_m: not in every seed
    assert spreads["x-random-gan"] == pytest.approx({"nss": 0.2, "cc": 0.0}) and "x-random-bce" not in spreads
    table = format_table(means, spreads, {arm: len(members) for arm, members in groups.items()})
    row = next(line for line in table.splitlines() if line.startswith("ours: x-random-gan x3"))
    assert "2.200+-0.200" in row.split() and "0.500+-0.000" in row.split()
    assert "ours: x-random-bce " in table and "xN: mean+-std over N seeds" in table


def test_arm_differences_pair_the_images_both_arms_scored():
    from salgan.ablation import arm_differences, format_differences

    rng = np.random.default_rng(0)
    difficulty = {f"img{i}": rng.normal(2, 1) for i in range(60)}

    def scores(shift):
        return {image: {"nss": d + shift + rng.normal(0, 0.1), "cc": 0.5} for image, d in difficulty.items()}

    scored = {"gan-seed0": scores(0.5), "gan-seed1": scores(0.5), "bce-seed0": scores(0.0), "bce-seed1": scores(0.0)}
    scored["bce-seed1"]["extra"] = {"nss": 9.0, "cc": 0.5}  # scored by one experiment only: left out
    groups = {"gan": ["gan-seed0", "gan-seed1"], "bce": ["bce-seed0", "bce-seed1"]}
    found = arm_differences(groups, scored, "bce")
    assert set(found) == {"gan"} and found["gan"]["images"] == 60
    assert found["gan"]["nss"].low < 0.5 < found["gan"]["nss"].high and found["gan"]["nss"].excludes_zero
    assert found["gan"]["cc"] == (0.0, 0.0, 0.0)
    text = format_differences(found, "bce", {"gan": 2, "bce": 2})
    assert "difference to bce (x2)" in text and "60 val images" in text
    nss = next(line for line in text.splitlines() if line.startswith("nss"))
    assert nss.rstrip().endswith("*") and nss.split()[1].startswith("+0.")
    assert not next(line for line in text.splitlines() if line.startswith("cc ")).rstrip().endswith("*")


SCORER = """
import csv, json, pathlib, random, yaml
params = yaml.safe_load(open("params.yaml"))
rng = random.Random(params["train"]["seed"] * 1000 + int(params["arm"]["shift"] * 100))
rows = [{"index": i, "name": f"img{i}", "nss": i % 5 + params["arm"]["shift"] + rng.gauss(0, 0.1), "cc": 0.5}
        for i in range(40)]
pathlib.Path("reports").mkdir(exist_ok=True)
with open("reports/per_image.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
means = {key: sum(r[key] for r in rows) / len(rows) for key in ("nss", "cc")}
pathlib.Path("reports/metrics.json").write_text(json.dumps(means))
"""


def test_show_reads_each_experiments_per_image_scores_from_dvc_and_marks_real_differences(
    tmp_path, monkeypatch, capsys
):
    """A real DVC repository: two arms x two seeds as `dvc exp run` experiments, each writing its per-image
    scores as a cached output; `salgan ablation show` reads them back per experiment revision."""
    from salgan import ablation

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    (tmp_path / "score.py").write_text(SCORER)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"seed": 0}, "arm": {"shift": 0.0}}))
    stage = {"cmd": f"{sys.executable} score.py", "deps": ["score.py"], "params": ["train.seed", "arm.shift"]}
    stage |= {"outs": ["reports/per_image.csv"], "metrics": [{"reports/metrics.json": {"cache": False}}]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"score": stage}}))
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "x"]):
        subprocess.run(command, check=True, capture_output=True)
    for arm, shift in (("gan", 0.3), ("bce", 0.0)):
        for seed in (0, 1):
            overrides = ["-S", f"train.seed={seed}", "-S", f"arm.shift={shift}"]
            subprocess.run(
                ["dvc", "exp", "run", "--name", f"{arm}-seed{seed}", *overrides], check=True, capture_output=True
            )
    assert ablation.main(["show", "--reference", "bce"]) == 0
    out = capsys.readouterr().out
    assert "ours: gan x2" in out and "ours: bce x2" in out
    assert "difference to bce (x2)" in out and "40 val images" in out
    nss = next(line for line in out.splitlines() if line.startswith("nss "))
    difference, low, high = (float(v.strip("[],*")) for v in nss.split()[1:4])
    assert difference == pytest.approx(0.3, abs=0.05) and low < 0.3 < high and nss.rstrip().endswith("*")
