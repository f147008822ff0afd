"""From a trained generator to saliency maps at the images' original size: the one batch loop under every
way salgan predicts.

:func:`predict_images` decodes, batches and predicts any stream of inputs, and isolates failures: an input
that cannot be decoded, or whose batch the generator fails on (the batch is then predicted again item by
item), fails alone. The predict stage and the 2015 submission's val maps (:func:`write_split_maps`),
evaluation and the promotion gate's scores (:class:`BatchedPredictions`), ``salgan predict`` on files, S3
batches (salgan/batch.py) and the served model (salgan/serving.py) all run through it.

Post-processing follows the original code (imatge-upc/salgan, scripts/utils.py): the sigmoid output is
resized to the original size with bicubic interpolation, blurred with a 5x5 Gaussian (sigma 1.1, OpenCV's
choice for that size when sigma is 0) and clipped to [0, 1].
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from salgan.cpus import usable_cpus
from salgan.data import images_to_float
from salgan.imaging import Decoded, save_map
from salgan.layout import read_split
from salgan.progress import progress

T = TypeVar("T")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def postprocess(maps: torch.Tensor, size: tuple[int, int], blur_size: int) -> torch.Tensor:
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
    batch_size: int,
    blur_size: int,
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


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What became of one input: its map in [0, 1] at its original size, or the error it alone raised."""

    item: T
    decoded: Decoded | None
    saliency: np.ndarray | None = None
    error: Exception | None = None


def predict_images(
    generator: torch.nn.Module,
    items: Iterable[T],
    decode: Callable[[T], Decoded],
    batch_size: int,
    blur_size: int,
    device: torch.device | None = None,
) -> Iterator[Outcome[T]]:
    """An :class:`Outcome` per item of ``items``, decoded with ``decode`` and predicted ``batch_size`` at a
    time (memory holds one batch, whatever the number of items).

    An item whose decoding raises is yielded at once with its error; the others when their batch is
    predicted, in their order. A batch the generator fails on is predicted again item by item, so that one
    item's failure never costs the others their maps.
    """
    device = device or default_device()
    generator = generator.to(device).eval()
    batch: list[tuple[T, Decoded]] = []
    for item in items:
        try:
            decoded = decode(item)
        except Exception as exc:  # noqa: BLE001 -- this item alone: unreadable, undecodable, too large
            yield Outcome(item, None, error=exc)
            continue
        batch.append((item, decoded))
        if len(batch) == batch_size:
            yield from _predicted(generator, batch, blur_size, device)
            batch = []
    if batch:
        yield from _predicted(generator, batch, blur_size, device)


def _predicted(generator, batch: list[tuple[T, Decoded]], blur_size: int, device) -> list[Outcome[T]]:
    def run(part: list[tuple[T, Decoded]]) -> list[np.ndarray]:
        images = np.stack([decoded.array for _, decoded in part])
        sizes = np.array([decoded.original_size for _, decoded in part], dtype=np.int64)
        return list(predict_batches(generator, images, sizes, len(part), blur_size, device))

    try:
        return [Outcome(item, decoded, saliency) for (item, decoded), saliency in zip(batch, run(batch), strict=True)]
    except Exception:  # noqa: BLE001 -- find which item it was: the others still get their maps
        outcomes = []
        for item, decoded in batch:
            try:
                outcomes.append(Outcome(item, decoded, run([(item, decoded)])[0]))
            except Exception as exc:  # noqa: BLE001
                outcomes.append(Outcome(item, decoded, error=exc))
        return outcomes


def failure_reason(exc: Exception) -> str:
    """An input's failure in one line: a ValueError's message names the problem itself (an undecodable or
    oversized image), anything else gets its type."""
    return str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"


def prepared_rows(images, original_sizes, batch_size: int) -> Iterator[tuple[int, Decoded]]:
    """(index, :class:`Decoded`) of prepared arrays (images at the input size, (rows, cols) each), read one
    batch slice at a time: ``images`` may be a memory map or :class:`salgan.layout.NpyRows` as large as the
    split."""
    for start in range(0, len(images), batch_size):
        rows = np.asarray(images[start : start + batch_size])
        for offset, row in enumerate(rows):
            size = original_sizes[start + offset]
            yield start + offset, Decoded(row, (int(size[0]), int(size[1])))


def _raise_failures(outcomes: Iterable[Outcome]) -> Iterator[Outcome]:
    """The outcomes, the first failure raised: a prepared split has no input that may fail alone."""
    for outcome in outcomes:
        if outcome.error is not None:
            raise outcome.error
        yield outcome


class BatchedPredictions(Sequence):
    """:func:`predict_images` as a sequence over prepared rows: ``predictions[i]`` predicts the batch holding
    image ``i`` when it is first asked for and keeps only that batch, so a pass in order costs one prediction
    per image and memory for one batch of maps at the original size, whatever the number of images."""

    def __init__(self, generator, images, original_sizes, batch_size: int, blur_size: int, device=None):
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
            rows = prepared_rows(self.images[start:stop], self.sizes[start:stop], self.batch_size)
            outcomes = predict_images(
                self.generator, (decoded for _, decoded in rows), lambda decoded: decoded, self.batch_size,
                self.blur_size, self.device,
            )  # fmt: skip
            self._maps = [outcome.saliency for outcome in _raise_failures(outcomes)]
            self._start = start
        return self._maps[index - start]


def write_split_maps(generator: torch.nn.Module, data: Path, split: str, folder: Path, options) -> list[str]:
    """One 8-bit PNG per image of a prepared split, ``folder/<name>.png`` at the image's original size,
    post-processed as the original code (the predict stage's test maps; the 2015 submission's val maps).
    ``options``: the ``predict`` settings (batch size, blur)."""
    arrays = read_split(data, split, stream=True)  # one batch in memory at a time
    names = arrays.names
    rows = prepared_rows(arrays.images, arrays.original_sizes, options.batch_size)
    outcomes = predict_images(generator, rows, lambda row: row[1], options.batch_size, options.blur_size)
    # PNG encoding (zlib, which releases the GIL) costs ~40x the model's time per map on a GPU, so it runs
    # in threads; a bounded window of pending maps keeps memory flat on a fast GPU.
    workers = min(8, usable_cpus())
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        for outcome in progress(_raise_failures(outcomes), total=len(names), unit="image", desc=f"predict {split}"):
            target = folder / f"{names[outcome.item[0]]}.png"
            target.parent.mkdir(parents=True, exist_ok=True)  # CAT2000's names hold their category: Action/001
            pending.append(pool.submit(save_map, outcome.saliency, target))
            if len(pending) > 4 * workers:
                pending.popleft().result()
        for future in pending:
            future.result()
    return names
