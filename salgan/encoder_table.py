"""The encoders a SalGAN generator can be built on, as plain facts: no torch, so that the settings schema,
the ablation and ``salgan predict``'s option parsing check against the same table the models are built from.

VGG16 is the paper's encoder (Pan et al. 2017, Sec. 3: conv1_1 ... conv5_3 with four 2x2 poolings, so a
stride of 16); the others are torchvision's classification networks cut into five stages, the last at
stride 32 (salgan/models/encoders.py). ``width`` is the channel multiplier of the builders that take one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder: its name (``model.encoder``), its total stride (an input side must be a multiple of it)
    and whether its builder takes a channel multiplier (``model.width`` other than 1.0)."""

    name: str
    stride: int
    has_width: bool


ENCODER_TABLE: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec("vgg16", stride=16, has_width=True),
        EncoderSpec("resnet18", stride=32, has_width=False),
        EncoderSpec("resnet50", stride=32, has_width=False),
        EncoderSpec("mobilenet_v3_large", stride=32, has_width=True),
    )
}
ENCODERS = tuple(ENCODER_TABLE)  # model.encoder's values, the paper's first
MULTISCALE_ENCODERS = tuple(name for name in ENCODERS if name != "vgg16")  # torchvision's, with a skip decoder
WIDTH_ENCODERS = tuple(name for name, spec in ENCODER_TABLE.items() if spec.has_width)
MIN_STRIDE = min(spec.stride for spec in ENCODER_TABLE.values())  # every input side is a multiple of it
MAX_WIDTH = 2.0  # model.width's upper bound: a crafted weights file may not ask for a larger network
STAGES = 5  # encoder stages, the unit of model.freeze_blocks (VGG16's five blocks)
PAPER_INPUT_SIZE = (256, 192)  # W x H, the input of the paper and its original code; a model's when it records none


def size_problem(encoder: str, size: tuple[int, int] | list[int]) -> str | None:
    """Why ``size`` = (W, H) cannot be ``encoder``'s input, or None: each side a positive multiple of its
    stride."""
    stride = ENCODER_TABLE[encoder].stride
    if any(side <= 0 or side % stride for side in size):
        return f"{encoder} needs sides that are multiples of {stride}, got {list(size)}"
    return None


def width_problem(encoder: str, width: float) -> str | None:
    """Why ``width`` cannot be ``encoder``'s channel multiplier, or None."""
    if not 0 < width <= MAX_WIDTH:
        return f"expected a width in (0, {MAX_WIDTH}], got {width}"
    if width != 1.0 and not ENCODER_TABLE[encoder].has_width:
        return f"{encoder} has no width multiplier; expected 1.0, got {width}"
    return None
