"""SalGAN's generator as a probabilistic model: a log-density over fixation locations (``model.output: density``).

Since Kümmerer, Wallis and Bethge (ECCV 2018, "Saliency Benchmarking Made Easy"), the MIT/Tuebingen benchmark
treats a saliency model as a density p(x) over pixel locations, from which each metric's map is derived
(:mod:`salgan.density.maps`). The generator's final 1x1 convolution gives one logit per pixel; here those
logits are an unnormalised log-density, as DeepGaze's readout (Kümmerer et al. 2016/2017):

    log p(x | I) = z(x) * G_s  +  log c(x)  -  log sum_x' exp(z(x') * G_s + log c(x'))

with ``z`` the generator's logits, ``G_s`` an optional learned Gaussian blur (``model.density_blur``),
``c`` the centre-bias prior fitted on the train split's fixations (``model.density_prior_sigma``; null: none)
and the normalisation a log-softmax over all pixels. The prior is a buffer saved with the weights, so a
loaded model carries it, and the weights' ``architecture`` entry records the output kind
(:func:`salgan.models.architecture.architecture_of` validates it before anything is built).

Resizing a log-density keeps it a density: the log-density is resized bilinearly and renormalised with
logsumexp (:func:`resize_log_density`), so that ``logsumexp`` of the result is 0 at any size.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from salgan.layout import read_split
from salgan.models.generator import Generator, _encode

OUTPUTS = ("map", "density")
MAX_PRIOR_SIDE = 8192  # a crafted weights file must not name a huge prior
UNIFORM_MIX = 0.01  # as salgan.evaluate's IG baseline: no pixel of the prior has probability 0
INITIAL_BLUR_SIGMA = 2.0  # px at the model's input size
INITIAL_OUTPUT_STD = 0.01  # the last convolution's weights at the start: the density starts near its prior


class DensityGenerator(Generator):
    """Image -> log-density over its pixels, (N, 1, H, W), ``logsumexp`` over each image 0.

    ``forward(image, return_logits=True)`` gives the log-density (what the losses take, as the map
    generator's logits); ``forward(image)`` gives the density divided by its maximum, a map in (0, 1]
    that everything reading a saliency map (the discriminator, the PNG maps, the classic metrics) can use.
    ``prior``: [H, W] of the centre-bias log-prior buffer (None: no prior); ``blur``: a learned Gaussian
    blur of the logits.
    """

    output_kind = "density"

    def __init__(
        self,
        width: float = 1.0,
        encoder: str = "vgg16",
        output: str = "density",
        prior: list[int] | None = None,
        blur: bool = False,
        decoder_init: str = "he",
    ):
        if output != "density":
            raise ValueError(f"DensityGenerator builds output 'density', got {output!r}")
        self.prior_shape = None if prior is None else [int(prior[0]), int(prior[1])]
        self.blur = bool(blur)
        super().__init__(width=width, encoder=encoder, decoder_init=decoder_init)
        self.architecture = _encode(
            {"encoder": encoder, "width": width, "output": "density", "prior": self.prior_shape, "blur": self.blur}
        )
        if self.prior_shape is not None:
            self.register_buffer("log_prior", torch.full((1, 1, *self.prior_shape), -math.log(math.prod(prior))))
        if self.blur:
            self.blur_log_sigma = nn.Parameter(torch.tensor(math.log(INITIAL_BLUR_SIGMA)))

    def reset_parameters(self) -> None:
        """The generator's initialisation, then the last convolution's weights small (std 0.01, bias 0): an
        untrained density model is close to its prior (uniform without one), as DeepGaze starts from its
        centre bias. Not zero: every earlier layer's gradient passes through these weights, and AdaGrad
        scales a small gradient up to a full step, so all layers learn from the first batch."""
        super().reset_parameters()
        last = self.output if isinstance(self.output, nn.Conv2d) else self.output[0]
        nn.init.normal_(last.weight, std=INITIAL_OUTPUT_STD)
        nn.init.zeros_(last.bias)

    def set_log_prior(self, log_prior: torch.Tensor) -> None:
        """Copy a fitted (H, W) log-prior into the buffer (:func:`centre_log_prior`)."""
        if self.prior_shape is None:
            raise ValueError("this density model was built without a prior (model.density_prior_sigma: null)")
        self.log_prior.copy_(log_prior.reshape(self.log_prior.shape))

    def log_density(self, image: torch.Tensor) -> torch.Tensor:
        """log p(x | image), float32 (N, 1, H, W) at the input's size (module docstring)."""
        z = self.logits(image).float()
        if self.blur:
            z = blur_logits(z, self.blur_log_sigma.exp())
        if self.prior_shape is not None:
            z = z + resize_log_density(self.log_prior, tuple(z.shape[-2:]))
        return normalise(z)

    def forward(self, image: torch.Tensor, return_logits: bool = False) -> torch.Tensor:
        log_density = self.log_density(image)
        return log_density if return_logits else saliency_of(log_density, "density")


def output_of(generator: nn.Module) -> str:
    """``map`` or ``density``: what a built generator outputs."""
    return getattr(generator, "output_kind", "map")


def saliency_of(output: torch.Tensor, kind: str) -> torch.Tensor:
    """A map in [0, 1] from the generator's training output: the sigmoid of a map model's logits, a density
    model's density divided by its maximum (what the discriminator sees beside the ground-truth maps, which
    salicon-api min-max normalises to a peak of 1)."""
    if kind == "density":
        return torch.exp(output - output.amax(dim=(-2, -1), keepdim=True))
    return torch.sigmoid(output)


def normalise(scores: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the pixels of each (N, C, H, W) map: a log-density."""
    flat = scores.flatten(-2)
    return (flat - torch.logsumexp(flat, dim=-1, keepdim=True)).view_as(scores)


def resize_log_density(log_density: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) (or (h, w)) log-density -> the same at ``size`` = (H, W): the log-density is resized
    bilinearly (pixel centres aligned, no overshoot) and renormalised with logsumexp, so the result is a
    density at its own size (|logsumexp| at float32 rounding) whatever the sizes."""
    squeeze = log_density.dim() == 2
    x = log_density[None, None] if squeeze else log_density
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x.float(), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    x = normalise(x.double()).float() if x.dtype != torch.float64 else normalise(x)
    return x[0, 0] if squeeze else x


def blur_logits(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A separable Gaussian blur of (N, 1, H, W) logits with a learned ``sigma`` (px), reflect-padded.
    The kernel's radius is fixed by the map's size (an eighth of its shorter side), so a trained sigma
    never changes the computation's shape; sigma is kept between a quarter pixel and half that radius."""
    radius = max(1, min(z.shape[-2:]) // 8)
    sigma = sigma.clamp(0.25, radius / 2)
    offsets = torch.arange(-radius, radius + 1, dtype=z.dtype, device=z.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(z, [radius] * 4, mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, -1, 1))
    return F.conv2d(rows, kernel.view(1, 1, 1, -1))


def centre_log_prior(data: str | Path, size: tuple[int, int], sigma_fraction: float) -> torch.Tensor:
    """The centre-bias log-prior at ``size`` = (W, H), fitted on the train split's fixations the way
    salgan.evaluate's information-gain baseline is (:func:`salgan.scoring.fixation_density_baseline`): all
    train fixations in one count map on the (H, W) grid, blurred with ``sigma_fraction`` of the diagonal
    (``scipy.ndimage.gaussian_filter``, reflect: no mass lost), normalised, mixed 1% with a uniform density;
    returned as its log, (H, W) float32. The counts are the prepared ``fixation_maps.npy`` (the fixations
    already moved to the training grid, docs/data-layout.md), so the train stage needs no scoring code."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    width, height = int(size[0]), int(size[1])
    counts = read_split(data, "train", "fixation_maps").fixation_maps
    if tuple(counts.shape[1:]) != (height, width):
        raise ValueError(f"{data}: train fixation_maps.npy is {counts.shape[1:]}, the model's input {height}x{width}")
    total = np.zeros((height, width))
    for start in range(0, len(counts), 256):  # a memory map: one block of rows at a time
        total += counts[start : start + 256].sum(axis=0, dtype=np.int64)
    if not total.any():
        raise ValueError(f"{data}: the train split has no fixations to fit the density prior on")
    sigma = sigma_fraction * float(np.hypot(height, width))
    density = gaussian_filter(total, sigma=sigma, mode="reflect")
    density /= density.sum()
    mixed = (1 - UNIFORM_MIX) * density + UNIFORM_MIX / density.size
    return torch.from_numpy(np.log(mixed)).float()


def density_architecture(found: dict) -> dict:
    """The density fields of a weights file's ``architecture`` entry, checked: ``output`` one of
    :data:`OUTPUTS`, ``prior`` null or [H, W] of positive sides up to :data:`MAX_PRIOR_SIDE`, ``blur`` a
    bool; no other field. Returns ``{}`` for a map model (nothing recorded beyond encoder and width),
    else the fields. Raises ValueError naming the field."""
    output = found.get("output", "map")
    if output not in OUTPUTS:
        raise ValueError(f"architecture output {output!r} is not one of {', '.join(OUTPUTS)}")
    extra = set(found) - {"encoder", "width", "output", "prior", "blur"}
    if extra:
        raise ValueError(f"architecture has an unknown field {sorted(extra)[0]!r}")
    if output == "map":
        if set(found) - {"encoder", "width", "output"}:
            raise ValueError("a map model's architecture records no prior or blur")
        return {}
    prior, blur = found.get("prior"), found.get("blur", False)
    if prior is not None:
        sides_ok = isinstance(prior, list) and len(prior) == 2 and all(type(s) is int for s in prior)
        if not sides_ok or not all(1 <= s <= MAX_PRIOR_SIDE for s in prior):
            raise ValueError(f"architecture prior {prior!r} is not [H, W] of sides 1 to {MAX_PRIOR_SIDE}")
    if not isinstance(blur, bool):
        raise ValueError(f"architecture blur {blur!r} is not true or false")
    return {"output": "density", "prior": prior, "blur": blur}
