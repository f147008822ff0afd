"""salgan/encoder_table.py holds what the networks really are: their stride and width rule, measured here on
the networks themselves, and the settings schema refuses what the networks would refuse."""

import typing

import pytest
import torch

from salgan.encoder_table import ENCODER_TABLE, ENCODERS, MIN_STRIDE, size_problem, width_problem
from salgan.errors import ConfigError
from salgan.settings import ModelParams, params_from_dict


@pytest.mark.parametrize("name", ENCODERS)
def test_the_stride_is_the_encoders_own_downsampling(name):
    """The deepest features of a 2*stride-sided input are 2x2: the table's stride is the network's."""
    from salgan.models import Generator

    spec = ENCODER_TABLE[name]
    generator = Generator(width=0.0625 if spec.has_width else 1.0, encoder=name).eval()
    image = torch.zeros(1, 3, 2 * spec.stride, 2 * spec.stride)
    with torch.no_grad():
        features = generator.encoder(image)
    deepest = features[-1] if isinstance(features, list) else features
    assert tuple(deepest.shape[-2:]) == (2, 2)
    assert generator(image).shape[-2:] == image.shape[-2:]


def test_only_the_encoders_with_a_multiplier_change_with_width():
    from salgan.models import Generator

    narrow = Generator(width=0.5, encoder="vgg16")
    assert narrow.encoder[0].out_channels == 32  # conv1_1's 64 filters halved
    assert [n for n, spec in ENCODER_TABLE.items() if spec.has_width] == ["vgg16", "mobilenet_v3_large"]
    assert width_problem("resnet50", 0.5) == "resnet50 has no width multiplier; expected 1.0, got 0.5"
    assert width_problem("mobilenet_v3_large", 0.5) is None
    assert width_problem("vgg16", 3.0) == "expected a width in (0, 2.0], got 3.0"


def test_the_schema_and_the_models_take_their_names_and_limits_from_the_table():
    assert typing.get_args(ModelParams.model_fields["encoder"].annotation) == ENCODERS
    assert MIN_STRIDE == 16
    assert size_problem("resnet18", (48, 32)) == "resnet18 needs sides that are multiples of 32, got [48, 32]"
    assert size_problem("vgg16", (48, 32)) is None
    params_from_dict({"prepare": {"size": [48, 32]}})  # vgg16 takes multiples of 16
    with pytest.raises(ConfigError, match="prepare.size: resnet18 needs sides that are multiples of 32"):
        params_from_dict({"prepare": {"size": [48, 32]}, "model": {"encoder": "resnet18", "width": 1.0}})
