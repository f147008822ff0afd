import pytest
import torch
import torchvision

from salgan.models import (
    Discriminator,
    EncoderWeightsError,
    Generator,
    build_generator,
    infer_width,
    load_encoder_weights,
    load_generator,
)
from salgan.settings import ModelParams


def test_generator_full_width_keeps_input_size():
    torch.manual_seed(0)
    generator = Generator(width=1.0).eval()
    with torch.no_grad():
        out = generator(torch.rand(1, 3, 192, 256))
    assert out.shape == (1, 1, 192, 256)
    assert out.min() > 0 and out.max() < 1


@pytest.mark.parametrize("width,size", [(0.125, (96, 128)), (0.0625, (48, 64)), (0.25, (32, 160))])
def test_generator_small_widths_any_multiple_of_16(width, size):
    out = Generator(width=width)(torch.rand(2, 3, *size))
    assert out.shape == (2, 1, *size)


def test_generator_rejects_sides_not_multiple_of_16():
    with pytest.raises(ValueError, match="multiples of 16"):
        Generator(width=0.0625)(torch.rand(1, 3, 50, 64))


def test_encoder_matches_torchvision_vgg16_layout():
    vgg = torchvision.models.vgg16()
    generator = Generator(width=1.0)
    features = {k.removeprefix("features."): v for k, v in vgg.state_dict().items() if k.startswith("features.")}
    assert set(generator.encoder.state_dict()) == set(features)  # pool5 has no parameters
    assert len(generator.encoder) == len(vgg.features) - 1  # everything but pool5


@pytest.mark.parametrize("first_pool", [2, 4])
def test_discriminator_outputs_one_logit_per_pair(first_pool):
    disc = Discriminator(input_size=(256, 192), first_pool=first_pool)
    logits = disc(torch.rand(3, 3, 192, 256), torch.rand(3, 1, 192, 256))
    assert logits.shape == (3,)


def test_discriminator_rejects_indivisible_input():
    with pytest.raises(ValueError, match="divisible"):
        Discriminator(input_size=(100, 60), first_pool=4)


def test_local_encoder_weights_land_exactly_in_the_encoder(tmp_path):
    torch.manual_seed(1)
    vgg = torchvision.models.vgg16()
    path = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), path)
    generator = build_generator(ModelParams(encoder_weights=str(path), freeze_blocks=3, width=1.0))
    for index in (0, 2, 5, 10, 28):
        assert torch.equal(generator.encoder[index].weight, vgg.features[index].weight)
        assert torch.equal(generator.encoder[index].bias, vgg.features[index].bias)
    frozen = {name for name, p in generator.named_parameters() if not p.requires_grad}
    assert "encoder.14.weight" in frozen and "encoder.17.weight" not in frozen  # conv3_3 frozen, conv4_1 trains


def test_local_weights_shape_mismatch_names_the_layer(tmp_path):
    path = tmp_path / "narrow.pth"
    torch.save({f"features.{k}": v for k, v in Generator(width=0.5).encoder.state_dict().items()}, path)
    with pytest.raises(EncoderWeightsError, match=r"encoder\.0\.weight"):
        load_encoder_weights(Generator(width=1.0), str(path))


def test_missing_local_weights_file_is_named(tmp_path):
    with pytest.raises(EncoderWeightsError, match="no such file"):
        load_encoder_weights(Generator(width=0.0625), str(tmp_path / "absent.pth"))


def test_imagenet_without_cache_or_network_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_get_torch_home", lambda: str(tmp_path / "torch"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # no network, whatever the machine has
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(EncoderWeightsError) as info:
        build_generator(ModelParams(encoder_weights="imagenet", width=1.0))
    message = str(info.value)
    assert "vgg16-397923af.pth" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message


def test_plain_weights_file_round_trips_with_inferred_width(tmp_path):
    generator = Generator(width=0.125)
    path = tmp_path / "generator.pt"
    torch.save(generator.state_dict(), path)
    assert infer_width(generator.state_dict()) == 0.125
    loaded = load_generator(path)
    x = torch.rand(1, 3, 48, 64)
    assert torch.equal(loaded(x), generator.eval()(x))


def test_discriminator_starts_as_lasagne_and_learns_real_maps_from_flat_ones(tmp_path):
    """Glorot weights and zero biases (the original's Lasagne defaults): under PyTorch's default biases the
    ReLUs of the 1x1 merge layer are often all dead and the discriminator never leaves log 2."""
    from salgan.data import images_to_float, load_split, maps_to_float
    from salgan.losses import discriminator_loss
    from tests.conftest import write_prepared

    split = load_split(write_prepared(tmp_path), "train")
    images, real = images_to_float(split.images[:16]), maps_to_float(split.maps[:16])
    torch.manual_seed(0)
    disc = Discriminator(input_size=(64, 48), first_pool=4)
    assert all(torch.count_nonzero(m.bias) == 0 for m in disc.modules() if isinstance(m, torch.nn.Linear))
    optimizer = torch.optim.Adagrad(disc.parameters(), lr=3e-3, initial_accumulator_value=1e-6, eps=0.0)
    for _ in range(100):
        logits = disc(torch.cat([images, images]), torch.cat([real, torch.full_like(real, 0.1)]))
        loss = discriminator_loss(*logits.chunk(2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.35  # log 2 = 0.693 is a discriminator that sees nothing
