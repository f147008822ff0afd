"""``salgan track``: log the workspace's finished run to MLflow when the server was down while it ran.

The stages never wait for MLflow (:mod:`salgan.tracking.store`), and what they could not log is on disk:
the settings, the epochs in ``history.json``, ``metrics.json`` and the reports. Once the server answers
again, this logs them, and logs nothing twice:

- training: when ``train.output`` records no run on this tracking store, a new run with the settings and
  every epoch's metrics at ``step=epoch`` (tag ``replayed_from``); a recorded run is left as it is;
- evaluation: its metrics and reports, and the generator registered as ``challenger``
  (:func:`salgan.tracking.models.record_evaluation`, which reuses a version with the same weights).
"""

from __future__ import annotations

import json
from pathlib import Path

from salgan.cli import command_parser, run_command
from salgan.errors import ConfigError, InputError
from salgan.layout import ModelFiles, ReportFiles
from salgan.settings import Params, load_params
from salgan.urls import redact_url


def replay(params: Params) -> str:
    """Log what is missing; returns the registered version. Raises when MLflow is still unreachable."""
    from mlflow.exceptions import MlflowException

    from salgan.evaluate import record_to_mlflow
    from salgan.tracking.runs import TrainingTracker, recorded_run_id
    from salgan.tracking.store import client, tracking_uri

    if not params.mlflow.enabled:
        raise ConfigError("mlflow.enabled is false in the settings: nothing to log")
    uri = tracking_uri(params)
    trained, reports = ModelFiles(Path(params.train.output)), ReportFiles(Path(params.evaluate.output))
    for path in (trained.history, trained.generator, reports.metrics):
        if not path.is_file():
            raise InputError(f"{path}: missing; run the pipeline (dvc repro) before logging it")
    run_id = recorded_run_id(params)
    if run_id:
        try:
            client(params).get_run(run_id)
        except MlflowException:
            run_id = None
    if run_id:
        print(f"training: already logged as run {run_id}")
    else:
        history = json.loads(trained.history.read_text())
        run_id = TrainingTracker(params).replay(history, trained.generator)
        print(f"training: logged as run {run_id} ({len(history)} epochs from {trained.history})")
    version = record_to_mlflow(params, json.loads(reports.metrics.read_text()), reports, trained.generator)
    if version is None:
        raise RuntimeError(f"MLflow at {redact_url(uri)} did not take the evaluation (see the warning above)")
    return version


def main(argv: list[str] | None = None) -> int:
    """``salgan track`` (exit statuses: salgan/cli.py)."""

    parser = command_parser(
        "track",
        "Log this workspace's finished run to MLflow: the training run with every epoch (unless it is logged "
        "already), the evaluation, and the generator registered as challenger. For after a pipeline ran "
        "while the tracking server was down; running it twice logs nothing twice.",
    )
    args = parser.parse_args(argv)
    return run_command("track", lambda: replay(load_params(args.params)) and 0)
