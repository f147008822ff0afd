"""Encoders beyond the paper's VGG16, taken from torchvision's own model builders, and the decoder that
fits their feature pyramid.

SalGAN's future work (Pan et al. 2017, Sec. 6) is other backbones; the saliency models after it use
ResNets (SAM-ResNet, Cornia et al. 2018; EML-Net, Jia & Bruce 2020) and efficient mobile networks
(UNISAL, Droste et al. 2020, on MobileNetV2). Each encoder here keeps torchvision's module names, so
torchvision's ImageNet weight files load into it unchanged, and is cut into five stages (the unit of
``model.freeze_blocks``, like VGG16's five blocks) whose last four end at strides 4, 8, 16 and 32: the
taps of :class:`SkipDecoder`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from salgan.encoder_table import MULTISCALE_ENCODERS

# Encoder name -> the names (ResNet) or index ranges (MobileNetV3 ``features``) of its five stages.
RESNET_STAGES = (("conv1", "bn1", "relu", "maxpool"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))
MOBILENET_V3_LARGE_STAGES = ((0, 2), (2, 4), (4, 7), (7, 13), (13, 17))


class MultiScaleEncoder(nn.Module):
    """A torchvision classification network without its classifier, returning the outputs of stages 2-5
    (strides 4, 8, 16, 32). ``state_dict()`` keys are torchvision's (``layer1.0.conv1.weight``,
    ``features.4.block.0.0.weight``), less ``fc.`` / ``classifier.``."""

    def __init__(self, name: str, width: float = 1.0):
        super().__init__()
        import torchvision  # here, not at the top: a VGG16 generator never needs it (3 s of start-up)

        if name == "mobilenet_v3_large":
            self.features = torchvision.models.mobilenet_v3_large(weights=None, width_mult=width).features
            self.stages = [list(self.features[a:b]) for a, b in MOBILENET_V3_LARGE_STAGES]
        elif name in ("resnet18", "resnet50"):
            net = getattr(torchvision.models, name)(weights=None)
            for part in (p for stage in RESNET_STAGES for p in stage):
                self.add_module(part, getattr(net, part))
            self.stages = [[getattr(self, part) for part in stage] for stage in RESNET_STAGES]
        else:
            raise ValueError(f"unknown encoder {name!r}; known: vgg16, {', '.join(MULTISCALE_ENCODERS)}")
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                # torchvision's MobileNetV3 averages batch statistics with momentum 0.01, tuned for ImageNet's
                # hundreds of thousands of steps; a saliency run of a few thousand would evaluate on
                # statistics still near their initial values. PyTorch's default 0.1 (the ResNets') for all.
                module.momentum = 0.1
        self.channels = self._tap_channels()

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        taps, x = [], image
        for index, stage in enumerate(self.stages):
            for module in stage:
                x = module(x)
            if index:
                taps.append(x)
        return taps

    def _tap_channels(self) -> list[int]:
        """Channels of the four taps, read off one forward pass (in eval mode: batch-norm statistics stay)."""
        self.eval()
        with torch.no_grad():
            channels = [tap.shape[1] for tap in self(torch.zeros(1, 3, 64, 64))]
        self.train()
        return channels


class SkipDecoder(nn.Module):
    """Feature pyramid (strides 4, 8, 16, 32) -> features at stride 2, in the U-Net / FPN manner of the
    multi-scale saliency decoders (UNISAL, EML-Net): each level is projected to ``channels`` by a 1x1
    convolution, added to the 2x nearest-neighbour upsampled coarser level (as the paper's decoder
    upsamples) and smoothed by a 3x3 convolution + ReLU; one more upsample + conv + ReLU reaches stride 2.
    The generator's 1x1 output and a bilinear 2x upsampling of the logits give the full-size map: a 3x3
    convolution at full size would cost more than a ResNet-18 encoder."""

    def __init__(self, in_channels: Sequence[int], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, kernel_size=1) for c in in_channels)
        self.smooth = nn.ModuleList(_conv_relu(channels, channels) for _ in in_channels[:-1])
        half = max(1, channels // 2)
        self.head = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), *_conv_relu(channels, half))
        self.out_channels = half

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](features[-1])
        for level in reversed(range(len(features) - 1)):
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest") + self.lateral[level](features[level])
            x = self.smooth[level](x)
        return self.head(x)


def _conv_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True))
