"""SalGAN generator: VGG16 encoder and its mirrored decoder (Pan et al. 2017, Fig. 2 and Table 1), or
another torchvision encoder with a skip decoder (``model.encoder``, salgan/models/encoders.py).

The VGG16 encoder is VGG16's conv1_1 ... conv5_3 with pool1-pool4 (pool5 and the fully connected layers are
dropped), laid out with the same indices as torchvision's ``vgg16().features`` so that an ImageNet
state_dict loads unchanged. The decoder mirrors it with nearest-neighbour upsampling (Lasagne's
Upscale2D in the original code, no transposed convolutions) and ends in a 1x1 convolution and a sigmoid.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from salgan.encoder_table import ENCODER_TABLE, ENCODERS
from salgan.models.encoders import MultiScaleEncoder, SkipDecoder

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

    def __init__(self, width: float = 1.0, encoder: str = "vgg16", decoder_init: str = "he"):
        super().__init__()
        if decoder_init not in ("he", "glorot"):
            raise ValueError(f"decoder_init: expected he or glorot, got {decoder_init!r}")
        self.width, self.encoder_name, self.decoder_init = width, encoder, decoder_init
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # Saved with the weights, so whatever reads a generator.pt rebuilds the same network from it alone.
        self.register_buffer("architecture", _encode({"encoder": encoder, "width": width}))
        if encoder not in ENCODER_TABLE:
            raise ValueError(f"unknown encoder {encoder!r}; known: {', '.join(ENCODERS)}")
        self.stride = ENCODER_TABLE[encoder].stride
        if encoder == "vgg16":
            self.encoder = _conv_stack(VGG16_ENCODER, 3, width)
            self.decoder = _conv_stack(SALGAN_DECODER, scaled(512, width), width)
            self.output = nn.Conv2d(scaled(64, width), 1, kernel_size=1)
        else:
            self.encoder = MultiScaleEncoder(encoder, width)
            self.decoder = SkipDecoder(self.encoder.channels, scaled(128, width))
            self.output = nn.Sequential(
                nn.Conv2d(self.decoder.out_channels, 1, kernel_size=1),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            )
        self._frozen: list[nn.Module] = []
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """VGG16: the encoder He-initialised, as torchvision initialises VGG (26 plain ReLU convolutions
        under PyTorch's default init shrink the signal layer by layer until a random encoder cannot learn;
        the original never has a random encoder: it loads VGG16's ImageNet weights). The mirrored decoder
        and the output convolution (``decoder_init``): ``he`` as the encoder, or ``glorot``, Lasagne's
        default that the original's decoder starts from: Glorot-uniform weights, bounds
        +-sqrt(6 / (fan_in + fan_out)), and zero biases.

        The other encoders keep their torchvision initialisation. Their skip decoder (whatever
        ``decoder_init``: the original has none) is He-initialised over its inputs (fan_in: a 1x1
        projection of ResNet-50's 2048 channels initialised over its 128 outputs would multiply the
        variance by 16) and its output convolution starts small, so that the first maps are near 0.5
        rather than saturated: a sigmoid at exactly 0 or 1 in float32 gives the KLD, CC and NSS terms no
        gradient (a random ResNet-50 started at logits of +-500 otherwise)."""
        if self.encoder_name == "vgg16":
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(module.bias)
            if self.decoder_init == "glorot":
                for module in (*self.decoder.modules(), self.output):
                    if isinstance(module, nn.Conv2d):
                        nn.init.xavier_uniform_(module.weight)
                        nn.init.zeros_(module.bias)
            return
        for module in self.decoder.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.output[0].weight, std=0.01)
        nn.init.zeros_(self.output[0].bias)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid saliency, (N, 1, H, W)."""
        if image.shape[-1] % self.stride or image.shape[-2] % self.stride:
            raise ValueError(
                f"generator input sides must be multiples of {self.stride} ({self.encoder_name}), "
                f"got {tuple(image.shape[-2:])}"
            )
        features = self.encoder((image - self.mean) / self.std)
        return self.output(self.decoder(features))

    def forward(self, image: torch.Tensor, return_logits: bool = False) -> torch.Tensor:
        """The saliency map in (0, 1); the pre-sigmoid map with ``return_logits`` (training computes its
        losses from logits, in float32)."""
        logits = self.logits(image)
        return logits if return_logits else torch.sigmoid(logits)

    def freeze_blocks(self, count: int) -> None:
        """Freeze the encoder's first ``count`` stages: VGG blocks (the paper keeps conv1-conv3 fixed when
        starting from ImageNet) or the five stages of the other encoders (encoders.py), whose batch-norm
        layers then keep their ImageNet statistics too (:meth:`train` leaves them in eval mode)."""
        if self.encoder_name == "vgg16":
            stages, block = [[] for _ in range(5)], 0
            for module in self.encoder:
                stages[block].append(module)
                block += isinstance(module, nn.MaxPool2d)
        else:
            stages = self.encoder.stages
        self._frozen = [module for stage in stages[:count] for module in stage]
        for module in self._frozen:
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Generator:
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self


def _encode(architecture: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(architecture, sort_keys=True).encode()), dtype=torch.uint8)
