"""From a trained generator to saliency maps at the images' original size.

Post-processing follows the original code (scripts/utils.py): the sigmoid output is resized to the
original size with bicubic interpolation, blurred with a 5x5 Gaussian (sigma 1.1, OpenCV's choice for
that size when sigma is 0) and clipped to [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from salgan.data import images_to_float


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def postprocess(maps: torch.Tensor, size: tuple[int, int], blur_size: int = 5) -> torch.Tensor:
    """(N, 1, h, w) maps in [0, 1] -> (N, H, W) at ``size`` = (H, W): bicubic, Gaussian blur, clip.

    The blur's reflect padding needs a kernel half narrower than the map, so a map smaller than the kernel
    (a 2x2 image) gets the largest odd kernel that fits (none at 1x1), with that size's sigma."""
    out = F.interpolate(maps.float(), size=size, mode="bicubic", align_corners=False)
    blur_size = fitting_blur(blur_size, size)
    if blur_size > 1:
        sigma = 0.3 * ((blur_size - 1) * 0.5 - 1) + 0.8
        out = gaussian_blur(out, blur_size, sigma)
    return out.clamp_(0, 1)[:, 0]


def fitting_blur(blur_size: int, size: tuple[int, int]) -> int:
    """``blur_size``, shrunk to the largest odd size whose half-width (the padding) is below both sides."""
    return min(blur_size, 2 * min(size) - 1)


def gaussian_blur(maps: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """``torchvision.transforms.functional.gaussian_blur`` of float (N, C, H, W) maps with a square kernel:
    the same normalised sampled Gaussian and reflect padding, so the same values. Written out so that the
    stages need not import torchvision, whose start-up costs about 3 s (it imports torch._dynamo)."""
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size, dtype=maps.dtype, device=maps.device)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    line = pdf / pdf.sum()
    kernel = torch.mm(line[:, None], line[None, :]).expand(maps.shape[-3], 1, size, size)
    return F.conv2d(F.pad(maps, [size // 2] * 4, mode="reflect"), kernel, groups=maps.shape[-3])


@torch.no_grad()
def predict_batches(
    generator: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    original_sizes: np.ndarray,
    batch_size: int = 16,
    blur_size: int = 5,
    device: torch.device | None = None,
) -> Iterator[np.ndarray]:
    """Yield one float32 map in [0, 1] per image, at its original (H, W), batch by batch.

    ``images``: uint8 (N, h, w, 3) at the model's input size (the prepared arrays).
    """
    device = device or default_device()
    generator = generator.to(device).eval()
    for start in range(0, len(images), batch_size):
        # One batch read at a time: ``images`` may be a memory map or NpyRows as large as the split.
        batch = torch.as_tensor(np.asarray(images[start : start + batch_size])).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            maps = generator(images_to_float(batch))
        sizes = original_sizes[start : start + batch_size]
        if (sizes == sizes[0]).all():  # one resize for the batch, the common case
            yield from postprocess(maps, tuple(int(s) for s in sizes[0]), blur_size).cpu().numpy()
        else:
            for one, size in zip(maps, sizes, strict=True):
                yield postprocess(one[None], (int(size[0]), int(size[1])), blur_size)[0].cpu().numpy()


class BatchedPredictions(Sequence):
    """:func:`predict_batches` as a sequence: ``predictions[i]`` predicts the batch holding image ``i``
    when it is first asked for and keeps only that batch, so a pass in order costs one prediction per
    image and memory for one batch of maps at the original size, whatever the number of images."""

    def __init__(self, generator, images, original_sizes, batch_size: int = 16, blur_size: int = 5, device=None):
        self.generator, self.images, self.sizes = generator, images, original_sizes
        self.batch_size, self.blur_size, self.device = batch_size, blur_size, device
        self._start, self._maps = -1, []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(f"prediction {index} out of range ({len(self)} images)")
        index %= len(self)
        start = index - index % self.batch_size
        if start != self._start:
            stop = start + self.batch_size
            self._maps = list(
                predict_batches(
                    self.generator, self.images[start:stop], self.sizes[start:stop], self.batch_size,
                    self.blur_size, self.device,
                )
            )  # fmt: skip
            self._start = start
        return self._maps[index - start]
