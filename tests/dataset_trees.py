"""Raw trees in the exact layouts of MIT1003, CAT2000 and a fixations CSV, written by the tests.

The scenes are the offline sample's (salgan/sample.py: saturated shapes on a grey texture, simulated
observers who look at them), so a model can learn them; everything else is written here, file by file, in
each release's own format (docs/datasets.md): JPEG stimuli and maps, MIT1003's fixation points as a
JPEG-compressed binary image, CAT2000's as a .mat matrix, categories whose image numbers repeat, images
of mixed sizes and orientations.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from scipy.ndimage import gaussian_filter

from salgan import sample

# (W, H): landscape, portrait (a rotated scene) and a wide one
MIXED_SIZES = ((160, 120), (96, 128), (176, 96), (128, 96))


@dataclass
class Scene:
    """One image and its observers' fixations, 0-based [x, y] in its own pixels (floats)."""

    image: np.ndarray
    fixations: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """(rows, cols)."""
        return self.image.shape[0], self.image.shape[1]

    def pixels(self) -> np.ndarray:
        """The fixated pixels as 0-based (row, col) int, as the readers must find them."""
        xy = np.rint(self.fixations).astype(int)
        rows, cols = self.size
        return np.stack([np.clip(xy[:, 1], 0, rows - 1), np.clip(xy[:, 0], 0, cols - 1)], axis=1)


def scene(rng: np.random.Generator, width: int, height: int) -> Scene:
    """The sample's 640x480 scene, rotated to portrait when ``height > width``, resized to ``width`` x
    ``height``; its fixations moved with it (pixel centres aligned)."""
    shapes = sample.random_shapes(rng)
    with sample._single_threaded_blas():  # BLAS threads busy-wait on these small products: 2.4x slower
        pixels = sample.render_image(rng, shapes)
    gaze = sample.simulate_observers(rng, shapes)
    xy = np.concatenate([observer["fixations"] for observer in gaze]).astype(np.float64) - 1.0  # 0-based
    if height > width:  # np.rot90: pixel (r, c) of a 480x640 image goes to (639 - c, r)
        pixels = np.rot90(pixels).copy()
        xy = np.stack([xy[:, 1], sample.WIDTH - 1 - xy[:, 0]], axis=1)
    rows, cols = pixels.shape[:2]
    image = np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR))
    scaled = (xy + 0.5) * np.array([width / cols, height / rows]) - 0.5
    return Scene(image, np.clip(scaled, 0, [width - 1, height - 1]))


def square_scene(rng: np.random.Generator, width: int, height: int) -> Scene:
    """A quickly learnt scene (tests/conftest.py's ``write_prepared``): dark noise with one bright square,
    away from the centre half of the time, which 12-20 fixations land in."""
    image = rng.integers(0, 90, size=(height, width, 3), dtype=np.uint8)
    side = max(4, min(width, height) // 4)
    x0, y0 = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
    image[y0 : y0 + side, x0 : x0 + side] = (240, 200, 40)
    count = int(rng.integers(12, 21))
    xy = rng.uniform([x0, y0], [x0 + side - 1, y0 + side - 1], size=(count, 2))
    return Scene(image, xy)


def continuous_map(scene: Scene, sigma: float = 4.0) -> np.ndarray:
    """A ground-truth map as the releases publish them: fixations blurred, scaled to 0-255."""
    counts = np.zeros(scene.size)
    rows, cols = scene.pixels().T
    np.add.at(counts, (rows, cols), 1.0)
    blurred = gaussian_filter(counts, sigma)
    return np.rint(255 * blurred / blurred.max()).astype(np.uint8)


def points_image(scene: Scene) -> np.ndarray:
    """MIT1003's fixPts: 255 at every fixated pixel, 0 elsewhere."""
    points = np.zeros(scene.size, dtype=np.uint8)
    rows, cols = scene.pixels().T
    points[rows, cols] = 255
    return points


def save_jpeg(array: np.ndarray, path: Path, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, "JPEG", quality=quality)


def write_mit1003(root: Path, count: int, seed: int = 0, sizes=MIXED_SIZES, make=scene) -> dict[str, Scene]:
    """``ALLSTIMULI/<name>.jpeg`` and ``ALLFIXATIONMAPS/<name>_fixMap.jpg`` / ``<name>_fixPts.jpg`` (the
    points JPEG-compressed at quality 75, as Judd's are JPEGs); ``make`` draws the scenes."""
    rng = np.random.default_rng(seed)
    scenes = {}
    for i in range(count):
        name = f"i{1000 + i}_{['street', 'indoor', 'face', 'sky'][i % 4]}"
        width, height = sizes[i % len(sizes)]
        made = scenes[name] = make(rng, width, height)
        save_jpeg(made.image, root / "ALLSTIMULI" / f"{name}.jpeg")
        save_jpeg(continuous_map(made), root / "ALLFIXATIONMAPS" / f"{name}_fixMap.jpg")
        save_jpeg(points_image(made), root / "ALLFIXATIONMAPS" / f"{name}_fixPts.jpg", quality=75)
    return scenes


def write_test_images(root: Path, count: int, seed: int = 1, prefix: str = "i", sizes=MIXED_SIZES) -> dict[str, Scene]:
    """A folder of test images, MIT300 style: ``<root>/BenchmarkIMAGES/i1.jpg`` ..."""
    rng = np.random.default_rng(seed)
    scenes = {}
    for i in range(count):
        width, height = sizes[(i + 1) % len(sizes)]
        made = scenes[f"{prefix}{i + 1}"] = scene(rng, width, height)
        save_jpeg(made.image, root / "BenchmarkIMAGES" / f"{prefix}{i + 1}.jpg")
    return scenes


def fixlocs_mat(matrix: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"fixLocs": matrix}, do_compression=True)
    return buffer.getvalue()


