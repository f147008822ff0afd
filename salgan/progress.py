"""Progress bars: shown only on a terminal, on rank 0, and not with ``SALGAN_PROGRESS=0``.

Long loops (decoding, downloads, training epochs, predictions) wrap themselves in :func:`progress`; where
no one watches (a pipe, a Prefect worker's log, another rank), the bar costs nothing and prints nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable


def show_progress() -> bool:
    """Progress bars on a terminal only, on rank 0 only, and never with ``SALGAN_PROGRESS=0``."""
    return sys.stderr.isatty() and os.environ.get("RANK", "0") == "0" and os.environ.get("SALGAN_PROGRESS", "1") != "0"


def progress(iterable: Iterable | None = None, enabled: bool = True, **options):
    """A tqdm bar (``options`` as tqdm's) shown when ``enabled`` and :func:`show_progress` allow, on
    stderr, without tqdm's monitor thread (a thread makes forking worker pools unsafe)."""
    from tqdm import tqdm

    class _Bar(tqdm):
        monitor_interval = 0

    return _Bar(iterable, file=sys.stderr, disable=not (enabled and show_progress()), **options)
