import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from salgan import checkpoint
from salgan.config import to_dict
from salgan.train import CHECKPOINT_FILE, GENERATOR_FILE, HISTORY_FILE, run
from tests.conftest import tiny_params

REPO = Path(__file__).resolve().parents[1]


def write_params(params, path: Path) -> Path:
    path.write_text(yaml.safe_dump(to_dict(params)))
    return path


def run_module(params_file: Path, *prefix: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [*prefix] or [sys.executable, "-m", "salgan.train"]
    return subprocess.Popen([*command, "--params", str(params_file)], cwd=REPO, env=env)


def test_training_reduces_the_content_loss(tmp_path):
    params = tiny_params(tmp_path, epochs=6, bce_epochs=3)
    assert run(params) == 0
    history = json.loads((tmp_path / "models" / HISTORY_FILE).read_text())
    assert [h["phase"] for h in history] == ["bce"] * 3 + ["adversarial"] * 3
    assert history[-1]["content_loss"] < history[0]["content_loss"]
    assert history[-1]["val_content_loss"] < history[0]["val_content_loss"]
    assert all("d_loss" in h for h in history[3:])
    assert len(list((tmp_path / "models" / "snapshots").glob("epoch_*.png"))) == 6


def test_checkpoint_holds_everything_needed_to_resume(tmp_path):
    params = tiny_params(tmp_path, epochs=2)
    run(params)
    state = checkpoint.load(tmp_path / "models" / CHECKPOINT_FILE)
    assert {"generator", "discriminator", "opt_g", "opt_d", "epoch", "rng", "config", "history"} <= set(state)
    assert state["epoch"] == 2 and state["config"]["train"]["epochs"] == 2


def test_same_seed_gives_identical_weights(tmp_path):
    a = tiny_params(tmp_path / "a", epochs=2)
    b = tiny_params(tmp_path / "b", epochs=2)
    run(a), run(b)
    wa = torch.load(tmp_path / "a" / "models" / GENERATOR_FILE, weights_only=True)
    wb = torch.load(tmp_path / "b" / "models" / GENERATOR_FILE, weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_finished_run_does_nothing_more(tmp_path, capsys):
    params = tiny_params(tmp_path, epochs=1, bce_epochs=0)
    run(params)
    before = (tmp_path / "models" / GENERATOR_FILE).stat().st_mtime_ns
    run(params)
    assert "nothing to do" in capsys.readouterr().out
    assert (tmp_path / "models" / GENERATOR_FILE).stat().st_mtime_ns == before


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path):
    reference = tiny_params(tmp_path / "ref", epochs=10, bce_epochs=2)
    run(reference)
    params = tiny_params(tmp_path / "killed", epochs=10, bce_epochs=2)
    params_file = write_params(params, tmp_path / "killed.yaml")
    out = tmp_path / "killed" / "models"
    process = run_module(params_file)
    deadline = time.time() + 120
    while not (out / CHECKPOINT_FILE).exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = checkpoint.load(out / CHECKPOINT_FILE)["epoch"]
    assert interrupted_at < 10 and not (out / GENERATOR_FILE).exists(), "the run finished before the kill"
    assert run_module(params_file).wait() == 0
    expected = torch.load(tmp_path / "ref" / "models" / GENERATOR_FILE, weights_only=True)
    resumed = torch.load(out / GENERATOR_FILE, weights_only=True)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    history = json.loads((out / HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == list(range(1, 11))


def test_changed_settings_start_a_new_run(tmp_path, capsys):
    run(tiny_params(tmp_path, epochs=1, bce_epochs=0))
    run(tiny_params(tmp_path, epochs=1, bce_epochs=0, alpha=0.5))
    assert "other training settings" in capsys.readouterr().out


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_over_the_same_global_batch(tmp_path):
    one = tiny_params(tmp_path / "one", epochs=2, bce_epochs=1, batch_size=8, nproc=1)
    run(one)
    two = tiny_params(tmp_path / "two", epochs=2, bce_epochs=1, batch_size=8, nproc=2)
    # salgan.train relaunches itself under torchrun --standalone --nproc-per-node=2 (gloo on the CPU)
    assert run_module(write_params(two, tmp_path / "two.yaml")).wait(timeout=300) == 0
    w1 = torch.load(tmp_path / "one" / "models" / GENERATOR_FILE, weights_only=True)
    w2 = torch.load(tmp_path / "two" / "models" / GENERATOR_FILE, weights_only=True)
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5)
    # AdaGrad's first step is lr * g / |g|: a gradient at rounding level moves a weight by a visible
    # fraction of lr whichever way rounding tips it, so the discriminator (lr 1e-3) gets atol 1e-4.
    d1 = checkpoint.load(tmp_path / "one" / "models" / CHECKPOINT_FILE)["discriminator"]
    d2 = checkpoint.load(tmp_path / "two" / "models" / CHECKPOINT_FILE)["discriminator"]
    for key in d1:
        torch.testing.assert_close(d2[key], d1[key], rtol=1e-4, atol=1e-4)
