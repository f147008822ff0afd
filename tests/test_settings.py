from pathlib import Path

import pytest
import yaml

from salgan.settings import (
    ConfigError,
    Params,
    flatten,
    load_params,
    nest,
    override_args,
    params_from_dict,
    parse_override,
    to_dict,
    validate_overrides,
)
from tests.conftest import write_params_file


def test_the_schema_defaults_are_the_repositorys_params_yaml():
    """One source of defaults: params.yaml holds exactly the schema's defaults, every key of them."""
    assert load_params("params.yaml") == Params()
    assert set(flatten(yaml.safe_load(Path("params.yaml").read_text()))) == set(flatten(to_dict(Params())))


def test_the_gpu_profile_gives_the_papers_settings():
    params = params_from_dict(yaml.safe_load(Path("profiles/salicon-gpu.yaml").read_text()))
    assert params.train.lr_generator == 3e-4 and params.train.batch_size == 32 and params.train.epochs == 100
    assert params.prepare.size == [256, 192] and params.model.encoder_weights == "imagenet"
    assert params.model.freeze_blocks == 3 and params.train.alpha == 0.05 and params.train.content_downsample == 4
    assert params.model.discriminator_width == 1.0 and not params.train.discriminator_flip  # the original's D


@pytest.mark.parametrize(
    "data,message",
    [
        ({"train": {"batch_sise": 3}}, "unknown key train.batch_sise (known: "),
        ({"train": {"batch_size": "big"}}, "train.batch_size: input should be a valid integer, got 'big'"),
        ({"train": {"batch_size": 2.5}}, "train.batch_size: input should be a valid integer, got 2.5"),
        ({"train": {"batch_size": True}}, "train.batch_size"),
        ({"train": {"batch_size": 0}}, "train.batch_size: input should be greater than or equal to 1"),
        ({"model": {"discriminator_first_pool": 3}}, "model.discriminator_first_pool: input should be 2 or 4"),
        ({"train": {"nproc": "many"}}, "train.nproc: input should be a valid integer; or input should be 'auto'"),
        ({"prepare": {"size": [256, "x"]}}, "prepare.size[1]"),
        ({"prepare": {"workers": -1}}, "prepare.workers"),
        ({"colour": 1}, "unknown key colour"),
        ({"train": 5}, "train: "),
        ({"predict": {"blur_size": 4}}, "predict.blur_size: a Gaussian kernel needs an odd size"),
        ({"package": {"algorithm": "../evil"}}, "package.algorithm"),
        (
            {"model": {"encoder_weights": "imagenet", "width": 0.5}},
            "model.width: ImageNet vgg16 weights need width 1.0",
        ),
        ({"model": {"freeze_blocks": 3}}, "model.freeze_blocks: freezing needs pretrained encoder weights"),
        ({"train": {"epochs": 5}}, "train.bce_epochs: must not exceed train.epochs 5, got 10"),
        ({"prepare": {"size": [250, 192]}}, "prepare.size: expected [W, H], positive multiples of 16"),
        ({"download": {"source": "https://me:secret@host/salicon"}}, "download.source: a URL with credentials"),
        ({"model": {"encoder": "alexnet"}}, "model.encoder: input should be 'vgg16', 'resnet18', 'resnet50' or"),
        ({"model": {"encoder": "resnet50"}}, "model.width: resnet50 has no width multiplier; expected 1.0, got 0.125"),
        (
            {"model": {"encoder": "mobilenet_v3_large", "width": 0.5}, "prepare": {"size": [256, 208]}},
            "prepare.size: mobilenet_v3_large needs sides that are multiples of 32, got [256, 208]",
        ),
        ({"train": {"content_loss": "kld"}}, "train.content_loss: input should be 'bce'"),
        ({"train": {"content_loss": {"kld": 1.0, "auc": 2.0}}}, "train.content_loss.auc"),
        ({"train": {"content_loss": {"cc": "high"}}}, "train.content_loss.cc"),
        ({"train": {"content_loss": {"kld": 0}}}, "train.content_loss: needs at least one non-zero weight"),
        ({"model": {"output": "density"}}, "train.content_loss: model.output density trains on nll, kld, cc or nss"),
        (
            {"model": {"output": "density"}, "train": {"content_loss": {"nll": 1.0, "bce": 0.5}}},
            "train.content_loss: model.output density trains on nll, kld, cc or nss, not bce",
        ),
        ({"evaluate": {"metric_maps": True}}, "evaluate.metric_maps: metric-specific maps need model.output density"),
        ({"package": {"format": "mit-tuebingen-density"}}, "package.format: mit-tuebingen-density needs model.output"),
        ({"model": {"density_prior_sigma": 0}}, "model.density_prior_sigma: input should be greater than 0"),
        ({"model": {"output": "probability"}}, "model.output: input should be 'map' or 'density'"),
    ],
)
def test_bad_keys_types_ranges_and_rules_are_named(data, message):
    with pytest.raises(ConfigError) as error:
        params_from_dict(data)
    assert str(error.value).startswith(message), str(error.value)
    assert "secret" not in str(error.value) or "credentials" not in message


