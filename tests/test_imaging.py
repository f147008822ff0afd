"""salgan/imaging.py: the one decoder (EXIF, pixel limit, modes), the one suffix list, and the maps written."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from salgan import imaging, prepare
from salgan.imaging import ImageError, decode_grey, decode_rgb, encoded, overlay, save_map, to_uint8


def turned_jpeg(path, orientation: int) -> np.ndarray:
    """A 40x20 (W x H) PNG-exact stripe image saved as JPEG with an EXIF orientation; returns its pixels."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (250, 10, 10)  # left half red, right half blue
    pixels[:, 20:] = (10, 10, 250)
    exif = Image.Exif()
    exif[imaging.EXIF_ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif)
    return pixels


def test_exif_orientation_is_applied_for_photos_and_ignored_for_the_stored_grid(tmp_path):
    turned_jpeg(tmp_path / "a.jpg", 6)  # 6: shown turned 90 degrees clockwise
    shown = decode_rgb(tmp_path / "a.jpg", (16, 32), 10_000, "predict.max_pixels", exif=True, keep_full=True)
    assert shown.original_size == (40, 20) and shown.full.shape == (40, 20, 3)
    # Turned clockwise, the stored left (red) half is on top and the right (blue) half below.
    assert shown.full[2, 10, 0] > 200 and shown.full[37, 10, 2] > 200
    stored = decode_rgb(tmp_path / "a.jpg", (32, 16), 10_000, "prepare.max_pixels")
    assert stored.original_size == (20, 40) and stored.full is None and stored.array.shape == (16, 32, 3)
    assert stored.array[8, 2, 0] > 200 and stored.array[8, 29, 2] > 200


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height and whose pixel data is one compressed row of zeros."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(bytes(1 + 3 * width))) + chunk(b"IEND", b"")


def test_the_pixel_limit_is_read_from_the_header_and_named_by_its_setting(tmp_path):
    declared = png_header_only(13000, 13000)
    with pytest.raises(ImageError, match=r"^declares 13000x13000 pixels, more than predict.max_pixels 1000000$") as err:
        decode_rgb(io.BytesIO(declared), (64, 48), 1_000_000, "predict.max_pixels")
    assert not err.value.damaged
    assert imaging.declared_pixels(declared) == 13000 * 13000
    assert imaging.declared_pixels(b"not an image") is None


def test_damaged_and_missing_sources_say_which(tmp_path):
    Image.new("RGB", (64, 48), (1, 2, 3)).save(tmp_path / "whole.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:200])
    with pytest.raises(ImageError) as cut:
        decode_rgb(tmp_path / "cut.jpg", (32, 16), 10_000, "prepare.max_pixels")
    assert cut.value.damaged and str(cut.value).startswith("OSError: ")
    with pytest.raises(ImageError, match="^no such file$") as missing:
        decode_rgb(tmp_path / "none.jpg", (32, 16), 10_000, "prepare.max_pixels")
    assert not missing.value.damaged


def test_sixteen_bit_and_transparent_sources_are_scaled_and_composited():
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 65535 // 2, dtype=np.uint16)).save(buffer, "PNG")
    small, full = decode_grey(io.BytesIO(buffer.getvalue()), (4, 4), 100, "prepare.max_pixels")
    assert set(np.unique(full)) == {127} and small.shape == (4, 4)  # 32767 * 255 / 65535 = 127.5 -> 127
    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buffer, "PNG")
    clear = decode_rgb(io.BytesIO(buffer.getvalue()), (8, 8), 100, "predict.max_pixels")
    assert (clear.array == 255).all()  # transparent pixels are white background, not black paint


def test_maps_are_written_as_rounded_8_bit_grey_and_overlays_blend_the_jet_colours():
    saliency = np.array([[0.0, 0.5], [1.0, 1.2]], dtype=np.float32)
    assert to_uint8(saliency).tolist() == [[0, 128], [255, 255]]
    with Image.open(io.BytesIO(encoded(save_map, saliency))) as img:
        assert img.format == "PNG" and img.mode == "L" and np.asarray(img).tolist() == [[0, 128], [255, 255]]
    assert imaging.jet(np.array([0.0, 0.5, 1.0])).tolist() == [[0, 0, 128], [128, 255, 128], [128, 0, 0]]
    # A constant map blends jet(0) = (0, 0, 128) at alpha 0.2: 100 * 0.8 + 128 * 0.2 = 105.6 -> 106.
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    assert overlay(image, np.full((2, 2), 0.3)).reshape(-1, 3).tolist() == [[80, 80, 106]] * 4


def test_one_suffix_list_serves_prepare_and_predict(tmp_path):
    folder = tmp_path / "images" / "test"
    folder.mkdir(parents=True)
    for suffix in (".webp", ".tiff", ".jpeg"):
        Image.new("RGB", (8, 8)).save(folder / f"a{suffix[1:]}{suffix}")
    (folder / "notes.txt").write_text("not an image")
    samples, _ = prepare.find_samples(tmp_path, "test")
    assert sorted(sample.image.name for sample in samples) == ["ajpeg.jpeg", "atiff.tiff", "awebp.webp"]
    assert prepare.IMAGE_SUFFIXES is imaging.IMAGE_SUFFIXES
