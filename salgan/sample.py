"""A deterministic offline dataset in SALICON's exact layout and file formats (salgan/datasets/salicon.py).

The pipeline must run end to end on a machine with no access to the real release, so the ``download``
stage can generate this sample instead. It copies SALICON's layout and formats exactly
(docs/data-layout.md): 640x480 RGB JPEG images, 8-bit grey PNG maps, and ``.mat`` fixation files that
plain ``scipy.io.loadmat`` reads into ``image``, ``resolution`` = [480 640] and a ``gaze`` struct array
(one entry per observer; fields ``location``, ``timestamp``, ``fixations``; [x, y], 1-based).

The content is built to be learnable from the image alone: each image is a desaturated, noisy texture
with one to three saturated shapes, and the simulated observers look mostly at those shapes, with a
centre bias and some noise, so that an object-aware prediction beats a centre-bias Gaussian. Maps are
the fixation map blurred with a Gaussian of sigma 19 px and min-max normalised, as salicon-api does.

Everything follows from ``seed``: the same seed gives byte-identical files.
"""

from __future__ import annotations

import contextlib
import functools
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from salgan.datasets.salicon import KINDS, SUFFIXES, SaliconTree, image_name
from salgan.layout import LABELLED_SPLITS, SPLITS

WIDTH, HEIGHT = 640, 480
MAP_SIGMA = 19.0  # px, salicon-api's Gaussian for continuous maps
VIEWING_MS = 5000  # SALICON observers free-viewed each image for 5 s

# Where the shapes of the fixations come from: salient objects, the centre of the screen, anywhere.
P_OBJECT, P_CENTRE = 0.75, 0.17  # the rest is uniform noise
CENTRE_SD = (0.14 * WIDTH, 0.14 * HEIGHT)

# scipy.io.savemat stamps the creation time into the 116-byte text header; a fixed header keeps the
# files byte-identical across runs, so DVC sees an unchanged output when nothing changed.
_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: salgan.sample".ljust(116)


@dataclass(frozen=True)
class Shape:
    """A salient object: centre (x, y) in 0-based pixels, half sizes, kind and colour."""

    cx: float
    cy: float
    rx: float
    ry: float
    kind: str  # "disc" (an ellipse) or "rect"
    colour: tuple[int, int, int]


def generate_sample(root: str | Path, n_train: int, n_val: int, n_test: int, seed: int) -> dict[str, list[str]]:
    """Write a sample SALICON tree under ``root`` and return the base names per split.

    Creates ``images/{train,val,test}/*.jpg``, ``maps/{train,val}/*.png`` and
    ``fixations/{train,val}/*.mat``. Image ids are drawn from ``seed``; each split uses its own
    random stream, so changing ``n_test`` leaves the train images unchanged.
    """
    with _single_threaded_blas():
        return _generate(Path(root), {"train": n_train, "val": n_val, "test": n_test}, seed)


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    """One BLAS thread for the small matrix products here.

    OpenBLAS spreads even these over every core and busy-waits; on a small or shared machine that
    makes generation several times slower. threadpoolctl (installed with the MLflow stack) can cap
    it; without it the results are the same, only slower.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _generate(root: Path, counts: dict[str, int], seed: int) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for split_index, split in enumerate(SPLITS):
        count = counts[split]
        if count < 0:
            raise ValueError(f"generate_sample: n_{split} must be >= 0, got {count}")
        rng = np.random.default_rng([seed, split_index])
        ids = np.sort(rng.choice(np.arange(1, 600_000), size=count, replace=False))
        folders = {kind: SaliconTree(root).folder(kind, split) for kind in KINDS}
        for kind in SaliconTree.kinds(split):
            folders[kind].mkdir(parents=True, exist_ok=True)
        names[split] = []
        for image_id in ids:
            name = image_name(split, int(image_id))
            _write_one(rng, name, folders, with_ground_truth=split in LABELLED_SPLITS)
            names[split].append(name)
    return names


def _write_one(rng: np.random.Generator, name: str, folders: dict[str, Path], with_ground_truth: bool) -> None:
    """Draw one image (and its observers) and write its files."""
    shapes = random_shapes(rng)
    pixels = render_image(rng, shapes)
    Image.fromarray(pixels).save(folders["images"] / f"{name}{SUFFIXES['images']}", quality=90)
    # The test split still draws observers, so every split consumes its random stream the same way.
    gaze = simulate_observers(rng, shapes)
    if not with_ground_truth:
        return
    fixations = np.concatenate([observer["fixations"] for observer in gaze])
    saliency = saliency_map(fixations)
    # Fast zlib settings: the maps are smooth, and level 1 with run-length coding is small enough.
    map_file = folders["maps"] / f"{name}{SUFFIXES['maps']}"
    Image.fromarray(saliency).save(map_file, compress_level=1, compress_type=zlib.Z_RLE)
    (folders["fixations"] / f"{name}{SUFFIXES['fixations']}").write_bytes(mat_bytes(name, gaze))


# --- images -------------------------------------------------------------------------------------


def random_shapes(rng: np.random.Generator) -> list[Shape]:
    """One to three saturated shapes at random places, kept mostly apart so each stays visible."""
    shapes: list[Shape] = []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(20):
            radius = rng.uniform(28, 70)
            aspect = rng.uniform(0.6, 1.5)
            rx, ry = radius * aspect**0.5, radius / aspect**0.5
            cx = rng.uniform(rx + 8, WIDTH - rx - 8)
            cy = rng.uniform(ry + 8, HEIGHT - ry - 8)
            if all(np.hypot(cx - s.cx, cy - s.cy) > 0.9 * (max(rx, ry) + max(s.rx, s.ry)) for s in shapes):
                break
        kind = "disc" if rng.random() < 0.5 else "rect"
        shapes.append(Shape(cx, cy, rx, ry, kind, _saturated_colour(rng)))
    return shapes


def _saturated_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A fully saturated, bright colour: one channel high, one low, one anywhere (a random hue)."""
    high, low, mid = rng.permutation(3)
    colour = np.zeros(3)
    colour[high] = rng.uniform(220, 255)
    colour[low] = rng.uniform(0, 40)
    colour[mid] = rng.uniform(0, 255)
    return tuple(int(c) for c in colour)


