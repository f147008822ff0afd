"""What the discriminator does, measured after every adversarial epoch on a fixed held-out batch.

A GAN's losses alone do not say whether D learns: a D loss at log 2 = 0.693 is equally a balanced game,
a discriminator that sees nothing, and one whose units are all dead. The four numbers here tell them
apart, on the first ``train.diagnostics_images`` val images (never trained on), each image paired once
with its human map (real) and once with the generator's map (fake):

- ``d_accuracy``: the share of the 2N pairs D classes right (real: D > 0.5; fake: D < 0.5; a logit of
  exactly 0 counts half), 0.5 being chance;
- ``d_real``, ``d_fake``: the mean probability D gives the real and the fake pairs (a learning D pulls
  them apart; a collapsed one gives both the same);
- ``d_dead_units``: the share of D's ReLU channels (the 1x1 merge layer's 3 and the convolutions' 32 +
  4 x 64 at ``model.discriminator_width`` 1) that are zero at every position of every pair: such a
  channel passes no gradient, and a D whose merge layer is dead sees nothing at all.
"""

from __future__ import annotations

import torch
from torch import nn


def relu_channels_alive(discriminator: nn.Module, image: torch.Tensor, saliency: torch.Tensor):
    """D's logits for the pairs and, per ReLU layer of D, which channels are positive somewhere: a list
    of boolean (C,) tensors, one per ReLU in forward order."""
    alive: list[torch.Tensor] = []

    def record(_module, _inputs, output):
        alive.append((output > 0).flatten(2).any(dim=2).any(dim=0))

    hooks = [m.register_forward_hook(record) for m in discriminator.modules() if isinstance(m, nn.ReLU)]
    try:
        logits = discriminator(image, saliency)
    finally:
        for hook in hooks:
            hook.remove()
    return logits, alive


@torch.no_grad()
def discriminator_diagnostics(
    discriminator: nn.Module, images: torch.Tensor, real: torch.Tensor, fake: torch.Tensor
) -> dict[str, float]:
    """The four figures (module docstring) for ``images`` (N, 3, H, W) with their ``real`` and ``fake``
    maps (N, 1, H, W), in one forward pass of the 2N pairs. Float32 throughout."""
    logits, alive = relu_channels_alive(
        discriminator, torch.cat([images, images]).float(), torch.cat([real, fake]).float()
    )
    real_logits, fake_logits = logits.float().chunk(2)
    right = torch.cat([_above(real_logits), _above(-fake_logits)])
    channels = torch.cat(alive) if alive else torch.ones(1, dtype=torch.bool)
    return {
        "d_accuracy": right.mean().item(),
        "d_real": torch.sigmoid(real_logits).mean().item(),
        "d_fake": torch.sigmoid(fake_logits).mean().item(),
        "d_dead_units": 1.0 - channels.float().mean().item(),
    }


def _above(logits: torch.Tensor) -> torch.Tensor:
    """1 where a logit is positive, 0.5 where it is exactly 0, else 0."""
    return (logits > 0).float() + 0.5 * (logits == 0).float()


@torch.no_grad()
def gan_diagnostics(generator: nn.Module, discriminator: nn.Module, images: torch.Tensor, maps: torch.Tensor):
    """The generator's maps for ``images`` (in eval mode, as validation), then
    :func:`discriminator_diagnostics`. The modules' training modes are restored afterwards."""
    was_training = generator.training
    generator.eval()
    try:
        fake = generator(images).float()
    finally:
        generator.train(was_training)
    return discriminator_diagnostics(discriminator, images, maps, fake)
