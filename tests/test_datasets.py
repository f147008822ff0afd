"""The readers of salgan/datasets/ through the download and prepare stages: MIT1003, CAT2000 and a fixations
CSV, each from a tree the test writes in that exact layout (tests/dataset_trees.py), and each inconsistency
named by its file."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from salgan import download, prepare
from salgan.datasets import DatasetError, assign_splits, minimal_names, split_records
from salgan.download import LayoutError
from salgan.errors import ConfigError
from salgan.layout import FlatMaps, read_split
from salgan.prepare import PrepareError
from salgan.settings import params_from_dict
from tests import dataset_trees as trees
from tests.test_s3 import s3  # noqa: F401 -- the fixture: moto's S3 server, for one test


def settings(tmp_path: Path, dataset: str, source, **sections):
    """Settings for one dataset read from ``source`` into ``tmp_path``; ``sections`` override."""
    values = {
        "download": {"dataset": dataset, "source": str(source), "output": str(tmp_path / "raw")}
        | {"cache_dir": str(tmp_path / "cache"), "val_fraction": 0.25},
        "prepare": {"input": str(tmp_path / "raw"), "output": str(tmp_path / "prepared"), "size": [64, 48]}
        | {"workers": 1},
    }
    for section, items in sections.items():
        values.setdefault(section, {}).update(items)
    return params_from_dict(values)


def download_and_prepare(params):
    download.run(params.download, progress=False)
    return prepare.prepare(params.prepare, progress=False, download=params.download)


def gt_pixels(root: Path, split: str, index: int) -> np.ndarray:
    """Image ``index``'s fixations as prepared: (row, col) at its original size."""
    arrays = read_split(root, split, "fixations")
    return arrays.coords[arrays.offsets[index] : arrays.offsets[index + 1]]


# --- MIT1003 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mit1003(tmp_path_factory):
    """A 12-image MIT1003 tree of four sizes (landscape, portrait, wide) and 3 MIT300-style test images."""
    root = tmp_path_factory.mktemp("mit1003")
    scenes = trees.write_mit1003(root / "src", 12)
    tests = trees.write_test_images(root / "mit300", 3)
    return root, scenes, tests


def test_mit1003_splits_sizes_maps_and_fixations(mit1003, tmp_path):
    source, scenes, tests = mit1003
    params = settings(tmp_path, "mit1003", source / "src", download={"test_source": str(source / "mit300")})
    report = download_and_prepare(params)
    prepared = Path(params.prepare.output)
    # 12 labelled images, val_fraction 0.25 -> 3 val (seeded), 9 train; the 3 test images from test_source
    assert {split: counts["images"] for split, counts in report["splits"].items()} == {"train": 9, "val": 3, "test": 3}
    assert report["dataset"] == "mit1003"
    val = read_split(prepared, "val", "maps_full", "fixations")
    assert isinstance(val.maps_full, FlatMaps)  # mixed sizes: one flat array, rows by original_sizes
    for index, name in enumerate(val.names):
        scene = scenes[name]
        assert tuple(val.original_sizes[index]) == scene.size
        # the map at the image's own size, as the release's fixMap decodes
        expected = np.asarray(Image.open(source / "src" / "ALLFIXATIONMAPS" / f"{name}_fixMap.jpg").convert("L"))
        np.testing.assert_array_equal(val.maps_full[index], expected)
        # the points of the JPEG-compressed fixPts are exactly the fixated pixels written
        found = {tuple(p) for p in gt_pixels(prepared, "val", index)}
        assert found == {tuple(p) for p in scene.pixels()}
    test = read_split(prepared, "test")
    assert test.names == ["i1", "i2", "i3"]  # MIT300's names: the minimal unique path, no BenchmarkIMAGES/
    assert [tuple(s) for s in test.original_sizes] == [tests[n].size for n in test.names]
    # the same seed gives the same split; another seed another one
    again = settings(tmp_path / "again", "mit1003", source / "src")
    download_and_prepare(again)
    assert read_split(again.prepare.output, "val").names == val.names
    other = settings(tmp_path / "other", "mit1003", source / "src", download={"split_seed": 5})
    download_and_prepare(other)
    assert read_split(other.prepare.output, "val").names != val.names