def test_ints_widen_to_float_and_nproc_accepts_both_forms():
    params = params_from_dict({"train": {"alpha": 1, "nproc": 2}})
    assert params.train.alpha == 1.0 and isinstance(params.train.alpha, float)
    assert params_from_dict({"train": {"nproc": "auto"}}).train.nproc == "auto"


def test_load_names_the_file_and_every_key_must_be_there(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": "ten"}}))
    with pytest.raises(ConfigError, match=f"{path}: train.epochs"):
        load_params(path)
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "missing.yaml")
    complete = to_dict(Params())
    del complete["train"]["adagrad_epsilon"]
    path.write_text(yaml.safe_dump(complete))
    with pytest.raises(ConfigError, match=rf"{path}: missing key train.adagrad_epsilon; add it \(default: 1e-06\)"):
        load_params(path)
    assert load_params(path, require_all=False).train.adagrad_epsilon == 1e-6


def test_round_trip_and_flatten():
    params = params_from_dict({"train": {"epochs": 20}})
    assert params_from_dict(to_dict(params)) == params
    assert flatten(to_dict(params))["train.epochs"] == 20


# --- overrides ------------------------------------------------------------------------------------------


def test_overrides_are_typed_and_written_in_dvcs_grammar():
    overrides = {"train.epochs": 5, "prepare": {"size": [64, 48]}, "download.source": "s3://bucket/p?x=1&y=2"}
    assert override_args(overrides | {"train.alpha": 1, "package.format": "2015", "train.nproc": "auto"}) == [
        "-S", "train.epochs=5", "-S", "prepare.size=[64,48]", "-S", "download.source='s3://bucket/p?x=1&y=2'",
        "-S", "train.alpha=1.0", "-S", "package.format='2015'", "-S", "train.nproc='auto'",
    ]  # fmt: skip
    assert override_args({"train.compile": True, "train.adagrad_epsilon": 1e-6}) == [
        "-S", "train.compile=true", "-S", "train.adagrad_epsilon=1e-06",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"dvc.yaml:stages.package.cmd": "'touch marker; salgan package'"}, "expected section.key of params.yaml"),
        ({"/some/other/file.yaml:foo": 1}, "expected section.key of params.yaml"),
        ({"+train.extra": 1}, "expected section.key"),
        ({"train.epochs_": 1}, "unknown key"),
        ({"download.source": "${oc.env:AWS_SECRET_ACCESS_KEY}"}, "DVC would read as override syntax"),
        ({"download.source": "x'; touch y; '"}, "DVC would read as override syntax"),
        ({"download.source": "a\nb"}, "DVC would read as override syntax"),
        ({"train.epochs": "5"}, "override train.epochs: input should be a valid integer"),
        ({"train.epochs": {"nested": 1}}, "override train.epochs: input should be a valid integer"),
        ({"predict.blur_size": 4}, "override predict.blur_size: a Gaussian kernel needs an odd size"),
        ({"download.source": "https://u:pw@host/x"}, "override download.source: a URL with credentials"),
    ],
)
def test_unsafe_or_ill_typed_overrides_are_refused_with_the_key_and_reason(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        override_args(overrides)


def test_overrides_must_keep_the_rules_between_keys_of_the_settings_they_apply_to():
    base = params_from_dict({"train": {"epochs": 30, "bce_epochs": 10}})
    assert validate_overrides({"train.epochs": 20}, base) == {"train.epochs": 20}
    with pytest.raises(ConfigError, match="override train.bce_epochs: must not exceed train.epochs 5"):
        validate_overrides({"train.epochs": 5}, base)


def test_a_content_loss_mapping_is_one_value_in_files_overrides_and_dvcs_grammar(tmp_path):
    loss = {"kld": 1.0, "cc": -0.2, "nss": -0.1}
    params = load_params(write_params_file(tmp_path / "p.yaml", {"train": {"content_loss": loss}}))
    assert params.train.content_loss == loss
    assert flatten(to_dict(params))["train.content_loss"] == loss  # one key, as DVC tracks it
    assert validate_overrides({"train.content_loss": {"kld": 2, "nss": -1}}) == {
        "train.content_loss": {"kld": 2.0, "nss": -1.0}
    }
    assert override_args({"train.content_loss": loss}) == ["-S", "train.content_loss={kld:1.0,cc:-0.2,nss:-0.1}"]
    assert parse_override("train.content_loss={kld: 1.0, cc: -0.2}") == ("train.content_loss", {"kld": 1.0, "cc": -0.2})
    with pytest.raises(ConfigError, match=r"override train.content_loss: '\$\{x\}' holds characters DVC would read"):
        validate_overrides({"train.content_loss": {"${x}": 1.0}})


def test_parse_override_reads_the_value_as_yaml():
    assert parse_override("prepare.size=[64, 48]") == ("prepare.size", [64, 48])
    assert parse_override("download.source=s3://b/p") == ("download.source", "s3://b/p")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.epochs")


# --- trust classes and the round trip of every override -------------------------------------------------


def test_every_setting_has_a_trust_class_and_the_hosts_places_and_limits_are_the_issues():
    """Every field of the schema says what an untrusted override may do to it (salgan/trust.py)."""
    from salgan.settings import TRUST_CLASSES
    from salgan.trust import field_trust

    trust = field_trust()
    assert set(trust) == set(flatten(to_dict(Params())))  # every key, no other
    missing = sorted(key for key, extra in trust.items() if extra.get("trust") not in TRUST_CLASSES)
    assert missing == [], f"settings without a trust class: {missing}"
    kinds = {kind: sorted(k for k, extra in trust.items() if extra["trust"] == kind) for kind in TRUST_CLASSES}
    assert kinds["host"] == [
        "download.cache_dir", "download.source", "download.test_source", "mlflow.enabled", "mlflow.experiment",
        "mlflow.model_name", "mlflow.tracking_uri", "model.encoder_weights", "model.init_from",
    ]  # fmt: skip
    assert kinds["limit"] == [
        "download.max_archive_bytes", "download.max_archive_entries", "download.max_compression_ratio",
        "download.max_entry_bytes", "predict.max_pixels", "prepare.max_fixations", "prepare.max_pixels",
    ]  # fmt: skip
    assert kinds["place"] == [
        "download.output", "evaluate.output", "package.output", "predict.output", "prepare.input",
        "prepare.output", "train.data", "train.output",
    ]  # fmt: skip
    assert trust["model.encoder_weights"]["safe_values"] == ["imagenet", "none"]
    assert trust["model.init_from"]["safe_values"] == ["none"]  # a flow may not fine-tune from another registry


@pytest.mark.parametrize(
    "key,absurd",
    [
        ("prepare.workers", 10**6),
        ("download.sample_train", 10**9),
        ("download.sample_test", 100_001),
        ("train.batch_size", 10**7),
        ("evaluate.batch_size", 4097),
        ("predict.batch_size", 10**6),
        ("train.nproc", 10_000),
        ("predict.blur_size", 100_001),
    ],
)
def test_sizes_that_cost_memory_or_processes_have_upper_bounds(key, absurd):
    with pytest.raises(ConfigError, match=rf"override {key}: input should be less than or equal to"):
        validate_overrides({key: absurd})
    with pytest.raises(ConfigError, match=rf"^{key}: input should be less than or equal to"):
        params_from_dict(nest({key: absurd}))


# YAML 1.1 readings that DVC writes plain (yes, 12:30), and strings YAML or DVC's grammar read as other types
SPECIAL_STRINGS = ["yes", "off", "On", "12:30", "null", "true", "1e5", "2017", "0x1F", "1_000", "-", "~", "#x"]


def _random_string(rng, alphabet: str = "abcXYZ019/._-:=,+~%#@ []{}()") -> str:
    while True:
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))).strip()
        text = rng.choice([text, text, rng.choice([s for s in SPECIAL_STRINGS if set(s) <= set(alphabet)])])
        if text and "://" not in text:
            return text


