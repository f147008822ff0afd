import os
import subprocess
import sys
import time

import pytest

from salgan.errors import InputError
from salgan.layout import atomic_directory, atomic_file, staged_files, write_atomic

LOCK = ".out.lock"  # the output's lock file stays beside it (removing it would race with a waiting run)


def test_success_replaces_the_folder_and_keeps_umask_permissions(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old")
    with atomic_directory(output) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in output.iterdir()) == ["new.txt"]
    assert os.stat(output).st_mode & 0o777 == 0o777 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK, "out"]


def test_failure_leaves_the_folder_as_it_was(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(output) as stage:
        (stage / "half.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert [p.name for p in output.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK, "out"]


def test_leftovers_of_a_killed_run_are_removed(tmp_path):
    (tmp_path / ".out.tmp-1a2b3c4d").mkdir()
    (tmp_path / ".out.old-5e6f7a8b").mkdir()
    (tmp_path / ".outside.tmp-keep").mkdir()  # another folder's staging, not ours
    with atomic_directory(tmp_path / "out"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK, ".outside.tmp-keep", "out"]


HOLD = """
import sys, time
from salgan.layout import atomic_directory
with atomic_directory(sys.argv[1]) as stage:
    (stage / "first.txt").write_text("first")
    print(stage, flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_run_on_the_same_output_waits_and_never_removes_the_first_ones_staging(tmp_path, caplog):
    output = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(output), "1.5"], stdout=subprocess.PIPE, text=True)
    staging = first.stdout.readline().strip()  # the first run is inside its block, holding the lock
    began = time.monotonic()
    with atomic_directory(output) as stage:
        waited = time.monotonic() - began
        (stage / "second.txt").write_text("second")
    assert first.wait(timeout=30) == 0
    assert waited > 0.5, "the second run did not wait for the first"
    assert not os.path.exists(staging)  # swapped in by the first run, not deleted under it
    assert [p.name for p in output.iterdir()] == ["second.txt"]  # the later run's result, whole
    assert "is being written by pid" in caplog.text


def test_atomic_file_uses_a_fresh_exclusive_name_and_never_follows_a_planted_link(tmp_path):
    target, secret = tmp_path / "history.json", tmp_path / "elsewhere.txt"
    secret.write_text("untouched")
    (tmp_path / ".history.json.tmp").symlink_to(secret)  # what a predictable temporary name would follow
    with atomic_file(target, "w") as handle:
        handle.write("new")
    assert target.read_text() == "new" and secret.read_text() == "untouched"
    assert not target.is_symlink()


def test_staged_files_move_in_at_the_end_and_a_failure_changes_nothing(tmp_path):
    output = tmp_path / "maps"
    output.mkdir()
    (output / "keep.png").write_text("other photo's map")
    with pytest.raises(RuntimeError), staged_files(output) as stage:
        (stage / "a.png").write_text("new")
        raise RuntimeError("killed half-way")
    assert sorted(p.name for p in output.iterdir()) == ["keep.png"]
    with staged_files(output) as stage:
        (stage / "sub").mkdir()
        (stage / "sub" / "b.png").write_text("b")
    assert sorted(str(p.relative_to(output)) for p in output.rglob("*.png")) == ["keep.png", "sub/b.png"]


def test_a_link_planted_at_the_lock_files_name_is_refused_and_its_target_untouched(tmp_path):
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("untouched")
    (tmp_path / ".maps.lock").symlink_to(secret)
    refused = r"\.maps\.lock: the lock file of .*maps is a symbolic link"
    with pytest.raises(InputError, match=refused), atomic_directory(tmp_path / "maps"):
        pass
    assert secret.read_text() == "untouched" and not (tmp_path / "maps").exists()


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write_and_a_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    target = tmp_path / "checkpoint.pt"
    left = tmp_path / f".checkpoint.pt.{dead.stdout.strip()}-k1ll3d.tmp"  # the pid has exited
    live = tmp_path / f".checkpoint.pt.{os.getppid()}-wr1t1ng.tmp"  # a process that runs
    other = tmp_path / f".other.pt.{dead.stdout.strip()}-n0tm1ne.tmp"  # another target's
    for path in (left, live, other):
        path.write_bytes(b"partial")
    write_atomic(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert not left.exists() and live.exists() and other.exists()


def test_moves_a_killed_run_had_started_are_finished_by_the_next(tmp_path):
    output = tmp_path / "maps"
    output.mkdir()
    (output / "a.png").write_text("old a")
    (output / "keep.png").write_text("other photo's map")
    done = tmp_path / ".maps.done-1a2b3c4d"  # killed after a.png moved, before b.png did
    (done / "sub").mkdir(parents=True)
    (done / "sub" / "b.png").write_text("new b")
    (output / "a.png").write_text("new a")
    with staged_files(output) as stage:
        (stage / "c.png").write_text("new c")
    maps = {str(p.relative_to(output)): p.read_text() for p in output.rglob("*.png")}
    assert maps == {"a.png": "new a", "sub/b.png": "new b", "keep.png": "other photo's map", "c.png": "new c"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".maps.lock", "maps"]


def test_an_output_a_killed_swap_had_set_aside_is_put_back(tmp_path):
    output = tmp_path / "prepared"
    (tmp_path / ".prepared.old-5e6f7a8b").mkdir()  # killed between the swap's two renames
    (tmp_path / ".prepared.old-5e6f7a8b" / "train.npy").write_text("the last good output")
    (tmp_path / ".prepared.tmp-9c0d1e2f").mkdir()
    with pytest.raises(RuntimeError), atomic_directory(output):
        raise RuntimeError("this run fails too")
    assert (output / "train.npy").read_text() == "the last good output"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".prepared.lock", "prepared"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_npy_rows_read_what_numpy_wrote_and_name_a_truncated_file(tmp_path):
    import numpy as np

    from salgan.errors import InputError
    from salgan.layout import NpyRows

    array = np.random.default_rng(0).integers(0, 255, (7, 5, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", array)
    rows = NpyRows(tmp_path / "a.npy")
    assert (len(rows), rows.shape, rows.dtype) == (7, array.shape, array.dtype)
    assert np.array_equal(rows[3], array[3]) and np.array_equal(rows[-1], array[-1])
    assert np.array_equal(rows[2:6], array[2:6]) and rows[5:99].shape == (2, 5, 4, 3)
    assert np.array_equal(np.stack(list(rows)), array)
    with pytest.raises(IndexError):
        rows[7]
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) - 10])
    with pytest.raises(InputError, match="cut.npy: truncated"):
        NpyRows(tmp_path / "cut.npy")[6]
