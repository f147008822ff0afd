"""`dvc exp run -S download.dataset=...` end to end on MIT1003, CAT2000 and a fixations CSV, each from a tree
written by the test in that exact layout, in one temporary copy of the repository (tests/test_pipeline.py's
approach): split counts, maps at each image's size, scores at the original resolution equal to an
independent computation, the MIT/Tuebingen archive, and a dataset without a test split."""

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from salgan import benchmark
from salgan.inference import predict_batches
from salgan.layout import read_split
from salgan.models import load_generator
from tests import dataset_trees as trees
from tests.test_pipeline import TINY, project_checkout, run

FORMATS_TINY = TINY | {"evaluate": {"n_splits": 5, "grid_images": 2}}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The repository in a temporary git repo, tiny settings, and the three raw trees beside it."""
    workdir = tmp_path_factory.mktemp("datasets-project")
    env = project_checkout(workdir, FORMATS_TINY)
    sources = tmp_path_factory.mktemp("sources")
    scenes = {
        "mit1003": trees.write_mit1003(sources / "mit1003", 16),
        "mit300": trees.write_test_images(sources / "mit300", 4),
        "cat2000": trees.write_cat2000(sources / "cat2000", per_category=5, test_per_category=2),
        "csv": trees.write_fixations_csv(sources / "csv", 14),
    }
    return workdir, env, sources, scenes


def exp_run(project, **overrides) -> str:
    workdir, env, _, _ = project
    quoted = {key.replace("__", "."): f"'{v}'" if isinstance(v, str | Path) else v for key, v in overrides.items()}
    args = [item for key, value in quoted.items() for item in ("-S", f"{key}={value}")]
    return run(["dvc", "exp", "run", *args], workdir, env)


def report(workdir: Path) -> dict:
    return json.loads((workdir / "data" / "prepared" / "report.json").read_text())


def per_image(workdir: Path) -> dict[str, dict]:
    with open(workdir / "reports" / "per_image.csv") as handle:
        return {row["name"]: row for row in csv.DictReader(handle)}


def independent_scores(workdir: Path, name: str, gt_map: np.ndarray, fixated: np.ndarray) -> dict[str, float]:
    """NSS and CC of the trained model on one val image at its original resolution, computed here from the raw
    files (``gt_map``; ``fixated``: how often each pixel was fixated) with plain numpy: the prediction is the
    generator's map post-processed to the image's size, as the predict stage makes it."""
    val = read_split(workdir / "data" / "prepared", "val")
    index = val.names.index(name)
    generator = load_generator(workdir / "models" / "generator.pt").generator
    with torch.no_grad():
        [prediction] = predict_batches(
            generator, val.images[index : index + 1], val.original_sizes[index : index + 1], 1, 5, torch.device("cpu")
        )
    assert prediction.shape == gt_map.shape == fixated.shape
    p = prediction.astype(np.float64)
    counts = fixated.astype(np.float64)
    nss = float((((p - p.mean()) / p.std()) * counts).sum() / counts.sum())
    cc = float(np.corrcoef(p.ravel(), gt_map.astype(np.float64).ravel())[0, 1])
    return {"nss": nss, "cc": cc}


def check_scores(workdir: Path, expected: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    rows = per_image(workdir)
    for name, (gt_map, fixated) in expected.items():
        mine = independent_scores(workdir, name, gt_map, fixated)
        assert float(rows[name]["nss"]) == pytest.approx(mine["nss"], abs=1e-4), name
        assert float(rows[name]["cc"]) == pytest.approx(mine["cc"], abs=1e-4), name
        assert int(rows[name]["n_fixations"]) == int(fixated.sum())


def check_archive(workdir: Path, sizes: dict[str, tuple[int, int]]) -> None:
    """The archive holds <name>.png per test image at the image's (W, H), and the benchmark's reader takes it."""
    archive = workdir / "outputs" / "submission" / benchmark.ARCHIVE
    with zipfile.ZipFile(archive) as opened:
        assert sorted(opened.namelist()) == sorted(f"{name}.png" for name in sizes)
        for name, size in sizes.items():
            with opened.open(f"{name}.png") as handle, Image.open(handle) as img:
                assert (img.size, img.mode, img.format) == (size, "L", "PNG"), name
    assert benchmark.read_archive(archive, sizes) == sizes


@pytest.mark.slow
def test_mit1003_with_mit300_style_test_images_through_every_stage(project):
    workdir, _, sources, scenes = project
    log = exp_run(
        project,
        download__dataset="mit1003",
        download__source=sources / "mit1003",
        download__test_source=sources / "mit300",
        download__val_fraction=0.25,
        package__format="mit-tuebingen",
    )
    for stage in ("download", "prepare", "train", "evaluate", "predict", "package"):
        assert f"Running stage '{stage}'" in log
    counts = {split: c["images"] for split, c in report(workdir)["splits"].items()}
    assert counts == {"train": 12, "val": 4, "test": 4}
    # each test map at its image's own size (four sizes, landscape and portrait)
    test_sizes = {name: (scene.size[1], scene.size[0]) for name, scene in scenes["mit300"].items()}
    for name, size in test_sizes.items():
        assert Image.open(workdir / "outputs" / "test_maps" / f"{name}.png").size == size
    check_archive(workdir, test_sizes)
    config = json.loads((workdir / "outputs" / "submission" / "config.yaml").read_text())
    assert config == {
        "model": {"name": "salgan", "filename": "saliency_maps.zip", "probabilistic": False},
        "dataset": "MIT300",
    }
    # scores at the original resolution, from the raw fixMap and the thresholded fixPts
    folder = sources / "mit1003" / "ALLFIXATIONMAPS"
    val = read_split(workdir / "data" / "prepared", "val").names
    expected = {}
    for name in val[:3]:
        gt = np.asarray(Image.open(folder / f"{name}_fixMap.jpg").convert("L"))
        expected[name] = (gt, np.asarray(Image.open(folder / f"{name}_fixPts.jpg").convert("L")) > 127)
    assert len({gt.shape for gt, _ in expected.values()}) > 1  # images of different sizes among them
    check_scores(workdir, expected)
    metrics = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert metrics["datasets"] == {"trained_on": "mit1003", "scored_on": "mit1003"} and metrics["n_images"] == 4


@pytest.mark.slow
def test_cat2000_categories_with_repeating_names_through_every_stage(project):
    workdir, env, sources, scenes = project
    exp_run(
        project,
        download__dataset="cat2000",
        download__source=sources / "cat2000",
        download__test_source="none",
        download__val_fraction=0.2,
        package__format="mit-tuebingen",
    )
    counts = {split: c["images"] for split, c in report(workdir)["splits"].items()}
    assert counts == {"train": 12, "val": 3, "test": 6}
    test_sizes = {f"{c}/{n:03d}": (192, 108) for c in ("Action", "Art", "Indoor") for n in (1, 2)}
    for name in test_sizes:  # the category folders, as in testSet/Stimuli
        assert Image.open(workdir / "outputs" / "test_maps" / f"{name}.png").size == (192, 108)
    check_archive(workdir, test_sizes)
    assert json.loads((workdir / "outputs" / "submission" / "config.yaml").read_text())["dataset"] == "CAT2000"
    train = sources / "cat2000" / "trainSet"
    from scipy.io import loadmat

    expected = {}
    for name in read_split(workdir / "data" / "prepared", "val").names:
        gt = np.asarray(Image.open(train / "FIXATIONMAPS" / f"{name}.jpg").convert("L"))
        expected[name] = (gt, loadmat(train / "FIXATIONLOCS" / f"{name}.mat")["fixLocs"] != 0)
    check_scores(workdir, expected)
    # the registered version says which dataset it was trained and scored on
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    version = client.get_model_version_by_alias("salgan", "challenger")
    assert (version.tags["trained_on"], version.tags["scored_on"]) == ("cat2000", "cat2000")


@pytest.mark.slow
def test_own_fixations_csv_without_test_images_says_there_is_nothing_to_predict(project):
    workdir, _, sources, scenes = project
    log = exp_run(
        project,
        download__dataset="fixations_csv",
        download__source=sources / "csv",
        download__test_source="none",
        download__val_fraction=0.25,
        package__format="mit-tuebingen",
    )
    counts = {split: c["images"] for split, c in report(workdir)["splits"].items()}
    assert counts == {"train": 10, "val": 4}  # 14 images: train and val by the CSV, 3 of the other 12 drawn
    assert "has no test split, so there is nothing to predict or package" in log
    assert not list((workdir / "outputs" / "test_maps").iterdir())
    manifest = json.loads((workdir / "outputs" / "submission" / "manifest.json").read_text())
    assert manifest["archive"] is None and "no test split" in manifest["note"]
    # the ground truth made from the fixations (19 px at 640x480, scaled), scored at each image's size
    from scipy.ndimage import gaussian_filter

    expected = {}
    for name in read_split(workdir / "data" / "prepared", "val").names[:3]:
        scene = scenes["csv"][name]
        rows, cols = scene.size
        counts_map = np.zeros(scene.size)
        np.add.at(counts_map, tuple(scene.pixels().T), 1.0)
        blurred = gaussian_filter(counts_map, 19.0 * np.hypot(rows, cols) / 800.0)
        gt = np.rint((blurred - blurred.min()) * 255 / (blurred.max() - blurred.min()))
        fixated = np.zeros(scene.size, int)
        np.add.at(fixated, tuple(scene.pixels().T), 1)  # a pixel fixated twice counts twice, as a count map
        expected[name] = (gt, fixated)
    check_scores(workdir, expected)
