"""The prepare stage and the fixation reader, on a tiny SALICON-format tree built here."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from salgan import prepare as stage
from salgan.fixations import FixationFileError, fixations_from_mat, load_fixations_mat
from salgan.settings import PrepareParams
from tests.conftest import write_params_file

W0, H0 = 640, 480  # SALICON's original size
SIZE = (64, 48)  # prepare.size used here (W, H): small keeps the tests fast
MAX_PIXELS, MAX_FIXATIONS = PrepareParams().max_pixels, PrepareParams().max_fixations
GAZE_DTYPE = [("location", "O"), ("timestamp", "O"), ("fixations", "O")]


# --- building a raw tree ---------------------------------------------------------------------------


def write_mat(path: Path, name: str, resolution: tuple[int, int], observers: list[np.ndarray]) -> None:
    """A fixation file in SALICON's format: 1-based [x, y] per observer in a gaze struct array."""
    gaze = np.empty((len(observers),), dtype=GAZE_DTYPE)
    for i, fixations in enumerate(observers):
        gaze[i]["location"] = np.asarray(fixations, dtype=np.float64).reshape(-1, 2)
        gaze[i]["timestamp"] = np.arange(len(fixations), dtype=np.float64).reshape(-1, 1)
        gaze[i]["fixations"] = np.asarray(fixations, dtype=np.float64).reshape(-1, 2)
    scipy.io.savemat(path, {"image": name, "resolution": np.array([resolution]), "gaze": gaze})


def random_image(rng: np.random.Generator, w: int = W0, h: int = H0) -> np.ndarray:
    """Smooth random colours (JPEG keeps them close, unlike noise)."""
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


def make_tree(root: Path, counts: dict[str, int], seed: int = 0) -> dict:
    """A raw SALICON tree; returns the expected fixations (0-based row, col) per image name."""
    rng = np.random.default_rng(seed)
    expected = {}
    for split, n in counts.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        ids = sorted(rng.choice(10_000, size=n, replace=False), reverse=True)  # written in reverse order
        for image_id in ids:
            name = f"COCO_{split}2014_{image_id:012d}"
            Image.fromarray(random_image(rng)).save(root / "images" / split / f"{name}.jpg", quality=90)
            if split == "test":
                continue
            for kind in ("maps", "fixations"):
                (root / kind / split).mkdir(parents=True, exist_ok=True)
            grey = rng.integers(0, 256, size=(H0, W0), dtype=np.uint8)
            Image.fromarray(grey).save(root / "maps" / split / f"{name}.png")
            observers = [np.column_stack([rng.integers(1, W0 + 1, k), rng.integers(1, H0 + 1, k)]) for k in (3, 0, 2)]
            write_mat(root / "fixations" / split / f"{name}.mat", name, (H0, W0), observers)
            xy = np.concatenate(observers)
            expected[name] = np.column_stack([xy[:, 1] - 1, xy[:, 0] - 1])
    return expected


def write_params(tmp_path: Path, **prepare) -> Path:
    """params.yaml with a prepare section over tmp_path's raw and prepared folders."""
    section = {"input": str(tmp_path / "raw"), "output": str(tmp_path / "prepared"), "size": list(SIZE)}
    section.update(prepare)
    return write_params_file(tmp_path / "params.yaml", {"prepare": section})


def run_stage(tmp_path: Path, **prepare) -> int:
    return stage.main(["--params", str(write_params(tmp_path, **prepare))])


@pytest.fixture
def raw(tmp_path: Path) -> dict:
    return make_tree(tmp_path / "raw", {"train": 4, "val": 3, "test": 2})


# --- fixations -------------------------------------------------------------------------------------


