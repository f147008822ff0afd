import os

import pytest

from salgan.layout import atomic_directory


def test_success_replaces_the_folder_and_keeps_umask_permissions(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old")
    with atomic_directory(output) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in output.iterdir()) == ["new.txt"]
    assert os.stat(output).st_mode & 0o777 == 0o777 & ~_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_leaves_the_folder_as_it_was(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(output) as stage:
        (stage / "half.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert [p.name for p in output.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_leftovers_of_a_killed_run_are_removed(tmp_path):
    (tmp_path / ".out.tmp-1a2b3c4d").mkdir()
    (tmp_path / ".out.old-5e6f7a8b").mkdir()
    (tmp_path / ".outside.tmp-keep").mkdir()  # another folder's staging, not ours
    with atomic_directory(tmp_path / "out"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".outside.tmp-keep", "out"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
