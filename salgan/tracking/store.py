"""The one access point to MLflow: where it is, the client every call goes through, the experiment a run
belongs to, and what to do when it does not answer.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else ``mlflow.tracking_uri`` from params.yaml (the
embedded ``sqlite:///mlflow.db`` with artifacts in ./mlruns). :func:`client` gives the configured
``MlflowClient`` for it; salgan never sets MLflow's process-wide state (a tracking URI, an experiment or
an active run of the fluent API): runs are continued by their ids (:mod:`salgan.tracking.runs`), so one
process can run stages under different settings, and nothing leaks from one to the next.

MLflow is never allowed to stop the pipeline: an unreachable or failing server costs one
:class:`TrackingUnavailableWarning`, and everything that matters is on disk anyway (history.json,
snapshots, reports).
"""

from __future__ import annotations

import contextlib
import os
import warnings

from mlflow import MlflowClient
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


def configure_environment() -> None:
    """Short HTTP timeouts (unless the user chose others), and no pickle deserialisation: salgan never
    unpickles a model (salgan.models.load_generator reads weights only), nor may MLflow on its behalf."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"


def client(params: Params) -> MlflowClient:
    """The client for ``params``' tracking URI (registry included), the environment configured first."""
    configure_environment()
    uri = tracking_uri(params)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlflow_client: MlflowClient, name: str) -> str:
    """The id of the experiment ``name``, created if it does not exist yet (by another process meanwhile
    too)."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow_client.create_experiment(name)
    except MlflowException:
        found = mlflow_client.get_experiment_by_name(name)  # created by a concurrent stage
        if found is None:
            raise
        return found.experiment_id


def warn_unavailable(action: str, exc: BaseException, uri: str) -> None:
    """The one warning a failed tracking call costs (URLs redacted: error messages quote them)."""
    first_line = redact_text(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
    warnings.warn(
        f"MLflow at {redact_url(uri)}: could not {action} ({first_line[:300]}); carrying on without it "
        "(`salgan track` logs the run once it answers)",
        TrackingUnavailableWarning,
        stacklevel=3,
    )
