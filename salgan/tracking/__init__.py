"""MLflow, by concern: where it is and what to do when it does not answer (:mod:`.store`), the run of a
pipeline run and its tags (:mod:`.runs`), the generator as an MLflow model (:mod:`.models`), and the
registry with its alias policy and promotion gate (:mod:`.registry`).

One MLflow run per pipeline run: train opens it, evaluate, predict and package continue it. MLflow never
stops the pipeline: a failing server costs one warning.
"""

from salgan.tracking.models import download_model, log_generator, record_evaluation
from salgan.tracking.runs import TrainingTracker, continue_run, parent_run, record_prediction, run_tags
from salgan.tracking.store import TRACKING_ERRORS, TrackingUnavailableWarning, configure, tracking_uri

__all__ = [
    "TRACKING_ERRORS",
    "TrackingUnavailableWarning",
    "TrainingTracker",
    "configure",
    "continue_run",
    "download_model",
    "log_generator",
    "parent_run",
    "record_evaluation",
    "record_prediction",
    "run_tags",
    "tracking_uri",
]
