"""Training checkpoints: one dict, saved atomically; and the one ``torch.load`` of salgan, weights only
(every weights file, checkpoint and logged model is read through :func:`load`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from salgan.layout import atomic_file


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: a kill never leaves half a file."""
    with atomic_file(path) as handle:
        torch.save(obj, handle)


def load(path: str | Path) -> dict:
    """What a weights file holds; only tensors and plain Python data are accepted (no pickled code)."""
    return torch.load(path, map_location="cpu", weights_only=True)
