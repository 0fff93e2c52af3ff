"""Following a collection: what a rerun has to do (the plan stage), and the rows it moves or
removes (the finish stage).

The plan compares the listing with the index's rows by path, cheaply: a listed file whose
size and mtime equal its row's is unchanged without being read; one whose size or mtime
differ is hashed (same bytes: unchanged; other bytes: *changed*, re-encoded under a new id,
its old row removed); a path the index does not hold is *new*, unless it has the bytes of a
row whose path is no longer listed — then that row is *moved* (re-pathed, keeping its id and
vectors). Only new files with the size of such a vanished row are hashed to find moves. Rows
whose file is gone are *removed*. ``append`` only adds: nothing is removed or moved. The rows
are held compactly (:mod:`indexer.indexed_rows`, 56 bytes a row) and the listing is looked up
in batches, so a nightly plan over 1e8 unchanged files fits in memory.

What is to encode (new and changed files) becomes a fresh listing, positions 0 … n-1, held
compactly (:class:`~mapping.images.listing.CompactListing`), that the encode and write stages
take as any source; ids are the run's ``id_offset`` (the next id
no run has used) plus that position, so ids are never reused and a killed run's rerun simply
plans again from the files: whatever the killed run wrote is rows already indexed.

Removals and moves rewrite the affected shard parts atomically, and with them the parts
beside each (its component store part, the vectors parts of properties added from the store:
:meth:`~indexer.store.IndexStore.rewrite_shard`); no reader has to know a ``removed`` list: the
rows are simply gone, and the finish stage brings each FAISS index to hold the rows' ids
(updated in place of a rebuild where it can: :mod:`indexer.faiss_update`).
"""
from __future__ import annotations

import gc
import os
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from compsearch.indexer.encode import listed_path
from compsearch.indexer.indexed_rows import IndexedRows
from compsearch.indexer.integrity import sha256
from compsearch.indexer.known_files import Digest, digest_key
from compsearch.indexer.store import DUPLICATES, PARQUET, SHARDS, SKIPPED, STORE, IndexStore, write_table
from compsearch.mapping.chunk_store import parse_part_name
from compsearch.mapping.images import ImageRecord, ImageSource
from compsearch.mapping.images.file_facts import modified
from compsearch.mapping.images.listing import CompactListing
from compsearch.mapping.images.sources import printable

EXAMPLES = 3  # paths shown per kind in a dry run
LOOKUP_BATCH = 1024  # listed files looked up in the index's rows at once
Stat = tuple[int, datetime] | tuple[None, None]


@dataclass
class SyncPlan:
    """What a rerun over a source does to its index (see the module docstring)."""

    todo: CompactListing = field(default_factory=CompactListing)  # new and changed files: the listing to encode
    append: bool = False
    unchanged: int = 0
    changed: int = 0
    moved: dict[int, dict[str, Any]] = field(default_factory=dict)  # id → its new key, path, folder, size, mtime
    removed: set[int] = field(default_factory=set)  # ids whose rows leave (gone, or an old version)
    dropped_duplicates: set[str] = field(default_factory=set)  # paths whose ``duplicates`` entry leaves
    skipped_again: int = 0  # of ``todo``: files skipped before and unchanged since (they fail again)
    skipped_by: set[int] = field(default_factory=set)  # the runs that skipped those
    examples: dict[str, list[str]] = field(default_factory=dict)  # kind → a few paths

    def counts(self) -> dict[str, int]:
        return {"changed": self.changed, "moved": len(self.moved),
                "removed": len(self.removed) - self.changed, "unchanged": self.unchanged}

    @property
    def up_to_date(self) -> bool:
        """Whether the index already holds exactly the source (nothing to encode, move or remove)."""
        return not (len(self.todo) > self.skipped_again or self.moved or self.removed or self.dropped_duplicates)

    def report(self) -> dict[str, Any]:
        """What a dry run prints: the counts, and a few paths of each kind."""
        return {"counts": {"new": len(self.todo) - self.changed - self.skipped_again, **self.counts(),
                           "skipped before": self.skipped_again}, "examples": self.examples}

    def leave_failures_of(self, run: int) -> None:
        """When all there is to encode is files ``run`` itself skipped, unchanged since, forget
        them: the invocation that finishes ``run`` (the plain run after its shards) joins it
        rather than opening a run of its own to fail on them again."""
        if self.todo and len(self.todo) == self.skipped_again and self.skipped_by <= {run}:
            self.todo, self.skipped_again, self.skipped_by = CompactListing(), 0, set()

    def note(self, kind: str, path: str) -> None:
        shown = self.examples.setdefault(kind, [])
        if len(shown) < EXAMPLES:
            shown.append(printable(path))

def file_stat(path: str) -> Stat:
    """(size in bytes, mtime as the rows store it); (None, None) for a file that cannot be stat'ed."""
    try:
        stat = os.stat(path)
    except OSError:
        return None, None
    return stat.st_size, modified(stat)