def test_fixations_are_zero_based_row_col_and_clipped_and_counted(tmp_path: Path) -> None:
    observers = [np.array([[1, 1], [640, 480], [10, 20]]), np.zeros((0, 2)), np.array([[0, 500], [700, -3]])]
    write_mat(tmp_path / "a.mat", "a", (480, 640), observers)
    coords, resolution, outside = load_fixations_mat(tmp_path / "a.mat", MAX_FIXATIONS)
    assert resolution == (480, 640)
    assert coords.dtype == np.int32
    assert coords.tolist() == [[0, 0], [479, 639], [19, 9], [479, 0], [0, 639]]
    assert outside == 2  # (0, 500) and (700, -3): moved to the border, and counted


@pytest.mark.parametrize("squeeze_me", [False, True])
@pytest.mark.parametrize("struct_as_record", [True, False])
@pytest.mark.parametrize("observer_sizes", [(2, 0, 1), (1,), (0,), ()])
def test_every_loadmat_variant_parses_alike(tmp_path, squeeze_me, struct_as_record, observer_sizes) -> None:
    observers = [np.arange(1, 2 * k + 1).reshape(k, 2) for k in observer_sizes]
    write_mat(tmp_path / "a.mat", "a", (480, 640), observers)
    mat = scipy.io.loadmat(tmp_path / "a.mat", squeeze_me=squeeze_me, struct_as_record=struct_as_record)
    coords, resolution, outside = fixations_from_mat(mat, "a.mat")
    expected = np.concatenate([o for o in observers] or [np.zeros((0, 2))]).reshape(-1, 2)
    assert resolution == (480, 640)
    assert coords.tolist() == np.column_stack([expected[:, 1] - 1, expected[:, 0] - 1]).tolist()


def test_bad_fixation_files_name_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"not a mat file at all" * 20)
    with pytest.raises(FixationFileError, match="garbage.mat"):
        load_fixations_mat(garbage, MAX_FIXATIONS)
    scipy.io.savemat(tmp_path / "nogaze.mat", {"resolution": np.array([[480, 640]])})
    with pytest.raises(FixationFileError, match=r"nogaze.mat: no 'gaze'"):
        load_fixations_mat(tmp_path / "nogaze.mat", MAX_FIXATIONS)
    with pytest.raises(FixationFileError, match="missing.mat"):
        load_fixations_mat(tmp_path / "missing.mat", MAX_FIXATIONS)


# --- image decoding --------------------------------------------------------------------------------


