"""The two kinds of error a user can fix, which every command reports the same way (salgan/cli.py), and the
failure of a command run by another, which keeps the status it reported."""

from __future__ import annotations


class ConfigError(ValueError):
    """A settings file, override or command-line value is invalid; the message names the key and why.
    Exit status 2."""


class InputError(RuntimeError):
    """An input is unusable (a missing or corrupt data file, archive, model or checksum); the message
    names the file and why. Exit status 1."""


class CommandFailed(RuntimeError):
    """A command this one ran (a torchrun group, a DVC experiment, a stage) failed; ``exit_status`` is the
    status that command reported (1, 2 or 3), which this one exits with."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status