def _sha_key(path: str) -> Digest | None:
    """The file's sha256 as the rows hold it (:func:`~indexer.known_files.digest_key`); None when
    it cannot be read."""
    try:
        return digest_key(sha256(Path(path)))
    except OSError:
        return None


def _duplicate_of(store: IndexStore | None) -> dict[str, int]:
    """path → the id it duplicates, of every ``duplicates`` entry."""
    duplicates = store.read_table(DUPLICATES) if store else pa.table({})
    if not duplicates.num_rows:
        return {}
    return dict(zip(duplicates.column("path").to_pylist(), duplicates.column("duplicate_of").to_pylist()))


def _skipped_since(store: IndexStore | None) -> dict[str, tuple[int, datetime]]:
    """path → the run that last skipped it and when that run started (naive UTC, as ``mtime``):
    a file not modified since failed with the bytes it has now."""
    if store is None or not store.exists():
        return {}
    started = {run.run: datetime.fromisoformat(run.started).astimezone(timezone.utc).replace(tzinfo=None)
               for run in store.read_manifest().runs}
    since: dict[str, tuple[int, datetime]] = {}
    for part in store.parts(SKIPPED).parts():
        run = parse_part_name(part.name, PARQUET)[0]
        for path in pq.read_table(part, columns=["path"]).column("path").to_pylist():
            if path is not None and run in started:
                since[path] = run, started[run]
    return since


def _holds(sorted_values: np.ndarray, value: int) -> bool:
    at = int(np.searchsorted(sorted_values, value))
    return at < len(sorted_values) and sorted_values[at] == value


def _batches(records: Iterator[ImageRecord]) -> Iterator[list[ImageRecord]]:
    while batch := list(islice(records, LOOKUP_BATCH)):
        yield batch


@contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """While a listing is compared: its batches' records live long enough to be promoted to the
    cycle collector's oldest generation, whose collections then traverse every object alive,
    torch's included, again and again (a third of a plan's time); records form no cycles, so
    reference counting frees them all."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def plan_sync(source: ImageSource, store: IndexStore | None, append: bool = False,
              except_run: int | None = None) -> SyncPlan:
    """What to encode, move and remove so the index holds exactly ``source``'s files (only
    add with ``append``); ``except_run``: plan as if that run's parts were not written (the
    shards of one run must agree on its plan); no ``store``: every file is new."""
    plan = SyncPlan(append=append)
    rows = IndexedRows(store.dataset(SHARDS, except_run=except_run) if store else None)
    plan.removed.update(rows.repeated.tolist())
    duplicate_of = _duplicate_of(store)
    skipped = _skipped_since(store)

    def retry(record: ImageRecord, stat: Stat | None = None) -> bool:
        """To encode: a file the index does not hold; whether it will be skipped again (it
        failed before, unchanged since: a rerun that finds only such files has nothing to do)."""
        plan.todo.append(record)
        tried = skipped.get(printable(str(record.path))) if record.path is not None else None
        again = tried is not None and (stat is None or stat[1] is None or stat[1] < tried[1])
        if again:
            plan.skipped_again += 1
            plan.skipped_by.add(tried[0])
        return again

    def new(record: ImageRecord, stat: Stat) -> None:
        if not retry(record, stat):
            plan.note("new", listed_path(record))
    listed_duplicates: set[str] = set()  # the ``duplicates`` entries listed again
    # new files with the size of an indexed one, to check for moves once the vanished rows are
    # known (the others are new for sure: a first run holds none)
    candidates: list[tuple[ImageRecord, Stat]] = []
    row_sizes = np.unique(rows.rows["size"]) if not append else np.empty(0, np.int64)
    held_back: list[tuple[ImageRecord, int]] = []  # listed duplicates, kept while their original stays
    with _cycle_collector_paused():
        for batch in _batches(source.records()):
            files: list[tuple[ImageRecord, str]] = []
            for record in batch:
                path = listed_path(record)
                if path is None or record.problem is not None:
                    retry(record)  # in memory, or skipped with its reason by the reader
                else:
                    files.append((record, path))
            if not files:
                continue
            paths = [path for _, path in files]
            stats = [file_stat(path) for path in paths]
            found = rows.find(paths)
            rows.seen[found[found >= 0]] = True
            same = rows.same_files(found, stats)
            plan.unchanged += int(same.sum())
            if duplicate_of:
                listed_duplicates.update(path for path in paths if path in duplicate_of)
            for i in np.flatnonzero(~same).tolist():
                (record, path), stat, at = files[i], stats[i], int(found[i])
                if at >= 0 and stat[0] is not None:
                    if _sha_key(path) == rows.sha(at):  # touched, same bytes
                        plan.unchanged += 1
                        continue
                    plan.changed += 1
                    plan.removed.add(int(rows.rows["id"][at]))
                    plan.note("changed", path)
                    plan.todo.append(record)
                elif path in duplicate_of:
                    held_back.append((record, duplicate_of[path]))
                elif stat[0] is None:
                    retry(record)  # the reader says why it cannot be read
                elif _holds(row_sizes, stat[0]):
                    candidates.append((record, stat))
                else:
                    new(record, stat)
    gone = rows.rows[rows.unseen()] if not append else rows.rows[:0]
    by_digest = dict(zip(zip(gone["sha_hi"].tolist(), gone["sha_lo"].tolist()), gone["id"].tolist()))
    sizes = set(gone["size"].tolist())
    moves: list[tuple[int, str]] = []  # (id, new path) of the moves a report shows
    for record, stat in candidates:
        path = listed_path(record)
        image_id = by_digest.pop(_sha_key(path), None) if stat[0] in sizes else None
        if image_id is not None:
            plan.moved[image_id] = {"key": record.key, "path": path, "folder": posixpath.dirname(record.key),
                                    "file_size": stat[0], "mtime": stat[1]}
            moves.append((image_id, path))
        else:
            new(record, stat)
    leaving = [image_id for image_id in gone["id"].tolist() if image_id not in plan.moved]
    plan.removed.update(leaving)
    old_paths = rows.paths_of([image_id for image_id, _ in moves[:EXAMPLES]] + leaving[:EXAMPLES])
    for image_id, path in moves[:EXAMPLES]:
        plan.note("moved", f"{old_paths[image_id]} → {path}")
    for image_id in leaving[:EXAMPLES]:
        plan.note("removed", old_paths[image_id])
    if held_back:
        removed = np.fromiter(plan.removed, np.int64, len(plan.removed))
        alive = np.isin([original for _, original in held_back], np.setdiff1d(rows.rows["id"], removed))
        for (record, _), original_stays in zip(held_back, alive.tolist()):
            if original_stays:
                plan.unchanged += 1
            else:  # its original left (or was never written: a killed run): it is indexed in its stead
                plan.todo.append(record)
                plan.dropped_duplicates.add(listed_path(record))
    if not append:
        plan.dropped_duplicates |= set(duplicate_of) - listed_duplicates
    return plan


def apply_sync(store: IndexStore, plan: SyncPlan, run: int) -> None:
    """The finish stage's part of a sync (run ``run`` has written its parts): the removed rows
    leave their shard parts (and the parts beside them), the moved ones get their new path;
    the earlier runs' ``duplicates`` forget files gone, re-planned or whose original left, and
    their ``skipped`` the files this run retried (every one, unless it only appends); a store
    part whose shard was never written (a run killed between the two) is deleted. Each part is
    rewritten atomically, so a kill leaves every part whole (the rerun plans the rest)."""
    shards = {path.name for path in store.shard_paths()}
    for part in store.parts(STORE).parts():
        if part.name not in shards:
            part.unlink()
    removed = np.fromiter(plan.removed, np.int64, len(plan.removed))
    touched = np.concatenate([removed, np.fromiter(plan.moved, np.int64, len(plan.moved))])
    if len(touched):
        for path in store.shard_paths():
            ids = pq.read_table(path, columns=["id"]).column("id").to_numpy()
            if np.isin(ids, touched).any():
                rows = pq.read_table(path).filter(pa.array(~np.isin(ids, removed)))
                store.rewrite_shard(path, _repathed(rows, plan.moved))
    for part in _earlier_parts(store, DUPLICATES, run):
        entries = pq.read_table(part)
        keep = [original not in plan.removed and listed not in plan.dropped_duplicates for listed, original in
                zip(entries.column("path").to_pylist(), entries.column("duplicate_of").to_pylist())]
        if not all(keep):
            write_table(entries.filter(pa.array(keep, pa.bool_())), part)
    retried = None
    for part in _earlier_parts(store, SKIPPED, run):
        if not plan.append:
            part.unlink()
            continue
        if retried is None:
            retried = pa.array([printable(str(record.path)) for record in plan.todo.records() if record.path is not None],
                               pa.string())
        entries = pq.read_table(part)
        keep = pc.invert(pc.fill_null(pc.is_in(entries.column("path"), retried), False))
        if not pc.all(keep).as_py():
            write_table(entries.filter(keep), part)


def _earlier_parts(store: IndexStore, kind: str, run: int) -> list[Path]:
    return [path for path in store.parts(kind).parts() if parse_part_name(path.name, PARQUET)[0] != run]


def _repathed(rows: pa.Table, moved: dict[int, dict[str, Any]]) -> pa.Table:
    """``rows`` with the moved ones' key, path, folder, size and mtime replaced (types kept)."""
    ids = rows.column("id").to_pylist()
    if not any(image_id in moved for image_id in ids):
        return rows
    for name in ("key", "path", "folder", "file_size", "mtime"):
        if name not in rows.column_names:
            continue
        values = [moved[i][name] if i in moved else value for i, value in zip(ids, rows.column(name).to_pylist())]
        column = rows.schema.get_field_index(name)
        rows = rows.set_column(column, rows.schema.field(column), pa.array(values, rows.schema.field(column).type))
    return rows
