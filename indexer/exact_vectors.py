"""The exact vectors kept beside a compressed index (PQ, SQ), which ranks by its codes only
roughly: the search layer rescores the codes' candidates with them (and reads any image's exact
vector from them) — docs/architecture.md, Search.

One NumPy file of ``(id, vector)`` records in id order (``NAME.exact.npy``): written streaming
from the shards (memory: one part at a time), memory-mapped when searched (a lookup reads its
rows and a binary search's pages of ids), and rewritten by an update from the file as it was
plus the added rows — ids are never reused and a run's ids follow every earlier one, so added
rows sort after the kept ones. A NumPy file rather than a FAISS flat index: that one is held
whole in memory to be built or changed (31 GB at 10M × 768).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from compsearch.indexer.faiss_choice import normalised_chunks
from compsearch.mapping.chunk_store import write_atomically

EXACT_SUFFIX = ".exact.npy"
COPY_ROWS = 65_536  # records copied at a time by an update

Chunks = Iterator[tuple[np.ndarray, np.ndarray]]  # (ids, vectors) per part


def exact_path(index_path: Path) -> Path:
    """Where the exact vectors of the compressed index ``index_path`` lie."""
    return index_path.with_name(index_path.stem + EXACT_SUFFIX)


def _records(dim: int) -> np.dtype:
    return np.dtype([("id", "<i8"), ("vector", "<f4", (dim,))])


def _write(path: Path, count: int, dim: int, fill: Callable[[np.memmap], int]) -> None:
    """A file of ``count`` records, ``fill``ed through a memory map (it says how many it
    wrote), sorted by id, written atomically."""
    def write(temporary: Path) -> None:
        records = np.lib.format.open_memmap(temporary, mode="w+", dtype=_records(dim), shape=(count,))
        written = fill(records)
        if written != count:
            raise ValueError(f"{count} vectors announced, {written} given")
        ids = records["id"]
        if count > 1 and not (ids[1:] > ids[:-1]).all():  # parts out of id order: sorted once, in memory
            records[:] = records[np.argsort(ids, kind="stable")]
        records.flush()
        del records

    write_atomically(path, write)


def _append(records: np.memmap, position: int, chunks: Chunks) -> int:
    """``chunks``' ids and normalised vectors written from ``position`` on; the position after."""
    for ids, vectors in normalised_chunks(chunks):
        records["id"][position:position + len(ids)] = ids
        records["vector"][position:position + len(ids)] = vectors
        position += len(ids)
    return position


def write_exact_vectors(path: Path, chunks: Chunks, count: int, dim: int) -> None:
    """The ``count`` vectors of ``chunks``, normalised, to ``path``."""
    _write(path, count, dim, lambda records: _append(records, 0, chunks))


def update_exact_vectors(path: Path, ids: np.ndarray, vectors_of: Callable[[np.ndarray], Chunks]) -> int:
    """Rewrite ``path`` to hold exactly ``ids``: the kept records copied, the added ones read
    through ``vectors_of``; how many ids changed."""
    old = np.load(path, mmap_mode="r")
    held = np.asarray(old["id"])
    keep = np.isin(held, ids)
    added = np.setdiff1d(ids, held, assume_unique=True)

    def fill(records: np.memmap) -> int:
        position = 0
        for start in range(0, len(held), COPY_ROWS):
            kept = old[start:start + COPY_ROWS][keep[start:start + COPY_ROWS]]
            records[position:position + len(kept)] = kept
            position += len(kept)
        return _append(records, position, vectors_of(added))

    _write(path, int(keep.sum()) + len(added), old.dtype["vector"].shape[0], fill)
    return int(len(held) - keep.sum()) + len(added)


class ExactVectors:
    """An exact-vectors file opened memory-mapped, looked up by id."""

    def __init__(self, path: Path) -> None:
        self.records = np.load(path, mmap_mode="r")
        self.ids = self.records["id"]

    @property
    def ntotal(self) -> int:
        return len(self.records)

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        """``(len(ids), dim)`` vectors of ``ids`` (each must be held: KeyError otherwise)."""
        ids = np.asarray(ids, dtype=np.int64)
        positions = np.minimum(np.searchsorted(self.ids, ids), max(self.ntotal - 1, 0))
        if self.ntotal == 0 or (np.asarray(self.ids[positions]) != ids).any():
            raise KeyError(f"ids not among the exact vectors: {ids[np.asarray(self.ids[positions]) != ids][:5]}")
        return np.asarray(self.records["vector"][positions])


def count_exact_vectors(path: Path) -> int:
    """The records of an exact-vectors file (its header alone is read)."""
    return len(np.load(path, mmap_mode="r"))
