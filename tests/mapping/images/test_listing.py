"""A plan's listing held compactly: every record comes back exactly, by position, and small."""
from __future__ import annotations

import os
import pickle
import tracemalloc
from itertools import islice
from pathlib import Path

import PIL.Image
import pyarrow as pa

from compsearch.mapping.images import listing as listing_module
from compsearch.mapping.images.listing import CompactListing
from compsearch.mapping.images.sources import ImageRecord, MemorySource, listed, records_between


def _records() -> list[ImageRecord]:
    """Every kind a plan appends: plain files, names that are not UTF-8, table rows with
    metadata, images in memory, files with a problem found when listed."""
    records = []
    for n in range(50):
        records.append(listed(n, f"a/{n}.jpg", Path(f"/photos/a/{n}.jpg")))
    broken = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 name: surrogate-escaped, with its problem
    records.append(listed(0, broken, Path("/photos") / broken))
    records.append(listed(0, "t/1.jpg", Path("/table/t/1.jpg"), {"caption": "a dog", "year": 2021}))
    records += list(MemorySource([("red", PIL.Image.new("RGB", (4, 4), "red"))]).records())
    plain_under_odd_root = ImageRecord(0, "x.jpg", Path(os.fsdecode(b"/r\xff/x.jpg")))  # no problem, odd root
    records.append(plain_under_odd_root)
    records += [listed(n, f"b/{n}.png", Path(f"b/{n}.png")) for n in range(30)]  # relative paths stay relative
    return records


def _as_tuple(record: ImageRecord) -> tuple:
    return record.position, record.key, record.path, record.metadata, record.image, record.problem


def test_every_record_comes_back_exactly_at_its_position(monkeypatch) -> None:
    monkeypatch.setattr(listing_module, "BLOCK", 16)  # several packed blocks and a partial one
    records = _records()
    held = CompactListing()
    for record in records:
        held.append(record)
    assert len(held) == len(records) and held.description == f"{len(records)} planned images"
    expected = [(position, *_as_tuple(record)[1:]) for position, record in enumerate(records)]
    assert [_as_tuple(record) for record in held.records()] == expected
    for start, stop in ((0, 0), (3, 20), (15, 17), (40, 90), (len(records) - 1, len(records) + 5)):
        assert [_as_tuple(r) for r in records_between(held, start, stop)] == expected[start:stop]
    copied = pickle.loads(pickle.dumps(held))  # as DataLoader workers and Ray tasks receive it
    assert [_as_tuple(record)[:3] for record in copied.records()] == [row[:3] for row in expected]


def test_any_other_source_is_read_up_to_the_positions_asked() -> None:
    source = MemorySource([(str(n), PIL.Image.new("RGB", (2, 2))) for n in range(10)])
    assert [r.key for r in records_between(source, 4, 7)] == [r.key for r in islice(source.records(), 4, 7)]


def test_a_plain_file_costs_its_names_bytes_not_objects() -> None:
    count = 4 * listing_module.BLOCK
    records = [listed(n, f"2024/holiday/{n:08d}.jpg", Path(f"/home/someone/photos/2024/holiday/{n:08d}.jpg"))
               for n in range(count)]
    names = sum(len(r.key) + len(str(r.path)) for r in records)  # (str() is cached by each Path: not counted below)
    warm = CompactListing()
    for record in records[:listing_module.BLOCK]:  # what the first block imports is not the listing's
        warm.append(record)
    arrow_before = pa.total_allocated_bytes()
    tracemalloc.start()  # Python's allocations; Arrow's own pool is counted apart
    held = CompactListing()
    for record in records:
        held.append(record)
    size = tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes() - arrow_before
    tracemalloc.stop()
    assert size < names + 40 * count  # the bytes, their offsets and a little: not ~1 kB of objects
    assert held.records_between(count - 1, count).__next__().key == records[-1].key
