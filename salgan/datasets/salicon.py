"""SALICON's raw tree (Jiang et al., CVPR 2015; the LSUN 2017 edition), in one place: the download stage
writes it (from the release's zips, a mirror, an extracted copy or the offline sample), the prepare stage
reads it, and the promotion gate reads its val images::

    images/{train,val,test}/COCO_{split}2014_{id:012d}.jpg   the MS COCO images, 640x480
    maps/{train,val}/COCO_{split}2014_{id:012d}.png          8-bit grey saliency maps, the image's size
    fixations/{train,val}/COCO_{split}2014_{id:012d}.mat     observers' fixations (salgan/fixations.py)

The test split has images only (docs/data-layout.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from salgan.layout import LABELLED_SPLITS, SPLITS

KINDS = ("images", "maps", "fixations")
SUFFIXES = {"images": ".jpg", "maps": ".png", "fixations": ".mat"}
FILE_NAME = re.compile(r"COCO_(train|val|test)2014_\d{12}\.(jpg|png|mat)")  # group 1: the split


def image_name(split: str, image_id: int) -> str:
    """SALICON's base name for a COCO 2014 image: ``COCO_val2014_000000000042``."""
    return f"COCO_{split}2014_{image_id:012d}"


@dataclass(frozen=True)
class SaliconTree:
    """The raw tree under ``root``."""

    root: Path

    def folder(self, kind: str, split: str) -> Path:
        """``<root>/<kind>/<split>``: the files of one kind (:data:`KINDS`) of one split."""
        return Path(self.root) / kind / split

    @staticmethod
    def kinds(split: str) -> tuple[str, ...]:
        """The kinds of file a split has: all three for train and val, images for test."""
        return KINDS if split in LABELLED_SPLITS else KINDS[:1]

    def file(self, kind: str, split: str, name: str) -> Path:
        """The file of kind ``kind`` for the image ``name`` (a base name) of ``split``."""
        return self.folder(kind, split) / f"{name}{SUFFIXES[kind]}"

    def present_splits(self) -> list[str]:
        """The splits with an images folder, in train, val, test order."""
        return [split for split in SPLITS if self.folder("images", split).is_dir()]

    def is_tree(self) -> bool:
        """Whether ``root`` holds an extracted tree (an images folder) rather than, say, the release's zips."""
        return (Path(self.root) / "images").is_dir()