def test_mit1003_from_its_release_zips_in_a_folder_and_without_a_test_split(mit1003, tmp_path):
    source, _, _ = mit1003
    zips = tmp_path / "zips"
    zips.mkdir()
    for folder in ("ALLSTIMULI", "ALLFIXATIONMAPS"):
        with zipfile.ZipFile(zips / f"{folder}.zip", "w") as archive:
            for path in sorted((source / "src" / folder).iterdir()):
                archive.write(path, f"{folder}/{path.name}")
            archive.writestr("__MACOSX/._junk", b"x")
    # the folder's ALLSTIMULI.zip is not the published one: its md5 is checked and refused
    params = settings(tmp_path, "mit1003", zips)
    with pytest.raises(download.ChecksumError, match=r"ALLSTIMULI\.zip: md5 .* of MIT1003's ALLSTIMULI\.zip"):
        download.run(params.download, progress=False)
    (zips / "ALLSTIMULI.zip").rename(zips / "stimuli.zip")
    with pytest.raises(download.DownloadError, match=r"no ALLSTIMULI\.zip \(one of MIT1003's archives\)"):
        download.run(params.download, progress=False)
    # one zip holding both folders, given as the source itself
    both = tmp_path / "mit1003.zip"
    with zipfile.ZipFile(both, "w") as archive:
        for path in sorted((source / "src").rglob("*")):
            if path.is_file():
                archive.write(path, "MIT1003/" + path.relative_to(source / "src").as_posix())
    report = download_and_prepare(settings(tmp_path, "mit1003", both))
    assert set(report["splits"]) == {"train", "val"}  # no test split without download.test_source
    record = json.loads((tmp_path / "raw" / "SOURCE.json").read_text())
    assert record["dataset"] == "mit1003" and record["counts"] == {"labelled": 12, "test": 0}


def test_mit1003_inconsistencies_are_named(mit1003, tmp_path):
    source, _, _ = mit1003
    tree = tmp_path / "tree"
    for path in (source / "src").rglob("*"):
        if path.is_file():
            (tree / path.relative_to(source / "src")).parent.mkdir(parents=True, exist_ok=True)
            (tree / path.relative_to(source / "src")).write_bytes(path.read_bytes())
    maps = tree / "ALLFIXATIONMAPS"
    names = sorted(p.stem for p in (tree / "ALLSTIMULI").iterdir())
    # a stimulus without its map: download refuses the tree, naming the missing file, and keeps data/raw
    (maps / f"{names[0]}_fixMap.jpg").rename(tmp_path / "aside.jpg")
    params = settings(tmp_path, "mit1003", tree, prepare={"skip_bad": False})
    message = f"ALLSTIMULI/{names[0]}.jpeg: no continuous map ALLFIXATIONMAPS/{names[0]}_fixMap.jpg"
    with pytest.raises(LayoutError, match=re.escape(message)):
        download.run(params.download, progress=False)
    assert not Path(params.download.output).exists()
    (tmp_path / "aside.jpg").rename(maps / f"{names[0]}_fixMap.jpg")
    # an empty fixation-points image, a points image and a map of the wrong size: prepare names each
    points, wrong_map = maps / f"{names[1]}_fixPts.jpg", maps / f"{names[2]}_fixMap.jpg"
    size = Image.open(points).size
    trees.save_jpeg(np.zeros((size[1], size[0]), np.uint8), points)
    download.run(params.download, progress=False)
    with pytest.raises(PrepareError, match=re.escape("_fixPts.jpg: no fixations (no pixel above 127)")):
        prepare.prepare(params.prepare, progress=False, download=params.download)
    trees.save_jpeg(
        np.zeros((size[1] + 2, size[0]), np.uint8), Path(params.download.output) / "ALLFIXATIONMAPS" / points.name
    )
    with pytest.raises(PrepareError, match=rf"{names[1]}_fixPts\.jpg: is {size[0]}x{size[1] + 2} but its image is"):
        prepare.prepare(params.prepare, progress=False, download=params.download)
    raw_map = Path(params.download.output) / "ALLFIXATIONMAPS" / wrong_map.name
    trees.save_jpeg(np.zeros((10, 12), np.uint8), raw_map)
    skipping = settings(tmp_path, "mit1003", tree, prepare={"skip_bad": True})
    report = prepare.prepare(skipping.prepare, progress=False, download=skipping.download)
    reasons = {entry["file"]: entry["reason"] for entry in report["skipped"]}
    width, height = Image.open(tree / "ALLSTIMULI" / f"{names[2]}.jpeg").size
    assert reasons == {
        str(Path(params.download.output) / "ALLFIXATIONMAPS" / points.name): (
            f"is {size[0]}x{size[1] + 2} but its image is {size[0]}x{size[1]}"
        ),
        str(raw_map): f"is 12x10 but its image is {width}x{height}",
    }
    assert sum(c["images"] for c in report["splits"].values()) == 10  # 12 less the two bad ones
    # an image over prepare.max_pixels is refused from its header, by name
    small = settings(tmp_path, "mit1003", tree, prepare={"max_pixels": 100})
    with pytest.raises(PrepareError, match=r"\.jpeg: declares \d+x\d+ pixels, more than prepare.max_pixels 100"):
        prepare.prepare(small.prepare, progress=False, download=small.download)


