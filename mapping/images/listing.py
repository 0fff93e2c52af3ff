"""A listing held compactly: the files a run's plan will encode, as a source.

As objects, a listed file costs about 1 kB (the record, its ``Path``, their strings): 100 GB
for the first run over 1e8 files (RESULTS.md, sync-plan). Here a plain file record (a key and a path, nothing else) is
its two names' bytes, packed into Arrow binary arrays a block at a time — key and path as the
file system gives them (``surrogateescape``), so any name comes back exactly. A record that
carries more (metadata from a table, an image in memory, a problem found when listed, no
path) is kept whole. Positions are the order of appending; a unit's records are read by
position directly (:meth:`CompactListing.records_between`), never by listing up to them.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from compsearch.mapping.images.sources import ImageRecord

BLOCK = 8192  # records packed into one pair of arrays


def _plain(record: ImageRecord) -> bool:
    return record.path is not None and not record.metadata and record.image is None and record.problem is None


class CompactListing:
    """Records appended once, then read as a source (see the module docstring)."""

    def __init__(self) -> None:
        self._blocks: list[tuple[pa.BinaryArray, pa.BinaryArray]] = []  # (keys, paths); null: kept whole
        self._keys: list[bytes | None] = []  # the block being filled
        self._paths: list[bytes | None] = []
        self._whole: dict[int, ImageRecord] = {}

    def __len__(self) -> int:
        return len(self._blocks) * BLOCK + len(self._keys)

    @property
    def description(self) -> str:
        return f"{len(self)} planned images"

    def append(self, record: ImageRecord) -> None:
        if _plain(record):
            self._keys.append(record.key.encode("utf-8", "surrogateescape"))
            self._paths.append(os.fsencode(record.path))
        else:
            self._whole[len(self)] = record
            self._keys.append(None)
            self._paths.append(None)
        if len(self._keys) == BLOCK:
            self._blocks.append((pa.array(self._keys, pa.binary()), pa.array(self._paths, pa.binary())))
            self._keys, self._paths = [], []

    def records(self) -> Iterator[ImageRecord]:
        return self.records_between(0, len(self))

    def records_between(self, start: int, stop: int) -> Iterator[ImageRecord]:
        """The records at positions ``start`` … ``stop - 1``."""
        position = max(start, 0)
        stop = min(stop, len(self))
        while position < stop:
            block, offset = divmod(position, BLOCK)
            count = min(stop - position, BLOCK - offset)
            if block < len(self._blocks):
                keys, paths = (column.slice(offset, count).to_pylist() for column in self._blocks[block])
            else:
                keys, paths = self._keys[offset:offset + count], self._paths[offset:offset + count]
            for number, (key, path) in enumerate(zip(keys, paths)):
                yield self._record(position + number, key, path)
            position += count

    def _record(self, position: int, key: bytes | None, path: bytes | None) -> ImageRecord:
        if key is None:
            record = self._whole[position]
            record.position = position
            return record
        return ImageRecord(position, key.decode("utf-8", "surrogateescape"), Path(os.fsdecode(path)))
