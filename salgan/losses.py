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

from salgan.metrics import EPS  # MATLAB's eps, as the metrics' KLD (MIT KLdiv.m)


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


TERMS = ("bce", "kld", "cc", "nss", "nll")


def kld_term(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image KLD of the predicted map P from the ground truth Q, as :func:`salgan.metrics.kld`:
    ``sum Q ln(eps + Q / (P + eps))`` with both maps divided by their sums (an all-zero map uniform).
    ``probs`` and ``target`` (N, 1, H, W) are non-negative; returns (N,)."""
    p, q = _density(probs), _density(target)
    return (q * torch.log(EPS + q / (p + EPS))).sum(dim=(1, 2, 3))


def cc_term(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image Pearson correlation of the two maps, as :func:`salgan.metrics.cc` (0 where either map is
    constant); returns (N,)."""
    a = probs - probs.mean(dim=(1, 2, 3), keepdim=True)
    b = target - target.mean(dim=(1, 2, 3), keepdim=True)
    product = (a * a).sum(dim=(1, 2, 3)) * (b * b).sum(dim=(1, 2, 3))
    # Both branches of torch.where are differentiated: the square root of 0 must not reach the backward pass.
    r = (a * b).sum(dim=(1, 2, 3)) / _safe_sqrt(product)
    return torch.where(_constant(probs) | _constant(target), torch.zeros_like(r), r).clamp(-1.0, 1.0)


def nss_term(probs: torch.Tensor, fixations: torch.Tensor) -> torch.Tensor:
    """Per-image NSS, as :func:`salgan.metrics.nss`: the map z-scored with its population std, averaged
    over the fixations (``fixations`` holds counts; a constant map scores 0); returns (N,)."""
    mean = probs.mean(dim=(1, 2, 3), keepdim=True)
    variance = (probs - mean).square().mean(dim=(1, 2, 3), keepdim=True)
    z = (probs - mean) / _safe_sqrt(variance)
    score = (z * fixations).sum(dim=(1, 2, 3)) / fixations.sum(dim=(1, 2, 3)).clamp_min(1)
    return torch.where(_constant(probs), torch.zeros_like(score), score)


def nll_term(log_density: torch.Tensor, fixations: torch.Tensor) -> torch.Tensor:
    """The fixations' negative log-likelihood under the density, in nats per fixation over the batch:
    ``-sum_i sum_x c_i(x) log p_i(x) / sum_i sum_x c_i(x)`` with ``c`` the fixation counts at the training
    size and ``log p`` (N, 1, H, W) normalised over each image's pixels (pysaliency's ``log_likelihoods``,
    matthias-k/pysaliency models.py, averaged per fixation and negated)."""
    counts = fixations.float()
    return -(counts * log_density).sum() / counts.sum().clamp_min(1)


def map_log_density(logits: torch.Tensor) -> torch.Tensor:
    """A map model's sigmoid map read as a density, in logs: ``log sigmoid(z) - logsumexp(log sigmoid(z))``
    over each image's pixels (the map divided by its sum, as pysaliency's ``convert_saliency_map_to_density``
    and the information-gain metric read a map), exact from the logits."""
    flat = F.logsigmoid(logits.float()).flatten(-2)
    return (flat - torch.logsumexp(flat, dim=-1, keepdim=True)).view_as(logits)


def _constant(maps: torch.Tensor) -> torch.Tensor:
    """Per image: all values equal (compared exactly, as salgan.metrics: a rounded std may not be 0)."""
    return maps.amax(dim=(1, 2, 3)) == maps.amin(dim=(1, 2, 3))


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(x.clamp_min(torch.finfo(x.dtype).tiny))


def _density(maps: torch.Tensor) -> torch.Tensor:
    total = maps.sum(dim=(1, 2, 3), keepdim=True)
    uniform = torch.full_like(maps, 1.0 / maps[0].numel())
    return torch.where(total > 0, maps / total.clamp_min(torch.finfo(maps.dtype).tiny), uniform)


def describe_content_loss(spec: str | dict[str, float], downsample: int = 4) -> str:
    """``BCE/4`` or ``1.0 kld - 0.2 cc - 0.1 nss``: ``train.content_loss`` as the report shows it."""
    if spec == "bce":
        return f"BCE/{downsample}"
    text = " ".join(f"{'-' if w < 0 else '+'} {abs(w):g} {t}" for t, w in spec.items() if w).removeprefix("+ ")
    return text.replace("bce", f"BCE/{downsample}")


class ContentLoss:
    """``train.content_loss``: ``bce`` (Eq. 1, the paper) or ``{term: weight}``, the weighted sum of
    batch means of ``bce`` (Eq. 1), ``kld``, ``cc`` and ``nss`` (the metrics' definitions, on the predicted
    map at the training size, in float32). SAM (Cornia et al. 2018) trains on KLD - CC - NSS with weights
    10 : 2 : 1, i.e. ``{kld: 1.0, cc: -0.2, nss: -0.1}``: a metric to maximise takes a negative weight.
    ``nll`` is the fixations' negative log-likelihood (:func:`nll_term`) under the model's density.

    ``output`` (``model.output``): ``map``, the generator's output is sigmoid logits; ``density``, it is a
    log-density (salgan/models/density.py), whose map for kld, cc and nss is the density divided by its
    maximum (the three are blind to a map's scale) and which has no bce."""

    def __init__(self, spec: str | dict[str, float] = "bce", downsample: int = 4, output: str = "map"):
        self.weights = {"bce": 1.0} if spec == "bce" else {k: float(v) for k, v in spec.items() if v}
        unknown = set(self.weights) - set(TERMS)
        if unknown:
            raise ValueError(f"unknown content-loss term {sorted(unknown)[0]!r}; known: {', '.join(TERMS)}")
        if output == "density" and "bce" in self.weights:
            raise ValueError("a density model has no bce content-loss term (nll, kld, cc or nss)")
        self.downsample, self.output = downsample, output

    @property
    def needs_fixations(self) -> bool:
        return "nss" in self.weights or "nll" in self.weights

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, fixations: torch.Tensor | None = None):
        """The loss of a batch of generator outputs (logits, or a density model's log-density) against its
        maps (and fixation counts for ``nss`` and ``nll``)."""
        total = logits.new_zeros((), dtype=torch.float32)
        probs = None
        if set(self.weights) - {"bce", "nll"}:
            z = logits.float()
            probs = torch.exp(z - z.amax(dim=(-2, -1), keepdim=True)) if self.output == "density" else torch.sigmoid(z)
        for term, weight in self.weights.items():
            if term in ("nss", "nll") and fixations is None:
                raise ValueError(f"the {term} content-loss term needs the batch's fixation counts")
            if term == "bce":
                value = content_loss(logits, target, self.downsample)
            elif term == "nll":
                log_density = logits.float() if self.output == "density" else map_log_density(logits)
                value = nll_term(log_density, fixations)
            elif term == "nss":
                value = nss_term(probs, fixations.float()).mean()
            else:
                value = (kld_term if term == "kld" else cc_term)(probs, target.float()).mean()
            total = total + weight * value
        return total


def adversarial_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """L(D(I, S^), 1): the generator wants its maps classed as real."""
    fake = fake_logits.float()
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def generator_loss(content: torch.Tensor, fake_logits: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2: alpha * L_content + L(D(I, S^), 1), L_content L_BCE in the paper. Returns (total, content)."""
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
