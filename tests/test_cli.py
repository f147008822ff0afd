"""Every command answers the same kind of failure the same way (salgan/cli.py's exit statuses)."""

import subprocess
import sys

import pytest

from salgan import cli
from salgan.errors import InputError
from tests.conftest import write_params_file

# Each command with the arguments that make it read its settings file.
COMMANDS = {
    "download": [],
    "prepare": [],
    "train": [],
    "evaluate": [],
    "predict": [],
    "package": [],
    "mirror": ["s3://bucket/prefix"],
    "registry": ["list"],
    "ablation": ["run", "--dry-run"],
    "track": [],
}


def test_every_command_is_listed():
    assert set(COMMANDS) == set(cli.COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_bad_settings_file_is_exit_2_naming_the_file_and_key(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no git checkout here: ablation reads the file on disk
    params = write_params_file(tmp_path / "params.yaml", {"train": {"batch_sise": 4}})
    assert cli.main([command, "--params", str(params), *COMMANDS[command]]) == cli.EXIT_SETTINGS
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"salgan {command}: ") and "unknown key train.batch_sise" in err[-1]
    assert str(params) in err[-1] and "Traceback" not in "\n".join(err)


def test_a_missing_input_is_exit_1_naming_the_file(tmp_path, capsys):
    params = write_params_file(tmp_path / "params.yaml", {"train": {"data": str(tmp_path / "nowhere")}})
    assert cli.main(["evaluate", "--params", str(params)]) == cli.EXIT_INPUT
    assert str(tmp_path / "nowhere") in capsys.readouterr().err


def test_other_failures_are_one_line_and_exit_3_and_secrets_in_urls_are_never_shown(capsys, monkeypatch):
    def broken() -> int:
        raise OSError("connection refused by https://user:hunter2@mlflow.example/api?token=abc")

    assert cli.run_command("registry", broken) == cli.EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "https://mlflow.example/api" in err
    assert "hunter2" not in err and "token=abc" not in err
    assert cli.run_command("x", lambda: (_ for _ in ()).throw(InputError("data/raw/a.jpg: corrupt"))) == 1
    monkeypatch.setenv("SALGAN_DEBUG", "1")
    with pytest.raises(OSError):
        cli.run_command("registry", broken)


def test_the_salgan_command_explains_itself():
    result = subprocess.run([sys.executable, "-m", "salgan.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "Exit status: 0 done, 1 an input is unusable" in result.stdout
    unknown = subprocess.run([sys.executable, "-m", "salgan.cli", "fly"], capture_output=True, text=True)
    assert unknown.returncode == cli.EXIT_SETTINGS and "unknown command 'fly'" in unknown.stderr


def test_a_failure_keeps_the_status_the_command_inside_reported(tmp_path, monkeypatch):
    """torchrun and DVC exit 1 or 255 whatever failed inside them; a salgan command hands its status over
    (SALGAN_STATUS_FILE) and the command that ran it exits with that."""
    monkeypatch.delenv(cli.STATUS_FILE_ENV, raising=False)
    bad = write_params_file(tmp_path / "params.yaml", {"prepare": {"size": [250, 192]}})
    as_dvc = (  # runs a salgan command, then fails as DVC does, with its own code
        "import subprocess, sys\n"
        f"subprocess.call([sys.executable, '-m', 'salgan.cli', 'prepare', '--params', {str(bad)!r}])\n"
        "sys.exit(255)\n"
    )
    assert cli.call([sys.executable, "-c", as_dvc]) == cli.EXIT_SETTINGS
    assert cli.call([sys.executable, "-c", "import sys; sys.exit(255)"]) == cli.EXIT_FAILURE  # none handed over
    assert cli.call([sys.executable, "-c", "pass"]) == 0


def test_a_settings_error_inside_a_torchrun_relaunch_exits_2(tmp_path, capfd):
    """train.batch_size 3 cannot be split across 2 processes: each rank refuses it, and the launcher exits
    2 (torchrun itself exits 1 for any failure)."""
    from salgan.settings import to_dict
    from tests.conftest import tiny_params

    params = tiny_params(tmp_path, nproc=2, batch_size=3)
    path = write_params_file(tmp_path / "params.yaml", to_dict(params))
    assert cli.main(["train", "--params", str(path)]) == cli.EXIT_SETTINGS
    assert "train.batch_size 3 is not divisible by the 2 processes" in capfd.readouterr().err


def test_a_failed_ablation_arm_exits_with_the_failure_status(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no DVC repository here: dvc exp run fails, reporting no salgan status
    params = write_params_file(tmp_path / "params.yaml", {"mlflow": {"enabled": False}})
    assert cli.main(["ablation", "--params", str(params), "run", "--arms", "random-bce"]) == cli.EXIT_FAILURE
    assert "salgan ablation: arm random-bce failed" in capsys.readouterr().err
