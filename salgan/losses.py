"""SalGAN losses (seed paper Eqs. 1-3; Pan et al. 2017 Sec. 3).

Computed in float32 outside autocast: binary cross-entropy on probabilities is not autocast-safe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-7


def content_loss(predicted: torch.Tensor, target: torch.Tensor, downsample: int = 4) -> torch.Tensor:
    """Eq. 1 on maps average-pooled ``downsample`` x ``downsample`` (BCE/4 in the paper's Table 2).

    L_BCE = -1/N sum_j S_j log(S^_j) + (1 - S_j) log(1 - S^_j), S the ground truth, S^ the prediction.
    """
    predicted, target = predicted.float(), target.float()
    if downsample > 1:
        predicted = F.avg_pool2d(predicted, downsample)
        target = F.avg_pool2d(target, downsample)
    return F.binary_cross_entropy(predicted.clamp(EPS, 1 - EPS), target)


def adversarial_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """L(D(I, S^), 1): the generator wants its maps classed as real."""
    return F.binary_cross_entropy_with_logits(fake_logits.float(), torch.ones_like(fake_logits, dtype=torch.float32))


def generator_loss(
    predicted: torch.Tensor, target: torch.Tensor, fake_logits: torch.Tensor, alpha: float, downsample: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2: alpha * L_BCE + L(D(I, S^), 1). Returns (total, content part)."""
    content = content_loss(predicted, target, downsample)
    return alpha * content + adversarial_generator_loss(fake_logits), content


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 3: L(D(I, S), 1) + L(D(I, S^), 0)."""
    real, fake = real_logits.float(), fake_logits.float()
    return F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(
        fake, torch.zeros_like(fake)
    )
