"""SalGAN discriminator (Pan et al. 2017, Table 1; original scripts/models/discriminator.py)."""

from __future__ import annotations

import torch
from torch import nn


class Discriminator(nn.Module):
    """(image, saliency map) -> logit of "this map is a real human map for this image".

    Input: RGB (N, 3, H, W) in [0, 1] and a map (N, 1, H, W) in [0, 1], concatenated into 4 channels.
    Layers: 1x1 conv 4->3 + ReLU; conv 32; max-pool ``first_pool`` (4 in the original code, 2 in the
    paper's table); conv 64, conv 64, max-pool 2; conv 64, conv 64, max-pool 2; FC 100 tanh; FC 2 tanh;
    FC 1. The final sigmoid is folded into the loss (BCE with logits), which is the same function and
    stays finite under bf16 autocast. With ``weight_norm`` (the original code; the paper does not mention
    it) conv3_1 and conv3_2 are weight-normalised (Salimans & Kingma 2016): w = g v / ||v|| per filter.
    """

    def __init__(self, input_size: tuple[int, int] = (256, 192), first_pool: int = 4, weight_norm: bool = True):
        super().__init__()
        width, height = input_size
        reduction = first_pool * 4
        if width % reduction or height % reduction:
            raise ValueError(f"discriminator input {width}x{height} must be divisible by {reduction}")

        def conv(cin: int, cout: int, kernel: int = 3) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *conv(4, 3, kernel=1),
            *conv(3, 32),
            nn.MaxPool2d(first_pool),
            *conv(32, 64),
            *conv(64, 64),
            nn.MaxPool2d(2),
            *conv(64, 64),
            *conv(64, 64),
            nn.MaxPool2d(2),
        )
        if weight_norm:
            for conv3 in (self.features[10], self.features[12]):  # conv3_1, conv3_2
                nn.utils.parametrizations.weight_norm(conv3, dim=0)
        flat = 64 * (width // reduction) * (height // reduction)
        self.classifier = nn.Sequential(nn.Linear(flat, 100), nn.Tanh(), nn.Linear(100, 2), nn.Tanh(), nn.Linear(2, 1))

    def forward(self, image: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
        features = self.features(torch.cat([image, saliency.to(image.dtype)], dim=1))
        return self.classifier(features.flatten(1)).squeeze(1)
