import pytest
import yaml

from salgan.config import ConfigError, flatten, load_params, params_from_dict, to_dict


def test_defaults_are_the_paper_settings():
    params = params_from_dict({})
    assert params.train.lr_generator == 3e-4 and params.train.batch_size == 32
    assert params.train.alpha == 0.05 and params.train.content_downsample == 4
    assert params.prepare.size == [256, 192]
    assert params.model.encoder_weights == "imagenet" and params.model.freeze_blocks == 3


def test_repository_params_file_is_valid():
    params = load_params("params.yaml")
    assert params.download.source == "sample"


@pytest.mark.parametrize(
    "data,key",
    [
        ({"train": {"batch_sise": 3}}, "train.batch_sise"),
        ({"train": {"batch_size": "big"}}, "train.batch_size"),
        ({"train": {"batch_size": 2.5}}, "train.batch_size"),
        ({"model": {"discriminator_first_pool": 3}}, "model.discriminator_first_pool"),
        ({"train": {"nproc": "many"}}, "train.nproc"),
        ({"prepare": {"size": [256, "x"]}}, "prepare.size[1]"),
        ({"colour": 1}, "colour"),
        ({"train": 5}, "train"),
    ],
)
def test_bad_keys_and_types_are_named(data, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        params_from_dict(data)


def test_imagenet_needs_full_width():
    with pytest.raises(ConfigError, match="model.width"):
        params_from_dict({"model": {"encoder_weights": "imagenet", "width": 0.5}})


def test_sizes_must_be_multiples_of_16():
    with pytest.raises(ConfigError, match="prepare.size"):
        params_from_dict({"prepare": {"size": [250, 192]}})


def test_ints_widen_to_float_and_nproc_accepts_both_forms():
    params = params_from_dict({"train": {"alpha": 1, "nproc": 2}})
    assert params.train.alpha == 1.0 and isinstance(params.train.alpha, float)
    assert params_from_dict({"train": {"nproc": "auto"}}).train.nproc == "auto"


def test_load_names_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": "ten"}}))
    with pytest.raises(ConfigError, match=f"{path}: train.epochs"):
        load_params(path)
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "missing.yaml")


def test_round_trip_and_flatten():
    params = params_from_dict({"train": {"epochs": 20}})
    assert params_from_dict(to_dict(params)) == params
    assert flatten(to_dict(params))["train.epochs"] == 20
