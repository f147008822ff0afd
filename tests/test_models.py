import pytest
import torch
import torchvision

from salgan.models import (
    Discriminator,
    EncoderWeightsError,
    Generator,
    architecture_of,
    build_generator,
    load_encoder_weights,
    load_generator,
)
from salgan.settings import ModelParams
from tests.conftest import same_weights


def test_generator_full_width_keeps_input_size_and_its_output_is_the_sigmoid_of_its_last_layer():
    """With every weight zero, the map is sigmoid(output bias) everywhere: sigmoid(log 3) = 0.75."""
    torch.manual_seed(0)
    generator = Generator(width=1.0).eval()
    with torch.no_grad():
        out = generator(torch.rand(1, 3, 192, 256))
        assert out.shape == (1, 1, 192, 256) and 0 < out.min() < out.max() < 1
        for parameter in generator.parameters():
            parameter.zero_()
        generator.output.bias.fill_(float(torch.log(torch.tensor(3.0))))
        torch.testing.assert_close(generator(torch.rand(1, 3, 192, 256)), torch.full((1, 1, 192, 256), 0.75))


def reference_vgg_generator(generator: Generator, image: torch.Tensor) -> torch.Tensor:
    """The paper's generator written out from its description (Pan et al. 2017, Fig. 2; docs/reference.md
    §1), using the generator's weights in order: ImageNet normalisation; VGG16's 13 3x3 convolutions with
    ReLU and a 2x2 max-pool after blocks 1-4; the mirrored decoder with 2x nearest-neighbour upsampling;
    a 1x1 convolution and a sigmoid."""
    import torch.nn.functional as F

    convs = [m for m in generator.modules() if isinstance(m, torch.nn.Conv2d)]
    encoder = [2, "M", 2, "M", 3, "M", 3, "M", 3]  # convolutions per block, pools between
    decoder = [3, "U", 3, "U", 3, "U", 2, "U", 2]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (image - mean) / std
    for step in encoder + decoder:
        if step == "M":
            x = F.max_pool2d(x, 2)
        elif step == "U":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        else:
            for _ in range(step):
                conv = convs.pop(0)
                x = F.relu(F.conv2d(x, conv.weight, conv.bias, padding=1))
    (last,) = convs
    return torch.sigmoid(F.conv2d(x, last.weight, last.bias))


