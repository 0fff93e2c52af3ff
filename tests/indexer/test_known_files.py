"""The compact set of indexed files: every file found again exactly, whatever runs it landed in."""
from __future__ import annotations

import hashlib
import math

import pyarrow as pa
import pytest

from compsearch.indexer import known_files
from compsearch.indexer.known_files import KnownFiles, file_keys


def _sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def _digest(sha: str) -> tuple[int, int]:
    return file_keys([sha], [None]).digests[0]


def path_key(path: str | None) -> int:
    return file_keys([_sha(0)], [path]).paths[0]


def test_every_added_file_is_found_with_its_id_and_path_across_merged_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(known_files, "SETTLE_AT", 7)  # many small runs, merged as they grow
    known = KnownFiles()
    keys = file_keys([_sha(n) for n in range(5000)], [f"/photos/{n}.jpg" for n in range(5000)])
    for n, (digest, path) in enumerate(zip(keys.digests, keys.paths)):
        known.add(digest, n, path)
        known.settle()
    assert len(known) == 5000 and len(known._runs) <= math.log2(5000 / 7) + 2
    found = known.find([_digest(_sha(n)) for n in range(0, 6000, 7)])
    assert found == [(n, path_key(f"/photos/{n}.jpg")) if n < 5000 else None for n in range(0, 6000, 7)]
    assert sum(run.nbytes for run in known._runs) <= 32 * len(known)  # four 64-bit numbers a file


def test_files_added_since_the_last_settle_are_recent_and_found() -> None:
    known = KnownFiles()
    known.add(_digest(_sha(1)), 10, path_key(None))
    assert known.recent(_digest(_sha(1))) == known.find([_digest(_sha(1))])[0] == (10, path_key(None))
    assert known.recent(_digest(_sha(2))) is None


def test_digests_sharing_their_first_64_bits_stay_apart() -> None:
    a, b = "ab" * 8 + "00" * 24, "ab" * 8 + "01" + "00" * 23
    known = KnownFiles.from_batches([pa.record_batch({"id": [1, 2], "sha256": [a, b], "path": ["a", "b"]})])
    assert known.find([_digest(a), _digest(b), _digest("ab" * 8 + "02" + "00" * 23)]) == [
        (1, path_key("a")), (2, path_key("b")), None]


def test_built_from_shard_batches_like_from_adds() -> None:
    batches = [pa.record_batch({"id": list(range(start, start + 100)),
                                "sha256": [_sha(n) for n in range(start, start + 100)],
                                "path": [f"p{n}" for n in range(start, start + 100)]}) for start in (0, 100, 200)]
    known = KnownFiles.from_batches(batches + [pa.record_batch({"id": pa.array([], pa.int64()),
                                                                "sha256": pa.array([], pa.string()),
                                                                "path": pa.array([], pa.string())})])
    assert len(known) == 300
    assert known.find([_digest(_sha(250)), _digest(_sha(300))]) == [(250, path_key("p250")), None]


def test_a_paths_key_does_not_depend_on_its_neighbours_and_tells_paths_apart() -> None:
    paths = ["", None, "a", "ab", "ba", "é/ü.jpg", "", "x" * 300, "/photos/1.jpg", "/photos/2.jpg"]
    together = file_keys([_sha(0)] * len(paths), paths).paths
    assert together == [path_key(path) for path in paths]  # empty rows, multi-byte characters, any length
    assert together[0] == together[1] == together[6]  # no path is the empty path
    distinct = [key for path, key in zip(paths, together) if path]
    assert len(set(distinct)) == len(distinct)


def test_a_digest_is_the_first_128_bits_of_the_sha256() -> None:
    sha = _sha(42)
    assert _digest(sha) == (int(sha[:16], 16), int(sha[16:32], 16)) == _digest(sha.upper())


def test_repeats_map_every_later_copy_to_the_smallest_id_wherever_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(known_files, "SETTLE_AT", 2)
    known = KnownFiles.from_batches([pa.record_batch({"id": [5, 1], "sha256": [_sha(7), _sha(1)], "path": ["a", "b"]})])
    assert known.repeats() == {}
    for image_id, n in ((2, 7), (3, 3), (9, 7), (4, 1)):  # runs and pending entries alike
        known.add(_digest(_sha(n)), image_id, path_key(None))
        known.settle()
    assert known.repeats() == {5: 2, 9: 2, 4: 1}
