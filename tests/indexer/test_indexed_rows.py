"""The index's rows by path, compact: every listed path finds exactly its row."""
from __future__ import annotations

import hashlib
import random
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from compsearch.indexer import indexed_rows
from compsearch.indexer.indexed_rows import ROW, UNKNOWN, IndexedRows, mtime_ms
from compsearch.indexer.known_files import digest_key, file_keys


def _sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def _dataset(tmp_path: Path, parts: list[dict]) -> ds.Dataset:
    paths = []
    for number, columns in enumerate(parts):
        path = tmp_path / f"part-{number}.parquet"
        pq.write_table(pa.table(columns), path)
        paths.append(str(path))
    return ds.dataset(paths, format="parquet")


def _names(count: int, seed: int = 0) -> list[str]:
    draw = random.Random(seed)
    letters = "abcdé漢字/ _-.0123456789"
    return [f"/photos/{n}/" + "".join(draw.choice(letters) for _ in range(draw.randint(0, 40))) + ".jpg"
            for n in range(count)]


def test_every_path_finds_its_row_and_no_other_path_finds_one(tmp_path: Path) -> None:
    names = _names(3000)
    rows = IndexedRows(_dataset(tmp_path, [
        {"id": pa.array(range(start, start + 1000), pa.int64()), "path": names[start:start + 1000],
         "sha256": [_sha(n) for n in range(start, start + 1000)]} for start in range(0, 3000, 1000)]))
    asked = names + _names(500, seed=1) + [name + " " for name in names[:100]]
    found = rows.find(asked)
    ids = [int(rows.rows["id"][at]) if at >= 0 else None for at in found]
    assert ids == list(range(3000)) + [None] * 600
    assert all(rows.sha(at) == digest_key(_sha(n)) == file_keys([_sha(n)], [None]).digests[0]
               for n, at in enumerate(found[:3000]))
    assert rows.rows.nbytes == ROW.itemsize * 3000 == 56 * 3000


def test_paths_sharing_their_first_word_stay_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = indexed_rows.path_digests

    def few_first_words(paths: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        hi, lo = real(paths)
        return hi % np.uint64(3), lo  # every path shares its first word with a third of the others

    monkeypatch.setattr(indexed_rows, "path_digests", few_first_words)
    names = _names(300)
    rows = IndexedRows(_dataset(tmp_path, [{"id": pa.array(range(300), pa.int64()), "path": names,
                                            "sha256": [_sha(n) for n in range(300)]}]))
    found = rows.find(names + _names(50, seed=2))
    assert [int(rows.rows["id"][at]) for at in found[:300]] == list(range(300)) and (found[300:] == -1).all()


def test_a_path_held_twice_keeps_its_latest_id_and_rows_without_a_path_are_left_out(tmp_path: Path) -> None:
    rows = IndexedRows(_dataset(tmp_path, [
        {"id": pa.array([7, 3], pa.int64()), "path": ["/a.jpg", "/b.jpg"], "sha256": [_sha(7), _sha(3)]},
        {"id": pa.array([2, 9, 5], pa.int64()), "path": ["/a.jpg", None, "/a.jpg"],
         "sha256": [_sha(2), _sha(9), _sha(5)]}]))
    assert sorted(rows.repeated.tolist()) == [2, 5] and len(rows) == 2
    assert [int(rows.rows["id"][at]) for at in rows.find(["/a.jpg", "/b.jpg"])] == [7, 3]


def test_a_file_is_the_same_only_with_its_rows_size_and_mtime(tmp_path: Path) -> None:
    taken = datetime(2024, 5, 1, 12, 30, 15)
    rows = IndexedRows(_dataset(tmp_path, [
        {"id": pa.array([1, 2], pa.int64()), "path": ["/a.jpg", "/b.jpg"], "sha256": [_sha(1), _sha(2)],
         "file_size": pa.array([100, None], pa.int64()), "mtime": pa.array([taken, taken], pa.timestamp("ms"))}]))
    at = rows.find(["/a.jpg", "/a.jpg", "/a.jpg", "/a.jpg", "/b.jpg", "/c.jpg"])
    stats = [(100, taken), (101, taken), (100, datetime(2024, 5, 1, 12, 30, 16)), (None, None), (None, taken),
             (100, taken)]
    assert rows.same_files(at, stats).tolist() == [True, False, False, False, False, False]
    assert mtime_ms(taken) == int(rows.rows["mtime"][at[0]]) and mtime_ms(None) == UNKNOWN


def test_rows_built_before_sizes_and_mtimes_were_stored_are_never_the_same(tmp_path: Path) -> None:
    rows = IndexedRows(_dataset(tmp_path, [{"id": pa.array([1], pa.int64()), "path": ["/a.jpg"],
                                            "sha256": [_sha(1)]}]))
    assert not rows.same_files(rows.find(["/a.jpg", "/a.jpg"]), [(5, None), (5, datetime(2024, 1, 1))]).any()


def test_paths_of_reads_back_a_few_rows_and_an_empty_index_has_none(tmp_path: Path) -> None:
    names = _names(50)
    rows = IndexedRows(_dataset(tmp_path, [{"id": pa.array(range(50), pa.int64()), "path": names,
                                            "sha256": [_sha(n) for n in range(50)]}]))
    assert rows.paths_of([3, 40]) == {3: names[3], 40: names[40]}
    empty = IndexedRows(None)
    assert len(empty) == 0 and empty.find(["/a.jpg"]).tolist() == [-1] and empty.paths_of([1]) == {}
    assert not empty.same_files(empty.find(["/a.jpg"]), [(1, None)]).any()
