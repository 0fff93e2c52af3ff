"""Cutting a listing into work units: the one chunk/partition rule.

A source's listing is cut into *chunks* of ``chunk_size`` consecutive positions; chunk c is
one :class:`WorkUnit`. A run that stores one part per chunk resumes by leaving out the chunks
it has (``done``), and n processes split a run by chunk (``partition=(i, n)``: the chunks c
with c mod n = i), agreeing without talking because positions are the listing's. The loader
(what a worker reads), the probe counter (the progress bar's total) and the indexer (what a
shard does) all ask this module, so they cannot disagree.

A unit is a small frozen value (chunk number and position range): it can be sent to another
process or a task queue as is.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby

from compsearch.mapping.images.sources import ImageRecord, ImageSource

Partition = tuple[int, int]  # (i, n): this worker's share, the chunks c with c mod n = i
EVERYTHING: Partition = (0, 1)


@dataclass(frozen=True)
class WorkUnit:
    """One chunk of a listing: positions ``start`` to ``stop - 1``."""

    chunk: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Plan:
    """A listing cut into units: those this partition still has to do, and those it has."""

    listed: int  # images in the whole listing
    chunk_size: int
    partition: Partition
    todo: tuple[WorkUnit, ...]
    done: tuple[WorkUnit, ...]  # this partition's units already finished

    @property
    def chunks(self) -> int:
        """Chunks of the whole listing (every partition's)."""
        return -(-self.listed // self.chunk_size)

    @property
    def done_chunks(self) -> frozenset[int]:
        return frozenset(unit.chunk for unit in self.done)

    @property
    def images_todo(self) -> int:
        return sum(map(len, self.todo))

    @property
    def images_done(self) -> int:
        return sum(map(len, self.done))


def check_partition(partition: Partition) -> None:
    index, count = partition
    if not 0 <= index < count:
        raise ValueError(f"partition {partition} is not (index, count) with 0 <= index < count")


def chunk_of(position: int, chunk_size: int) -> int:
    return position // chunk_size


def in_partition(chunk: int, partition: Partition) -> bool:
    return chunk % partition[1] == partition[0]


def units(records: Iterable[ImageRecord], chunk_size: int, partition: Partition = EVERYTHING,
          done: Iterable[int] = ()) -> Iterator[tuple[WorkUnit, list[ImageRecord]]]:
    """The units still to do and their records, streamed from a listing (read once)."""
    check_partition(partition)
    finished = frozenset(done)
    for chunk, group in groupby(records, key=lambda record: chunk_of(record.position, chunk_size)):
        if in_partition(chunk, partition) and chunk not in finished:
            listed = list(group)
            yield WorkUnit(chunk, listed[0].position, listed[-1].position + 1), listed


def unit_of(chunk: int, listed: int, chunk_size: int) -> WorkUnit:
    return WorkUnit(chunk, chunk * chunk_size, min((chunk + 1) * chunk_size, listed))


def plan_listing(listed: int, chunk_size: int, partition: Partition = EVERYTHING, done: Iterable[int] = ()) -> Plan:
    """The plan of a listing of ``listed`` images (positions 0 … listed - 1)."""
    check_partition(partition)
    finished = frozenset(done)
    mine = [unit_of(chunk, listed, chunk_size) for chunk in range(-(-listed // chunk_size))
            if in_partition(chunk, partition)]
    return Plan(listed, chunk_size, partition, tuple(u for u in mine if u.chunk not in finished),
                tuple(u for u in mine if u.chunk in finished))


def plan(source: ImageSource, chunk_size: int, partition: Partition = EVERYTHING, done: Iterable[int] = ()) -> Plan:
    """List ``source`` once and cut it into units (see the module docstring)."""
    return plan_listing(sum(1 for _ in source.records()), chunk_size, partition, done)
