"""The scoring fingerprint: everything a validation score of given weights depends on.

Two scores are comparable only when they were taken on the same val split (and the same train split,
from which the information-gain baseline is built), under the same scoring settings, by the same scoring
code, at the model's own input size and with the same arithmetic. Evaluate records the fingerprint with
its scores (``reports/metrics.json`` and the registered version's :data:`FINGERPRINT_TAG`); the promotion
gate uses a recorded number only when the recorded fingerprint equals today's for that version
(:func:`differences` is empty) and otherwise scores the version again.

The settings part is derived from the schema: every setting marked ``scores`` in :mod:`salgan.settings`
(:func:`salgan.settings.scoring_keys`), so a new scoring setting enters the fingerprint when it is marked.
The code part is :func:`salgan.layout.code_version` of :data:`salgan.layout.SCORING_CODE`.
"""

from __future__ import annotations

import json
from typing import Any

from salgan.layout import SCORING_CODE, code_version, split_version
from salgan.settings import Params, flatten, scoring_keys, to_dict

FINGERPRINT_TAG = "scoring_fingerprint"  # the registered version's tag: the JSON of its fingerprint
FIELDS = ("val", "train", "settings", "code", "inference", "input_size", "weights")


def scoring_settings(params: Params) -> dict[str, Any]:
    """The value of every setting that changes a score, by ``section.key``."""
    flat = flatten(to_dict(params))
    return {key: flat[key] for key in scoring_keys()}


def inference_kind() -> str:
    """The arithmetic a score is computed with: evaluate and the gate predict in bf16 on a GPU, in fp32 on
    the CPU (salgan.inference), and the two give slightly different maps."""
    from salgan.inference import default_device

    return "cuda-bf16" if default_device().type == "cuda" else "cpu-fp32"


def today(params: Params) -> dict[str, Any]:
    """The fingerprint fields that do not depend on the model: data (``train.data``), settings, code."""
    data = params.train.data
    return {
        "val": split_version(data, "val"),
        "train": split_version(data, "train"),
        "settings": scoring_settings(params),
        "code": code_version(SCORING_CODE),
        "inference": inference_kind(),
    }


def fingerprint(common: dict[str, Any], input_size: tuple[int, int] | list[int], weights_sha256: str) -> dict:
    """:func:`today`'s fields for one model: its input size [W, H] and the sha256 of its weights."""
    return {**common, "input_size": [int(input_size[0]), int(input_size[1])], "weights": weights_sha256}


def differences(recorded: dict | None, current: dict) -> list[str]:
    """The fields in which ``recorded`` differs from ``current`` (``settings <key>`` for a setting); empty
    when the two are the same fingerprint. ``recorded`` None: ``["none recorded"]``."""
    if not recorded:
        return ["none recorded"]
    changed = []
    for field in FIELDS:
        if field == "settings":
            mine, theirs = recorded.get("settings") or {}, current.get("settings") or {}
            changed += [
                f"settings {key}" for key in sorted(set(mine) | set(theirs)) if mine.get(key) != theirs.get(key)
            ]
        elif recorded.get(field) != current.get(field):
            changed.append(field)
    return changed


def encode(value: dict) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def decode(text: str | None) -> dict | None:
    """A recorded fingerprint, or None when there is none or it is not one."""
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