# --- CAT2000 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cat2000(tmp_path_factory):
    root = tmp_path_factory.mktemp("cat2000")
    return root, trees.write_cat2000(root / "src")


def test_cat2000_categories_test_split_and_fixation_matrices(cat2000, tmp_path):
    source, scenes = cat2000
    params = settings(tmp_path, "cat2000", source / "src", download={"val_fraction": 0.2})
    report = download_and_prepare(params)
    # 15 labelled images (3 categories x 5), 20% -> 3 val, one per category; 6 test images from testSet
    counts = {split: c["images"] for split, c in report["splits"].items()}
    assert counts == {"train": 12, "val": 3, "test": 6}
    val = read_split(params.prepare.output, "val", "maps_full", "fixations")
    assert sorted(name.split("/")[0] for name in val.names) == ["Action", "Art", "Indoor"]
    assert val.maps_full.shape[1:] == (108, 192)  # one size: the (N, H0, W0) array, as SALICON's
    for index, name in enumerate(val.names):
        assert {tuple(p) for p in gt_pixels(Path(params.prepare.output), "val", index)} == {
            tuple(p) for p in scenes[name].pixels()
        }
    test = read_split(params.prepare.output, "test")
    assert test.names == [f"{c}/{n:03d}" for c in ("Action", "Art", "Indoor") for n in (1, 2)]
    assert not any("Output" in name for name in read_split(params.prepare.output, "train").names)


def test_cat2000_inconsistencies_are_named(cat2000, tmp_path):
    source, _ = cat2000
    params = settings(tmp_path, "cat2000", source / "src")
    download.run(params.download, progress=False)
    raw = Path(params.download.output) / "trainSet"
    matrix = raw / "FIXATIONLOCS" / "Art" / "002.mat"
    matrix.write_bytes(trees.fixlocs_mat(np.zeros((108, 190))))
    with pytest.raises(PrepareError, match=re.escape(f"{matrix}: is 190x108 but its image is 192x108")):
        prepare.prepare(params.prepare, progress=False, download=params.download)
    matrix.write_bytes(trees.fixlocs_mat(np.zeros((108, 192))))
    with pytest.raises(PrepareError, match=re.escape(f"{matrix}: no fixations (every entry of fixLocs is 0)")):
        prepare.prepare(params.prepare, progress=False, download=params.download)
    matrix.write_bytes(trees.fixlocs_mat(np.ones((108, 192))))
    few = settings(tmp_path, "cat2000", source / "src", prepare={"max_fixations": 500})  # the others hold ~100
    with pytest.raises(PrepareError, match=r"Art/002\.mat: 20736 fixated pixels, over prepare.max_fixations 500"):
        prepare.prepare(few.prepare, progress=False, download=few.download)
    matrix.unlink()
    with pytest.raises(PrepareError, match=re.escape(f"no fixation locations {matrix}")):
        prepare.prepare(params.prepare, progress=False, download=params.download)


# --- fixations CSV ------------------------------------------------------------------------------------


