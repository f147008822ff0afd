"""SalGAN discriminator (Pan et al. 2017, Table 1; original scripts/models/discriminator.py)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from salgan.models.generator import IMAGENET_MEAN, IMAGENET_STD


class Discriminator(nn.Module):
    """(image, saliency map) -> logit of "this map is a real human map for this image".

    Input: RGB (N, 3, H, W) in [0, 1] and a map (N, 1, H, W) in [0, 1], concatenated into 4 channels.
    ``image_input`` is what D's first layer sees of the image: ``raw``, pixel values 0-255, as the original
    (its D takes the network's raw input; the Caffe mean subtraction happens inside the generator's VGG
    only), or ``normalised`` with ImageNet's mean and std, as the generator's encoder sees it (values of
    about -2..2, closer to the map's 0..1).
    Layers: 1x1 conv 4->3 + ReLU; conv 32; max-pool ``first_pool`` (4 in the original code, 2 in the
    paper's table); conv 64, conv 64, max-pool 2; conv 64, conv 64, max-pool 2; FC 100 tanh; FC 2 tanh;
    FC 1. ``width`` scales the conv layers' 32 and 64 channels (rounded, at least 1), not the 1x1 merge
    layer nor the FC layers; 1.0 is the paper's D. The final sigmoid is folded into the loss (BCE with
    logits), which is the same function and stays finite under bf16 autocast. With ``weight_norm`` (the
    original code; the paper does not mention it) conv3_1 and conv3_2 are weight-normalised (Salimans &
    Kingma 2016), w = g v / ||v|| per filter: ``weight_norm_gain`` ``fixed`` is the original's (its
    WeightNormLayer has ``train_g=False``, g = 1, and ||v|| = sqrt(1e-6 + sum v^2)), so each filter keeps
    unit norm and only its direction learns; ``trainable`` is PyTorch's weight norm, g a parameter
    starting at ||v||.
    """

    def __init__(
        self,
        input_size: tuple[int, int] = (256, 192),
        first_pool: int = 4,
        weight_norm: bool = True,
        weight_norm_gain: Literal["fixed", "trainable"] = "trainable",
        image_input: Literal["raw", "normalised"] = "normalised",
        width: float = 1.0,
    ):
        super().__init__()
        if image_input not in ("raw", "normalised") or weight_norm_gain not in ("fixed", "trainable"):
            raise ValueError(f"unknown discriminator input {image_input!r} or weight-norm gain {weight_norm_gain!r}")
        self.image_input = image_input
        wide, narrow = max(1, round(32 * width)), max(1, round(64 * width))
        columns, rows = input_size
        reduction = first_pool * 4
        if columns % reduction or rows % reduction:
            raise ValueError(f"discriminator input {columns}x{rows} must be divisible by {reduction}")

        def conv(cin: int, cout: int, kernel: int = 3) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *conv(4, 3, kernel=1),
            *conv(3, wide),
            nn.MaxPool2d(first_pool),
            *conv(wide, narrow),
            *conv(narrow, narrow),
            nn.MaxPool2d(2),
            *conv(narrow, narrow),
            *conv(narrow, narrow),
            nn.MaxPool2d(2),
        )
        flat = narrow * (columns // reduction) * (rows // reduction)
        self.classifier = nn.Sequential(nn.Linear(flat, 100), nn.Tanh(), nn.Linear(100, 2), nn.Tanh(), nn.Linear(2, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.reset_parameters()
        if weight_norm:
            for conv3 in (self.features[10], self.features[12]):  # conv3_1, conv3_2
                if weight_norm_gain == "fixed":
                    parametrize.register_parametrization(conv3, "weight", UnitNorm())
                else:
                    nn.utils.parametrizations.weight_norm(conv3, dim=0)

    def reset_parameters(self) -> None:
        """Lasagne's defaults, which the original relies on: Glorot-uniform weights, zero biases. PyTorch's
        default biases often leave all three ReLU channels of the 1x1 merge layer dead on [0, 1] inputs,
        and a discriminator that sees nothing stays at log 2 however long it trains."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, image: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
        image = image * 255.0 if self.image_input == "raw" else (image - self.mean) / self.std
        features = self.features(torch.cat([image, saliency.to(image.dtype)], dim=1))
        return self.classifier(features.flatten(1)).squeeze(1)


class UnitNorm(nn.Module):
    """The original's weight norm with its gain fixed at 1: each output filter v / sqrt(1e-6 + ||v||^2)
    (Lasagne's WeightNormLayer, train_g=False). No parameter of its own: the optimiser sees only v."""

    eps = 1e-6

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return v / torch.sqrt(self.eps + v.square().sum(dim=tuple(range(1, v.dim())), keepdim=True))
