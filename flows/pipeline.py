"""The DVC pipeline as a Prefect flow: one task per stage, each a ``dvc`` subprocess.

Every stage runs as ``dvc repro --single-item <stage>`` in the workspace, so DVC alone decides what is
up to date and dvc.lock stays the record of what ran; with parameter overrides (or ``experiment=True``)
the whole pipeline runs as one ``dvc exp run -S key=value ...`` instead. Around each subprocess:

- its stdout and stderr go line by line into the Prefect logger, and a failure raises ``StageFailed``
  naming the stage, the exit code and the tail of its stderr (flows/processes.py);
- ``download`` is retried with exponential backoff (networks and mirrors fail transiently);
- GPU-heavy stages hold a slot of the global concurrency limit ``gpu`` when the server has one;
- the subprocess starts in its own session, and any exit from the task (failure, cancellation, SIGTERM
  from a worker, Ctrl-C) ends it and every process below it;
- one flow at a time owns a workspace (flows/workspace.py), so two runs never interleave their writes
  to dvc.lock, params.yaml and the outputs.

Run locally on the ephemeral API server: ``python -m flows.pipeline`` (``--help`` for the options).
"""

import argparse
import contextlib
import os
import sys
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

from flows.processes import end_recorded_stage, run_streaming
from flows.workspace import workspace_lock
from salgan.cli import python_tool, run_command
from salgan.settings import ConfigError, load_params, override_args, parse_override, validate_overrides
from salgan.trust import check_untrusted

DVC = python_tool("dvc")  # this environment's dvc, whatever PATH holds
# Stages that occupy the machine's GPUs: training under torchrun, and full-resolution inference.
GPU_STAGES = frozenset({"train", "predict"})
GPU_LIMIT = "gpu"
# Retries of the download stage; delays grow as base, 2*base, 4*base seconds.
DOWNLOAD_RETRIES = 3
RETRY_BASE_ENV = "SALGAN_RETRY_DELAY_S"
DEFAULT_RETRY_BASE_S = 30.0


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
        raise ConfigError(f"unknown stage(s) {unknown}; dvc.yaml has {list(available)}")
    return [name for name in available if name in requested]


def repro_command(stage: str, force: bool = False) -> list[str]:
    """``dvc repro`` of one stage alone: its upstream stages are separate tasks of the flow."""
    return [*DVC, "repro", "--single-item", *(["--force"] if force else []), stage]


def experiment_command(overrides: dict[str, Any] | None, targets: Sequence[str] = ()) -> list[str]:
    """One ``dvc exp run`` for the whole pipeline (or up to ``targets``) with parameter overrides, each
    validated against the settings schema and written so that DVC reads a plain value, never syntax."""
    return [*DVC, "exp", "run", *override_args(overrides), *targets]


WORKDIRS_ENV = "SALGAN_WORKDIRS"  # where else (os.pathsep-separated) a flow may run, besides its own checkout


def checked_workdir(workdir: str) -> str:
    """A flow's ``workdir`` parameter (anyone who reaches the Prefect API can set it): the flow runs
    ``dvc`` there, so it must be the checkout the flow runs from (the current directory, which the
    deployment's pull step sets) or lie inside a folder the worker's operator listed in
    ``SALGAN_WORKDIRS``; anything else is refused before anything runs."""
    path = Path(workdir).resolve()
    allowed = [Path.cwd().resolve()] + [
        Path(p).resolve() for p in os.environ.get(WORKDIRS_ENV, "").split(os.pathsep) if p
    ]
    if not any(path == root or root in path.parents for root in allowed):
        raise ConfigError(
            f"workdir {workdir!r} is neither this flow's checkout ({allowed[0]}) nor inside a folder listed in "
            f"{WORKDIRS_ENV}; refused"
        )
    return str(path)


def checked_overrides(overrides: dict[str, Any] | None, workdir: str | Path) -> dict[str, Any] | None:
    """A flow's ``overrides`` parameter (anyone who reaches the Prefect API can set it) validated against
    the schema and the workspace's params.yaml before anything runs, and held to each setting's trust class
    (salgan/trust.py: knobs within range, places inside the workspace, no hosts unless the worker's operator
    allows the key in ``SALGAN_FLOW_ALLOWED_KEYS``, limits only lowered); raises naming the key and reason."""
    if not overrides:
        return None

    base = load_params(Path(workdir) / "params.yaml", require_all=False)
    checked = validate_overrides(overrides, base)
    check_untrusted(checked, base, workdir)
    return checked


# ---------------------------------------------------------------------------------------------------------
# GPU slots


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
    workdir = checked_workdir(workdir)
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
    """``python -m flows.pipeline`` (exit statuses: salgan/cli.py; a failed stage's own status)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = parse_overrides(parser, args)

    def work() -> int:
        ran = salgan_pipeline(
            stages=args.stages or None, overrides=overrides, workdir=args.workdir, experiment=args.experiment
        )
        print(f"ran {', '.join(ran)}")
        return 0

    return run_command("pipeline", work, prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
