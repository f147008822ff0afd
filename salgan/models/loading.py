"""A trained generator from a file or folder, read as weights only: the one way salgan opens a model.

:func:`load_generator` takes any of the forms a model reaches salgan in, and refuses anything else with
the reason (:class:`ModelError`):

- a generator state_dict (the train stage's ``generator.pt``), its input size read from the training
  checkpoint beside it when there is one;
- a training checkpoint (``checkpoint.pt``), holding the generator and the settings it was trained with;
- the folder of an MLflow model that salgan logged (:func:`salgan.tracking.models.log_generator`).

Nothing is unpickled and nothing from the model runs: every file is read with
``torch.load(weights_only=True)`` (:func:`salgan.checkpoint.load`), and an MLflow folder is accepted only
in salgan's own format, its MLmodel read as plain YAML (:func:`read_mlmodel`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from salgan import checkpoint
from salgan.encoder_table import PAPER_INPUT_SIZE
from salgan.errors import InputError
from salgan.layout import LOGGED_WEIGHTS, MODEL_KIND, ModelFiles
from salgan.models.architecture import generator_from_state_dict
from salgan.models.generator import Generator

MLMODEL = "MLmodel"
MAX_MLMODEL_BYTES = 1 << 20  # salgan's MLmodel is about 1 KB


class ModelError(InputError):
    """A model cannot be loaded; the message names it and says why."""


class LoadedGenerator(NamedTuple):
    """A generator in eval mode, and the input size (W, H) it was trained at: what its source records, else
    the paper's."""

    generator: Generator
    input_size: tuple[int, int]


def load_generator(source: str | Path) -> LoadedGenerator:
    """The generator of a weights file (a state_dict or a training checkpoint) or of a salgan MLflow model
    folder, weights only; raises :class:`ModelError` naming ``source`` and the reason."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_mlflow_dir(path)
    if path.is_file():
        return _from_weights(path)
    raise ModelError(f"{path}: no such file or directory")


def read_weights(path: Path) -> object:
    """What a weights file holds, read without unpickling code; :class:`ModelError` when it is none."""
    try:
        return checkpoint.load(path)
    except Exception as exc:  # pickle, zip and weights-only errors all mean: not a weights file
        raise ModelError(f"{path}: not a PyTorch weights file ({type(exc).__name__}: {exc})") from None


def _from_weights(path: Path) -> LoadedGenerator:
    """A generator state_dict, or a training checkpoint holding one (its config gives the input size)."""
    state = read_weights(path)
    config = None
    if isinstance(state, dict) and isinstance(state.get("generator"), dict):
        state, config = state["generator"], state.get("config")
    beside = ModelFiles(path.parent).checkpoint
    if config is None and beside.is_file() and path != beside:
        config = _checkpoint_config(beside)
    try:
        generator = generator_from_state_dict(state)
    except (ValueError, RuntimeError, AttributeError, TypeError) as exc:
        raise ModelError(f"{path}: not a SalGAN generator state_dict ({exc})") from None
    return LoadedGenerator(generator.eval(), _size(config["prepare"]["size"]) if config else PAPER_INPUT_SIZE)


def _checkpoint_config(path: Path) -> dict | None:
    """The settings a training checkpoint was made with (train saves one beside generator.pt)."""
    try:
        config = checkpoint.load(path).get("config")
    except Exception:  # a damaged checkpoint only costs the size hint
        return None
    return config if isinstance(config, dict) else None


def _from_mlflow_dir(path: Path) -> LoadedGenerator:
    """The generator of an MLflow model that salgan logged, read without running anything from it.

    MLflow's own loaders unpickle model files and import a model's ``code`` paths: a model from elsewhere
    could run code. So only salgan's own format is accepted: MLmodel (read as plain YAML) says
    ``metadata.kind: salgan-generator``, names no code paths, and the weights are the plain state_dict in
    ``extra_files/generator.pt``. Anything else is refused with the reason.
    """
    if not (path / MLMODEL).is_file():
        raise ModelError(f"{path}: a directory without an MLmodel file is not an MLflow model")
    meta = read_mlmodel(path)
    metadata = meta.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("kind") != MODEL_KIND:
        raise ModelError(f"{path}: not a SalGAN model logged by salgan (MLmodel metadata.kind is not {MODEL_KIND!r})")
    flavors = meta.get("flavors") or {}
    if not isinstance(flavors, dict) or not all(isinstance(f, dict) for f in flavors.values()):
        raise ModelError(f"{path}: MLmodel's flavors is not a mapping of flavor settings")
    if any(f.get("code") for f in flavors.values()):
        raise ModelError(f"{path}: the model names code paths; salgan runs no code from a model")
    weights = path / LOGGED_WEIGHTS
    linked = [p for p in (weights.parent, weights) if p.is_symlink()]
    if linked:  # the folder as well as the file: either could point anywhere
        raise ModelError(f"{path}: {linked[0].relative_to(path)} is a link; salgan reads only the model's own files")
    if not weights.is_file():
        raise ModelError(f"{path}: no {LOGGED_WEIGHTS} (salgan logs the generator's weights there)")
    try:
        generator = generator_from_state_dict(checkpoint.load(weights))
    except Exception as exc:  # pickled code, a damaged file, another network: all refused alike
        raise ModelError(f"{weights}: not a SalGAN generator state_dict ({type(exc).__name__}: {exc})") from None
    size = metadata.get("input_size")
    valid = isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)
    return LoadedGenerator(generator.eval(), _size(size) if valid else PAPER_INPUT_SIZE)


def read_mlmodel(path: Path) -> dict:
    """MLmodel of the model folder ``path`` as plain YAML: a regular file of at most ``MAX_MLMODEL_BYTES``,
    without YAML anchors or aliases (MLflow writes none; nested aliases expand exponentially, a "billion
    laughs"), holding a mapping. Raises :class:`ModelError` naming the reason."""
    import yaml

    file = path / MLMODEL
    try:
        if file.is_symlink() or file.stat().st_size > MAX_MLMODEL_BYTES:
            raise ModelError(f"{path}: MLmodel is a link or larger than {MAX_MLMODEL_BYTES} bytes; not salgan's")
        text = file.read_text()
        if any(isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) for event in yaml.parse(text)):
            raise ModelError(f"{path}: MLmodel uses YAML anchors or aliases, which salgan's never does; refused")
        meta = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelError(f"{path}: unreadable MLmodel ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: MLmodel is not a mapping (got {type(meta).__name__})")
    return meta


def _size(size) -> tuple[int, int]:
    return int(size[0]), int(size[1])
