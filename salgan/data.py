"""Prepared splits (docs/data-layout.md) loaded once into memory, batches taken by index.

The prepared arrays are small enough to hold whole (SALICON train at 256x192 is 1.5 GB of images), so
training never decodes a file after the prepare stage. Where they fit the device (``train.data_placement``,
``train.data_budget_gb``), they live there and the only per-step input work is an index and a uint8 ->
float conversion on the device; where they do not, they stay in pinned host memory and each batch is
gathered there and copied over on a side stream while the previous batch computes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from salgan.layout import LABELLED_SPLITS, NpyRows, read_split, split_files

GIB = 2**30


@dataclass
class PreparedSplit:
    images: torch.Tensor  # uint8 (N, H, W, 3), on ``device`` or in (pinned) host memory when streamed
    maps: torch.Tensor | None  # uint8 (N, H, W); None for the test split
    names: list[str]
    device: torch.device  # where batches are used
    fixations: torch.Tensor | None = None  # uint8 counts (N, H, W), loaded for an NSS content-loss term

    def __len__(self) -> int:
        return len(self.names)

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the prepared images."""
        return int(self.images.shape[2]), int(self.images.shape[1])

    @property
    def streamed(self) -> bool:
        return self.images.device != self.device

    @property
    def index_device(self) -> torch.device:
        """Where batch indices belong: with the arrays."""
        return self.images.device

    def take(self, indices: torch.Tensor) -> Batch:
        """Images (float NCHW), maps (float N1HW in [0, 1]) and fixation counts (float N1HW) of ``indices``
        on the device; maps and fixations are None where the split has none loaded."""
        return _to_float(self._copy(indices))

    def batches(self, index_batches: Iterable[torch.Tensor]) -> Iterator[Batch]:
        """:meth:`take` of each batch in turn; streamed to a GPU, the next batch's copy runs on a side
        stream while the caller computes on this one."""
        if not (self.streamed and self.device.type == "cuda"):
            for indices in index_batches:
                yield self.take(indices)
            return
        side = torch.cuda.Stream(self.device)
        pending = None
        for indices in index_batches:
            with torch.cuda.stream(side):
                loaded = self._copy(indices)
            if pending is not None:
                yield _ready(pending, side)
            pending = loaded
        if pending is not None:
            yield _ready(pending, side)

    def _copy(self, indices: torch.Tensor) -> Batch:
        indices = indices.to(self.index_device)
        rows = Batch(*(None if array is None else array[indices] for array in (self.images, self.maps, self.fixations)))
        if not self.streamed:
            return rows
        pinned = self.device.type == "cuda"  # a pinned source lets the copy run asynchronously

        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            if tensor is None:
                return None
            return (tensor.pin_memory() if pinned else tensor).to(self.device, non_blocking=pinned)

        return Batch(*map(move, rows))


class Batch(NamedTuple):
    images: torch.Tensor
    maps: torch.Tensor | None
    fixations: torch.Tensor | None


def _ready(batch: Batch, side: torch.cuda.Stream) -> Batch:
    """A batch copied on ``side``, made safe to use (and to free) on the current stream."""
    current = torch.cuda.current_stream(side.device)
    current.wait_stream(side)
    for tensor in batch:
        if tensor is not None:
            tensor.record_stream(current)
    return _to_float(batch)


def _to_float(batch: Batch) -> Batch:
    images, maps, fixations = batch
    return Batch(
        images_to_float(images),
        None if maps is None else maps_to_float(maps),
        None if fixations is None else fixations.unsqueeze(1).float(),
    )


def load_split(
    root: str | Path, split: str, device: torch.device | str = "cpu", stream: bool = False, fixations: bool = False
) -> PreparedSplit:
    """Read ``root/split`` (:func:`salgan.layout.read_split`) into tensors on ``device``, or, with ``stream``,
    into host memory (pinned when the device is a GPU) from which batches are copied; with ``fixations``,
    the fixation counts at the training size too (train and val)."""
    device = torch.device(device)
    labelled = split in LABELLED_SPLITS
    parts = ["maps", *(["fixation_maps"] if fixations else [])] if labelled else []
    arrays = read_split(root, split, *parts)
    target = torch.device("cpu") if stream else device
    pin = stream and device.type == "cuda"
    maps, counts = (None if a is None else _to_device(a, target, pin) for a in (arrays.maps, arrays.fixation_maps))
    return PreparedSplit(_to_device(arrays.images, target, pin), maps, arrays.names, device, counts)


def split_bytes(root: str | Path, *splits: str, fixations: bool = False) -> int:
    """Bytes the images and maps (and with ``fixations`` the fixation counts) of ``splits`` take in memory
    (their files' data, read from the headers)."""

    total = 0
    for split in splits:
        files = split_files(root, split)
        for path in (files.images, files.maps, *([files.fixation_maps] if fixations else [])):
            if path.is_file():
                rows = NpyRows(path)
                total += rows.row_bytes * len(rows)
    return total


def stream_from_host(data_bytes: int, device: torch.device, placement: str, budget_gb: float | None) -> bool:
    """``train.data_placement``: whether the splits stay in host memory. ``auto`` streams when they take
    more than ``budget_gb`` of the device (default: half the free memory torch reports); on a CPU the
    host is the device, so nothing streams."""
    if placement != "auto":
        return placement == "stream"
    if device.type != "cuda":
        return False
    budget = budget_gb * GIB if budget_gb else torch.cuda.mem_get_info(device)[0] / 2
    return data_bytes > budget


def _to_device(array: np.ndarray, device: torch.device, pin: bool = False) -> torch.Tensor:
    """The whole (memory-mapped) array read into memory once, then onto ``device`` (or pinned)."""
    tensor = torch.from_numpy(np.array(array))
    if pin:
        return tensor.pin_memory()
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1]; the NHWC storage makes it channels_last for free."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def maps_to_float(maps: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, H, W) in [0, 1]."""
    return maps.unsqueeze(1).float().div_(255.0)
