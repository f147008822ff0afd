"""How many CPUs this process may use (the training threads, prepare's and scoring's workers and the
benchmarks size themselves by it), and how those worker processes start."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
from collections.abc import Sequence


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: what a container, taskset or a scheduler allows),
    not every CPU of the machine."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_context(preload: Sequence[str]):
    """The multiprocessing context worker processes start fast in without risking a deadlocked child.

    ``fork`` starts workers in milliseconds (``forkserver`` and ``spawn`` pay ~0.5 s of interpreter start
    and imports, the whole budget of a small run), but forking a process in which another thread holds a
    lock copies that lock held forever. So fork only while this process runs a single Python thread (the
    command line; the progress bar starts no thread); otherwise (embedded in a flow, a notebook or a test
    session with threads) use the forkserver, which imports the ``preload`` modules once.
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(preload))
        return context
    return multiprocessing.get_context("spawn")


def die_with_parent() -> None:
    """A worker's first act on Linux: ask the kernel to kill it when the process that started it dies, so
    that a SIGKILLed stage leaves no orphaned workers behind (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the request: nobody will collect this worker
        os._exit(1)
