"""Prepared splits (docs/data-layout.md) loaded once into memory, batches sliced on the device.

The prepared arrays are small enough to hold whole (SALICON train at 256x192 is 1.5 GB of images), so
training never decodes a file after the prepare stage and the only per-step input work is an index and
a uint8 -> float conversion on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from salgan.layout import LABELLED_SPLITS, read_split


@dataclass
class PreparedSplit:
    images: torch.Tensor  # uint8 (N, H, W, 3)
    maps: torch.Tensor | None  # uint8 (N, H, W); None for the test split
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the prepared images."""
        return int(self.images.shape[2]), int(self.images.shape[1])


def load_split(root: str | Path, split: str, device: torch.device | str = "cpu") -> PreparedSplit:
    """Read ``root/split`` (:func:`salgan.layout.read_split`) into tensors on ``device`` (pinned host memory
    when the device is a GPU)."""
    arrays = read_split(root, split, *(["maps"] if split in LABELLED_SPLITS else []))
    maps = None if arrays.maps is None else _to_device(arrays.maps, device)
    return PreparedSplit(_to_device(arrays.images, device), maps, arrays.names)


def _to_device(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """The whole (memory-mapped) array read into memory once, then onto ``device``."""
    tensor = torch.from_numpy(np.array(array))
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1]; the NHWC storage makes it channels_last for free."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def maps_to_float(maps: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, H, W) in [0, 1]."""
    return maps.unsqueeze(1).float().div_(255.0)
