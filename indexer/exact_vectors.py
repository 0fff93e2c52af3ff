"""The exact vectors kept beside a compressed index (PQ, SQ), which ranks by its codes only
roughly: the search layer rescores the codes' candidates with them (and reads any image's exact
vector from them) — docs/architecture.md, Search.

NumPy files of ``(id, vector)`` records, each in id order: the build writes one
(``NAME.exact.npy``) streaming from the shards (memory: one part at a time). An update after a
sync writes what changed, not the collection (300 GB at 1e8 × 768): the added ids become a new
*segment* (``NAME.N.exact.npy``), and removed ones stay in their files as *dead* records, never
looked up (the index no longer returns their ids), only counted. Once dead records pass
:data:`COMPACT_SHARE` of all, or the segments :data:`MAX_SEGMENTS`, the update compacts: one new
file with exactly the live records. Files are only ever added under new names, so a reader keeps
the files it opened, and a kill leaves the manifest's files whole; files no manifest lists are
deleted once the new manifest is written (:func:`remove_unlisted`). Memory-mapped when
searched: a lookup reads its rows and a binary search's pages of ids in each segment. A NumPy
file rather than a FAISS flat index: that one is held whole in memory to be built or changed
(31 GB at 10M × 768).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compsearch.indexer.faiss_choice import normalised_chunks
from compsearch.mapping.chunk_store import write_atomically

EXACT_SUFFIX = ".exact.npy"
COPY_ROWS = 65_536  # records copied at a time by a compaction
COMPACT_SHARE = 0.1  # dead records beyond this share of all: compacted
MAX_SEGMENTS = 8  # files beyond this: compacted (each lookup searches every file)

Chunks = Iterator[tuple[np.ndarray, np.ndarray]]  # (ids, vectors) per part


def exact_path(index_path: Path, segment: int = 0) -> Path:
    """Where the exact vectors of the compressed index ``index_path`` lie (``segment`` 0: as built)."""
    return index_path.with_name(f"{index_path.stem}{f'.{segment}' if segment else ''}{EXACT_SUFFIX}")


def _segment_number(index_path: Path, name: str) -> int:
    middle = name.removeprefix(index_path.stem).removesuffix(EXACT_SUFFIX).lstrip(".")
    return int(middle) if middle.isdigit() else 0


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


@dataclass(frozen=True)
class ExactFiles:
    """What an index's manifest entry records of its exact vectors."""

    files: list[str]  # in the index's folder
    dead: int  # records whose ids the index no longer holds


def update_exact_vectors(index_path: Path, exact: ExactFiles, ids: np.ndarray,
                         vectors_of: Callable[[np.ndarray], Chunks]) -> tuple[ExactFiles, int]:
    """``exact`` brought to hold ``ids`` (see the module docstring): the added ids' vectors, read
    through ``vectors_of``, as a new segment, or everything compacted into one new file; the new
    record and how many ids changed. Its ids are read from every record: a strided pass that
    touches each page of the files once (read, not written; a sidecar of ids would spare it)."""
    folder = index_path.parent
    segments = [open_segment(folder / name) for name in exact.files]
    held = np.concatenate([np.asarray(segment["id"]) for segment in segments])
    live = np.isin(held, ids)
    added = np.setdiff1d(ids, held)
    dead = len(held) - int(live.sum())
    changed = dead - exact.dead + len(added)
    if not changed:
        return exact, 0
    dim = segments[0].dtype["vector"].shape[0]
    path = exact_path(index_path, max(_segment_number(index_path, name) for name in exact.files) + 1)
    if dead <= COMPACT_SHARE * (len(held) + len(added)) and len(exact.files) < MAX_SEGMENTS:
        if len(added):
            _write(path, len(added), dim, lambda records: _append(records, 0, vectors_of(added)))
        return ExactFiles(exact.files + [path.name] if len(added) else exact.files, dead), changed

    def fill(records: np.memmap) -> int:
        position, offset = 0, 0
        for segment in segments:
            for start in range(0, len(segment), COPY_ROWS):
                stop = min(start + COPY_ROWS, len(segment))
                kept = segment[start:stop][live[offset + start:offset + stop]]
                records[position:position + len(kept)] = kept
                position += len(kept)
            offset += len(segment)
        return _append(records, position, vectors_of(added))

    _write(path, int(live.sum()) + len(added), dim, fill)
    return ExactFiles([path.name], 0), changed


def remove_unlisted(folder: Path, listed: set[str]) -> None:
    """Delete the exact-vectors files of ``folder`` that ``listed`` (the manifest's) does not
    name: those an update compacted, or a killed update left."""
    for path in folder.glob(f"*{EXACT_SUFFIX}"):
        if path.name not in listed:
            path.unlink(missing_ok=True)


def open_segment(path: Path) -> np.memmap:
    """One exact-vectors file, memory-mapped."""
    return np.load(path, mmap_mode="r")


class ExactVectors:
    """An index's exact-vectors files (:func:`open_segment`), looked up by id."""

    def __init__(self, segments: list[np.memmap]) -> None:
        self.segments = segments

    @property
    def ntotal(self) -> int:
        """Records in every file, dead ones included."""
        return sum(len(segment) for segment in self.segments)

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        """``(len(ids), dim)`` vectors of ``ids`` (each must be held: KeyError otherwise)."""
        ids = np.asarray(ids, dtype=np.int64)
        found = np.zeros(len(ids), bool)
        vectors = np.empty((len(ids), self.segments[0].dtype["vector"].shape[0]), np.float32)
        for segment in self.segments:
            if not len(segment):
                continue
            positions = np.minimum(np.searchsorted(segment["id"], ids), len(segment) - 1)
            here = ~found & (np.asarray(segment["id"][positions]) == ids)
            vectors[here] = segment["vector"][positions[here]]
            found |= here
        if not found.all():
            raise KeyError(f"ids not among the exact vectors: {ids[~found][:5]}")
        return vectors


def count_exact_vectors(path: Path) -> int:
    """The records of an exact-vectors file (its header alone is read)."""
    return len(open_segment(path))