@pytest.mark.parametrize("width,size", [(0.125, (96, 128)), (0.0625, (48, 64)), (0.25, (32, 160))])
def test_generator_small_widths_any_multiple_of_16(width, size):
    """The generator computes the paper's network at any width and any sides that are multiples of 16."""
    torch.manual_seed(0)
    generator = Generator(width=width).eval()
    image = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = generator(image)
        torch.testing.assert_close(out, reference_vgg_generator(generator, image))
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
    """One logit per (image, map) pair, each pair judged on its own; its last layer's bias alone when every
    weight is zero."""
    torch.manual_seed(0)
    disc = Discriminator(input_size=(256, 192), first_pool=first_pool).eval()
    images, maps = torch.rand(3, 3, 192, 256), torch.rand(3, 1, 192, 256)
    with torch.no_grad():
        logits = disc(images, maps)
        alone = torch.cat([disc(images[i : i + 1], maps[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(logits, alone)
        assert logits.shape == (3,) and len(set(logits.tolist())) == 3
        for layer in disc.classifier:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.zero_()
        disc.classifier[-1].bias.fill_(0.3)
        torch.testing.assert_close(disc(images, maps), torch.full((3,), 0.3))


@pytest.mark.parametrize(("width", "wide", "narrow"), [(1.0, 32, 64), (0.25, 8, 16), (0.01, 1, 1)])
def test_discriminator_width_scales_its_conv_channels_and_nothing_else(width, wide, narrow):
    """model.discriminator_width: the 3x3 convolutions' 32 and 64 channels times the width (rounded, at
    least 1); the 1x1 merge layer (4 -> 3), FC 100, FC 2 and FC 1 stay the paper's, FC 100 reading what
    the last pool leaves (channels x 4 x 3 at 64x48 with first pool 4)."""
    disc = Discriminator(input_size=(64, 48), width=width)
    convs = [(m.in_channels, m.out_channels) for m in disc.features if isinstance(m, torch.nn.Conv2d)]
    assert convs == [(4, 3), (3, wide), (wide, narrow), *[(narrow, narrow)] * 3]
    linears = [(m.in_features, m.out_features) for m in disc.classifier if isinstance(m, torch.nn.Linear)]
    assert linears == [(narrow * 4 * 3, 100), (100, 2), (2, 1)]
    assert disc(torch.rand(2, 3, 48, 64), torch.rand(2, 1, 48, 64)).shape == (2,)


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


def test_plain_weights_file_round_trips_with_its_architecture(tmp_path):
    generator = Generator(width=0.125)
    path = tmp_path / "generator.pt"
    torch.save(generator.state_dict(), path)
    assert architecture_of(generator.state_dict()) == {"encoder": "vgg16", "width": 0.125}
    loaded = load_generator(path).generator
    x = torch.rand(1, 3, 48, 64)
    assert torch.equal(loaded(x), generator.eval()(x))


def test_weights_without_their_architecture_are_refused_naming_it(tmp_path):
    """Every generator.pt records the network it holds; one without that record is no salgan file."""
    from salgan.models import ModelError

    state = {k: v for k, v in Generator(width=0.0625).state_dict().items() if k != "architecture"}
    torch.save(state, tmp_path / "bare.pt")
    with pytest.raises(ModelError, match="bare.pt: not a SalGAN generator state_dict .*no 'architecture' entry"):
        load_generator(tmp_path / "bare.pt")


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


# --- encoders beyond the paper (model.encoder) ------------------------------------------------------------

MULTISCALE = [("resnet18", 1.0), ("resnet50", 1.0), ("mobilenet_v3_large", 1.0)]


def _torchvision_model(name: str) -> torch.nn.Module:
    torch.manual_seed(3)
    return getattr(torchvision.models, name)(weights=None)


@pytest.mark.parametrize("name,width", MULTISCALE)
def test_a_torchvision_state_dict_loads_unchanged_into_each_encoder_and_freezing_keeps_stages_fixed(
    tmp_path, name, width
):
    """torchvision's own file layout (classifier included) loads; the first three stages then neither learn
    nor move their batch-norm statistics in a training step, while the rest of the generator does."""
    network = _torchvision_model(name)
    path = tmp_path / f"{name}.pth"
    torch.save(network.state_dict(), path)
    generator = build_generator(ModelParams(encoder=name, encoder_weights=str(path), freeze_blocks=3, width=width))
    source = network.state_dict()
    for key, tensor in generator.encoder.state_dict().items():
        assert torch.equal(tensor, source[key]), key  # same names, same values: nothing renamed or dropped
    frozen = [m for stage in generator.encoder.stages[:3] for m in stage]
    trained = [m for stage in generator.encoder.stages[3:] for m in stage]
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    generator.train()
    optimizer = torch.optim.SGD([p for p in generator.parameters() if p.requires_grad], lr=0.1)
    generator(torch.rand(2, 3, 64, 96), return_logits=True).square().mean().backward()
    optimizer.step()
    after = generator.state_dict()
    frozen_keys = {k for k in after if any(k.startswith(f"encoder.{n}") for n in _names(generator.encoder, frozen))}
    trained_keys = {k for k in after if any(k.startswith(f"encoder.{n}") for n in _names(generator.encoder, trained))}
    assert frozen_keys and all(torch.equal(after[k], before[k]) for k in frozen_keys)  # running stats included
    assert any(not torch.equal(after[k], before[k]) for k in trained_keys)
    assert not torch.equal(after["output.0.weight"], before["output.0.weight"])


def _names(root: torch.nn.Module, modules: list) -> list[str]:
    wanted = {id(m) for m in modules}
    return [f"{name}." for name, module in root.named_modules() if id(module) in wanted]


@pytest.mark.parametrize("name,width", [*MULTISCALE, ("mobilenet_v3_large", 0.5)])
def test_each_encoder_gives_a_map_of_the_input_size_and_round_trips_through_a_weights_file(tmp_path, name, width):
    torch.manual_seed(0)
    generator = Generator(width=width, encoder=name).eval()
    path = tmp_path / "generator.pt"
    torch.save(generator.state_dict(), path)
    loaded = load_generator(path).generator  # the file alone says which network it holds
    assert (loaded.encoder_name, loaded.width) == (name, width)
    x = torch.rand(2, 3, 96, 128)
    out = loaded(x)
    assert out.shape == (2, 1, 96, 128) and torch.equal(out, generator(x))
    with pytest.raises(ValueError, match="multiples of 32"):
        loaded(torch.rand(1, 3, 48, 64))


@pytest.mark.parametrize(
    "architecture", [{"encoder": "alexnet", "width": 1.0}, {"encoder": "vgg16", "width": 1e6}, "not json"]
)
def test_a_weights_file_naming_another_network_or_a_huge_width_is_refused_before_anything_is_built(architecture):
    import json

    from salgan.models import generator_from_state_dict

    text = architecture if isinstance(architecture, str) else json.dumps(architecture)
    state = Generator(width=0.0625).state_dict() | {
        "architecture": torch.tensor(list(text.encode()), dtype=torch.uint8)
    }
    with pytest.raises(ValueError, match="not a SalGAN generator state_dict"):
        generator_from_state_dict(state)


def test_missing_resnet50_imagenet_weights_name_torchvisions_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(EncoderWeightsError) as info:
        build_generator(ModelParams(encoder="resnet50", encoder_weights="imagenet", width=1.0))
    assert "resnet50-11ad3fa6.pth" in str(info.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in str(info.value)


def test_vgg16_weights_do_not_fit_a_resnet_and_the_message_says_which_layout(tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save(_torchvision_model("vgg16").state_dict(), path)
    with pytest.raises(EncoderWeightsError, match=r"lack layer conv1\.weight \(torchvision's resnet18 layout"):
        build_generator(ModelParams(encoder="resnet18", encoder_weights=str(path), width=1.0))


def test_model_cost_counts_the_vgg16_generators_convolutions_by_hand():
    """2 FLOPs per multiply-add: each 3x3 conv costs 2 * 9 * Cin * Cout * H * W at its resolution."""
    from salgan.models import model_cost
    from salgan.models.generator import SALGAN_DECODER, VGG16_ENCODER

    flops, channels, (h, w) = 0, 3, (192, 256)
    for item in VGG16_ENCODER + SALGAN_DECODER:
        if item == "M":
            h, w = h // 2, w // 2
        elif item == "U":
            h, w = h * 2, w * 2
        else:
            flops += 2 * 9 * channels * item * h * w
            channels = item
    flops += 2 * channels * 1 * h * w  # the 1x1 output convolution
    generator = Generator(width=1.0).train()
    cost = model_cost(generator)
    assert cost["gflops"] == pytest.approx(flops / 1e9, rel=1e-9)
    assert generator.training and not any(m._forward_hooks for m in generator.modules())  # left as found
    assert cost["params_m"] == pytest.approx(sum(p.numel() for p in generator.parameters()) / 1e6)
    assert model_cost(Generator(encoder="resnet50"))["gflops"] < cost["gflops"] / 5  # ResNet-50 is far cheaper


def test_the_settings_offer_exactly_the_encoders_the_models_build():
    """settings.py stays free of torch, so it names the encoders again; this keeps the two lists equal."""
    import typing

    from salgan.models import ENCODERS

    assert typing.get_args(ModelParams.model_fields["encoder"].annotation) == ENCODERS


# --- the original code's choices, each a setting that changes only what it names -------------------------


def _first_layer_input(disc: Discriminator, image: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    seen = []
    hook = disc.features[0].register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach()))
    disc(image, saliency)
    hook.remove()
    return seen[0]


def test_the_discriminators_first_layer_sees_the_image_in_the_range_its_setting_names():
    """raw: pixel values 0-255, as the original's D takes the network's raw input; normalised: ImageNet's
    mean and std. The map reaches the layer unchanged either way."""
    image, saliency = torch.rand(2, 3, 48, 64), torch.rand(2, 1, 48, 64)
    raw = _first_layer_input(Discriminator((64, 48), image_input="raw"), image, saliency)
    normalised = _first_layer_input(Discriminator((64, 48), image_input="normalised"), image, saliency)
    torch.testing.assert_close(raw[:, :3], image * 255)
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    torch.testing.assert_close(normalised[:, :3], (image - mean) / std)
    assert torch.equal(raw[:, 3:], saliency) and torch.equal(normalised[:, 3:], saliency)


def test_the_fixed_weight_norm_gain_is_one_and_no_parameter_while_trainable_gains_are():
    """The original's WeightNormLayer (train_g=False): w = v / sqrt(1e-6 + ||v||^2) per filter, g = 1 fixed
    and nowhere among the parameters an optimiser gets; PyTorch's weight norm adds a trainable g."""
    torch.manual_seed(0)
    fixed = Discriminator((64, 48), weight_norm_gain="fixed")
    trainable = Discriminator((64, 48), weight_norm_gain="trainable")
    names = {name for name, _ in fixed.named_parameters()}
    assert {"features.10.parametrizations.weight.original", "features.12.parametrizations.weight.original"} <= names
    assert not any(name.endswith("original0") for name in names)  # no g
    assert sum(p.numel() for p in trainable.parameters()) - sum(p.numel() for p in fixed.parameters()) == 2 * 64
    conv = fixed.features[10]
    v = conv.parametrizations.weight.original.detach().clone()
    norms = v.flatten(1).norm(dim=1)
    torch.testing.assert_close(conv.weight.detach().flatten(1).norm(dim=1), norms / torch.sqrt(1e-6 + norms**2))
    # after an update of v, each filter still has norm ~1: only the directions learn
    optimizer = torch.optim.SGD(fixed.parameters(), lr=0.5)
    fixed(torch.rand(2, 3, 48, 64), torch.rand(2, 1, 48, 64)).sum().backward()
    optimizer.step()
    after = conv.weight.detach().flatten(1).norm(dim=1)
    assert not torch.equal(conv.parametrizations.weight.original.detach(), v)
    torch.testing.assert_close(after, torch.ones(64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("decoder_init", ["glorot", "he"])
def test_decoder_init_sets_the_decoders_distribution_and_leaves_the_encoder_alone(decoder_init):
    """glorot (Lasagne's default, the original's decoder): uniform within +-sqrt(6 / (fan_in + fan_out)),
    zero biases; he: normal with std sqrt(2 / fan_out). The encoder starts the same under either."""
    torch.manual_seed(0)
    generator = Generator(width=0.25, decoder_init=decoder_init)
    torch.manual_seed(0)
    other = Generator(width=0.25, decoder_init="he" if decoder_init == "glorot" else "glorot")
    assert same_weights(generator.encoder.state_dict(), other.encoder.state_dict())
    assert not same_weights(generator.decoder.state_dict(), other.decoder.state_dict())
    convs = [m for m in (*generator.decoder.modules(), generator.output) if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 14  # 13 decoder convolutions and the 1x1 output
    for conv in convs:
        fan_in, fan_out = conv.weight[0].numel(), conv.weight.shape[0] * conv.weight[0, 0].numel()
        bound = (6 / (fan_in + fan_out)) ** 0.5
        weight = conv.weight.detach()
        assert torch.count_nonzero(conv.bias) == 0
        if decoder_init == "glorot":
            assert weight.abs().max() <= bound
            if weight.numel() > 1000:  # enough draws to tell the distributions apart
                assert weight.abs().max() > 0.95 * bound
                assert weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)
        elif weight.numel() > 1000:
            assert weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)


def test_the_settings_build_the_original_discriminator_and_decoder():
    from salgan.models import build_discriminator

    model = ModelParams(encoder_weights="none", width=0.125)
    disc = build_discriminator(model.model_copy(update={"discriminator_image": "raw"}), (64, 48))
    assert disc.image_input == "raw"
    plain = build_discriminator(
        model.model_copy(update={"discriminator_weight_norm_gain": "trainable", "discriminator_image": "normalised"}),
        (64, 48),
    )
    assert plain.image_input == "normalised" and any(n.endswith("original0") for n, _ in plain.named_parameters())
    assert build_generator(model.model_copy(update={"decoder_init": "he"})).decoder_init == "he"
    paper = build_discriminator(model.model_copy(update={"discriminator_width": 1.0}), (64, 48))
    assert [m.out_channels for m in paper.features if isinstance(m, torch.nn.Conv2d)] == [3, 32, 64, 64, 64, 64]
    narrow = build_discriminator(model.model_copy(update={"discriminator_width": 0.25}), (64, 48))
    assert [m.out_channels for m in narrow.features if isinstance(m, torch.nn.Conv2d)] == [3, 8, 16, 16, 16, 16]


def test_load_generator_reads_a_state_dict_a_checkpoint_and_what_lies_beside_them(tmp_path):
    """One loader for every weights form: the input size comes from the checkpoint's settings (its own, or
    the one beside a generator.pt), else it is the paper's 256x192."""
    from salgan import checkpoint
    from salgan.models import ModelError

    torch.manual_seed(0)
    generator = Generator(width=0.0625)
    state = generator.state_dict()
    alone = tmp_path / "alone" / "generator.pt"
    alone.parent.mkdir()
    torch.save(state, alone)
    assert load_generator(alone).input_size == (256, 192)
    trained = tmp_path / "models"
    trained.mkdir()
    checkpoint.save_atomic({"generator": state, "config": {"prepare": {"size": [64, 48]}}}, trained / "checkpoint.pt")
    torch.save(state, trained / "generator.pt")
    for path in (trained / "checkpoint.pt", trained / "generator.pt"):
        loaded, size = load_generator(path)
        assert size == (64, 48) and not loaded.training
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(ModelError, match="a directory without an MLmodel file is not an MLflow model"):
        load_generator(tmp_path / "alone")
    with pytest.raises(ModelError, match="no such file or directory"):
        load_generator(tmp_path / "nothing.pt")


def test_loading_a_generators_weights_and_counting_its_cost_skip_torchs_compiler_start_up(tmp_path):
    """The shape check builds the architecture on the meta device with its random initialisation skipped:
    a meta tensor's normal_ would import torch._dynamo (over a second of every predict, gate and serving
    process). The check still refuses a tensor of the wrong shape. The evaluate stage's cost count runs
    no meta ops either (their Python references import it too)."""
    import subprocess
    import sys

    torch.save(Generator(width=0.0625).state_dict(), tmp_path / "generator.pt")
    state = Generator(width=0.0625).state_dict()
    state["output.weight"] = torch.zeros(1, 5, 1, 1)
    torch.save(state, tmp_path / "wrong.pt")
    probe = (
        "import sys; from salgan.models import load_generator\n"
        f"load_generator({str(tmp_path / 'generator.pt')!r})\n"
        "try:\n"
        f"    load_generator({str(tmp_path / 'wrong.pt')!r})\n"
        "except Exception as exc:\n"
        "    print(exc)\n"
        "from salgan.models import model_cost\n"
        f"print(model_cost(load_generator({str(tmp_path / 'generator.pt')!r}).generator)['gflops'] > 0)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "output.weight has shape (1, 5, 1, 1)" in out and out.splitlines()[-2:] == ["True", "False"], out
