"""One flow at a time owns a workspace, so two runs never interleave their writes to dvc.lock,
params.yaml and the outputs."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_NAME = "salgan-workspace.lock"
OWNER_NAME = "salgan-workspace.owner"  # who holds the lock, for the message of whoever waits
WAIT_NOTICE_S = 300.0


@contextlib.contextmanager
def workspace_lock(workdir: str | Path, logger=None, poll_s: float = 1.0) -> Iterator[None]:
    """Hold the workspace's lock (``.dvc/tmp/salgan-workspace.lock``, a ``filelock.FileLock``).

    The kernel releases it when the holder dies, so a crashed run never wedges the workspace. The lock is
    one object per path and re-entrant within a thread, so the retraining flow can hold it around the
    pipeline subflow that takes it again. Waiting polls, so that a cancellation (SIGTERM) interrupts it,
    and says every few minutes who holds it.
    """
    dvc_dir = Path(workdir).resolve() / ".dvc"
    if not dvc_dir.is_dir():
        raise FileNotFoundError(f"{dvc_dir.parent} is not a DVC repository (no .dvc directory)")
    (dvc_dir / "tmp").mkdir(exist_ok=True)
    lock = FileLock(dvc_dir / "tmp" / LOCK_NAME, is_singleton=True)
    owner = dvc_dir / "tmp" / OWNER_NAME
    first = not lock.is_locked
    while True:
        try:
            lock.acquire(timeout=WAIT_NOTICE_S, poll_interval=poll_s)
            break
        except Timeout:
            if logger is not None:
                holder = owner.read_text().strip() if owner.exists() else "unknown"
                logger.info("workspace %s is busy (held by %s); waiting", dvc_dir.parent, holder)
    try:
        if first:
            from prefect.runtime import flow_run

            owner.write_text(json.dumps({"pid": os.getpid(), "flow_run": flow_run.get_id(), "since": time.time()}))
        yield
    finally:
        lock.release()
