"""Stage subprocesses: their output streamed into the flow's log, and their whole tree ended on any exit.

Each stage runs as a ``dvc`` subprocess in its own session; its stdout and stderr go line by line into the
Prefect logger, and a failure raises :class:`StageFailed` naming the stage, the exit code and the tail of
its stderr. Any exit from the task (failure, cancellation, SIGTERM from a worker, Ctrl-C) ends it and
every process below it; a record in the temp folder lets a cancellation hook running in another process
(the worker's) end them even if the flow process was SIGKILLed first.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from salgan.cli import EXIT_FAILURE, STATUS_FILE_ENV, handed_over_status, tool_env
from salgan.errors import CommandFailed
from salgan.layout import FLOW_RUN_ENV
from salgan.urls import redact_text

STDERR_TAIL_LINES = 25
# Seconds a stage gets to exit after SIGTERM before the whole tree is SIGKILLed; below the runner's
# own grace period so that cleanup finishes before the flow process itself is killed.
KILL_GRACE_S = 10.0


class StageFailed(CommandFailed):
    """A pipeline stage's subprocess exited non-zero; the message carries its stderr tail, ``exit_status``
    the status its salgan command reported (salgan/cli.py: 1 an input, 2 the settings; DVC's own exit code
    says only that a stage failed), 3 when it reported none."""

    def __init__(
        self,
        stage: str,
        returncode: int,
        command: Sequence[str],
        stderr_tail: Sequence[str],
        exit_status: int | None = None,
    ):
        self.stage, self.returncode, self.stderr_tail = stage, returncode, list(stderr_tail)
        if returncode < 0:
            how = f"was killed by {signal.Signals(-returncode).name}"
        else:
            how = f"failed with exit code {returncode}"
        tail = "\n".join(self.stderr_tail) or "(no stderr output)"
        message = redact_text(f"stage {stage!r} {how} ({' '.join(command)}); last stderr lines:\n{tail}")
        super().__init__(message, exit_status or EXIT_FAILURE)


def _stage_env(status_file: Path) -> dict[str, str]:
    """The environment for a stage: this interpreter's tools first on PATH (the ``salgan`` and ``python`` of
    dvc.yaml's commands, and dvc itself, with or without an activated environment), Python children
    unbuffered so lines reach the log as they happen, the flow run named so that the stage's MLflow run is
    tagged with it, and where a failing salgan command hands over its exit status."""
    from prefect.runtime import flow_run

    env = tool_env()
    env[STATUS_FILE_ENV] = str(status_file)
    if flow_run.get_id():
        env[FLOW_RUN_ENV] = str(flow_run.get_id())
    env.setdefault("PYTHONUNBUFFERED", "1")
    # tqdm bars redraw with \r, which would become a log record per refresh: refresh them rarely.
    env.setdefault("TQDM_MININTERVAL", "30")
    return env


def _pump(stream, sink, tail: collections.deque | None = None) -> None:
    """Forward each line of ``stream`` to ``sink``, keeping the last lines in ``tail``; secrets redacted
    (a stage may quote a signed URL, and the flow's log is kept on the Prefect server)."""
    for raw in stream:
        line = redact_text(raw.rstrip())
        if not line:
            continue
        if tail is not None:
            tail.append(line)
        sink(line)


def _descendants(pid: int) -> list:
    """Every live process below ``pid``, including those that left its session (torchrun's workers do)."""
    import psutil  # a dvc dependency; imported here because only cleanup needs it

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_tree(proc: subprocess.Popen, grace: float = KILL_GRACE_S) -> None:
    """End ``proc``, its process group and every descendant: SIGTERM, then SIGKILL after ``grace`` seconds.

    The group reaches processes whose parent already died (re-parented, so no longer "below" ``proc``);
    the snapshot of descendants reaches those that started a session of their own.
    """
    import psutil

    descendants = _descendants(proc.pid)
    _signal_group(proc.pid, signal.SIGTERM)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    _, alive = psutil.wait_procs(descendants, timeout=max(0.1, grace / 2))
    _signal_group(proc.pid, signal.SIGKILL)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run_streaming(command: Sequence[str], cwd: str | Path, label: str, logger) -> None:
    """Run ``command`` in ``cwd`` with its output in ``logger``; raise ``StageFailed`` when it fails.

    The child gets its own session (``start_new_session``) so that it can be ended as a whole without
    signalling this process; the ``finally`` ends it on any exception, including Prefect's
    ``TerminationSignal`` (a worker cancelling the run sends SIGTERM) and ``KeyboardInterrupt``.
    """
    logger.info("[%s] $ %s", label, redact_text(" ".join(command)))  # -S download.source=<a signed URL>
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    with tempfile.TemporaryDirectory(prefix="salgan-stage-") as scratch:
        status_file = Path(scratch) / "status"
        proc = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=_stage_env(status_file),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        record = None
        try:
            record = _record_stage_process(proc)
            err_thread = threading.Thread(
                target=_pump, args=(proc.stderr, lambda line: logger.info("[%s] %s", label, line), tail), daemon=True
            )
            err_thread.start()
            _pump(proc.stdout, lambda line: logger.info("[%s] %s", label, line))
            proc.wait()
            err_thread.join(timeout=5)
        finally:
            if proc.poll() is None:
                logger.warning("[%s] interrupted: ending process group %d and its descendants", label, proc.pid)
                kill_tree(proc)
            _forget_stage_process(record)
        if proc.returncode != 0:
            raise StageFailed(label, proc.returncode, command, tail, handed_over_status(status_file))


# A record of the running stage's processes, per flow run, so that a cancellation hook running in
# another process (the worker's) can still end them if the flow process was SIGKILLed first.
def _records_dir() -> Path:
    return Path(tempfile.gettempdir()) / "salgan-flow-stages"


def _record_stage_process(proc: subprocess.Popen) -> Path | None:
    from prefect.runtime import flow_run

    if not flow_run.get_id():
        return None
    try:
        # The root run: a worker cancels the deployment's run, whose hooks then look for this record.
        run_id = flow_run.get_root_flow_run_id()
    except Exception:
        run_id = flow_run.get_id()
    import psutil

    folder = _records_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_id}.json"
    with contextlib.suppress(psutil.Error):
        path.write_text(json.dumps({"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time()}))
        return path
    return None


def _forget_stage_process(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def end_recorded_stage(flow, flow_run, state) -> None:
    """Flow hook (cancellation, crash): end a stage process recorded for ``flow_run`` if it still runs.

    Normally ``run_streaming``'s ``finally`` has already done it; this covers a flow process killed
    before it could clean up. The creation time guards against a recycled pid.
    """
    import psutil

    path = _records_dir() / f"{flow_run.id}.json"
    if not path.exists():
        return
    record = json.loads(path.read_text())
    path.unlink(missing_ok=True)
    try:
        leader = psutil.Process(record["pid"])
        if abs(leader.create_time() - record["create_time"]) > 1e-3:
            return
    except psutil.Error:
        _signal_group(record["pid"], signal.SIGKILL)  # the leader is gone; its group may not be
        return
    for proc in [*leader.children(recursive=True), leader]:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _signal_group(record["pid"], signal.SIGKILL)
