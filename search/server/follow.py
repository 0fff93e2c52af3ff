"""A server follows its index: when the indexer has finished changing the directory (a sync
of a changed folder, ``add-property``, ``reindex``, ``--repair``), the next request opens it
anew, sharing the models already loaded, and requests from then on see the new rows, vectors
and properties. No restart, and no request ever waits on another's reopening: while one
request reopens, the others are answered from the index as it was.

A change is noticed by the manifest file's inode and modification time (one ``stat`` per
request; the manifest is written to a temporary name and renamed into place, so every write
is a new inode). A manifest whose last run is still running (a run in progress writes its run
first) is left until the run finishes; an index that fails to open (a run killed half-way
through its finish) is logged and the one served so far kept, until the manifest changes again.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from compsearch.indexer.manifest import MANIFEST, read_manifest
from compsearch.mapping.errors import CompsearchError
from compsearch.search.index import SearchIndex

log = logging.getLogger("compsearch.server")
State = TypeVar("State")


def _stamp(folder: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(folder / MANIFEST)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


class FollowedIndex(Generic[State]):
    """The state built from the index in ``folder`` (``build(None)`` first, then
    ``build(the index served so far)`` after each finished change); :meth:`current` is what a
    request reads."""

    def __init__(self, folder: Path, build: Callable[[SearchIndex | None], tuple[SearchIndex, State]]) -> None:
        self.folder = folder
        self._build = build
        self._stamp = _stamp(folder)
        self._index, self._state = build(None)
        self._reopening = threading.Lock()

    def current(self) -> State:
        stamp = _stamp(self.folder)
        if stamp != self._stamp and self._reopening.acquire(blocking=False):
            try:
                self._reopen(stamp)
            finally:
                self._reopening.release()
        return self._state

    def _reopen(self, stamp: tuple[int, int] | None) -> None:
        try:
            manifest = read_manifest(self.folder)
        except CompsearchError:
            return  # looked at again by the next request
        if manifest.runs and manifest.runs[-1].status == "running":
            return  # a run in progress: its shards and indexes are not finished
        self._stamp = stamp
        try:
            self._index, self._state = self._build(self._index)
        except CompsearchError as error:
            log.warning("%s changed but does not open (%s); still serving it as it was", self.folder, error)
            return
        log.info("%s changed: now serving %d images", self.folder, self._index.count)
