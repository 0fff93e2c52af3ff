"""The index's rows by path, in 56 bytes a row: what the sync plan compares a listing with.

A dict of path strings to row tuples cost about 0.85 kB a file (85 GB at 1e8 files). Here
each row is seven 64-bit numbers — its path's 128-bit digest
(:func:`~indexer.known_files.path_digests`), id, size, mtime (ms) and the first 128 bits of its
sha256 — in one array sorted by path digest, read from the shards batch by batch; a listing
looks its paths up a batch at a time (binary search) and marks what it has seen in a
boolean array. Paths themselves are read back only for the few rows a report names.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compsearch.indexer.known_files import Digest, digest_keys, path_digests

if TYPE_CHECKING:  # the store imports pyarrow.dataset where a dataset is made
    import pyarrow.dataset as ds

ROW = np.dtype([("path_hi", "<u8"), ("path_lo", "<u8"), ("id", "<i8"), ("size", "<i8"), ("mtime", "<i8"),
                ("sha_hi", "<u8"), ("sha_lo", "<u8")])
READ_BATCH = 8192  # rows digested at once (hashing a path takes 8 numbers a byte while it runs)
UNKNOWN = np.iinfo(np.int64).min  # a size or mtime the row does not have (built before it was stored)
_EPOCH = datetime(1970, 1, 1)
_MILLISECOND = timedelta(milliseconds=1)


def mtime_ms(mtime: datetime | None) -> int:
    """An ``mtime`` as :data:`ROW` holds it (naive UTC, as the rows store it)."""
    return UNKNOWN if mtime is None else (mtime - _EPOCH) // _MILLISECOND


def _column(batch: pa.RecordBatch, name: str, type_: pa.DataType) -> np.ndarray:
    """A column as int64, :data:`UNKNOWN` where null or absent from every shard."""
    if name not in batch.schema.names:
        return np.full(batch.num_rows, UNKNOWN, np.int64)
    values = pc.fill_null(batch.column(name).cast(type_).cast(pa.int64()), UNKNOWN)
    return values.to_numpy(zero_copy_only=False)


def _entries(batch: pa.RecordBatch) -> np.ndarray:
    """The rows of one shard batch that have a path (images given in memory have none)."""
    batch = batch.filter(pc.is_valid(batch.column("path")))
    entries = np.empty(batch.num_rows, ROW)
    entries["path_hi"], entries["path_lo"] = path_digests(batch.column("path"))
    entries["id"] = batch.column("id").to_numpy(zero_copy_only=False)
    entries["size"] = _column(batch, "file_size", pa.int64())
    entries["mtime"] = _column(batch, "mtime", pa.timestamp("ms"))
    entries["sha_hi"], entries["sha_lo"] = digest_keys(batch.column("sha256"))
    return entries


class IndexedRows:
    """The rows of a dataset of shards, by path (see the module docstring)."""

    def __init__(self, dataset: ds.Dataset | None) -> None:
        self.dataset = dataset
        self.rows = np.empty(dataset.count_rows() if dataset is not None else 0, ROW)  # filled in place: no copies
        filled = 0
        if dataset is not None:
            wanted = [name for name in ("id", "path", "sha256", "file_size", "mtime") if name in dataset.schema.names]
            # one thread: as fast here, and Arrow's pool holds one part's columns, not a readahead's
            for batch in dataset.to_batches(columns=wanted, batch_size=READ_BATCH, use_threads=False):
                entries = _entries(batch)
                self.rows[filled:filled + len(entries)] = entries
                filled += len(entries)
        rows = self.rows[:filled]
        order = np.lexsort((rows["id"], rows["path_lo"], rows["path_hi"]))
        for name in ROW.names:  # permuted a field at a time: 8 bytes a row beside the rows, not a copy
            rows[name] = rows[name][order]
        del order
        last = np.append((rows["path_hi"][1:] != rows["path_hi"][:-1]) | (rows["path_lo"][1:] != rows["path_lo"][:-1]),
                         True)[:len(rows)]
        # a path listed twice (e.g. by a run killed between adding a changed file and removing its
        # old row): the latest id is its row, the others are to remove
        self.repeated = rows["id"][~last]
        self.rows = rows[last] if len(self.repeated) else rows
        self.seen = np.zeros(len(self.rows), bool)

    def __len__(self) -> int:
        return len(self.rows)

    def find(self, paths: Sequence[str]) -> np.ndarray:
        """The row of each path (its position in :attr:`rows`), -1 where the index has none."""
        hi, lo = path_digests(pa.array(paths, pa.string()))
        start = np.searchsorted(self.rows["path_hi"], hi, "left")
        stop = np.searchsorted(self.rows["path_hi"], hi, "right")
        found = np.full(len(paths), -1, np.int64)
        single = np.flatnonzero(stop - start == 1)  # the usual hit: check the second word
        single = single[self.rows["path_lo"][start[single]] == lo[single]]
        found[single] = start[single]
        for i in np.flatnonzero(stop - start > 1):  # first words shared by several rows (rare)
            at = start[i] + np.searchsorted(self.rows["path_lo"][start[i]:stop[i]], lo[i])
            if at < stop[i] and self.rows["path_lo"][at] == lo[i]:
                found[i] = at
        return found

    def unseen(self) -> np.ndarray:
        """The rows no listing marked as seen."""
        return np.flatnonzero(~self.seen)

    def same_files(self, at: np.ndarray, stats: Sequence[tuple[int | None, datetime | None]]) -> np.ndarray:
        """Whether each listed file (its row ``at``, -1 for none; its size and mtime) is its row's
        file as it was indexed: same size and mtime, so not read again."""
        if not len(self.rows):
            return np.zeros(len(at), bool)
        sizes = np.array([UNKNOWN if size is None else size for size, _ in stats], np.int64)
        mtimes = np.array([mtime_ms(mtime) for _, mtime in stats], np.int64)
        rows = self.rows[np.maximum(at, 0)]
        return (at >= 0) & (sizes != UNKNOWN) & (rows["size"] == sizes) & (rows["mtime"] == mtimes)

    def sha(self, row: int) -> Digest:
        """Its row's sha256, as :func:`~indexer.known_files.digest_key` gives it."""
        return int(self.rows["sha_hi"][row]), int(self.rows["sha_lo"][row])

    def paths_of(self, ids: Sequence[int]) -> dict[int, str]:
        """id → path of a few rows, read back from the shards (only the parts holding them)."""
        if self.dataset is None or not len(ids):
            return {}
        table = self.dataset.to_table(columns=["id", "path"], filter=pc.field("id").isin(list(ids)))
        return dict(zip(table.column("id").to_pylist(), table.column("path").to_pylist()))