def render_image(rng: np.random.Generator, shapes: list[Shape]) -> np.ndarray:
    """A (480, 640, 3) uint8 image: a greyish low-frequency texture with fine noise, then the shapes.

    The background is kept desaturated (weak colour, mid-grey luminance) and the shapes saturated
    with a dark outline, so that colour contrast alone tells them apart, as a small CNN can learn.
    """
    # A smooth random field as a sum of Gaussian bumps on a 6 x 8 grid: two small matrix products.
    coarse = rng.normal(0.0, 1.0, size=(6, 8, 4)).astype(np.float32)
    rows, cols = _bump_bases()
    field = (cols @ coarse.transpose(1, 0, 2).reshape(8, 24)).reshape(WIDTH, 6, 4)
    field = (rows @ field.transpose(1, 0, 2).reshape(6, WIDTH * 4)).reshape(HEIGHT, WIDTH, 4)
    grain = rng.integers(-14, 15, size=(HEIGHT, WIDTH), dtype=np.int8)
    grey = 120 + 30 * field[..., 0] + grain  # luminance blobs and grain
    image = 12 * field[..., 1:]  # a faint colour cast
    image += grey[..., None]
    for shape in shapes:
        _paint(image, shape)
    return np.clip(image, 0, 255, out=image).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _bump_bases() -> tuple[np.ndarray, np.ndarray]:
    """(480, 6) and (640, 8) Gaussian bumps, one per coarse grid row/column, overlapping smoothly."""

    def bases(length: int, count: int) -> np.ndarray:
        centres = (np.arange(count) + 0.5) * length / count
        spacing = length / count
        axis = np.arange(length)[:, None]
        return np.exp(-0.5 * ((axis - centres[None, :]) / (0.6 * spacing)) ** 2).astype(np.float32)

    return bases(HEIGHT, 6), bases(WIDTH, 8)


def _paint(image: np.ndarray, shape: Shape, outline: float = 3.0) -> None:
    """Paint a shape and a dark 3-px outline into ``image``, working only inside its bounding box."""
    x0, x1 = (
        int(max(0, shape.cx - shape.rx - outline - 1)),
        int(min(WIDTH, shape.cx + shape.rx + outline + 2)),
    )
    y0, y1 = (
        int(max(0, shape.cy - shape.ry - outline - 1)),
        int(min(HEIGHT, shape.cy + shape.ry + outline + 2)),
    )
    dx = np.abs(np.arange(x0, x1)[None, :] - shape.cx)
    dy = np.abs(np.arange(y0, y1)[:, None] - shape.cy)
    if shape.kind == "disc":
        inside = (dx / shape.rx) ** 2 + (dy / shape.ry) ** 2 <= 1.0
        around = (dx / (shape.rx + outline)) ** 2 + (dy / (shape.ry + outline)) ** 2 <= 1.0
    else:
        inside = (dx <= shape.rx) & (dy <= shape.ry)
        around = (dx <= shape.rx + outline) & (dy <= shape.ry + outline)
    box = image[y0:y1, x0:x1]
    box[around & ~inside] = 25.0
    box[inside] = shape.colour


# --- observers ----------------------------------------------------------------------------------


def simulate_observers(rng: np.random.Generator, shapes: list[Shape]) -> list[dict[str, np.ndarray]]:
    """10-15 observers; each a dict of int32 ``location`` (N, 2), ``timestamp`` (N, 1), ``fixations`` (K, 2).

    Coordinates are [x, y], 1-based and inside the image. Fixations land on a shape (chosen in
    proportion to its size) with probability P_OBJECT, near the centre with P_CENTRE, else anywhere;
    the raw samples dwell around each fixation and move in a few steps between them, as a mouse does.
    """
    areas = np.array([s.rx * s.ry for s in shapes])
    weights = areas / areas.sum()
    return [_one_observer(rng, shapes, weights) for _ in range(int(rng.integers(10, 16)))]


