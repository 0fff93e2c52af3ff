"""The exact vectors beside a compressed index: written in id order from parts in any order,
looked up by id across segments, updated by writing what changed, compacted when dead
records or segments pile up."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compsearch.indexer import exact_vectors
from compsearch.indexer.exact_vectors import ExactFiles, ExactVectors, count_exact_vectors, open_segment, \
    remove_unlisted, update_exact_vectors, write_exact_vectors
from compsearch.indexer.faiss_choice import normalised

VECTORS = np.random.default_rng(0).standard_normal((400, 8), dtype=np.float32)
INDEX = "full.faiss"


def parts(ids: list[int], size: int = 7):
    for start in range(0, len(ids), size):
        chunk = np.array(ids[start:start + size], np.int64)
        yield chunk, VECTORS[chunk]


def opened(folder: Path, exact: ExactFiles) -> ExactVectors:
    return ExactVectors([open_segment(folder / name) for name in exact.files])


def vectors_of(only: np.ndarray):
    return parts(sorted(only.tolist()), 11)


def test_vectors_are_found_by_id_whatever_order_the_parts_came_in(tmp_path: Path) -> None:
    ids = list(range(100, 300))
    shuffled = list(np.random.default_rng(1).permutation(ids))
    write_exact_vectors(tmp_path / "full.exact.npy", parts(shuffled), len(ids), 8)
    exact = opened(tmp_path, ExactFiles(["full.exact.npy"], 0))
    assert exact.ntotal == count_exact_vectors(tmp_path / "full.exact.npy") == 200
    asked = np.array([299, 100, 150])
    np.testing.assert_array_equal(exact.reconstruct_batch(asked), normalised(VECTORS[asked]))
    with pytest.raises(KeyError):
        exact.reconstruct_batch(np.array([99]))


def test_a_small_update_adds_a_segment_and_leaves_the_built_file_untouched(tmp_path: Path) -> None:
    write_exact_vectors(tmp_path / "full.exact.npy", parts(list(range(300))), 300, 8)
    built = (tmp_path / "full.exact.npy").stat()
    wanted = np.array([i for i in range(300) if i % 50] + list(range(300, 320)), np.int64)  # 6 removed, 20 added
    exact, changed = update_exact_vectors(tmp_path / INDEX, ExactFiles(["full.exact.npy"], 0), wanted, vectors_of)
    assert (changed, exact) == (26, ExactFiles(["full.exact.npy", "full.1.exact.npy"], 6))
    after = (tmp_path / "full.exact.npy").stat()
    assert (after.st_ino, after.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)  # not rewritten
    assert count_exact_vectors(tmp_path / "full.1.exact.npy") == 20
    found = opened(tmp_path, exact)
    assert found.ntotal - exact.dead == len(wanted)
    np.testing.assert_array_equal(found.reconstruct_batch(wanted[::-1]), normalised(VECTORS[wanted[::-1]]))
    again = update_exact_vectors(tmp_path / INDEX, exact, wanted, vectors_of)
    assert again == (exact, 0)  # nothing changed: nothing written


def test_dead_records_past_their_share_are_compacted_into_one_new_file(tmp_path: Path) -> None:
    write_exact_vectors(tmp_path / "full.exact.npy", parts(list(range(200))), 200, 8)
    exact = ExactFiles(["full.exact.npy"], 0)
    wanted = np.arange(200)
    for step in range(4):  # 12 removed and 5 added each time: dead records pass 10 % at the second
        wanted = np.concatenate([wanted[12:], np.arange(200 + 5 * step, 205 + 5 * step)])
        exact, changed = update_exact_vectors(tmp_path / INDEX, exact, wanted, vectors_of)
        assert changed == 17
        found = opened(tmp_path, exact)
        assert found.ntotal - exact.dead == len(wanted)
        np.testing.assert_array_equal(found.reconstruct_batch(wanted), normalised(VECTORS[wanted]))
        if step == 1:
            assert exact == ExactFiles(["full.2.exact.npy"], 0)  # compacted: exactly the live records
            assert np.array_equal(np.asarray(open_segment(tmp_path / "full.2.exact.npy")["id"]), np.sort(wanted))
    remove_unlisted(tmp_path, set(exact.files))
    assert sorted(path.name for path in tmp_path.glob("*.npy")) == sorted(exact.files)


def test_segments_past_their_number_are_compacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exact_vectors, "MAX_SEGMENTS", 3)
    write_exact_vectors(tmp_path / "full.exact.npy", parts(list(range(100))), 100, 8)
    exact, wanted = ExactFiles(["full.exact.npy"], 0), np.arange(100)
    for step in range(3):
        wanted = np.append(wanted, 100 + step)
        exact = update_exact_vectors(tmp_path / INDEX, exact, wanted, vectors_of)[0]
    assert exact == ExactFiles(["full.3.exact.npy"], 0)
    np.testing.assert_array_equal(opened(tmp_path, exact).reconstruct_batch(wanted), normalised(VECTORS[wanted]))
