"""How many CPUs this process may use: the training threads, prepare's workers and the benchmarks size
themselves by it."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: what a container, taskset or a scheduler allows),
    not every CPU of the machine."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
