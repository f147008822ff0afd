"""What settings from outside the checkout may change (docs/security.md; DESIGN's Trust boundaries).

Flow and deployment parameters (anyone who reaches the Prefect API sets them) and an ablation profile
read from outside the checkout are untrusted; ``salgan ... -S`` and ``dvc exp run -S`` typed in your own
shell, and params.yaml in your checkout, are not. Each setting has a trust class in salgan/settings.py,
and an untrusted override may do only what its class allows:

- knob: any value the schema accepts (type, range, the rules between keys);
- place: a path that resolves, links followed, strictly inside the workspace, not into ``.git`` or
  ``.dvc`` and not onto files the checkout's git tracks (an output folder is replaced whole);
- host: a server, store, registry name or file from elsewhere (``mlflow.*``, ``download.source``,
  ``download.cache_dir``, ``model.encoder_weights`` when a path or URL): refused, unless the value is the
  one the workspace already has or one that names no host (``sample``, ``none``);
- limit: at most the workspace's own value (a flow may lower a limit, never raise it).

The worker's operator widens this with ``SALGAN_FLOW_ALLOWED_KEYS``: keys (``download.source``) or
sections (``mlflow.*``), separated by commas or spaces, that untrusted overrides may set to any valid value.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from salgan.errors import ConfigError
from salgan.settings import HOST, KNOB, LIMIT, PLACE, Params, flatten, to_dict
from salgan.urls import redact_text

ALLOWED_KEYS_ENV = "SALGAN_FLOW_ALLOWED_KEYS"
PROTECTED_FOLDERS = (".git", ".dvc")


def field_trust() -> dict[str, dict[str, Any]]:
    """``{"train.epochs": {"trust": "knob", "safe_values": []}, ...}`` for every setting of the schema."""
    found = {}
    for section, field in Params.model_fields.items():
        for name, info in field.annotation.model_fields.items():
            found[f"{section}.{name}"] = dict(info.json_schema_extra or {})
    return found


def allowed_keys() -> list[str]:
    """The key patterns the worker's operator lets untrusted overrides set freely."""
    return [key for key in re.split(r"[\s,;:]+", os.environ.get(ALLOWED_KEYS_ENV, "")) if key]


def check_untrusted(overrides: Mapping[str, Any], base: Params, workdir: str | Path, what: str = "override") -> None:
    """Refuse any of ``overrides`` (flat ``section.key``, already validated against the schema) that its
    trust class does not allow against ``base`` (the workspace's settings) in ``workdir``; the error names
    the key, the class and the reason, and how the operator may allow it."""
    trust, current, allowed = field_trust(), flatten(to_dict(base)), allowed_keys()
    root = Path(workdir).resolve()
    for key, value in flatten(overrides).items():
        kind, safe = trust[key].get("trust"), trust[key].get("safe_values") or []
        if kind == KNOB or value == current[key] or any(fnmatch.fnmatchcase(key, p) for p in allowed):
            continue
        widen = f"(the worker's operator may allow it: {ALLOWED_KEYS_ENV}={key})"
        if kind == HOST and value not in safe:
            raise ConfigError(
                f"{what} {key}: {redact_text(str(value))!r} names a server, store, registry name or file from "
                f"elsewhere (trust class host), which a flow parameter may not set {widen}"
            )
        if kind == PLACE:
            reason = _place_problem(str(value), root)
            if reason:
                raise ConfigError(
                    f"{what} {key}: {value!r} {reason}; a place (trust class place) must lie inside the workspace "
                    f"{root} {widen}"
                )
        if kind == LIMIT and value > current[key]:
            raise ConfigError(
                f"{what} {key}: {value!r} raises the workspace's limit {current[key]!r} (trust class limit: a "
                f"flow parameter may lower a limit, never raise it) {widen}"
            )
        if kind not in (KNOB, PLACE, HOST, LIMIT):
            raise ConfigError(f"{what} {key}: has no trust class in salgan/settings.py; refused")


def _place_problem(value: str, root: Path) -> str | None:
    """Why ``value`` (relative to ``root``, where the stages run) is not a place inside it, or None."""
    path = (root / value).resolve()  # links followed: a link inside the workspace pointing out is out
    if path == root:
        return "is the workspace itself"
    if root not in path.parents:
        return f"resolves to {path}, outside the workspace"
    if path.relative_to(root).parts[0] in PROTECTED_FOLDERS:
        return f"lies in the workspace's {path.relative_to(root).parts[0]} folder"
    if _tracked_by_git(root, path):
        return "holds files of the checkout itself (tracked by git)"
    return None


def _tracked_by_git(root: Path, path: Path) -> bool:
    """Whether git tracks ``path`` or anything below it in the checkout at ``root`` (False outside git)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", str(path.relative_to(root))],
            cwd=root,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return listed.returncode == 0 and bool(listed.stdout)
