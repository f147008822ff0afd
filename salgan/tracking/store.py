"""Where MLflow is and what to do when it does not answer.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else ``mlflow.tracking_uri`` from params.yaml (the
embedded ``sqlite:///mlflow.db`` with artifacts in ./mlruns). MLflow is never allowed to stop the
pipeline: an unreachable or failing server costs one :class:`TrackingUnavailableWarning`, and everything
that matters is on disk anyway (history.json, snapshots, reports).
"""

from __future__ import annotations

import contextlib
import os
import warnings

import mlflow
from mlflow.exceptions import MlflowException

from salgan.settings import Params
from salgan.urls import redact_text, redact_url

# Short client timeouts: MLflow's defaults (7 retries with exponential backoff, 120 s timeout) would stall
# every training epoch for minutes while a server is down. Set only where the user has not chosen.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


class TrackingUnavailableWarning(UserWarning):
    """MLflow could not be reached or refused a request; the pipeline goes on without it."""


def _tracking_errors() -> tuple[type[BaseException], ...]:
    """What a failing store or server raises: MLflow's own errors, HTTP/socket errors, database errors."""
    errors: list[type[BaseException]] = [MlflowException, OSError]
    with contextlib.suppress(ImportError):
        import requests

        errors.append(requests.exceptions.RequestException)
    with contextlib.suppress(ImportError):
        import sqlalchemy.exc

        errors.append(sqlalchemy.exc.SQLAlchemyError)
    return tuple(errors)


TRACKING_ERRORS = _tracking_errors()


def tracking_uri(params: Params) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else ``mlflow.tracking_uri`` from params."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri


def configure(params: Params) -> str:
    """Short HTTP timeouts (unless set), no pickle deserialisation, and the tracking URI for the fluent API;
    returns the URI."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # salgan never unpickles a model (salgan.predict reads weights only); nor may MLflow on its behalf.
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    uri = tracking_uri(params)
    with _not_exported("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(uri)
    return uri


@contextlib.contextmanager
def _not_exported(name: str):
    """MLflow's setters also export what they set (for subprocesses); there, it would win over the next
    params' setting in this process (one process that runs stages with other settings, the tests). Keep the
    environment as it was: what the user set stays, what salgan picked stays in MLflow only."""
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def use_experiment(name: str | None = None, experiment_id: str | None = None) -> None:
    """``mlflow.set_experiment`` without exporting ``MLFLOW_EXPERIMENT_ID`` (see :func:`_not_exported`)."""
    with _not_exported("MLFLOW_EXPERIMENT_ID"):
        mlflow.set_experiment(experiment_name=name, experiment_id=experiment_id)


def warn_unavailable(action: str, exc: BaseException, uri: str) -> None:
    """The one warning a failed tracking call costs (URLs redacted: error messages quote them)."""
    first_line = redact_text(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
    warnings.warn(
        f"MLflow at {redact_url(uri)}: could not {action} ({first_line[:300]}); carrying on without it "
        "(`salgan track` logs the run once it answers)",
        TrackingUnavailableWarning,
        stacklevel=3,
    )
