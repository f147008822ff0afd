"""Images in and maps out: decoding, the pixel limit, colour modes, and how maps are written.

Every image salgan reads goes through :func:`decode_rgb` (maps: :func:`decode_grey`): the prepare stage,
``salgan predict``, S3 batches, the served model and the promotion gate. The image file names it looks for
are :data:`IMAGE_SUFFIXES`, and every resize to the model's input uses :data:`RESAMPLE`, so an image reaches
the generator looking as the training data did. A source declaring more pixels than its limit is refused
from its header, before it is decoded (a few KB of PNG can declare gigabytes).

Maps leave as 8-bit grey PNGs (:func:`save_map`) and, for people, as a jet heat map over the image
(:func:`save_overlay`, the seed paper's Fig. 1); :func:`encoded` gives either as bytes (S3 objects, HTTP).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Pillow's BILINEAR widens its support when shrinking (antialiased); the prepare stage and every prediction
# resize with it, so inputs look like the training data.
RESAMPLE = Image.Resampling.BILINEAR
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
EXIF_ORIENTATION = 0x0112  # values 5-8 turn the image by 90 degrees: rows and columns swap
OVERLAY_QUALITY = 90  # JPEG quality of the heat maps


class ImageError(ValueError):
    """A source is not a usable image; the message says why (the caller names the source).

    ``damaged``: it could not be decoded (as opposed to missing, or refused by the pixel limit)."""

    def __init__(self, reason: str, damaged: bool = False):
        super().__init__(reason)
        self.damaged = damaged


@dataclass(frozen=True)
class Decoded:
    """An image ready for the generator: uint8 (H, W, 3) at its input size, the (rows, cols) its map is
    resized back to, and with ``keep_full`` the whole RGB image (for an overlay)."""

    array: np.ndarray
    original_size: tuple[int, int]
    full: np.ndarray | None = None


# --- colour modes ------------------------------------------------------------------------------------


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: grey, CMYK, palette, 16-bit and transparent images included.

    Transparent pixels are composited over white: their stored colour is undefined (often black) and a
    viewer shows them as background, not as dark paint.
    """
    if img.mode == "RGB":
        return img
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "F":
        return _to_8bit_grey(img).convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def to_grey(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit grey ('L'); 16-bit values are scaled, not clipped."""
    if img.mode == "L":
        return img
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "F":
        return _to_8bit_grey(img)
    return img.convert("L")


def _to_8bit_grey(img: Image.Image) -> Image.Image:
    """16-bit (or 32-bit int / float) grey -> 'L'.

    Pillow's own conversion clips such values at 255, which turns a 16-bit image white. 16-bit modes are
    scaled by 255/65535; mode 'I' is treated as 16-bit when it exceeds 255 (PNG and TIFF readers use it
    for 16-bit data); float images are taken as already on the 0-255 scale.
    """
    values = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and values.size and values.max() > 255):
        values = values * (255.0 / 65535.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


# --- decoding ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def opened(source, max_pixels: int, limit: str) -> Iterator[Image.Image]:
    """``Image.open(source)`` (a path or a binary file object) whose header declares at most ``max_pixels``
    pixels; anything wrong, inside the block too, raises :class:`ImageError`. ``limit`` names the setting in
    the refusal (``prepare.max_pixels``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, by name
            with Image.open(source) as img:
                if img.width * img.height > max_pixels:
                    raise ImageError(f"declares {img.width}x{img.height} pixels, more than {limit} {max_pixels}")
                yield img
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("no such file") from None
    # Pillow reports damage as OSError, SyntaxError, ValueError, EOFError, zlib/struct errors and the
    # decompression-bomb error; whatever the type, the source is unusable.
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"{type(exc).__name__}: {exc}", damaged=True) from None


def decode_rgb(
    source,
    size: Sequence[int],
    max_pixels: int,
    limit: str,
    exif: bool = False,
    draft: bool = False,
    keep_full: bool = False,
) -> Decoded:
    """``source`` decoded, converted to RGB (:func:`to_rgb`) and resized to ``size`` = (W, H) with
    :data:`RESAMPLE`.

    ``exif``: turned as its EXIF orientation says, as a viewer shows it (a user's photo); without it the
    stored pixel grid is kept (SALICON's maps and fixations refer to it). ``draft``: a JPEG is decoded at
    the smallest DCT scale still at least ``size`` (libjpeg scales by 1/2, 1/4 or 1/8: a 640x480 image
    destined for 256x192 is decoded at 320x240); a no-op for other formats. ``original_size`` is the image's
    (rows, cols) as shown. Raises :class:`ImageError`.
    """
    width, height = int(size[0]), int(size[1])
    with opened(source, max_pixels, limit) as img:
        rows, cols = img.height, img.width
        if exif:
            turned = ImageOps.exif_transpose(img) or img  # loads the pixels: a truncated file fails here
            rows, cols = turned.height, turned.width
            rgb = to_rgb(turned)
        else:
            if draft:
                img.draft("RGB", (width, height))
            rgb = to_rgb(img)
        rgb.load()
        resized = rgb.resize((width, height), RESAMPLE) if rgb.size != (width, height) else rgb
        array = np.asarray(resized, dtype=np.uint8)
        full = np.asarray(rgb, dtype=np.uint8) if keep_full else None
    return Decoded(array, (rows, cols), full)


def decode_grey(source, size: Sequence[int], max_pixels: int, limit: str) -> tuple[np.ndarray, np.ndarray]:
    """A saliency map as 8-bit grey (:func:`to_grey`): ``(uint8 (H, W) at size = (W, H), uint8 as stored)``.
    Raises :class:`ImageError`."""
    width, height = int(size[0]), int(size[1])
    with opened(source, max_pixels, limit) as img:
        grey = to_grey(img)
        full = np.asarray(grey, dtype=np.uint8)
        resized = grey.resize((width, height), RESAMPLE) if grey.size != (width, height) else grey
        return np.asarray(resized, dtype=np.uint8), full


def resize_grey(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """A uint8 (rows, cols) map resized to ``size`` = (W, H) as :func:`decode_grey` resizes a map file (a
    map made from fixations reaches the training size as a decoded one does)."""
    width, height = int(size[0]), int(size[1])
    grey = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L")
    return np.asarray(grey.resize((width, height), RESAMPLE) if grey.size != (width, height) else grey, dtype=np.uint8)


def declared_size(source, max_pixels: int, limit: str) -> tuple[int, int] | None:
    """(rows, cols) that ``source``'s header declares, or None when it does not read or declares more than
    ``max_pixels`` (nothing decoded; the caller reports the image when it decodes it)."""
    with contextlib.suppress(ImageError), opened(source, max_pixels, limit) as img:
        return img.height, img.width
    return None


def declared_pixels(data: bytes) -> int | None:
    """Width x height that encoded image bytes declare in their header (nothing decoded), or None when the
    header does not read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.width * img.height
    except Exception:  # noqa: BLE001 -- unreadable: the caller names it when it decodes
        return None


# --- maps out ------------------------------------------------------------------------------------------


def to_uint8(saliency: np.ndarray) -> np.ndarray:
    """[0, 1] float map -> 8-bit grey, as saved in PNGs."""
    return np.clip(np.rint(saliency * 255.0), 0, 255).astype(np.uint8)


def jet(saliency: np.ndarray) -> np.ndarray:
    """[0, 1] map -> uint8 RGB with a jet-like colour map (blue - cyan - yellow - red)."""
    s = np.clip(saliency, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # where red, green and blue peak
    rgb = np.clip(1.5 - np.abs(4.0 * (s - centres)), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """The heat map blended over the image, more opaque where saliency is high (seed paper Fig. 1).

    The map is stretched to [0, 1] first, as saliency figures are shown: only the ranking of locations
    matters, and a model's raw output may span a narrow range."""
    low, high = float(saliency.min()), float(saliency.max())
    stretched = (saliency - low) / (high - low) if high - low > 1e-6 else np.zeros_like(saliency)
    alpha = (0.2 + 0.5 * stretched)[..., None]
    blended = image.astype(np.float32) * (1.0 - alpha) + jet(stretched).astype(np.float32) * alpha
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def save_map(saliency: np.ndarray, target) -> None:
    """The map as an 8-bit grey PNG into ``target`` (a path or a binary file object)."""
    Image.fromarray(to_uint8(saliency), mode="L").save(target, "PNG")


def save_overlay(image: np.ndarray, saliency: np.ndarray, target) -> None:
    """:func:`overlay` as a JPEG into ``target``."""
    Image.fromarray(overlay(image, saliency), mode="RGB").save(target, "JPEG", quality=OVERLAY_QUALITY)


def encoded(save: Callable, *arrays) -> bytes:
    """What :func:`save_map` or :func:`save_overlay` writes for ``arrays``, as bytes."""
    buffer = io.BytesIO()
    save(*arrays, buffer)
    return buffer.getvalue()