def random_settings(rng) -> dict:
    """A valid value for every key of params.yaml, drawn at random from its type and range (and a few
    values YAML or DVC's grammar could misread), then fixed up to keep the rules between keys."""
    import typing

    values = {}
    for key in flatten(to_dict(Params())):
        section, name = key.split(".")
        info = Params.model_fields[section].annotation.model_fields[name]
        bounds = {
            a: getattr(m, a) for m in info.metadata for a in ("ge", "gt", "le", "lt") if getattr(m, a, None) is not None
        }
        annotation = info.annotation
        if typing.get_origin(annotation) is typing.Literal:
            value = rng.choice(typing.get_args(annotation))
        elif annotation is bool:
            value = rng.random() < 0.5
        elif annotation is int:
            low = bounds.get("ge", -(10**12) if name.endswith("seed") else 0)
            value = rng.randint(low, bounds.get("le", 10**10))
        elif annotation is float:
            value = min(
                rng.choice([10 ** rng.uniform(-9, 12), rng.uniform(0, 3), 1e-06, 1e16, 0.1]), bounds.get("le", 1e300)
            )
            value = max(value, bounds.get("gt", 0) + 1e-9) if "gt" in bounds else value
            value = min(value, bounds["lt"] * (1 - 1e-9)) if "lt" in bounds else value
        elif annotation is str:
            value = _random_string(rng, "abcXYZ019_.-") if name == "algorithm" else _random_string(rng)
        elif key == "prepare.size":
            value = [32 * rng.randint(1, 16), 32 * rng.randint(1, 16)]
        elif key == "train.content_loss":
            names = rng.sample(["bce", "kld", "cc", "nss", "nll"], rng.randint(1, 5))
            value = rng.choice(["bce", {n: rng.choice([1.0, -0.2, 2.5e-07, 3]) * 1.0 for n in names}])
        elif key == "train.nproc":
            value = rng.choice(["auto", rng.randint(1, 64)])
        elif key in ("train.data_budget_gb", "train.lr_bce"):
            value = rng.choice([None, 10 ** rng.uniform(-3, 3)])
        elif key == "model.density_prior_sigma":
            value = rng.choice([None, rng.uniform(1e-6, 1.0)])
        else:
            raise AssertionError(f"no generator for {key} ({annotation}); add one")
        values[key] = value
    if rng.random() < 0.5:
        values["model.encoder_weights"] = rng.choice(["none", "imagenet"])
    if values["model.encoder_weights"] == "none":
        values["model.freeze_blocks"] = 0
    if values["model.encoder_weights"] == "imagenet" or values["model.encoder"] not in ("vgg16", "mobilenet_v3_large"):
        values["model.width"] = 1.0
    values["predict.blur_size"] = rng.choice([0, 1, 3, 5, 99])
    values["train.bce_epochs"] = min(values["train.bce_epochs"], values["train.epochs"])
    if values["train.bce_optimizer"] == "nesterov":
        values["train.reset_optimizer_at_adversarial"] = True
    loss = values["train.content_loss"]
    if values["model.output"] == "density" and (loss == "bce" or "bce" in loss):  # a density has no bce term
        values["train.content_loss"] = {"nll": 1.0}
    if values["model.output"] == "map":  # metric maps and the density submission need a density model
        values["evaluate.metric_maps"] = False
        values["package.format"] = rng.choice(["2017", "2015", "mit-tuebingen"])
    params_from_dict(nest(values))  # valid, or the generator above is wrong
    return values


