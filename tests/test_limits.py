"""Inputs that could exhaust memory or hang a stage are bounded, each by a setting, with the file named."""

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import psutil
import pytest
import scipy.io
import torch
from PIL import Image

from salgan import predict_tool
from salgan.fixations import FixationFileError, load_fixations_mat
from salgan.models import Generator
from salgan.prepare import BadFileError, load_image
from salgan.sample import generate_sample
from tests.conftest import write_params_file

REPO = Path(__file__).resolve().parents[1]


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A valid grey PNG of ``width`` x ``height`` zeros written chunk by chunk (a few hundred KB on disk,
    never the full image in memory): the 13000 x 13000 file of the security review."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate, row = zlib.compressobj(9), bytes(width + 1)  # filter byte + one grey row
    body = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_prepare_refuses_an_image_declaring_too_many_pixels_before_decoding_it(tmp_path):
    bomb = png_declaring(tmp_path / "bomb.png", 13000, 13000)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(BadFileError, match=r"declares 13000x13000 pixels, more than prepare.max_pixels 50000000"):
        load_image(bomb, (64, 48), max_pixels=50_000_000)


def test_predict_skips_and_names_an_input_declaring_too_many_pixels_and_a_pipe(tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "generator.pt"
    torch.save(Generator(width=0.0625).state_dict(), weights)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((48, 64, 3), 120, dtype=np.uint8)).save(photos / "ok.png")
    png_declaring(photos / "bomb.png", 13000, 13000)
    (photos / "sub").mkdir()
    os.mkfifo(photos / "sub" / "pipe.jpg")  # would block a reader forever: found in the folder
    os.mkfifo(tmp_path / "named.png")  # and one named on the command line
    code = predict_tool.main(
        ["--model", str(weights), "--output", str(tmp_path / "maps"), str(photos), str(tmp_path / "named.png")]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "bomb.png: declares 13000x13000 pixels, more than predict.max_pixels" in err
    assert f"skipped {photos / 'sub' / 'pipe.jpg'}: not a regular file (a pipe" in err
    assert f"skipped {tmp_path / 'named.png'}: not a regular file (a pipe" in err
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["ok.png"]


def test_a_fixation_file_that_inflates_past_the_bound_is_refused_before_loading(tmp_path):
    path = tmp_path / "bomb.mat"
    gaze = np.empty((1,), dtype=[("location", "O"), ("timestamp", "O"), ("fixations", "O")])
    gaze[0]["location"] = gaze[0]["fixations"] = np.zeros((1_500_000, 2))  # 48 MB inflated, 50 KB on disk
    gaze[0]["timestamp"] = np.zeros((1, 1))
    scipy.io.savemat(path, {"resolution": np.array([[480, 640]]), "gaze": gaze}, do_compression=True)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(FixationFileError, match="decompresses to more than .* refused before loading"):
        load_fixations_mat(path, max_fixations=1000)


def test_a_fixation_file_with_too_many_fixations_is_refused(tmp_path):
    path = tmp_path / "many.mat"
    gaze = np.empty((1,), dtype=[("location", "O"), ("timestamp", "O"), ("fixations", "O")])
    gaze[0]["location"] = gaze[0]["fixations"] = np.ones((5000, 2))
    gaze[0]["timestamp"] = np.zeros((1, 1))
    scipy.io.savemat(path, {"resolution": np.array([[480, 640]]), "gaze": gaze}, do_compression=True)
    with pytest.raises(FixationFileError, match="5000 fixations, over prepare.max_fixations 1000"):
        load_fixations_mat(path, max_fixations=1000)
    assert len(load_fixations_mat(path, max_fixations=10_000).coords) == 5000


@pytest.mark.slow
def test_killing_prepare_leaves_no_worker_behind(tmp_path):
    generate_sample(tmp_path / "raw", 150, 8, 4, 0)  # enough that the pool is seen at work
    params = write_params_file(
        tmp_path / "params.yaml",
        {"prepare": {"input": str(tmp_path / "raw"), "output": str(tmp_path / "prepared"), "workers": 2}},
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    stage = subprocess.Popen([sys.executable, "-m", "salgan.cli", "prepare", "--params", str(params)], env=env)
    deadline = time.monotonic() + 60
    workers: list[psutil.Process] = []
    while len(workers) < 2 and time.monotonic() < deadline:
        workers = [p for p in psutil.Process(stage.pid).children(recursive=True) if "python" in p.name().lower()]
        time.sleep(0.05)
    assert len(workers) >= 2, "the pool never started"
    stage.send_signal(signal.SIGKILL)
    stage.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"orphaned workers: {[p.pid for p in alive]}"


def test_a_killed_predict_leaves_the_old_maps_and_the_next_run_writes_every_new_one(tmp_path):
    """Tool mode writes into a staging folder (salgan.layout.staged_files): killed midway, the output folder
    still holds exactly its old maps; the next run replaces each of them and leaves nothing beside it."""
    torch.manual_seed(0)
    model = tmp_path / "generator.pt"
    torch.save(Generator(width=0.0625).state_dict(), model)
    images, output = tmp_path / "images", tmp_path / "maps"
    images.mkdir()
    output.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(images / f"i{i:02d}.jpg")
        (output / f"i{i:02d}.png").write_bytes(b"old map")
    command = [sys.executable, "-m", "salgan.cli", "predict", "--model", str(model), "--output", str(output)]
    command += ["--batch-size", "2", str(images)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    stage = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".maps.tmp-*/*.png")) and stage.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    stage.send_signal(signal.SIGKILL)
    stage.wait()
    assert stage.returncode == -signal.SIGKILL, "predict ended before it could be killed midway"
    assert {p.name: p.read_bytes() for p in output.iterdir()} == {f"i{i:02d}.png": b"old map" for i in range(24)}

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    maps = sorted(output.iterdir())
    assert len(maps) == 24 and all(Image.open(p).size == (320, 240) for p in maps)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".maps.lock", "generator.pt", "images", "maps"]
