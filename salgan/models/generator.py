"""SalGAN generator: VGG16 encoder and its mirrored decoder (Pan et al. 2017, Fig. 2 and Table 1).

The encoder is VGG16's conv1_1 ... conv5_3 with pool1-pool4 (pool5 and the fully connected layers are
dropped), laid out with the same indices as torchvision's ``vgg16().features`` so that an ImageNet
state_dict loads unchanged. The decoder mirrors it with nearest-neighbour upsampling (Lasagne's
Upscale2D in the original code, no transposed convolutions) and ends in a 1x1 convolution and a sigmoid.
"""

from __future__ import annotations

import torch
from torch import nn

# VGG16 configuration "D": channels per conv, "M" for 2x2 max-pooling. pool5 is not part of SalGAN.
VGG16_ENCODER = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
# Decoder, read from the bottleneck outwards: conv5 mirror, up, conv4, up, conv3, up, conv2, up, conv1.
SALGAN_DECODER = [512, 512, 512, "U", 512, 512, 512, "U", 256, 256, 256, "U", 128, 128, "U", 64, 64]

# torchvision's VGG16_Weights.IMAGENET1K_V1 expect RGB in [0, 1] normalised with these statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def scaled(channels: int, width: float) -> int:
    """Channel count under the width multiplier (at least 1)."""
    return max(1, round(channels * width))


def _conv_stack(spec: list, in_channels: int, width: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for item in spec:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif item == "U":
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        else:
            out_channels = scaled(item, width)
            layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = out_channels
    return nn.Sequential(*layers)


class Generator(nn.Module):
    """Image -> saliency map of the same size, values in (0, 1).

    Input: RGB float tensor (N, 3, H, W) in [0, 1]; H and W multiples of 16. It is normalised inside the
    model with the ImageNet mean and std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225), the normalisation
    torchvision's VGG16 weights were trained with; a randomly initialised encoder uses the same one so the
    two ablation arms see identical inputs. The original Theano code used Caffe's BGR mean subtraction
    instead, which matches Caffe's VGG16 weights only.
    """

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.width = width
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.encoder = _conv_stack(VGG16_ENCODER, 3, width)
        self.decoder = _conv_stack(SALGAN_DECODER, scaled(512, width), width)
        self.output = nn.Conv2d(scaled(64, width), 1, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation, as torchvision initialises VGG: 26 plain ReLU convolutions under PyTorch's
        default init shrink the signal layer by layer until a random encoder cannot learn."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid saliency, (N, 1, H, W)."""
        if image.shape[-1] % 16 or image.shape[-2] % 16:
            raise ValueError(f"generator input sides must be multiples of 16, got {tuple(image.shape[-2:])}")
        features = self.encoder((image - self.mean) / self.std)
        return self.output(self.decoder(features))

    def forward(self, image: torch.Tensor, return_logits: bool = False) -> torch.Tensor:
        """The saliency map in (0, 1); the pre-sigmoid map with ``return_logits`` (training computes its
        losses from logits, in float32)."""
        logits = self.logits(image)
        return logits if return_logits else torch.sigmoid(logits)

    def freeze_blocks(self, count: int) -> None:
        """Freeze VGG blocks 1..count (the paper keeps conv1-conv3 fixed when starting from ImageNet)."""
        block = 1
        for module in self.encoder:
            if block > count:
                break
            module.requires_grad_(False)
            if isinstance(module, nn.MaxPool2d):
                block += 1


def infer_width(state_dict: dict[str, torch.Tensor]) -> float:
    """The width multiplier a generator state_dict was built with (conv1_1 has 64 * width filters)."""
    try:
        return state_dict["encoder.0.weight"].shape[0] / 64
    except KeyError:
        raise ValueError("not a SalGAN generator state_dict: no 'encoder.0.weight'") from None
