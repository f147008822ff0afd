"""The discriminator's held-out diagnostics (salgan/gan_diagnostics.py) against values worked out by hand."""

import math

import pytest
import torch
from torch import nn

from salgan.gan_diagnostics import discriminator_diagnostics, gan_diagnostics
from salgan.models import Discriminator


class HandMadeD(nn.Module):
    """A discriminator whose every number can be worked out on paper. A 1x1 convolution over the 4 input
    channels (image RGB, map) with three ReLU channels: c0 = relu(map - 0.5) (fires on bright maps),
    c1 = relu(-map - 2) (never: maps are >= 0), c2 = relu(R - 10) (never: R <= 1). A second ReLU layer has
    one channel, relu(c0), alive whenever c0 is. The logit is max over the pixels of c0, minus 0.25."""

    def __init__(self):
        super().__init__()
        self.merge = nn.Conv2d(4, 3, 1)
        self.relu = nn.ReLU()
        self.second = nn.Conv2d(3, 1, 1)
        self.relu2 = nn.ReLU()
        with torch.no_grad():
            self.merge.weight.zero_()
            self.merge.weight[0, 3] = 1.0
            self.merge.weight[1, 3] = -1.0
            self.merge.weight[2, 0] = 1.0
            self.merge.bias.copy_(torch.tensor([-0.5, -2.0, -10.0]))
            self.second.weight.zero_()
            self.second.weight[0, 0] = 1.0
            self.second.bias.zero_()

    def forward(self, image, saliency):
        c = self.relu(self.merge(torch.cat([image, saliency], dim=1)))
        self.relu2(self.second(c))
        return c[:, 0].flatten(1).amax(dim=1) - 0.25


def flat_maps(values):
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 1, 4, 6).clone()


def test_accuracy_means_and_dead_units_match_the_hand_computed_values():
    images = torch.rand(3, 3, 4, 6)
    real = flat_maps([1.0, 1.0, 0.6])  # logits 0.25, 0.25, -0.15: right, right, wrong
    fake = flat_maps([0.2, 0.9, 0.75])  # logits -0.25, 0.15, 0: right, wrong, a tie (half)
    found = discriminator_diagnostics(HandMadeD(), images, real, fake)
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert found["d_accuracy"] == pytest.approx((2 + 0 + 1.5) / 6)
    assert found["d_real"] == pytest.approx((2 * sigmoid(0.25) + sigmoid(-0.15)) / 3, abs=1e-6)
    assert found["d_fake"] == pytest.approx((sigmoid(-0.25) + sigmoid(0.15) + 0.5) / 3, abs=1e-6)
    assert found["d_dead_units"] == pytest.approx(2 / 4)  # c1 and c2 dead; c0 and the second layer's unit fire


def test_a_unit_that_fires_for_one_pair_anywhere_is_alive():
    """Only one fake map has a bright pixel: c0 fires there alone, and it is alive; c1, c2 stay dead."""
    images = torch.zeros(2, 3, 4, 6)
    real, fake = torch.zeros(2, 1, 4, 6), torch.zeros(2, 1, 4, 6)
    fake[1, 0, 3, 5] = 0.75
    assert discriminator_diagnostics(HandMadeD(), images, real, fake)["d_dead_units"] == pytest.approx(2 / 4)
    assert discriminator_diagnostics(HandMadeD(), images, real, real)["d_dead_units"] == pytest.approx(4 / 4)


def test_a_discriminator_whose_merge_layer_is_dead_reads_dead_and_at_chance():
    """SalGAN's D with its 1x1 merge layer's ReLUs all off: every later ReLU is off too, the tanh layers see
    zeros, the logit is the last bias (0): accuracy exactly 0.5 (ties count half), D(real) = D(fake) = 0.5."""
    torch.manual_seed(0)
    disc = Discriminator(input_size=(64, 48), first_pool=4)
    with torch.no_grad():
        disc.features[0].bias.fill_(-1e4)
    images, maps = torch.rand(4, 3, 48, 64), torch.rand(4, 1, 48, 64)
    found = discriminator_diagnostics(disc, images, maps, torch.rand_like(maps))
    assert found == {"d_accuracy": 0.5, "d_real": 0.5, "d_fake": 0.5, "d_dead_units": 1.0}


def test_the_generators_maps_are_made_in_eval_mode_and_its_training_mode_is_given_back():
    from salgan.models import Generator

    torch.manual_seed(0)
    disc = Discriminator(input_size=(64, 48), first_pool=4, image_input="raw", weight_norm_gain="fixed")
    generator = Generator(width=0.0625).train()
    images, maps = torch.rand(4, 3, 48, 64), torch.rand(4, 1, 48, 64)
    found = gan_diagnostics(generator, disc, images, maps)
    assert generator.training
    with torch.no_grad():
        fake = generator.eval()(images)
    assert found == discriminator_diagnostics(disc, images, maps, fake)
