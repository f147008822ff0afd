"""The ``salgan`` command: one subcommand per pipeline stage plus the registry and prediction tools.

Each subcommand lives in its own module with a ``main(argv) -> int``; this file only dispatches, and
imports a module when its command runs, so ``salgan --help`` stays fast and needs no optional package.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "download": ("salgan.download", "fetch SALICON (or generate the offline sample) into data/raw"),
    "prepare": ("salgan.prepare", "resize images and maps into arrays for training"),
    "train": ("salgan.train", "train SalGAN (BCE pre-training, then adversarial); run under torchrun"),
    "evaluate": ("salgan.evaluate", "score the validation split with the full metric suite"),
    "predict": ("salgan.predict", "saliency maps for images, from a registry model or a weights file"),
    "package": ("salgan.package", "build the SALICON challenge submission archive"),
    "registry": ("salgan.registry", "list registered models and promote the challenger to champion"),
    "mirror": ("salgan.mirror", "upload the raw SALICON zips to an S3 mirror with their checksums"),
    "ablation": ("salgan.ablation", "print DVC experiments' metrics beside the seed paper's Table I"),
}


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
    lines += ["", "Run 'salgan COMMAND --help' for a command's own options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"salgan: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