def test_fixations_csv_splits_maps_made_from_fixations_and_no_test_split(tmp_path):
    scenes = trees.write_fixations_csv(tmp_path / "src", 10)
    params = settings(tmp_path, "fixations_csv", tmp_path / "src", download={"val_fraction": 0.3})
    report = download_and_prepare(params)
    prepared = Path(params.prepare.output)
    # street/0000 is train and lab/0001 val by the CSV; 3 of the 10 in val (30%): lab/0001 and 2 drawn
    val = read_split(prepared, "val", "maps_full", "fixations")
    train = read_split(prepared, "train")
    assert "lab/0001" in val.names and "street/0000" in train.names
    assert (len(train), len(val)) == (7, 3) and "test" not in report["splits"]
    for index, name in enumerate(val.names):
        scene = scenes[name]
        rows, cols = scene.size
        assert val.maps_full[index].shape == (rows, cols)
        # the map: the fixations' count map blurred by 19 px at 640x480 scaled with the diagonal, min-max
        counts = np.zeros(scene.size)
        np.add.at(counts, tuple(scene.pixels().T), 1.0)
        from scipy.ndimage import gaussian_filter

        blurred = gaussian_filter(counts, 19.0 * np.hypot(rows, cols) / 800.0)
        expected = np.rint((blurred - blurred.min()) * 255 / (blurred.max() - blurred.min()))
        assert np.abs(val.maps_full[index].astype(float) - expected).max() <= 1
        assert sorted(map(tuple, gt_pixels(prepared, "val", index))) == sorted(map(tuple, scene.pixels()))


def test_fixations_csv_rows_that_cannot_be_used_name_the_line(tmp_path):
    trees.write_fixations_csv(tmp_path / "src", 4)
    table = tmp_path / "src" / "fixations.csv"
    good = table.read_text()
    params = settings(tmp_path, "fixations_csv", tmp_path / "src")
    cases = [
        ("street/9999.jpg,1,2,s1,\n", r"fixations.csv line \d+: image 'street/9999.jpg': no such image"),
        ("street/0000.png,left,2,s1,train\n", r"line \d+: x 'left', y '2': expected two numbers"),
        ("street/0000.png,1,2,s1,holdout\n", r"line \d+: split 'holdout' is not one of train, val, test"),
        ("../secret.jpg,1,2,s1,\n", r"line \d+: image '../secret.jpg' must be a path relative to the folder"),
        ("street/0000.png,1,2,s1,val\n", r"line \d+: street/0000.png is given split val here, train before"),
    ]
    for row, message in cases:
        table.write_text(good + row)
        with pytest.raises(LayoutError) as failure:
            download.run(params.download, progress=False)
        assert re.search(message, str(failure.value)), str(failure.value)
        assert not Path(params.download.output).exists()  # nothing replaced
    table.write_text("img,x,y\na.jpg,1,2\n")
    with pytest.raises(LayoutError, match=r"fixations.csv: the header lacks column\(s\) image \(got img, x, y\)"):
        download.run(params.download, progress=False)
    # a test image needs no fixations; a training image without one is named
    Image.new("RGB", (32, 24)).save(tmp_path / "src" / "lonely.png")
    table.write_text(good + "lonely.png,,,s1,test\n")
    download.run(params.download, progress=False)
    table.write_text(good + "lonely.png,,,s1,\n")
    with pytest.raises(LayoutError, match=r"fixations.csv line \d+: x '', y '': expected two numbers"):
        download.run(params.download, progress=False)
    # more fixations for one image than prepare.max_fixations
    table.write_text(good)
    few = settings(tmp_path, "fixations_csv", tmp_path / "src", prepare={"max_fixations": 5})
    download.run(few.download, progress=False)
    with pytest.raises(
        PrepareError, match=r"fixations.csv: over prepare.max_fixations 5 fixations for street/0000.png"
    ):
        prepare.prepare(few.prepare, progress=False, download=few.download)


# --- the interface -------------------------------------------------------------------------------------