def _one_observer(rng: np.random.Generator, shapes: list[Shape], weights: np.ndarray) -> dict[str, np.ndarray]:
    """One observer: 6-12 fixations and the mouse trajectory through them (see simulate_observers)."""
    k = int(rng.integers(6, 13))
    source = rng.choice(3, size=k, p=[P_OBJECT, P_CENTRE, 1 - P_OBJECT - P_CENTRE])
    points = np.empty((k, 2))
    picks = rng.choice(len(shapes), size=k, p=weights)
    centres = np.array([[shapes[i].cx, shapes[i].cy] for i in picks])
    spreads = np.array([[shapes[i].rx, shapes[i].ry] for i in picks]) * 0.45
    points[:] = centres + rng.normal(size=(k, 2)) * spreads
    at_centre = source == 1
    points[at_centre] = np.array([WIDTH / 2, HEIGHT / 2]) + rng.normal(size=(at_centre.sum(), 2)) * CENTRE_SD
    anywhere = source == 2
    points[anywhere] = rng.uniform([0, 0], [WIDTH, HEIGHT], size=(anywhere.sum(), 2))
    fixations = _to_pixels(points)

    # Raw samples: a dwell of 6-20 jittered samples at each fixation, 3 samples along each move.
    dwell = rng.integers(6, 21, size=k)
    stay = np.repeat(points, dwell, axis=0) + rng.normal(0.0, 3.0, size=(dwell.sum(), 2))
    steps = np.array([0.25, 0.5, 0.75])[None, :, None]
    moves = points[:-1, None, :] + steps * (points[1:, None, :] - points[:-1, None, :])
    # Interleave: dwell 0, move 0->1, dwell 1, ...
    pieces = np.split(stay, np.cumsum(dwell)[:-1])
    trajectory = [pieces[0]]
    for i in range(1, k):
        trajectory += [moves[i - 1], pieces[i]]
    location = _to_pixels(np.concatenate(trajectory))
    step = VIEWING_MS / len(location)
    timestamp = np.round(np.arange(len(location)) * step + rng.uniform(0, step)).astype(np.int32)
    return {"location": location, "timestamp": timestamp[:, None], "fixations": fixations}


def _to_pixels(points: np.ndarray) -> np.ndarray:
    """Float 0-based [x, y] -> int32 1-based [x, y] inside 1..640 x 1..480."""
    xy = np.rint(points) + 1
    return np.clip(xy, [1, 1], [WIDTH, HEIGHT]).astype(np.int32)


# --- maps and .mat files ------------------------------------------------------------------------


def saliency_map(fixations: np.ndarray, sigma: float = MAP_SIGMA) -> np.ndarray:
    """uint8 (480, 640) map: the count map of 1-based [x, y] ``fixations`` blurred, min-max to 0-255.

    Equal (up to rounding) to ``scipy.ndimage.gaussian_filter(count_map, sigma)`` with its defaults
    (mode 'reflect', truncate 4), computed as a sum of separable Gaussians: a (480 x K) @ (K x 640)
    product instead of a 153-tap filter over every pixel, about ten times faster.
    """
    cols = fixations[:, 0].astype(np.int64) - 1
    rows = fixations[:, 1].astype(np.int64) - 1
    blurred = _gaussians(rows, HEIGHT, sigma).T @ _gaussians(cols, WIDTH, sigma)
    low, high = float(blurred.min()), float(blurred.max())
    if high <= low:
        return np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    return np.rint((blurred - low) * (255.0 / (high - low))).astype(np.uint8)


def _gaussians(positions: np.ndarray, length: int, sigma: float) -> np.ndarray:
    """(K, length) 1-D Gaussians centred at integer ``positions``, reflected at both edges as
    gaussian_filter's 'reflect' mode does (the sample at -1 mirrors 0), cut at 4 sigma."""
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    # Distances are integers, so a table lookup replaces the exponentials; its two end cells are 0.
    table = np.concatenate([[0.0], np.exp(-0.5 * (offsets / sigma) ** 2), [0.0]]).astype(np.float32)
    axis = np.arange(length)[None, :]
    result = np.zeros((len(positions), length), dtype=np.float32)
    for centre in (positions, -1 - positions, 2 * length - 1 - positions):
        index = np.clip(axis - centre[:, None] + radius + 1, 0, 2 * radius + 2)
        result += table[index]
    return result


def mat_bytes(name: str, gaze: list[dict[str, np.ndarray]]) -> bytes:
    """A SALICON fixation file: ``image``, ``resolution`` [480 640] and an (observers x 1) ``gaze`` struct."""
    fields = [("location", object), ("timestamp", object), ("fixations", object)]
    struct = np.empty((len(gaze), 1), dtype=fields)
    for i, observer in enumerate(gaze):
        struct[i, 0] = (observer["location"], observer["timestamp"], observer["fixations"])
    buffer = io.BytesIO()
    scipy.io.savemat(
        buffer,
        {"image": name, "resolution": np.array([HEIGHT, WIDTH], dtype=np.int32), "gaze": struct},
        do_compression=True,
    )
    data = bytearray(buffer.getvalue())
    data[:116] = _MAT_HEADER
    return bytes(data)
