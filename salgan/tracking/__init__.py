"""MLflow, by concern: the one access point, its client and what to do when MLflow does not answer
(:mod:`.store`), the run of a pipeline run and its tags (:mod:`.runs`), the generator as an MLflow model
(:mod:`.models`), the registry with its alias policy and promotion rule (:mod:`.registry`), the lock one
promotion at a time holds (:mod:`.lock`), and what a score depends on (:mod:`.fingerprint`).

One MLflow run per pipeline run: train opens it, evaluate, predict and package continue it by its id. MLflow never
stops the pipeline: a failing server costs one warning. Import the submodule you need (this package's
own import loads no MLflow code, so a stage loads only what it uses, and the core install works without it).
"""

import logging

_log = logging.getLogger(__name__)


def enabled(params) -> bool:
    """MLflow is on in params.yaml and installed. The core install has no MLflow: the stages then record
    nothing, and say so once."""
    if not params.mlflow.enabled:
        return False
    try:
        import mlflow  # noqa: F401
    except ImportError:
        _log.warning("MLflow is not installed (pip install '.[tracking]'): nothing is recorded")
        return False
    return True
