"""salgan.losses against values computed by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from salgan.losses import adversarial_generator_loss, content_loss, discriminator_loss, generator_loss


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def bce(p: float, t: float) -> float:
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def test_content_loss_without_downsampling_is_pixelwise_bce():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    target = torch.tensor([[[[0.5, 1.0], [0.0, 0.25]]]])
    expected = sum(bce(sigmoid(z), t) for z, t in [(0.0, 0.5), (2.0, 1.0), (-1.0, 0.0), (3.0, 0.25)]) / 4
    assert content_loss(logits, target, downsample=1).item() == pytest.approx(expected, rel=1e-6)


def test_content_loss_pools_probabilities_then_takes_bce():
    """BCE/4 of the paper: the mean of sigmoid over each cell against the cell's mean target."""
    logits = torch.tensor([[[[0.0, 2.0, 1.0, 1.0], [-1.0, 3.0, 1.0, 1.0]]]])  # 2x4: two 2x2 cells
    target = torch.tensor([[[[0.5, 1.0, 0.0, 0.0], [0.0, 0.25, 0.0, 1.0]]]])
    cell_1 = (sigmoid(0.0) + sigmoid(2.0) + sigmoid(-1.0) + sigmoid(3.0)) / 4
    cell_2 = sigmoid(1.0)
    expected = (bce(cell_1, (0.5 + 1.0 + 0.0 + 0.25) / 4) + bce(cell_2, 0.25)) / 2
    assert content_loss(logits, target, downsample=2).item() == pytest.approx(expected, rel=1e-6)


def test_content_loss_matches_bce_on_pooled_maps_for_a_random_batch():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 1, 48, 64) * 2, torch.rand(3, 1, 48, 64)
    reference = F.binary_cross_entropy(
        F.avg_pool2d(torch.sigmoid(logits.double()), 4), F.avg_pool2d(target, 4).double()
    )
    assert content_loss(logits, target, 4).item() == pytest.approx(reference.item(), rel=1e-5)


def test_a_saturated_cell_keeps_its_exact_gradient():
    """sigmoid(30) is 1.0 in float32: a loss on clamped probabilities would give no gradient. For a uniform
    cell of logit z the gradient per pixel is (sigmoid(z) - t) / cell_pixels."""
    logits = torch.full((1, 1, 2, 2), 30.0, requires_grad=True)
    target = torch.full((1, 1, 2, 2), 0.5)
    loss = content_loss(logits, target, downsample=2)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(0.5 * 30 + math.log1p(math.exp(-30)), rel=1e-5)
    torch.testing.assert_close(logits.grad, torch.full((1, 1, 2, 2), (1 - 0.5) / 4))


def test_bf16_logits_are_lifted_to_float32():
    logits = torch.full((1, 1, 4, 4), 8.0, dtype=torch.bfloat16)  # bf16 sigmoid(8) rounds to 1.0
    loss = content_loss(logits, torch.zeros(1, 1, 4, 4), downsample=4)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(8 + math.log1p(math.exp(-8)), rel=1e-5)  # -log(1 - sigmoid(8))


def test_discriminator_loss_mean_is_the_original_and_sum_the_paper():
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    terms = math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))  # BCE(D(I,S), 1) + BCE(D(I,S^), 0)
    assert discriminator_loss(real, fake, reduction="sum").item() == pytest.approx(terms, rel=1e-6)
    assert discriminator_loss(real, fake, reduction="mean").item() == pytest.approx(terms / 2, rel=1e-6)


def test_generator_loss_is_alpha_content_plus_adversarial_term():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    target = torch.tensor([[[[0.5, 1.0], [0.0, 0.25]]]])
    fake_logits = torch.tensor([0.5, -0.5])
    adversarial = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(0.5))) / 2  # BCE(D(I,S^), 1)
    total, content = generator_loss(logits, target, fake_logits, alpha=0.05, downsample=1)
    assert adversarial_generator_loss(fake_logits).item() == pytest.approx(adversarial, rel=1e-6)
    assert total.item() == pytest.approx(0.05 * content.item() + adversarial, rel=1e-6)
