"""The DVC pipeline as a Prefect flow: one task per stage, each a ``dvc`` subprocess.

Every stage runs as ``dvc repro --single-item <stage>`` in the workspace, so DVC alone decides what is
up to date and dvc.lock stays the record of what ran; with parameter overrides (or ``experiment=True``)
the whole pipeline runs as one ``dvc exp run -S key=value ...`` instead. Around each subprocess:

- its stdout and stderr go line by line into the Prefect logger, and a failure raises ``StageFailed``
  naming the stage, the exit code and the tail of its stderr;
- ``download`` is retried with exponential backoff (networks and mirrors fail transiently);
- GPU-heavy stages hold a slot of the global concurrency limit ``gpu`` when the server has one;
- the subprocess starts in its own session, and any exit from the task (failure, cancellation, SIGTERM
  from a worker, Ctrl-C) ends it and every process below it;
- one flow at a time owns a workspace (a file lock in ``.dvc/tmp``), so two runs never interleave
  their writes to dvc.lock, params.yaml and the outputs.

Run locally on the ephemeral API server: ``python -m flows.pipeline`` (``--help`` for the options).
"""

import argparse
import collections
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.tasks import exponential_backoff

from salgan.layout import FLOW_RUN_ENV
from salgan.settings import override_args

# Stages that occupy the machine's GPUs: training under torchrun, and full-resolution inference.
GPU_STAGES = frozenset({"train", "predict"})
GPU_LIMIT = "gpu"
# Retries of the download stage; delays grow as base, 2*base, 4*base seconds.
DOWNLOAD_RETRIES = 3
RETRY_BASE_ENV = "SALGAN_RETRY_DELAY_S"
DEFAULT_RETRY_BASE_S = 30.0
STDERR_TAIL_LINES = 25
# Seconds a stage gets to exit after SIGTERM before the whole tree is SIGKILLed; below the runner's
# own grace period so that cleanup finishes before the flow process itself is killed.
KILL_GRACE_S = 10.0


class StageFailed(RuntimeError):
    """A pipeline stage's subprocess exited non-zero; the message carries its stderr tail."""

    def __init__(self, stage: str, returncode: int, command: Sequence[str], stderr_tail: Sequence[str]):
        self.stage, self.returncode, self.stderr_tail = stage, returncode, list(stderr_tail)
        if returncode < 0:
            how = f"was killed by {signal.Signals(-returncode).name}"
        else:
            how = f"failed with exit code {returncode}"
        tail = "\n".join(self.stderr_tail) or "(no stderr output)"
        super().__init__(f"stage {stage!r} {how} ({' '.join(command)}); last stderr lines:\n{tail}")


# ---------------------------------------------------------------------------------------------------------
# Stages and commands


def pipeline_stages(workdir: str | Path) -> list[str]:
    """The stage names of ``workdir``'s dvc.yaml, in the file's (execution) order."""
    spec = yaml.safe_load((Path(workdir) / "dvc.yaml").read_text()) or {}
    return list(spec.get("stages") or {})


