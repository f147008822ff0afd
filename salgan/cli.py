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

Progress bars are salgan/progress.py's: only on a terminal, on rank 0, and not with ``SALGAN_PROGRESS=0``.
This file imports a subcommand's module only when it runs, so ``salgan --help`` stays fast and needs no
optional package.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable

from salgan.errors import ConfigError, InputError
from salgan.urls import RedactingFilter, redact_text

EXIT_INPUT, EXIT_SETTINGS, EXIT_FAILURE, EXIT_INTERRUPTED = 1, 2, 3, 130

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


def run_command(name: str, action: Callable[[], int | None]) -> int:
    """Run a subcommand's work with the common logging, and turn its failure into a message and a status."""
    setup_logging(name)

    def report(message: str) -> None:
        print(f"salgan {name}: {redact_text(message)}", file=sys.stderr)  # URLs may quote secrets

    try:
        return int(action() or 0)
    except ConfigError as exc:
        report(str(exc))
        return EXIT_SETTINGS
    except (InputError, FileNotFoundError) as exc:
        report(_text(exc))
        return EXIT_INPUT
    except KeyboardInterrupt:
        report("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 -- the last resort: one line, the traceback on request
        if os.environ.get("SALGAN_DEBUG") == "1":
            raise
        report(f"failed: {type(exc).__name__}: {exc} (SALGAN_DEBUG=1 shows the traceback)")
        return EXIT_FAILURE


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