def write_cat2000(
    root: Path, categories=("Action", "Art", "Indoor"), per_category: int = 5, test_per_category: int = 2, seed: int = 0
) -> dict[str, Scene]:
    """``trainSet/{Stimuli,FIXATIONMAPS,FIXATIONLOCS}/<Category>/<n>.{jpg,jpg,mat}`` and
    ``testSet/Stimuli/<Category>/<n>.jpg``; image numbers repeat in every category (001, 002, ...), and each
    category folder holds an ``Output`` folder of example outputs, as the release does."""
    rng = np.random.default_rng(seed)
    scenes = {}
    for category in categories:
        for n in range(1, per_category + 1):
            name = f"{category}/{n:03d}"
            made = scenes[name] = scene(rng, 192, 108)
            save_jpeg(made.image, root / "trainSet" / "Stimuli" / f"{name}.jpg")
            save_jpeg(continuous_map(made), root / "trainSet" / "FIXATIONMAPS" / f"{name}.jpg")
            fixated = (points_image(made) > 0).astype(np.float64)  # a double matrix, as MATLAB saves it
            target = root / "trainSet" / "FIXATIONLOCS" / f"{name}.mat"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(fixlocs_mat(fixated))
        save_jpeg(np.zeros((108, 192, 3), np.uint8), root / "trainSet" / "Stimuli" / category / "Output" / "001.jpg")
        for n in range(1, test_per_category + 1):
            made = scenes[f"test:{category}/{n:03d}"] = scene(rng, 192, 108)
            save_jpeg(made.image, root / "testSet" / "Stimuli" / category / f"{n:03d}.jpg")
    return scenes


def write_fixations_csv(root: Path, count: int, seed: int = 0, sizes=MIXED_SIZES, test: int = 0) -> dict[str, Scene]:
    """Images in two folders (JPEG and PNG) and ``fixations.csv`` with ``image,x,y,subject,split``: a few
    images carry an explicit split, the others none; ``test`` images have rows with empty x and y."""
    rng = np.random.default_rng(seed)
    scenes = {}
    rows = []
    for i in range(count + test):
        folder = ("street", "lab")[i % 2]
        suffix = ".jpg" if i % 3 else ".png"
        width, height = sizes[i % len(sizes)]
        name = f"{folder}/{i:04d}"
        made = scenes[name] = scene(rng, width, height)
        path = root / f"{name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(made.image).save(path)
        if i >= count:
            rows.append([f"{name}{suffix}", "", "", "", "test"])
            continue
        split = "val" if i == 1 else ("train" if i == 0 else "")
        for k, (x, y) in enumerate(made.fixations):
            rows.append([f"{name}{suffix}", f"{x:.2f}", f"{y:.2f}", f"s{k % 7}", split])
    with open(root / "fixations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "x", "y", "subject", "split"])
        writer.writerows(rows)
    return scenes
