"""The two kinds of error a user can fix, which every command reports the same way (salgan/cli.py)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A settings file, override or command-line value is invalid; the message names the key and why.
    Exit status 2."""


class InputError(RuntimeError):
    """An input is unusable (a missing or corrupt data file, archive, model or checksum); the message
    names the file and why. Exit status 1."""
