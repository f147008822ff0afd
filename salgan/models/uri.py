"""A generator named as ``salgan predict --model``, ``salgan evaluate --model`` and ``model.init_from`` name
one: a local weights file or salgan MLflow model folder, or an MLflow URI (``models:/NAME@ALIAS``,
``models:/NAME/N``, ``runs:/ID/model``) fetched through the tracking store; opened, either way, by the one
weights-only loader (:func:`salgan.models.loading.load_generator`).

Not part of ``salgan.models``' own imports: the MLflow side (salgan/tracking/models.py) logs generators
through that package, and is loaded here only for a URI.
"""

from __future__ import annotations

from pathlib import Path

from salgan.models.loading import LoadedGenerator, ModelError, load_generator
from salgan.settings import Params
from salgan.urls import redact_text


def open_model(uri: str, params: Params, key: str = "--model") -> LoadedGenerator:
    """The generator at ``uri`` and its input size; :class:`ModelError` naming ``key`` (the option or setting
    that gave it), the model and the reason."""
    path = Path(uri).expanduser()
    if path.is_file() or path.is_dir():
        try:
            return load_generator(path)
        except ModelError as exc:
            raise ModelError(f"{key} {exc}") from None
    if ":" not in uri:
        raise ModelError(f"{key} {uri}: no such file or directory, and not an MLflow URI")
    from salgan.tracking.models import fetched_model  # MLflow: imported only for a URI

    try:
        with fetched_model(uri, params) as local:
            return load_generator(local)
    except ModelError:
        raise
    except Exception as exc:  # MlflowException, botocore and HTTP errors alike: the URI is unusable
        raise ModelError(f"{key} {uri}: cannot fetch the MLflow model: {redact_text(str(exc))}") from None