def png_rgb16(path: Path, values: np.ndarray) -> None:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = values.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def odd_inputs(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Images in modes other than RGB, each a flat colour; returns name -> expected RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (W0, H0), 100).save(folder / "grey.jpg")
    Image.new("CMYK", (W0, H0), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.new("RGBA", (W0, H0), (10, 200, 30, 255)).save(folder / "rgba.png")
    Image.new("RGBA", (W0, H0), (0, 0, 0, 0)).save(folder / "transparent.png")
    Image.new("RGB", (W0, H0), (200, 20, 40)).convert("P").save(folder / "palette.png")
    Image.fromarray(np.full((H0, W0), 40000, dtype=np.uint16)).save(folder / "grey16.png")
    png_rgb16(folder / "rgb16.png", np.full((H0, W0, 3), [65535, 32896, 0], dtype=np.uint16))
    return {
        "grey": (100, 100, 100),
        "cmyk": (255, 0, 0),
        "rgba": (10, 200, 30),
        "transparent": (255, 255, 255),
        "palette": (200, 20, 40),
        "grey16": (156, 156, 156),  # 40000 * 255 / 65535
        "rgb16": (255, 128, 0),
    }


def test_every_mode_becomes_rgb(tmp_path: Path) -> None:
    expected = odd_inputs(tmp_path)
    for name, colour in expected.items():
        path = next(tmp_path.glob(f"{name}.*"))
        array, original = stage.load_image(path, SIZE, MAX_PIXELS)
        assert array.shape == (SIZE[1], SIZE[0], 3) and array.dtype == np.uint8, name
        assert original == (H0, W0)
        assert np.abs(array.astype(int) - colour).max() <= 3, (name, array[0, 0])


def test_sixteen_bit_map_is_scaled_not_clipped(tmp_path: Path) -> None:
    Image.fromarray(np.full((H0, W0), 32896, dtype=np.uint16)).save(tmp_path / "map16.png")
    small, full = stage.load_map(tmp_path / "map16.png", SIZE, MAX_PIXELS)
    assert small.shape == (SIZE[1], SIZE[0]) and full.shape == (H0, W0)
    assert small.dtype == full.dtype == np.uint8
    assert set(np.unique(full)) == {128}


def test_fast_path_matches_naive_path(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    Image.fromarray(random_image(rng)).save(tmp_path / "a.jpg", quality=90)
    fast = stage.load_image(tmp_path / "a.jpg", (256, 192), MAX_PIXELS)[0]
    with Image.open(tmp_path / "a.jpg") as img:  # full-resolution decode, then convert and resize
        naive = np.asarray(img.convert("RGB").resize((256, 192), Image.Resampling.BILINEAR))
    assert fast.shape == naive.shape == (192, 256, 3)
    assert np.abs(fast.astype(int) - naive.astype(int)).mean() < 2.0


# --- the stage -------------------------------------------------------------------------------------


def test_prepared_arrays_follow_the_data_layout(tmp_path: Path, raw: dict) -> None:
    assert run_stage(tmp_path, workers=1) == 0
    out = tmp_path / "prepared"
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"] == []
    assert {s: c["images"] for s, c in report["splits"].items()} == {"train": 4, "val": 3, "test": 2}
    w, h = SIZE
    for split, n in (("train", 4), ("val", 3), ("test", 2)):
        folder = out / split
        names = json.loads((folder / "names.json").read_text())
        assert names == sorted(names) and len(names) == n
        assert all(name.startswith(f"COCO_{split}2014_") for name in names)
        images = np.load(folder / "images.npy", mmap_mode="r")
        assert images.shape == (n, h, w, 3) and images.dtype == np.uint8
        sizes = np.load(folder / "original_sizes.npy")
        assert sizes.dtype == np.int32 and sizes.tolist() == [[H0, W0]] * n
        for i, name in enumerate(names):  # row i is name i
            image = stage.load_image(tmp_path / "raw" / "images" / split / f"{name}.jpg", SIZE, MAX_PIXELS)[0]
            np.testing.assert_array_equal(images[i], image)
        if split == "test":
            assert not (folder / "maps.npy").exists() and not (folder / "fixations.npz").exists()
            assert not (folder / "fixation_maps.npy").exists()
            continue
        maps = np.load(folder / "maps.npy")
        assert maps.shape == (n, h, w) and maps.dtype == np.uint8
        with np.load(folder / "fixations.npz") as fix:
            coords, offsets = fix["coords"], fix["offsets"]
        assert coords.dtype == np.int32 and offsets.dtype == np.int64 and offsets.shape == (n + 1,)
        for i, name in enumerate(names):
            assert coords[offsets[i] : offsets[i + 1]].tolist() == raw[name].tolist()
        # fixation counts at the training size: 640x480 -> 64x48 puts original pixel (r, c) at (r // 10, c // 10)
        counts = np.load(folder / "fixation_maps.npy")
        assert counts.shape == (n, h, w) and counts.dtype == np.uint8
        for i, name in enumerate(names):
            expected = np.zeros((h, w), dtype=np.int64)
            for row, col in raw[name]:
                expected[row // 10, col // 10] += 1
            np.testing.assert_array_equal(counts[i], expected)
        assert (folder / "maps_full.npy").exists() == (split == "val")
    maps_full = np.load(out / "val" / "maps_full.npy")
    names = json.loads((out / "val" / "names.json").read_text())
    assert maps_full.shape == (3, H0, W0) and maps_full.dtype == np.uint8
    original = np.asarray(Image.open(tmp_path / "raw" / "maps" / "val" / f"{names[1]}.png"))
    np.testing.assert_array_equal(maps_full[1], original)


def test_worker_pool_gives_the_same_bytes(tmp_path: Path, raw: dict) -> None:
    assert run_stage(tmp_path, workers=1, output=str(tmp_path / "one")) == 0
    assert run_stage(tmp_path, workers=2, output=str(tmp_path / "two")) == 0
    for split in ("train", "val", "test"):
        for path in sorted((tmp_path / "one" / split).iterdir()):
            assert path.read_bytes() == (tmp_path / "two" / split / path.name).read_bytes(), path


def test_odd_modes_end_to_end(tmp_path: Path) -> None:
    odd_inputs(tmp_path / "raw" / "images" / "test")
    assert run_stage(tmp_path, workers=1) == 0
    images = np.load(tmp_path / "prepared" / "test" / "images.npy")
    assert images.shape == (7, SIZE[1], SIZE[0], 3)


def corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:600])  # a truncated JPEG: header fine, data cut short


def test_corrupt_image_stops_the_stage_naming_it(tmp_path: Path, raw: dict, capsys) -> None:
    bad = sorted((tmp_path / "raw" / "images" / "train").iterdir())[1]
    corrupt(bad)
    assert run_stage(tmp_path, workers=2) == 1
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "prepared").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".prepared.lock"]  # no temp folder