def test_the_val_split_is_seeded_per_group_with_the_largest_remainder():
    names = [f"{c}/{n:03d}" for c in ("A", "B", "C") for n in range(10)] + ["Z/000", "Z/001"]
    splits = assign_splits(names, 0.2, seed=3)
    val = sorted(n for n, s in splits.items() if s == "val")
    assert len(val) == round(0.2 * 32) == 6
    assert {n.split("/")[0] for n in val} >= {"A", "B", "C"}  # every large group in val
    assert assign_splits(reversed(names), 0.2, seed=3) == splits  # order of listing does not matter
    assert assign_splits(names, 0.2, seed=4) != splits
    with pytest.raises(DatasetError, match="a train and a val split need at least 2"):
        assign_splits(["only"], 0.5, 0)
    assert minimal_names(["testSet/Stimuli/Art/001.jpg", "testSet/Stimuli/Action/001.jpg"]) == [
        "Art/001.jpg",
        "Action/001.jpg",
    ]
    assert minimal_names(["BenchmarkIMAGES/i1.jpg", "BenchmarkIMAGES/i2.jpg"]) == ["i1.jpg", "i2.jpg"]
    from salgan.datasets import Record

    # a CSV's own splits stay; the others are split by val_fraction among themselves
    free = [Record(name, Path(f"{name}.jpg")) for name in "bcdefghijk"]
    records = [Record("a", Path("a.jpg"), split="val"), Record("z", Path("z.jpg"), split="test"), *free]
    by_split = {split: [r.name for r in members] for split, members in split_records(records, 0.2, 0).items()}
    assert by_split["test"] == ["z"] and "a" in by_split["val"]
    assert (len(by_split["train"]), len(by_split["val"])) == (8, 3)  # 2 of the 10 free ones drawn for val


def test_sources_that_name_no_release_of_the_dataset_are_refused_with_the_key(tmp_path):
    for dataset, source in (("mit1003", "sample"), ("cat2000", "salicon"), ("fixations_csv", "mit1003")):
        with pytest.raises(ConfigError, match=f"download.source: '{source}' is not a source of download.dataset"):
            download.run(settings(tmp_path, dataset, source).download, progress=False)
    with pytest.raises(ConfigError, match="a prefix; fixations CSV from s3:// or https:// is one .zip"):
        download.run(settings(tmp_path, "fixations_csv", "https://example.invalid/data").download, progress=False)
    # prepare checks that data/raw holds the dataset download.dataset names
    trees.write_fixations_csv(tmp_path / "src", 4)
    params = settings(tmp_path, "fixations_csv", tmp_path / "src")
    download.run(params.download, progress=False)
    other = settings(tmp_path, "mit1003", tmp_path / "src")
    with pytest.raises(PrepareError, match=r"holds fixations_csv \(its SOURCE.json\) but download.dataset is mit1003"):
        prepare.prepare(other.prepare, progress=False, download=other.download)


# --- scoring images of mixed sizes ---------------------------------------------------------------------


