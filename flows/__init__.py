"""Prefect flows around the DVC pipeline: run its stages on GPU workers, and retrain on a schedule.

``flows.pipeline`` runs dvc.yaml's stages (each ``dvc repro --single-item <stage>``, or one ``dvc exp run``);
``flows.retrain`` refreshes the data, trains a challenger as a DVC experiment and gates its promotion.
Deployments for both live in prefect.yaml at the repository root.
"""

import os

# Offline machines log Prefect's telemetry errors otherwise; an explicit setting still wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