def test_skip_bad_lists_skipped_files_in_the_report(tmp_path: Path, raw: dict) -> None:
    images = sorted((tmp_path / "raw" / "images" / "train").iterdir())
    corrupt(images[1])
    (tmp_path / "raw" / "fixations" / "val").joinpath(sorted(raw)[-1] + ".mat").write_bytes(b"garbage")
    (tmp_path / "raw" / "maps" / "train" / f"{images[3].stem}.png").unlink()
    assert run_stage(tmp_path, workers=1, skip_bad=True) == 0
    out = tmp_path / "prepared"
    report = json.loads((out / "report.json").read_text())
    assert sorted(s["name"] for s in report["skipped"]) == sorted([images[1].stem, images[3].stem, sorted(raw)[-1]])
    assert any(s["file"] == str(images[1]) for s in report["skipped"])
    assert report["splits"]["train"] == {"images": 2, "fixations": 10, "fixations_outside": 0, "skipped": 2}
    names = json.loads((out / "train" / "names.json").read_text())
    assert names == [images[0].stem, images[2].stem]
    assert np.load(out / "train" / "images.npy").shape[0] == 2
    assert np.load(out / "train" / "maps.npy").shape[0] == 2
    assert np.load(out / "train" / "fixation_maps.npy").sum(axis=(1, 2)).tolist() == [5, 5]
    with np.load(out / "train" / "fixations.npz") as fix:
        assert fix["offsets"].tolist() == [0, 5, 10]
        assert fix["coords"][5:].tolist() == raw[images[2].stem].tolist()
    assert np.load(out / "val" / "maps_full.npy").shape[0] == 2


def test_fixations_outside_their_image_are_counted_in_the_report_and_said(tmp_path: Path, raw: dict, caplog):
    name = sorted((tmp_path / "raw" / "images" / "val").iterdir())[0].stem
    observers = [np.array([[1, 1], [0, 500], [700, -3]]), np.array([[641, 10]])]  # three past the border
    write_mat(tmp_path / "raw" / "fixations" / "val" / f"{name}.mat", name, (H0, W0), observers)
    assert run_stage(tmp_path, workers=1) == 0
    report = json.loads((tmp_path / "prepared" / "report.json").read_text())
    assert report["splits"]["val"]["fixations_outside"] == 3
    assert report["splits"]["train"]["fixations_outside"] == 0
    assert "3 val fixation(s) lay outside their image" in caplog.text


def test_a_pipe_named_like_an_image_is_skipped_and_said(tmp_path: Path, raw: dict, caplog) -> None:
    import os

    pipe = tmp_path / "raw" / "images" / "test" / "COCO_test2014_000000000001.jpg"
    os.mkfifo(pipe)  # reading it would block the stage forever
    assert run_stage(tmp_path, workers=1) == 0
    assert f"{pipe}: not a regular file (a pipe, socket or device); skipped" in caplog.text
    assert len(json.loads((tmp_path / "prepared" / "test" / "names.json").read_text())) == 2