def test_mixed_sizes_are_scored_each_at_its_own_resolution_as_the_public_metrics_score_them(tmp_path):
    """score_split on three ground truths of three sizes (a flat maps_full read back through read_split)
    equals the public metric functions called per image, the sAUC negatives being the other images'
    fixations moved to this image's size by hand."""
    from salgan import metrics
    from salgan.scoring import score_split

    rng = np.random.default_rng(7)
    sizes = [(30, 40), (40, 30), (24, 50)]
    gts = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in sizes]
    predictions = [rng.random((s[0] // 2, s[1] // 2)) for s in sizes]  # resized by the scorer
    coords = [np.stack([rng.integers(0, s[0], 9), rng.integers(0, s[1], 9)], axis=1) for s in sizes]
    folder = tmp_path / "val"
    folder.mkdir()
    np.save(folder / "maps_full.npy", np.concatenate([g.ravel() for g in gts]))
    np.save(folder / "original_sizes.npy", np.array(sizes, dtype=np.int32))
    np.save(folder / "images.npy", np.zeros((3, 8, 8, 3), np.uint8))
    (folder / "names.json").write_text(json.dumps(["a", "b", "c"]))
    val = read_split(tmp_path, "val", "maps_full", stream=True)
    assert [m.shape for m in val.maps_full] == sizes and all(
        (m == g).all() for m, g in zip(val.maps_full, gts, strict=True)
    )
    flat = np.concatenate(coords).astype(np.int32)
    offsets = np.array([0, 9, 18, 27])
    baseline = rng.random((30, 40)) + 0.1
    rows, _ = score_split(
        predictions, val.maps_full, flat, offsets, baseline, n_splits=7, sauc_other_images=2, progress=False,
        sizes=val.original_sizes,
    )  # fmt: skip
    for i, shape in enumerate(sizes):
        fixation_map = metrics.fixation_map_from_coords(coords[i], shape)
        others = np.zeros(shape)
        for j in ((i + 1) % 3, (i + 2) % 3):
            moved = np.floor((coords[j] + 0.5) * np.array(shape) / np.array(sizes[j])).astype(int)
            others[moved[:, 0], moved[:, 1]] = 1
        assert rows[i]["nss"] == pytest.approx(metrics.nss(predictions[i], fixation_map))
        assert rows[i]["cc"] == pytest.approx(metrics.cc(predictions[i], gts[i]))
        assert rows[i]["kld"] == pytest.approx(metrics.kld(predictions[i], gts[i]))
        assert rows[i]["auc_judd"] == pytest.approx(metrics.auc_judd(predictions[i], fixation_map))
        assert rows[i]["auc_shuffled"] == pytest.approx(
            metrics.auc_shuffled(predictions[i], fixation_map, others, n_splits=7, seed=[0, i, 1])
        )
        assert rows[i]["information_gain"] == pytest.approx(
            metrics.information_gain(predictions[i], fixation_map, baseline)
        )


def test_a_model_trained_on_a_mit1003_tree_beats_the_centre_bias(tmp_path):
    """48 MIT1003-format images of four sizes, each with one bright square the observers look at: a
    1/16-width SalGAN trained 8 epochs beats the centre-bias Gaussian, both scored at each image's size."""
    from salgan.evaluate import centre_bias_scores, score_generator, scoring_inputs
    from salgan.models import load_generator
    from salgan.train import run

    trees.write_mit1003(tmp_path / "src", 48, make=trees.square_scene)
    params = settings(
        tmp_path,
        "mit1003",
        tmp_path / "src",
        model={"width": 0.0625},
        train={"data": str(tmp_path / "prepared"), "output": str(tmp_path / "models"), "epochs": 8}
        | {"bce_epochs": 8, "batch_size": 8, "device": "cpu", "nproc": 1},
        evaluate={"n_splits": 10},
        mlflow={"enabled": False},
    )
    download_and_prepare(params)
    run(params)
    val, common = scoring_inputs(params)
    assert len({tuple(s) for s in val.original_sizes}) > 1
    _, means, _ = score_generator(load_generator(tmp_path / "models" / "generator.pt").generator, params, val, common)
    centre = centre_bias_scores(params, val, common)
    assert means["nss"] > centre["nss"] + 0.5 and means["cc"] > centre["cc"] and means["auc_judd"] > centre["auc_judd"]


# --- the MIT/Tuebingen archive ---------------------------------------------------------------------------


def write_maps(folder: Path, sizes: dict[str, tuple[int, int]]) -> dict[str, Path]:
    files = {}
    for name, (width, height) in sizes.items():
        path = folder / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((height, width), 7, np.uint8)).save(path)
        files[f"{name}.png"] = path
    return files


def test_the_benchmark_archive_is_validated_before_it_is_written_and_reads_back(tmp_path):
    from salgan import benchmark

    sizes = {"Action/001": (192, 108), "Art/001": (192, 108), "i1": (40, 30)}
    files = write_maps(tmp_path / "maps", sizes)
    archive = tmp_path / "ok.zip"
    benchmark.write_archive(archive, files, sizes)
    assert benchmark.read_archive(archive, sizes) == sizes
    with zipfile.ZipFile(archive) as opened:
        assert sorted(opened.namelist()) == ["Action/001.png", "Art/001.png", "i1.png"]

    def opener(path: Path):
        return lambda: path.open("rb")

    members = {entry: opener(path) for entry, path in files.items()}
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.zeros((30, 41), np.uint8)).save(wrong)
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (192, 108)).save(rgb)
    broken = members | {"i1.png": opener(wrong), "Art/001.png": opener(rgb), "extra/x9.png": opener(wrong)}
    broken |= {"__MACOSX/._i1.png": opener(wrong)}  # skipped, as the benchmark skips it
    del broken["Action/001.png"]
    with pytest.raises(benchmark.ArchiveProblem) as failure:
        benchmark.validate_members(broken, sizes)
    message = str(failure.value)
    assert "1 test images without a map: Action/001" in message
    assert "i1.png is 41x30, its image 40x30" in message
    assert "Art/001.png is a PNG in mode RGB, expected an 8-bit grey PNG" in message
    assert "1 entries matching no test image: extra/x9.png" in message
    # two entries whose names both end with a stimulus's name: the benchmark could not tell them apart
    with pytest.raises(benchmark.ArchiveProblem, match=r"several entries match: i1 \(i1.png, old/i1.png\)"):
        benchmark.validate_members(members | {"old/i1.png": opener(files["i1.png"])}, sizes)
    # nothing is written when the validator refuses
    with pytest.raises(benchmark.ArchiveProblem):
        benchmark.write_archive(tmp_path / "never.zip", {**files, "i1.png": wrong}, sizes)
    assert not (tmp_path / "never.zip").exists()


