"""SalGAN losses (seed paper Eqs. 1-3; Pan et al. 2017 Sec. 3).

Every loss takes logits and is computed in float32, so under bf16 autocast no probability is rounded
before the logarithm: bf16 rounds sigmoid(z) to exactly 1.0 from z of about 5.5, where a loss computed on
probabilities would lose its gradient.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F


def content_loss(logits: torch.Tensor, target: torch.Tensor, downsample: int = 4) -> torch.Tensor:
    """Eq. 1 on maps average-pooled ``downsample`` x ``downsample`` (BCE/4 in the paper's Table 2).

    L_BCE = -1/N sum_j S_j log(S^_j) + (1 - S_j) log(1 - S^_j), S the pooled ground truth and S^ the pooled
    prediction, S^_j = mean over the cell of sigmoid(z_i). The logarithms are taken exactly from the
    logits: log S^_j = logsumexp_i(log sigmoid(z_i)) - log(d^2) and log(1 - S^_j) = logsumexp_i(log
    sigmoid(-z_i)) - log(d^2), so no clamp is needed and a saturated cell keeps its gradient. Without
    downsampling this is BCE with logits. Like Theano's pooling with ``ignore_border``, rows and columns
    past the last whole cell are dropped.
    """
    z, target = logits.float(), target.float()
    if downsample <= 1:
        return F.binary_cross_entropy_with_logits(z, target)
    target = F.avg_pool2d(target, downsample)
    log_p = _cell_log_mean_exp(F.logsigmoid(z), downsample)
    log_not_p = _cell_log_mean_exp(F.logsigmoid(-z), downsample)
    return -(target * log_p + (1 - target) * log_not_p).mean()


def _cell_log_mean_exp(x: torch.Tensor, cell: int) -> torch.Tensor:
    """log(mean(exp(x))) over non-overlapping ``cell`` x ``cell`` windows of (N, C, H, W)."""
    n, c, h, w = x.shape
    x = x[..., : h // cell * cell, : w // cell * cell].reshape(n, c, h // cell, cell, w // cell, cell)
    return torch.logsumexp(x, dim=(3, 5)) - math.log(cell * cell)


def adversarial_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """L(D(I, S^), 1): the generator wants its maps classed as real."""
    fake = fake_logits.float()
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def generator_loss(
    logits: torch.Tensor, target: torch.Tensor, fake_logits: torch.Tensor, alpha: float, downsample: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2: alpha * L_BCE + L(D(I, S^), 1). Returns (total, content part)."""
    content = content_loss(logits, target, downsample)
    return alpha * content + adversarial_generator_loss(fake_logits), content


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, reduction: Literal["mean", "sum"] = "mean"
) -> torch.Tensor:
    """Eq. 3: L(D(I, S), 1) + L(D(I, S^), 0) with ``sum`` (the paper); ``mean`` halves it, as the original
    code's one BCE over the concatenated real and fake batch does."""
    real, fake = real_logits.float(), fake_logits.float()
    total = F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(
        fake, torch.zeros_like(fake)
    )
    return total / 2 if reduction == "mean" else total