def test_two_prepares_on_one_output_run_one_after_the_other(tmp_path: Path, raw: dict) -> None:
    """The second waits for the first's lock (salgan.layout.output_lock) instead of removing its staging
    folder; both finish and the output is one whole result. The first is paused while it holds its staging
    folder, so the second surely arrives then."""
    import os
    import signal
    import subprocess
    import sys
    import time

    params = write_params(tmp_path, workers=1)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "salgan.cli", "prepare", "--params", str(params)]
    first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (staging := list(tmp_path.glob(".prepared.tmp-*"))) and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)
    second = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        waiting = second.stderr.readline()  # blocks until the second says why it waits
        assert f"is being written by pid {first.pid}; waiting" in waiting, waiting
        assert staging and all(folder.is_dir() for folder in staging)  # the first's, still there
    finally:
        first.send_signal(signal.SIGCONT)
    errors = [run.communicate(timeout=300)[1] for run in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], errors
    out = tmp_path / "prepared"
    assert np.load(out / "train" / "images.npy").shape == (4, SIZE[1], SIZE[0], 3)
    assert json.loads((out / "report.json").read_text())["splits"]["val"]["images"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".prepared.lock", "params.yaml", "prepared", "raw"]


def test_image_without_map_is_an_error_naming_it(tmp_path: Path, raw: dict, capsys) -> None:
    name = sorted(n for n in raw if "val" in n)[0]
    (tmp_path / "raw" / "maps" / "val" / f"{name}.png").unlink()
    assert run_stage(tmp_path, workers=1) == 1
    assert name in capsys.readouterr().err


def test_val_images_must_share_one_size(tmp_path: Path, raw: dict, capsys) -> None:
    name = sorted(n for n in raw if "val" in n)[-1]
    Image.new("RGB", (320, 240)).save(tmp_path / "raw" / "images" / "val" / f"{name}.jpg")
    assert run_stage(tmp_path, workers=1) == 1
    assert name in capsys.readouterr().err


def test_with_skip_bad_one_oversized_first_val_image_drops_only_itself(tmp_path: Path, raw: dict) -> None:
    """The val maps at full size are allocated with one size for the split: taken from the first image's
    header, an oversized (or odd) first image made every other image the odd one out, dropping the split."""
    from tests.test_limits import png_declaring

    names = sorted(n for n in raw if "val" in n)
    first = tmp_path / "raw" / "images" / "val" / f"{names[0]}.jpg"
    first.unlink()
    png_declaring(first, 13000, 13000)  # a PNG named .jpg: Pillow reads its header all the same
    assert run_stage(tmp_path, workers=1, skip_bad=True, max_pixels=1_000_000) == 0
    report = json.loads((tmp_path / "prepared" / "report.json").read_text())
    assert [s["name"] for s in report["skipped"]] == [names[0]]
    assert "declares 13000x13000 pixels, more than prepare.max_pixels 1000000" in report["skipped"][0]["reason"]
    assert json.loads((tmp_path / "prepared" / "val" / "names.json").read_text()) == names[1:]
    assert np.load(tmp_path / "prepared" / "val" / "maps_full.npy").shape == (len(names) - 1, H0, W0)


def test_failed_run_keeps_the_previous_output(tmp_path: Path, raw: dict) -> None:
    assert run_stage(tmp_path, workers=1) == 0
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "prepared").rglob("*") if p.is_file()}
    corrupt(sorted((tmp_path / "raw" / "images" / "test").iterdir())[0])
    assert run_stage(tmp_path, workers=1) == 1
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "prepared").rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".prepared.lock"]  # no temp folder


def test_no_splits_is_an_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "raw").mkdir()
    assert run_stage(tmp_path) == 1
    assert "images/train" in capsys.readouterr().err


def test_help_describes_the_settings(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        stage.main(["--help"])
    assert exit_info.value.code == 0
    assert "skip_bad" in capsys.readouterr().out
