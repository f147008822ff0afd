"""Fine-tuning (``model.init_from``) and the record of which datasets a model was trained and scored on.

``model.init_from`` names a generator as ``salgan predict --model`` does (``models:/NAME@ALIAS``,
``models:/NAME/N``, ``runs:/ID/model``, an MLflow model folder or a weights file); training then starts
from its weights and its architecture (encoder, width: ``model.encoder``, ``model.width`` and
``model.encoder_weights`` do not apply; ``model.freeze_blocks`` still freezes its first stages). It is read
with salgan's weights-only loader (:func:`load_init_model`), never unpickled. The usual recipe is SALICON
pre-training then MIT1003 fine-tuning (README: Your own data), as the SalGAN paper's MIT300 entry.

The train stage writes ``<train.output>/lineage.json``: the datasets the weights were trained on, oldest
first (the init model's own, read from its registered version's ``trained_on`` tag or the lineage.json
beside its file, then this run's), the init model and a digest of its weights. Evaluate turns it into the
registered version's tags (:func:`dataset_tags`): ``trained_on`` (``salicon,mit1003``), ``scored_on`` (the
val split's dataset) and ``init_from``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from salgan.datasets import prepared_dataset
from salgan.errors import ConfigError
from salgan.layout import ModelFiles, write_atomic
from salgan.models import generator_from_state_dict
from salgan.models.density import DensityGenerator
from salgan.models.uri import open_model
from salgan.urls import REGISTRY_URI

TRAINED_ON, SCORED_ON, INIT_FROM = "trained_on", "scored_on", "init_from"  # registered versions' tags
UNKNOWN = "unknown"  # a dataset nothing records (a weights file from elsewhere)


@dataclass
class InitModel:
    """The generator training starts from: its weights, their digest, and the datasets it was trained on."""

    uri: str
    state: dict[str, torch.Tensor]
    digest: str
    trained_on: list[str]


def load_init_model(uri: str, params) -> torch.nn.Module:
    """The generator at ``uri`` through salgan's weights-only loader, as ``salgan predict --model`` opens it
    (:func:`salgan.models.uri.open_model`)."""
    return open_model(uri, params, "model.init_from").generator


def resolve(params) -> InitModel | None:
    """``model.init_from`` loaded, or None when it is ``none``. Raises the loader's :class:`InputError`
    naming the URI when it cannot be opened."""
    uri = params.model.init_from
    if uri == "none":
        return None
    generator = load_init_model(uri, params)
    state = {key: value.detach().cpu().clone() for key, value in generator.state_dict().items()}
    return InitModel(uri, state, state_digest(state), _lineage_of(uri, params))


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """A short sha256 over a state_dict's keys, dtypes, shapes and values (the same weights, whatever file)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def initial_generator(init: InitModel, model_params) -> torch.nn.Module:
    """A generator of ``init``'s architecture holding its weights, ``model.freeze_blocks`` stages frozen."""
    generator = generator_from_state_dict(init.state)
    if isinstance(generator, DensityGenerator) != (model_params.output == "density"):
        kind = "a density" if isinstance(generator, DensityGenerator) else "a map"
        raise ConfigError(f"model.init_from: {init.uri} is {kind} model; set model.output to match it")
    if model_params.freeze_blocks:
        generator.freeze_blocks(model_params.freeze_blocks)
    return generator


def _lineage_of(uri: str, params) -> list[str]:
    """The datasets the model at ``uri`` was trained on: a registered version's ``trained_on`` tag, or the
    lineage.json beside a weights file; ``[unknown]`` when nothing records them."""
    path = Path(uri).expanduser()
    if path.is_file():
        recorded = read_lineage(path.parent)
        return list(recorded.get(TRAINED_ON) or [UNKNOWN]) if recorded else [UNKNOWN]
    if uri.startswith("models:/") and not uri.startswith("models:/m-"):
        tag = _version_tag(uri, params, TRAINED_ON)
        return tag.split(",") if tag else [UNKNOWN]
    return [UNKNOWN]


def _version_tag(uri: str, params, key: str) -> str | None:
    """A tag of the registered version ``models:/NAME@ALIAS`` or ``models:/NAME/N`` names (None for another
    ``models:/`` URI)."""
    from salgan.tracking.store import client  # MLflow: imported only for a registry URI

    match = REGISTRY_URI.fullmatch(uri)
    if match is None:
        return None
    mlflow_client = client(params)
    if match["alias"]:
        version = mlflow_client.get_model_version_by_alias(match["name"], match["alias"])
    else:
        version = mlflow_client.get_model_version(match["name"], match["version"])
    return version.tags.get(key)


def lineage(params, init: InitModel | None) -> dict:
    """What ``lineage.json`` records for a run on ``train.data`` starting from ``init``."""
    trained_on = [*(init.trained_on if init else []), prepared_dataset(params.train.data)]
    record = {TRAINED_ON: trained_on}
    if init is not None:
        record |= {INIT_FROM: init.uri, "init_weights": init.digest}
    return record


def write_lineage(output: str | Path, record: dict) -> None:
    write_atomic(ModelFiles(Path(output)).lineage, json.dumps(record, indent=2) + "\n")


def read_lineage(output: str | Path) -> dict | None:
    """``<output>/lineage.json``, or None when there is none (a model trained before it existed)."""
    try:
        record = json.loads(ModelFiles(Path(output)).lineage.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def dataset_tags(params) -> dict[str, str]:
    """The registered version's tags: ``trained_on`` (oldest first, comma-separated), ``scored_on`` (the
    val split's dataset) and, for a fine-tuned model, ``init_from``."""
    recorded = read_lineage(params.train.output) or {}
    trained_on = recorded.get(TRAINED_ON) or [prepared_dataset(params.train.data)]
    tags = {TRAINED_ON: ",".join(trained_on), SCORED_ON: prepared_dataset(params.train.data)}
    if recorded.get(INIT_FROM):
        tags[INIT_FROM] = str(recorded[INIT_FROM])
    return tags