def select_stages(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """``requested`` (all when None) in pipeline order; unknown names are an error that lists the known."""
    if not requested:
        return list(available)
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {list(available)}")
    return [name for name in available if name in requested]


def repro_command(stage: str, force: bool = False) -> list[str]:
    """``dvc repro`` of one stage alone: its upstream stages are separate tasks of the flow."""
    return ["dvc", "repro", "--single-item", *(["--force"] if force else []), stage]


def experiment_command(overrides: dict[str, Any] | None, targets: Sequence[str] = ()) -> list[str]:
    """One ``dvc exp run`` for the whole pipeline (or up to ``targets``) with parameter overrides, each
    validated against the settings schema and written so that DVC reads a plain value, never syntax."""
    return ["dvc", "exp", "run", *override_args(overrides), *targets]


def checked_overrides(overrides: dict[str, Any] | None, workdir: str | Path) -> dict[str, Any] | None:
    """A flow's ``overrides`` parameter (anyone who reaches the Prefect API can set it) validated against
    the schema and the workspace's params.yaml before anything runs; raises naming the key and reason."""
    if not overrides:
        return None
    from salgan.settings import load_params, validate_overrides

    return validate_overrides(overrides, load_params(Path(workdir) / "params.yaml", require_all=False))


# ---------------------------------------------------------------------------------------------------------
# Subprocesses: streamed output, stderr tail, and the whole tree ended on any exit


def _stage_env() -> dict[str, str]:
    """The environment for a stage: Python children unbuffered so lines reach the log as they happen, and
    the flow run named so that the stage's MLflow run is tagged with it."""
    from prefect.runtime import flow_run

    env = dict(os.environ)
    if flow_run.get_id():
        env[FLOW_RUN_ENV] = str(flow_run.get_id())
    env.setdefault("PYTHONUNBUFFERED", "1")
    # tqdm bars redraw with \r, which would become a log record per refresh: refresh them rarely.
    env.setdefault("TQDM_MININTERVAL", "30")
    return env


def _pump(stream, sink, tail: collections.deque | None = None) -> None:
    """Forward each line of ``stream`` to ``sink``, keeping the last lines in ``tail``."""
    for raw in stream:
        line = raw.rstrip()
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
    logger.info("[%s] $ %s", label, " ".join(command))
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    proc = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=_stage_env(),
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
        raise StageFailed(label, proc.returncode, command, tail)


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


# ---------------------------------------------------------------------------------------------------------
# Workspace lock and GPU slots

_held_locks = threading.local()


@contextlib.contextmanager
def workspace_lock(workdir: str | Path, logger=None, poll_s: float = 1.0) -> Iterator[None]:
    """Hold the workspace's lock: one flow at a time runs DVC in a checkout.

    An exclusive ``flock`` on ``.dvc/tmp/salgan-workspace.lock``: released by the kernel when the holder
    dies, so a crashed run never wedges the workspace. Re-entrant within a thread, so the retraining flow
    can hold it around the pipeline subflow that takes it again. Waiting polls, so that a cancellation
    (SIGTERM) interrupts it.
    """
    dvc_dir = Path(workdir).resolve() / ".dvc"
    if not dvc_dir.is_dir():
        raise FileNotFoundError(f"{dvc_dir.parent} is not a DVC repository (no .dvc directory)")
    key = str(dvc_dir)
    held = _held_locks.__dict__.setdefault("counts", {})
    if held.get(key):
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    (dvc_dir / "tmp").mkdir(exist_ok=True)
    path = dvc_dir / "tmp" / "salgan-workspace.lock"
    with open(path, "a+") as handle:
        _acquire(handle, path, logger, poll_s)
        held[key] = 1
        try:
            yield
        finally:
            held.pop(key, None)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _acquire(handle, path: Path, logger, poll_s: float) -> None:
    """Block on the lock in ``handle``, logging who holds it; then write this holder's identity."""
    waited = None
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if waited is None or time.monotonic() - waited > 300:
                if logger is not None:
                    holder = path.read_text().strip() or "unknown"
                    logger.info("workspace %s is busy (held by %s); waiting", path.parents[2], holder)
                waited = time.monotonic()
            time.sleep(poll_s)
    from prefect.runtime import flow_run

    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "flow_run": flow_run.get_id(), "since": time.time()}))
    handle.flush()


