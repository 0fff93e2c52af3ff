"""File and EXIF columns: read from each file's bytes at indexing, typed alike in every shard,
and filterable with --where."""
from __future__ import annotations

import dataclasses
import os
from datetime import datetime
from pathlib import Path

import PIL.Image
import pyarrow.parquet as pq
import pytest

from compsearch import search
from compsearch.indexer.store import BUILTIN_TYPES, IndexStore
from compsearch.mapping.images.file_facts import file_facts
from tests.indexer.test_index import SETTINGS, _index, model  # noqa: F401 - the module's tiny model fixture


def _photo(path: Path, colour: tuple[int, int, int], **tags) -> Path:
    """A JPEG whose EXIF says what ``tags`` give (camera, time, GPS, …)."""
    image = PIL.Image.new("RGB", (40, 30), colour)
    exif = PIL.Image.Exif()
    if "make" in tags:
        exif[0x010F], exif[0x0110], exif[0x0112] = tags["make"], tags["model"], tags.get("orientation", 1)
        details = exif.get_ifd(0x8769)
        details[0x9003], details[0x920A], details[0x8827] = tags["taken"], tags["focal"], tags["iso"]
        details[0xA434] = tags["lens"]
    if "latitude" in tags:
        gps = exif.get_ifd(0x8825)
        gps[1], gps[2] = "S", tags["latitude"]
        gps[3], gps[4] = "W", tags["longitude"]
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, exif=exif)
    os.utime(path, (1_600_000_000, 1_600_000_000))
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    _photo(root / "trips" / "rome.jpg", (200, 30, 30), make="FUJIFILM", model="X100V", taken="2021:05:01 10:20:30",
           focal=23.0, iso=400, lens="23mm F2", orientation=6, latitude=(33.0, 51.0, 36.0), longitude=(151.0, 12.0, 0.0))
    _photo(root / "trips" / "oslo.jpg", (30, 30, 200), make="Canon", model="EOS R5", taken="2019:12:31 23:59:59",
           focal=50.0, iso=3200, lens="RF50mm")
    _photo(root / "home.jpg", (30, 200, 30))  # no EXIF at all
    return root


def test_file_facts_read_the_exif_fields(photos: Path) -> None:
    facts = file_facts(photos / "trips" / "rome.jpg", (photos / "trips" / "rome.jpg").read_bytes())
    assert facts["camera_make"] == "FUJIFILM" and facts["camera_model"] == "X100V" and facts["lens"] == "23mm F2"
    assert facts["taken"] == datetime(2021, 5, 1, 10, 20, 30) and facts["mtime"] == datetime(2020, 9, 13, 12, 26, 40)
    assert facts["focal_length"] == 23.0 and facts["iso"] == 400 and facts["orientation"] == 6
    assert facts["gps_latitude"] == pytest.approx(-(33 + 51 / 60 + 36 / 3600))
    assert facts["gps_longitude"] == pytest.approx(-(151 + 12 / 60))
    assert facts["file_size"] == (photos / "trips" / "rome.jpg").stat().st_size
    bare = file_facts(photos / "home.jpg", (photos / "home.jpg").read_bytes())
    assert bare["taken"] is None and bare["camera_model"] is None and bare["file_size"] > 0


def test_indexed_columns_are_typed_and_filterable(model, photos: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "index"
    _index(model, photos, out, settings=dataclasses.replace(SETTINGS, chunk_size=1))
    store = IndexStore(out)
    for path in store.shard_paths():  # one image per shard: the EXIF-less one holds nulls, typed alike
        schema = pq.read_schema(path)
        for name, kind in BUILTIN_TYPES.items():
            assert schema.field(name).type == kind, (path.name, name)
    rows = {row["key"]: row for row in store.read_table().to_pylist()}
    assert rows["trips/rome.jpg"]["folder"] == "trips" and rows["home.jpg"]["folder"] == ""
    index = search.open_index(out)
    found = lambda where: sorted(r.key for r in index.search(id=rows["home.jpg"]["id"], k=10, where=where).results)
    assert found("camera_model == 'X100V'") == ["trips/rome.jpg"]
    assert found("taken >= '2020-01-01' or taken is null") == ["home.jpg", "trips/rome.jpg"]
    assert found("folder == 'trips' and iso > 1000") == ["trips/oslo.jpg"]
    assert found("gps_latitude < 0 and mtime < '2021-01-01'") == ["trips/rome.jpg"]