def test_every_value_of_every_key_round_trips_through_dvc_exp_run_s_into_params_yaml(tmp_path):
    """What `dvc exp run -S` writes into params.yaml (DVC's own apply_overrides, as the flows' and the
    ablation's `dvc exp run` calls it) reads back as exactly the values that were set: None as null, floats
    without a dot (1e-06), strings YAML 1.1 would take for a bool or a number (yes, 12:30), lists, mappings."""
    import random
    import shutil

    from dvc.utils.hydra import apply_overrides

    for seed in range(40):
        values = random_settings(random.Random(seed))
        path = tmp_path / f"params{seed}.yaml"
        shutil.copy("params.yaml", path)
        apply_overrides(path, override_args(values)[1::2])  # the arguments after each -S
        back = flatten(to_dict(load_params(path)))
        assert back == values, (seed, {k: (values[k], back[k]) for k in values if back[k] != values[k]})


def test_a_null_override_is_written_as_null_and_read_back_as_none(tmp_path):
    """The issue's `-S train.data_budget_gb=null`: written as the string None before, breaking params.yaml."""
    import shutil

    from dvc.utils.hydra import apply_overrides

    key, value = parse_override("train.data_budget_gb=null")
    assert (key, value) == ("train.data_budget_gb", None)
    assert override_args({key: value}) == ["-S", "train.data_budget_gb=null"]
    path = tmp_path / "params.yaml"
    shutil.copy("params.yaml", path)
    apply_overrides(path, ["train.data_budget_gb=2.5"])
    apply_overrides(path, override_args({key: value})[1::2])
    assert load_params(path).train.data_budget_gb is None
    with pytest.raises(ConfigError, match="override train.alpha: expected a finite number, got nan"):
        override_args({"train.alpha": float("nan")})
