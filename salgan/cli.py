"""The ``salgan`` command, and the one command layer every subcommand uses.

Each subcommand lives in its own module with a ``main(argv) -> int`` built from :func:`command_parser`
(``--params`` and the help text) and :func:`run_command`, which maps what went wrong to the exit status
and a one-line message, the same way in every command:

====== ============================================================================================
status meaning
====== ============================================================================================
0      done
1      an input is unusable (:class:`salgan.errors.InputError`, a missing file): the message names it
2      the settings or the command line are invalid (:class:`salgan.errors.ConfigError`)
3      anything else failed (the message says what; ``SALGAN_DEBUG=1`` shows the traceback)
130    interrupted
====== ============================================================================================

An error that knows its status carries it as ``exit_status`` (a failed stage of a flow: the status its own
command reported). A command's failure status is also handed over to whoever started it through the
file ``SALGAN_STATUS_FILE`` names, when set: a torchrun launcher or a flow learns why a stage failed even
where torchrun or DVC report only that it did (:func:`handed_over_status`).

Progress bars are salgan/progress.py's: only on a terminal, on rank 0, and not with ``SALGAN_PROGRESS=0``.
This file imports a subcommand's module only when it runs, so ``salgan --help`` stays fast and needs no
optional package.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from salgan.errors import ConfigError, InputError
from salgan.urls import RedactingFilter, redact_text

EXIT_INPUT, EXIT_SETTINGS, EXIT_FAILURE, EXIT_INTERRUPTED = 1, 2, 3, 130
STATUS_FILE_ENV = "SALGAN_STATUS_FILE"

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "download": ("salgan.download", "fetch SALICON (or generate the offline sample) into data/raw"),
    "prepare": ("salgan.prepare", "resize images and maps into arrays for training"),
    "train": ("salgan.train", "train SalGAN (BCE pre-training, then adversarial); run under torchrun"),
    "evaluate": ("salgan.evaluate", "score the validation split with the full metric suite"),
    "predict": ("salgan.predict_tool", "saliency maps for images, from a registry model or a weights file"),
    "package": ("salgan.package", "build the SALICON challenge submission archive"),
    "registry": ("salgan.registry", "list registered models and promote the challenger to champion"),
    "track": ("salgan.track", "log a finished run to MLflow afterwards (it was down during the run)"),
    "mirror": ("salgan.mirror", "upload the raw SALICON zips to an S3 mirror with their checksums"),
    "ablation": ("salgan.ablation", "print DVC experiments' metrics beside the seed paper's Table I"),
}


# --- the layer every subcommand uses ----------------------------------------------------------------------


def command_parser(name: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """``salgan NAME``'s parser with the common ``--params`` option."""
    parser = argparse.ArgumentParser(
        prog=f"salgan {name}",
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter if epilog and "\n" in epilog else argparse.HelpFormatter,
    )
    parser.add_argument("--params", default="params.yaml", help="settings file (default: %(default)s)")
    return parser


def run_command(name: str, action: Callable[[], int | None], prog: str | None = None) -> int:
    """Run a command's work with the common logging, and turn its failure into a message and a status.
    ``prog`` names the command in messages (default ``salgan NAME``; the flows are ``python -m flows.X``)."""
    setup_logging(name)
    prog = prog or f"salgan {name}"

    def report(message: str) -> None:
        print(f"{prog}: {redact_text(message)}", file=sys.stderr)  # URLs may quote secrets

    try:
        status = int(action() or 0)
    except KeyboardInterrupt:
        report("interrupted")
        status = EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 -- each kind has its status; the rest is one line, traceback on request
        status = exit_status(exc)
        if status == EXIT_FAILURE and os.environ.get("SALGAN_DEBUG") == "1":
            raise
        if status == EXIT_FAILURE and getattr(exc, "exit_status", None) is None:
            report(f"failed: {type(exc).__name__}: {exc} (SALGAN_DEBUG=1 shows the traceback)")
        else:
            report(_text(exc))
    if status:
        hand_over(status)
    return status


def exit_status(exc: BaseException) -> int:
    """The status a failure exits with: its own ``exit_status``, else by its kind (the table above)."""
    own = getattr(exc, "exit_status", None)
    if isinstance(own, int):
        return own
    if isinstance(exc, ConfigError):
        return EXIT_SETTINGS
    if isinstance(exc, InputError | FileNotFoundError):
        return EXIT_INPUT
    return EXIT_FAILURE


def hand_over(status: int) -> None:
    """Append ``status`` to the file ``SALGAN_STATUS_FILE`` names, if any (a launcher reads it back)."""
    path = os.environ.get(STATUS_FILE_ENV)
    if path:
        with contextlib.suppress(OSError), open(path, "a") as handle:
            handle.write(f"{status}\n")


def handed_over_status(path: str | os.PathLike) -> int | None:
    """The first failure status a command handed over in ``path`` (:func:`hand_over`), or None."""
    try:
        lines = Path(path).read_text().split()
    except OSError:
        return None
    statuses = [int(line) for line in lines if line.isdigit() and int(line)]
    return statuses[0] if statuses else None


def call(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``command`` (which runs salgan commands: torchrun's ranks, ``dvc exp run``'s stages) and return 0,
    or the failure status one of them handed over (:func:`hand_over`), else :data:`EXIT_FAILURE`."""
    with tempfile.TemporaryDirectory(prefix="salgan-status-") as scratch:
        status_file = os.environ.get(STATUS_FILE_ENV) or str(Path(scratch) / "status")
        if subprocess.call(command, env={**(env or os.environ), STATUS_FILE_ENV: status_file}) == 0:
            return 0
        return handed_over_status(status_file) or EXIT_FAILURE


def python_tool(module: str) -> list[str]:
    """The command line of a Python tool (``dvc``, ``torch.distributed.run``) run as a module of this very
    interpreter, never found by name on PATH (which may hold another environment's, or none)."""
    return [sys.executable, "-m", module]


def tool_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with this interpreter's scripts first on PATH, for commands that
    run further commands by name (DVC runs dvc.yaml's ``salgan ...`` and ``python -m ...``)."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _text(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError) and exc.filename:  # "[Errno 2] ..." -> "path: No such file ..."
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def setup_logging(name: str) -> None:
    """This package's messages at INFO as ``name: message`` on stderr; other libraries' at WARNING."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format=f"{name}: %(message)s")
    logging.getLogger("salgan").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:  # log lines quote URLs too (a download's retries)
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


# --- the salgan command --------------------------------------------------------------------------------


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: salgan COMMAND [ARGS...]",
        "",
        "SalGAN visual saliency prediction (Pan et al. 2017): data, training, scoring and serving.",
        "Settings come from params.yaml (override its path with --params where a command takes it).",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += [
        "",
        "Run 'salgan COMMAND --help' for a command's own options.",
        "Exit status: 0 done, 1 an input is unusable, 2 invalid settings or usage, 3 another failure",
        "(SALGAN_DEBUG=1 shows its traceback), 130 interrupted.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"salgan: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return EXIT_SETTINGS
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
