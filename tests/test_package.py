"""The package stage: both submission formats, the manifest, and validation before writing."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from salgan import package as stage
from salgan.models import Generator, load_generator
from salgan.settings import load_params
from tests.conftest import write_params_file

NAMES = [f"COCO_test2014_{i:012d}" for i in (1, 42, 123456)]
VAL_NAMES = [f"COCO_val2014_{i:012d}" for i in (7, 8)]
W0, H0 = 640, 480


@pytest.fixture
def setup(tmp_path: Path) -> dict:
    """A prepared test and val split, a predictions folder of valid test maps, a generator and params."""
    for split, names in (("test", NAMES), ("val", VAL_NAMES)):
        folder = tmp_path / "prepared" / split
        folder.mkdir(parents=True)
        (folder / "names.json").write_text(json.dumps(names))
        np.save(folder / "original_sizes.npy", np.array([[H0, W0]] * len(names), dtype=np.int32))
        np.save(folder / "images.npy", np.random.default_rng(0).integers(0, 255, (len(names), 48, 64, 3), np.uint8))
    preds = tmp_path / "preds"
    preds.mkdir()
    for i, name in enumerate(NAMES):
        Image.fromarray(np.full((H0, W0), 10 * i, dtype=np.uint8)).save(preds / f"{name}.png")
    model = tmp_path / "models" / "generator.pt"
    model.parent.mkdir()
    torch.manual_seed(0)
    torch.save(Generator(width=0.0625).state_dict(), model)
    return {"tmp": tmp_path, "preds": preds, "model": model, "output": tmp_path / "out" / "submission"}


def write_params(setup: dict, fmt: str) -> Path:
    data = {
        "train": {"data": str(setup["tmp"] / "prepared"), "output": str(setup["tmp"] / "models")},
        "predict": {"output": str(setup["preds"])},
        "package": {"format": fmt, "algorithm": "salgan", "output": str(setup["output"])},
    }
    return write_params_file(setup["tmp"] / "params.yaml", data)


def run(setup: dict, fmt: str, *extra: str) -> int:
    return stage.main(["--params", str(write_params(setup, fmt)), *extra])


def test_2017_archive_holds_only_the_maps_and_the_manifest_lies_beside_it(setup: dict) -> None:
    assert run(setup, "2017") == 0  # predictions and model from their defaults
    with zipfile.ZipFile(setup["output"] / "submission.zip") as archive:
        assert sorted(archive.namelist()) == sorted(f"{n}.png" for n in NAMES)
        for name in NAMES:
            data = archive.read(f"{name}.png")
            assert data == (setup["preds"] / f"{name}.png").read_bytes()
            img = Image.open(io.BytesIO(data))
            assert (img.mode, img.size) == ("L", (W0, H0))
    manifest = json.loads((setup["output"] / "manifest.json").read_text())
    params = load_params(setup["tmp"] / "params.yaml")
    assert manifest["format"] == "2017" and manifest["archive"] == "submission.zip"
    assert manifest["counts"] == {"test": 3}
    assert manifest["model"]["sha256"] == hashlib.sha256(setup["model"].read_bytes()).hexdigest()
    assert manifest["params_sha256"] == stage.params_sha256(params)
    assert manifest["created"] and manifest["package_version"]
    left = sorted(p.name for p in setup["output"].parent.iterdir())
    assert left == [".submission.lock", "submission"]  # no staging folder left; the lock file stays
    assert sorted(p.name for p in setup["output"].iterdir()) == ["manifest.json", "submission.zip"]


def decoded(entry: dict) -> np.ndarray:
    img = Image.open(io.BytesIO(base64.b64decode(entry["saliency_map"])))
    assert (img.mode, img.size) == ("L", (W0, H0))
    return np.asarray(img)


def test_2015_results_zip_holds_val_and_test_results_as_the_coco_server_reads_them(setup: dict) -> None:
    assert run(setup, "2015", "--predictions", str(setup["preds"]), "--model", str(setup["model"])) == 0
    val_member, test_member = "fixations_val2014_salgan_results.json", "fixations_test2014_salgan_results.json"
    with zipfile.ZipFile(setup["output"] / "results.zip") as archive:
        assert sorted(archive.namelist()) == sorted([val_member, test_member])
        test, val = json.loads(archive.read(test_member)), json.loads(archive.read(val_member))
    assert [r["image_id"] for r in test] == [1, 42, 123456]
    for i, entry in enumerate(test):
        assert decoded(entry).max() == 10 * i
    assert [r["image_id"] for r in val] == [7, 8]
    # The val maps are the model's, made by the predict stage's own code.
    from salgan.inference import write_split_maps

    expected = setup["tmp"] / "expected"
    expected.mkdir()
    params = load_params(setup["tmp"] / "params.yaml")
    write_split_maps(
        load_generator(setup["model"]).generator, setup["tmp"] / "prepared", "val", expected, params.predict
    )
    for name, entry in zip(VAL_NAMES, val, strict=True):
        assert np.array_equal(decoded(entry), np.asarray(Image.open(expected / f"{name}.png")))
    manifest = json.loads((setup["output"] / "manifest.json").read_text())
    assert manifest["archive"] == "results.zip" and manifest["members"] == [val_member, test_member]
    assert manifest["counts"] == {"test": 3, "val": 2}


def test_image_id_is_the_number_ending_the_name() -> None:
    assert stage.image_id("COCO_test2014_000000000042") == 42
    with pytest.raises(stage.PackageError, match="no COCO image id"):
        stage.image_id("COCO_test2014_x")


def break_predictions(preds: Path) -> None:
    (preds / f"{NAMES[0]}.png").unlink()
    Image.new("L", (10, 10)).save(preds / "COCO_test2014_999999999999.png")
    Image.new("L", (320, 240)).save(preds / f"{NAMES[1]}.png")
    Image.new("RGB", (W0, H0)).save(preds / f"{NAMES[2]}.png")


def test_validator_lists_every_kind_of_problem(setup: dict) -> None:
    break_predictions(setup["preds"])
    with pytest.raises(ValueError) as error:
        stage.validate_predictions(setup["preds"], NAMES)
    message = str(error.value)
    assert f"1 of 3 expected maps missing: {NAMES[0]}.png" in message
    assert "unexpected file(s): COCO_test2014_999999999999.png" in message
    assert f"{NAMES[1]}.png is 320x240, expected 640x480" in message
    assert f"{NAMES[2]}.png has mode RGB" in message


def test_validator_rejects_sixteen_bit_and_non_png(setup: dict) -> None:
    Image.fromarray(np.zeros((H0, W0), dtype=np.uint16)).save(setup["preds"] / f"{NAMES[0]}.png")
    Image.new("L", (W0, H0)).save(setup["preds"] / f"{NAMES[1]}.png", format="JPEG")
    with pytest.raises(ValueError, match=r"mode I;16.*is JPEG, not PNG"):
        stage.validate_predictions(setup["preds"], NAMES, {n: (W0, H0) for n in NAMES})


def test_validator_truncates_long_listings(tmp_path: Path) -> None:
    names = [f"COCO_test2014_{i:012d}" for i in range(20)]
    with pytest.raises(
        ValueError, match=r"0 file\(s\) for 20 test images; 20 of 20 expected maps missing: .*, and 15 more"
    ):
        stage.validate_predictions(tmp_path, names)


@pytest.mark.parametrize("fmt", ["2017", "2015"])
def test_invalid_predictions_write_nothing(setup: dict, fmt: str, capsys) -> None:
    setup["output"].mkdir(parents=True)
    (setup["output"] / "submission.zip").write_bytes(b"previous archive")
    break_predictions(setup["preds"])
    assert run(setup, fmt) == 1
    assert "expected maps missing" in capsys.readouterr().err
    assert [p.name for p in setup["output"].iterdir()] == ["submission.zip"]
    assert (setup["output"] / "submission.zip").read_bytes() == b"previous archive"
    assert [p.name for p in setup["output"].parent.iterdir()] == ["submission"]  # refused before anything


def test_missing_model_or_split_is_named(setup: dict, capsys) -> None:
    assert run(setup, "2017", "--model", str(setup["tmp"] / "nope.pt")) == 1
    assert "nope.pt: model file not found" in capsys.readouterr().err
    (setup["tmp"] / "prepared" / "test" / "names.json").unlink()
    assert run(setup, "2017") == 1
    assert "names.json: not found" in capsys.readouterr().err
    assert not setup["output"].exists()


def test_2015_without_a_usable_model_names_it(setup: dict, capsys) -> None:
    setup["model"].write_bytes(b"not weights")
    assert run(setup, "2015") == 1
    assert f"{setup['model']}: cannot predict the val maps with it" in capsys.readouterr().err
    assert not setup["output"].exists()


def test_unsafe_algorithm_name_is_rejected(setup: dict, capsys) -> None:
    path = write_params(setup, "2015")
    path.write_text(path.read_text().replace("algorithm: salgan", "algorithm: ../evil"))
    assert stage.main(["--params", str(path)]) == 2  # a settings error, as in every command
    assert "package.algorithm" in capsys.readouterr().err
