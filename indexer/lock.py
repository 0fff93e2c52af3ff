"""One writer per index directory: an advisory lock on ``DIR/.lock`` held for a whole run.

A plain run (build, append, resume, repair) takes it exclusively; the processes of a
``--shard I/N`` run share it, so they run at once, while a plain run — which finishes the
index from every shard's parts — is refused while any of them runs. The
lock is taken without waiting: a second writer is one clear error naming who holds it (pid,
host and start time, written into the lock file), never two runs racing on one file. The
kernel drops the lock when its process ends, ``kill -9`` included, so nothing is left to clean.
"""
from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from compsearch.mapping.errors import CompsearchError

LOCK = ".lock"


class IndexLockedError(CompsearchError):
    """Another process is writing the index directory."""


@contextmanager
def writing(folder: Path, shared: bool = False) -> Iterator[None]:
    """Hold ``folder``'s lock while the body runs (``shared``: a shard of a ``--shard`` run)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    with path.open("a+") as file:
        try:
            fcntl.flock(file, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip().splitlines()
            raise IndexLockedError(
                f"{folder} is being written by another compsearch run ({holder[-1] if holder else 'holder unknown'})",
                "wait for it to finish, or stop it (a killed run resumes when the same command runs again)",
            ) from None
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        line = f"pid {os.getpid()} on {socket.gethostname()} since {started}{', a shard' if shared else ''}\n"
        if not shared:
            file.truncate(0)
        file.write(line)  # shards each add their line; the holder named is the latest
        file.flush()
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