def _limit_exists(name: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return False
    return True


@contextlib.contextmanager
def gpu_slot(needed: bool, stage: str, logger) -> Iterator[None]:
    """Hold one slot of the ``gpu`` global concurrency limit while a GPU-heavy stage runs.

    Prefect 3.9 skips a limit that does not exist (with a warning). That is the right default here: a
    single machine needs no limit, and only the operator knows how many GPU machines the pool has
    (``prefect gcl create gpu --limit N``), so the flow never creates it with a guessed size.
    """
    if not needed:
        yield
        return
    if not _limit_exists(GPU_LIMIT):
        logger.info("no global concurrency limit %r on this server: %s runs without a GPU slot", GPU_LIMIT, stage)
        yield
        return
    logger.info("waiting for a slot of the %r concurrency limit", GPU_LIMIT)
    # A lease renewal hiccup must not kill hours of training: renewal failures only warn.
    with concurrency(GPU_LIMIT, occupy=1, strict=True, raise_on_lease_renewal_failure=False):
        logger.info("holding a %r slot", GPU_LIMIT)
        yield


# ---------------------------------------------------------------------------------------------------------
# Tasks and the flow


def retry_delays() -> list[float]:
    """Backoff before each download retry: base, 2*base, 4*base (base from $SALGAN_RETRY_DELAY_S)."""
    base = float(os.environ.get(RETRY_BASE_ENV, DEFAULT_RETRY_BASE_S))
    return exponential_backoff(backoff_factor=base)(DOWNLOAD_RETRIES)


# NO_CACHE: a stage is a side effect on the workspace; DVC, not Prefect, knows when it is up to date.
@task(name="dvc-stage", cache_policy=NO_CACHE)
def run_stage(stage: str, command: list[str], workdir: str, gpu: bool = False) -> str:
    """Run one DVC command for ``stage`` in ``workdir`` (under a GPU slot when ``gpu``)."""
    logger = get_run_logger()
    with gpu_slot(gpu, stage, logger):
        run_streaming(command, workdir, stage, logger)
    return stage


def stage_task(stage: str):
    """``run_stage`` named after the stage; ``download`` retries with exponential backoff and jitter."""
    options: dict[str, Any] = {"name": stage, "task_run_name": stage}
    if stage == "download":
        options.update(retries=DOWNLOAD_RETRIES, retry_delay_seconds=retry_delays(), retry_jitter_factor=0.5)
    return run_stage.with_options(**options)


@flow(name="salgan-pipeline", on_cancellation=[end_recorded_stage], on_crashed=[end_recorded_stage])
def salgan_pipeline(
    stages: list[str] | None = None,
    overrides: dict | None = None,
    workdir: str = ".",
    experiment: bool = False,
) -> list[str]:
    """Run the DVC pipeline's stages in order, each as ``dvc repro --single-item <stage>``.

    Args:
        stages: the stages to run (default: all of dvc.yaml, in its order).
        overrides: params.yaml overrides, ``{"train.epochs": 2}``; they imply ``experiment``.
        workdir: the DVC repository (a checkout of this project).
        experiment: run the whole pipeline as one ``dvc exp run -S ...`` instead (up to ``stages``).

    Returns the stages run, in order (``["experiment"]`` for an experiment).
    """
    logger = get_run_logger()
    selected = select_stages(stages, pipeline_stages(workdir))
    overrides = checked_overrides(overrides, workdir)
    with workspace_lock(workdir, logger):
        if experiment or overrides:
            targets = selected if stages else []
            command = experiment_command(overrides, targets)
            gpu = any(stage in GPU_STAGES for stage in selected)
            stage_task("experiment")("experiment", command, workdir, gpu=gpu)
            return ["experiment"]
        for stage in selected:
            stage_task(stage)(stage, repro_command(stage), workdir, gpu=stage in GPU_STAGES)
    return selected


def add_set_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``-S/--set KEY=VALUE`` (repeatable), as ``dvc exp run`` spells it; read with :func:`parse_overrides`."""
    parser.add_argument(
        "--set", "-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text
    )


def parse_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict | None:
    """The ``-S`` values as a dict (None when there are none); a malformed one is a usage error."""
    from salgan.settings import ConfigError, parse_override

    try:
        return dict(parse_override(item) for item in args.overrides) or None
    except ConfigError as error:
        parser.error(str(error))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.pipeline",
        description="Run the SalGAN DVC pipeline as a Prefect flow (the ephemeral API server unless "
        "PREFECT_API_URL points at a server).",
    )
    parser.add_argument("stages", nargs="*", help="stages to run, in pipeline order (default: all)")
    add_set_argument(parser, "params.yaml override (repeatable); implies --experiment")
    parser.add_argument("--experiment", action="store_true", help="run as one `dvc exp run`")
    parser.add_argument("--workdir", default=".", help="the DVC repository (default: .)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    state = salgan_pipeline(
        stages=args.stages or None,
        overrides=parse_overrides(parser, args),
        workdir=args.workdir,
        experiment=args.experiment,
        return_state=True,
    )
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