def test_package_refuses_maps_the_benchmark_would_refuse_and_says_when_there_is_no_test_split(tmp_path):
    from salgan.package import PackageError, package
    from tests.conftest import write_prepared

    data = write_prepared(tmp_path / "prepared")  # test split: 4 images of 640x480
    model = tmp_path / "generator.pt"
    model.write_bytes(b"weights")
    params = params_from_dict(
        {
            "train": {"data": str(data)},
            "package": {"format": "mit-tuebingen", "output": str(tmp_path / "submission")},
        }
    )
    names = json.loads((data / "test" / "names.json").read_text())
    write_maps(tmp_path / "maps", {name: (640, 480) for name in names[:3]} | {names[3]: (64, 48)})
    with pytest.raises(PackageError, match=rf"{names[3]}.png is 64x48, its image 640x480"):
        package(params, tmp_path / "maps", model)
    assert not (tmp_path / "submission").exists()
    write_maps(tmp_path / "maps", {names[3]: (640, 480)})
    manifest = package(params, tmp_path / "maps", model)
    assert manifest["counts"] == {"test": 4} and manifest["archive"] == "saliency_maps.zip"
    assert not (tmp_path / "submission" / "config.yaml").exists()  # SALICON's test split is not a benchmark's
    # the SALICON formats are for SALICON's test split only
    (data / "report.json").write_text(json.dumps({"dataset": "mit1003"}))
    with pytest.raises(PackageError, match="package.format 2017 is the SALICON challenge's; the mit1003 test split"):
        package(params.model_copy(update={"package": params.package.model_copy(update={"format": "2017"})}),
                tmp_path / "maps", model)  # fmt: skip
    # no test split: a manifest that says so, and no archive
    import shutil

    shutil.rmtree(data / "test")
    manifest = package(params, tmp_path / "maps", model)
    assert manifest["archive"] is None and "has no test split" in manifest["note"]
    assert sorted(p.name for p in (tmp_path / "submission").iterdir()) == ["manifest.json"]


def test_a_dataset_from_s3_one_zip_or_the_release_zips_under_a_prefix(cat2000, s3, tmp_path):  # noqa: F811
    """CAT2000 through moto's S3 server: one zip by its URL; the release's own zips under a prefix are held
    to the md5 pysaliency publishes, which the test's zips do not have."""
    source, _ = cat2000
    archive = tmp_path / "cat2000.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        for path in sorted((source / "src").rglob("*")):
            if path.is_file():
                opened.write(path, "CAT2000/" + path.relative_to(source / "src").as_posix())
    s3["client"].upload_file(str(archive), "salgan", "datasets/cat2000.zip")
    params = settings(tmp_path, "cat2000", "s3://salgan/datasets/cat2000.zip")
    record = download.run(params.download, progress=False)
    assert record["counts"] == {"labelled": 15, "test": 6} and record["type"] == "s3"
    assert (tmp_path / "cache" / "cat2000" / "cat2000.zip").is_file()  # resumable, in the dataset's cache
    prefix = settings(tmp_path, "cat2000", "s3://salgan/datasets")
    s3["client"].upload_file(str(archive), "salgan", "datasets/trainSet.zip")
    with pytest.raises(download.ChecksumError, match="differs from the published 56ad5c77e6c8f72ed9ef2901628d6e48"):
        download.run(prefix.download, progress=False)
