"""The encode stage: batches of a work unit's images → the unit's rows, ready to write.

Each batch (decoded by :func:`mapping.images.iter_batches`, tagged with its unit's chunk) is
de-duplicated against the files known so far (:class:`~indexer.known_files.KnownFiles`: the
index's shards and what this stage has added), its new images are encoded by the
:class:`~mapping.encoder.PropertyEncoder` into every property's vector in one forward pass,
and their rows (id, key, path, sha256, size, carried metadata) are collected per unit. When a
unit's last batch has been taken, its :class:`~indexer.store.ChunkRows` are handed back, for
the write stage. Nothing here is global: the encoder, the known files and where ids start
are passed in, so a process, a shard or a task can each run its own. With a store dtype, each
batch's component store comes from the same forward pass and is kept per unit too.
"""
from __future__ import annotations

import os
import posixpath
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compsearch.indexer.component_store import join_stored, store_table
from compsearch.indexer.known_files import KnownFiles, file_keys
from compsearch.indexer.store import RESERVED_COLUMNS, SHARDS, ChunkRows, IndexStore
from compsearch.mapping.decompose import StoredComponents
from compsearch.mapping.encoder import PropertyEncoder
from compsearch.mapping.images import Batch, ImageRecord
from compsearch.mapping.images.sources import printable


@dataclass(frozen=True)
class RunIds:
    """Where a run's rows go: its number, and the id of its plan's position 0 (ids are the
    run's offset plus the file's position in the plan, so every process agrees on them)."""

    run: int
    id_offset: int

    def image_id(self, record: ImageRecord) -> int:
        return self.id_offset + record.position


def listed_path(record: ImageRecord) -> str | None:
    """The absolute path as listed, symlinks kept: a link is its own entry (a duplicate of
    its target), and the server decides what a link may point to."""
    return os.path.abspath(record.path) if record.path else None


def _row(record: ImageRecord, image_id: int, size: tuple[int, int], sha256: str, facts: dict[str, Any]) -> dict[str, Any]:
    row = {"id": image_id, "key": record.key, "path": listed_path(record), "sha256": sha256, "width": size[0],
           "height": size[1], "folder": posixpath.dirname(record.key) if record.path else None, **facts}
    for name, value in record.metadata.items():  # carried columns never shadow ours
        row[f"metadata.{name}" if name in RESERVED_COLUMNS else name] = value
    return row


def known_files(store: IndexStore, leaving: Collection[int] = ()) -> KnownFiles:
    """Every file an index holds, by content (streamed from its shards, kept compact), but the
    rows ``leaving`` it (a sync removes them: a copy of one is indexed, not a duplicate)."""
    dataset = store.dataset(SHARDS)
    if dataset is None:
        return KnownFiles()
    gone = pa.array(sorted(leaving), pa.int64())
    batches = dataset.to_batches(columns=["id", "sha256", "path"])
    return KnownFiles.from_batches(b.filter(pc.invert(pc.is_in(b.column("id"), gone))) if len(gone) else b
                                   for b in batches)


class UnitEncoder:
    """Takes batches of any number of units, interleaved as loader workers yield them, and
    returns each unit's rows once its last batch is in."""

    def __init__(self, encoder: PropertyEncoder, known: KnownFiles, ids: RunIds, store: str | None = None) -> None:
        self.encoder = encoder
        self.known = known
        self.ids = ids
        self.store = store  # the component store's dtype (fp16, fp32), None to keep none
        self.open: dict[int, ChunkRows] = {}  # units still being read, by chunk
        self.pieces: dict[int, dict[str, list[np.ndarray]]] = {}  # per unit, each batch's vectors
        self.stored: dict[int, list[StoredComponents]] = {}  # per unit, each batch's component store

    def take(self, batch: Batch) -> ChunkRows | None:
        """De-duplicate and encode one batch; the unit's rows when this was its last batch.
        The unit changes only once the batch is encoded: Ctrl-C in the model leaves it whole."""
        fresh, duplicates, already_indexed = self._fresh(batch)
        if fresh:
            pixels = batch.pixels[0] if len(fresh) == len(batch) else batch.pixels[0][fresh]  # no copy when all are new
            vectors, stored = self.encoder.encode_and_store(pixels, self.store)
            pieces = self.pieces.setdefault(batch.chunk, {})
            for name, values in vectors.items():
                pieces.setdefault(name, []).append(values.numpy())
            if stored is not None:
                self.stored.setdefault(batch.chunk, []).append(stored)
        rows = self.open.setdefault(batch.chunk, ChunkRows(self.ids.run, batch.chunk, [], {}, [], []))
        rows.rows += [_row(batch.records[i], self.ids.image_id(batch.records[i]), batch.sizes[i], batch.sha256[i],
                           batch.facts[i]) for i in fresh]
        rows.skipped += [{"key": printable(record.key), "path": printable(str(record.path)) if record.path else None,
                          "reason": reason} for record, reason in batch.skipped]
        rows.duplicates += duplicates
        rows.already_indexed += already_indexed
        self.known.settle()
        return self._close(batch.chunk) if batch.chunk_done else None

    def _close(self, chunk: int) -> ChunkRows:
        rows = self.open.pop(chunk)  # its vectors joined once, not re-copied per batch
        rows.vectors = {name: np.concatenate(parts) for name, parts in self.pieces.pop(chunk, {}).items()}
        stored = self.stored.pop(chunk, None)
        if stored:
            rows.store = store_table([row["id"] for row in rows.rows], join_stored(stored))
        return rows

    def partial(self) -> list[ChunkRows]:
        """The units still open, as far as they got (on Ctrl-C: every image encoded is kept;
        a rerun plans from the files, so the rest of such a unit is simply not indexed yet)."""
        return [self._close(chunk) for chunk in list(self.open)]

    def _fresh(self, batch: Batch) -> tuple[list[int], list[dict[str, Any]], int]:
        """Positions in ``batch`` of the files not known yet; the duplicates entries of the
        others (known under another path), and how many are known under their own path."""
        fresh, duplicates, already_indexed = [], [], 0
        paths = [listed_path(record) for record in batch.records]
        keys = file_keys(batch.sha256, paths)
        found = self.known.find(keys.digests)  # written shards and earlier batches
        for position, (record, sha256, path) in enumerate(zip(batch.records, batch.sha256, paths)):
            hit = found[position] or self.known.recent(keys.digests[position])  # or earlier in this batch
            if hit is not None:
                first_id, first_path = hit
                if first_path == keys.paths[position]:
                    already_indexed += 1
                else:
                    duplicates.append({"key": record.key, "path": path, "sha256": sha256, "duplicate_of": first_id})
                continue
            self.known.add(keys.digests[position], self.ids.image_id(record), keys.paths[position])
            fresh.append(position)
        return fresh, duplicates, already_indexed
