"""One promotion at a time per registry: the lock the gate holds while it re-checks and moves the aliases.

Which lock depends on where the registry lives (the tracking URI):

- an embedded store on this file system (``sqlite:///path.db``, a ``file:`` or plain-path store): a file
  lock beside it (``.<name>.salgan-registry.lock``, :class:`filelock.FileLock`), shared by every checkout
  and process that uses the store; the kernel releases it when its holder dies;
- a server store while a Prefect API is configured (``PREFECT_API_URL``: the workers of a deployment): a
  Prefect global concurrency limit of one slot, ``salgan-registry-<hash of the store's URI>``, created on
  first use, shared by every machine that talks to that Prefect server;
- a server store without a Prefect API (``salgan registry promote`` by hand against an MLflow server): no
  lock is available; the gate still re-reads the champion alias right before moving it, which narrows the
  race to that instant but does not close it. :func:`registry_lock` says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from salgan.errors import ConfigError
from salgan.urls import redact_url

log = logging.getLogger(__name__)
LOCK_SUFFIX = ".salgan-registry.lock"
LIMIT_PREFIX = "salgan-registry-"
WAIT_S = 600.0  # the critical section is a few registry calls; a longer wait means something is stuck


def local_store(uri: str) -> Path | None:
    """The file or folder of an embedded store (sqlite file, file store), or None for a server."""
    if uri.startswith("sqlite:///"):
        return Path(unquote(uri[len("sqlite:///") :].split("?")[0])).resolve()
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return Path(unquote(parts.path)).resolve()
    if "://" not in uri:
        return Path(uri).resolve()
    return None


def limit_name(uri: str) -> str:
    """The Prefect global concurrency limit of a registry: one per store, credentials left out of the key."""
    return LIMIT_PREFIX + hashlib.sha256(redact_url(uri).encode()).hexdigest()[:12]


@contextlib.contextmanager
def registry_lock(uri: str) -> Iterator[str]:
    """Hold the registry's lock (module docstring); yields what was held, for the gate's report."""
    store = local_store(uri)
    if store is not None:
        from filelock import FileLock

        path = store.with_name(f".{store.name}{LOCK_SUFFIX}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path, timeout=WAIT_S):
            yield f"file lock {path}"
        return
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        log.warning(
            "no registry-wide lock for %s outside Prefect (PREFECT_API_URL unset): the champion alias is "
            "re-checked right before it is moved, but a gate elsewhere could move it in that instant",
            redact_url(uri),
        )
        yield "none (no Prefect API): re-checked only"
        return
    name = limit_name(uri)
    _ensure_limit(name)
    from prefect.concurrency.sync import concurrency

    with concurrency(name, occupy=1, strict=True, timeout_seconds=WAIT_S):
        yield f"Prefect global concurrency limit {name}"


def _ensure_limit(name: str) -> None:
    """A one-slot limit ``name`` on the Prefect server; two gates creating it at once both succeed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            return
    if found.limit != 1 or not found.active:
        raise ConfigError(
            f"Prefect global concurrency limit {name} (the registry's lock) must be active with limit 1, it has "
            f"limit {found.limit}{'' if found.active else ', inactive'}; fix it with prefect gcl update or delete it"
        )
