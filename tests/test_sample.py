"""The offline sample has SALICON's exact layout and formats, is deterministic, and is learnable."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.ndimage
from PIL import Image

from salgan.sample import generate_sample
from tests.conftest import write_release_zips

WIDTH, HEIGHT = 640, 480


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path_factory.mktemp("sample")
    return root, generate_sample(root, n_train=6, n_val=24, n_test=3, seed=7)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _fixations(mat: dict) -> np.ndarray:
    """Every observer's fixations, (K, 2) 1-based [x, y]."""
    return np.concatenate([observer["fixations"] for observer in mat["gaze"][:, 0]])


def test_layout_and_names(sample):
    root, names = sample
    assert {split: len(n) for split, n in names.items()} == {"train": 6, "val": 24, "test": 3}
    for split, split_names in names.items():
        assert split_names == sorted(split_names)
        assert all(re.fullmatch(rf"COCO_{split}2014_\d{{12}}", n) for n in split_names)
        assert sorted(p.stem for p in (root / "images" / split).glob("*.jpg")) == split_names
    for split in ("train", "val"):
        assert sorted(p.stem for p in (root / "maps" / split).glob("*.png")) == names[split]
        assert sorted(p.stem for p in (root / "fixations" / split).glob("*.mat")) == names[split]
    assert not (root / "maps" / "test").exists() and not (root / "fixations" / "test").exists()


def test_fixation_files_parse_with_plain_loadmat(sample):
    root, names = sample
    for split in ("train", "val"):
        for name in names[split]:
            mat = scipy.io.loadmat(root / "fixations" / split / f"{name}.mat")
            assert str(mat["image"][0]) == name
            assert mat["resolution"].tolist() == [[480, 640]]
            gaze = mat["gaze"]
            assert gaze.dtype.names == ("location", "timestamp", "fixations")
            assert gaze.shape[1] == 1 and 10 <= gaze.shape[0] <= 15
            for observer in gaze[:, 0]:
                location, timestamp, fixations = (
                    observer["location"],
                    observer["timestamp"],
                    observer["fixations"],
                )
                assert location.ndim == 2 and location.shape[1] == 2 and len(location) > len(fixations)
                assert timestamp.shape == (len(location), 1)
                assert np.all(np.diff(timestamp[:, 0]) > 0) and timestamp.max() <= 5000
                assert fixations.ndim == 2 and fixations.shape[1] == 2 and len(fixations) >= 1
                for xy in (location, fixations):
                    assert np.issubdtype(xy.dtype, np.integer)  # loaders index with them directly
                    assert xy[:, 0].min() >= 1 and xy[:, 0].max() <= WIDTH
                    assert xy[:, 1].min() >= 1 and xy[:, 1].max() <= HEIGHT


def test_images_are_640x480_rgb_jpegs(sample):
    root, names = sample
    for split, split_names in names.items():
        for name in split_names:
            with Image.open(root / "images" / split / f"{name}.jpg") as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (WIDTH, HEIGHT))


def test_maps_are_8bit_grey_pngs_blurred_from_the_fixations(sample):
    root, names = sample
    for name in names["val"][:5]:
        with Image.open(root / "maps" / "val" / f"{name}.png") as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (WIDTH, HEIGHT))
            saliency = np.asarray(image).astype(np.float64)
        assert saliency.min() == 0 and saliency.max() == 255
        # salicon-api: Gaussian blur (sigma 19 px) of the fixation map, min-max normalised.
        fixations = _fixations(scipy.io.loadmat(root / "fixations" / "val" / f"{name}.mat"))
        counts = np.zeros((HEIGHT, WIDTH))
        np.add.at(counts, (fixations[:, 1] - 1, fixations[:, 0] - 1), 1)
        expected = scipy.ndimage.gaussian_filter(counts, 19)
        expected = (expected - expected.min()) / (expected.max() - expected.min()) * 255
        assert np.abs(saliency - expected).max() <= 1.0


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    first = generate_sample(tmp_path / "a", 3, 2, 1, seed=11)
    second = generate_sample(tmp_path / "b", 3, 2, 1, seed=11)
    other = generate_sample(tmp_path / "c", 3, 2, 1, seed=12)
    assert first == second
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert other != first


def test_object_aware_prediction_beats_centre_bias(sample):
    """The maps follow what is in the image: a prediction from the image alone (its saturated
    shapes) scores far above a centre-bias Gaussian in NSS and CC on the val split."""
    root, names = sample
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    centre = np.exp(-0.5 * (((xs - WIDTH / 2) / (0.2 * WIDTH)) ** 2 + ((ys - HEIGHT / 2) / (0.2 * HEIGHT)) ** 2))
    scores = {"object": {"nss": [], "cc": []}, "centre": {"nss": [], "cc": []}}
    for name in names["val"]:
        pixels = np.asarray(Image.open(root / "images" / "val" / f"{name}.jpg")).astype(np.float64)
        saturation = pixels.max(axis=-1) - pixels.min(axis=-1)
        objects = scipy.ndimage.gaussian_filter((saturation > 100).astype(np.float64), 10) + 0.1 * centre
        truth = np.asarray(Image.open(root / "maps" / "val" / f"{name}.png")).astype(np.float64)
        fixations = _fixations(scipy.io.loadmat(root / "fixations" / "val" / f"{name}.mat"))
        for label, prediction in (("object", objects), ("centre", centre)):
            z = (prediction - prediction.mean()) / prediction.std()
            scores[label]["nss"].append(z[fixations[:, 1] - 1, fixations[:, 0] - 1].mean())
            scores[label]["cc"].append(np.corrcoef(prediction.ravel(), truth.ravel())[0, 1])
    mean = {label: {m: float(np.mean(v)) for m, v in s.items()} for label, s in scores.items()}
    assert mean["object"]["nss"] > mean["centre"]["nss"] + 1.0, mean
    assert mean["object"]["cc"] > mean["centre"]["cc"] + 0.3, mean
    assert mean["centre"]["nss"] > 0  # the centre bias is there too, as in real data


def test_release_zips_have_salicons_inner_layout(sample, tmp_path):
    root, names = sample
    zips = write_release_zips(root, tmp_path)
    with zipfile.ZipFile(zips["images"]) as archive:
        assert f"images/test/{names['test'][0]}.jpg" in archive.namelist()
    with zipfile.ZipFile(zips["fixations"]) as archive:
        assert f"val/{names['val'][0]}.mat" in archive.namelist()
    with zipfile.ZipFile(zips["maps"]) as archive:
        assert f"train/{names['train'][0]}.png" in archive.namelist()
    assert zips["fixations"].name == "fixations_2017.zip"
