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
    total, content = generator_loss(content_loss(logits, target, downsample=1), fake_logits, alpha=0.05)
    assert adversarial_generator_loss(fake_logits).item() == pytest.approx(adversarial, rel=1e-6)
    assert total.item() == pytest.approx(0.05 * content.item() + adversarial, rel=1e-6)


# --- metric terms of train.content_loss against salgan.metrics on the same maps --------------------------


def _maps(seed: int = 0):
    """Two predicted maps (sigmoid of random logits), their ground-truth maps and fixation counts, one
    image of them all zero to exercise the metrics' uniform-density convention."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 1, 12, 16, generator=generator) * 2
    target = torch.rand(3, 1, 12, 16, generator=generator) ** 3
    target[2] = 0
    fixations = (torch.rand(3, 1, 12, 16, generator=generator) > 0.9).float() * torch.randint(
        1, 4, (3, 1, 12, 16), generator=generator
    )
    fixations[:, 0, 5, 7] = 2  # every image has fixations
    return logits, target, fixations


def test_kld_cc_and_nss_terms_equal_the_metrics_on_each_image():
    from salgan import metrics
    from salgan.losses import cc_term, kld_term, nss_term

    logits, target, fixations = _maps()
    probs = torch.sigmoid(logits)
    kld, cc, nss = kld_term(probs, target), cc_term(probs, target), nss_term(probs, fixations)
    for i in range(3):
        s, g, f = probs[i, 0].double().numpy(), target[i, 0].double().numpy(), fixations[i, 0].numpy()
        assert kld[i].item() == pytest.approx(metrics.kld(s, g), rel=1e-4)
        assert cc[i].item() == pytest.approx(metrics.cc(s, g), abs=1e-5)
        assert nss[i].item() == pytest.approx(metrics.nss(s, f), rel=1e-4)


def test_a_weighted_content_loss_is_the_weighted_sum_of_batch_means_and_bce_keeps_eq_1():
    from salgan import metrics
    from salgan.losses import ContentLoss

    logits, target, fixations = _maps(1)
    probs = torch.sigmoid(logits).double().numpy()[:, 0]
    weights = {"kld": 1.0, "cc": -0.2, "nss": -0.1, "bce": 0.5}
    expected = (
        sum(
            weights["kld"] * metrics.kld(p, g) + weights["cc"] * metrics.cc(p, g) + weights["nss"] * metrics.nss(p, f)
            for p, g, f in zip(probs, target.double().numpy()[:, 0], fixations.numpy()[:, 0], strict=True)
        )
        / 3
        + 0.5 * content_loss(logits, target, 4).item()
    )
    assert ContentLoss(weights, downsample=4)(logits, target, fixations).item() == pytest.approx(expected, rel=1e-5)
    assert ContentLoss("bce", 4)(logits, target).item() == content_loss(logits, target, 4).item()
    assert ContentLoss(weights).needs_fixations and not ContentLoss({"kld": 1.0, "cc": -1.0}).needs_fixations
    with pytest.raises(ValueError, match="fixation counts"):
        ContentLoss({"nss": -1.0})(logits, target)


def test_metric_terms_train_towards_the_metric_and_stay_finite_on_saturated_and_constant_maps():
    """One gradient step on -CC raises CC; a saturated or constant prediction still has finite gradients."""
    from salgan.losses import ContentLoss, cc_term

    _, target, fixations = _maps(2)
    loss = ContentLoss({"kld": 1.0, "cc": -0.2, "nss": -0.1})
    for start in (torch.zeros(3, 1, 12, 16), torch.full((3, 1, 12, 16), 40.0), torch.randn(3, 1, 12, 16)):
        logits = start.clone().requires_grad_(True)
        value = loss(logits, target, fixations)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    logits = torch.randn(3, 1, 12, 16).requires_grad_(True)
    before = cc_term(torch.sigmoid(logits), target)[:2].mean()
    ContentLoss({"cc": -1.0})(logits, target).backward()
    with torch.no_grad():
        after = cc_term(torch.sigmoid(logits - 5.0 * logits.grad), target)[:2].mean()
    assert after > before
