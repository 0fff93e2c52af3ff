"""The exact vectors beside a compressed index: written in id order from parts in any order,
looked up by id, rewritten by an update to hold exactly the shards' ids."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compsearch.indexer.exact_vectors import ExactVectors, count_exact_vectors, update_exact_vectors, \
    write_exact_vectors
from compsearch.indexer.faiss_choice import normalised

VECTORS = np.random.default_rng(0).standard_normal((400, 8), dtype=np.float32)


def parts(ids: list[int], size: int = 7):
    for start in range(0, len(ids), size):
        chunk = np.array(ids[start:start + size], np.int64)
        yield chunk, VECTORS[chunk]


def test_vectors_are_found_by_id_whatever_order_the_parts_came_in(tmp_path: Path) -> None:
    ids = list(range(100, 300))
    shuffled = list(np.random.default_rng(1).permutation(ids))
    write_exact_vectors(tmp_path / "full.exact.npy", parts(shuffled), len(ids), 8)
    exact = ExactVectors(tmp_path / "full.exact.npy")
    assert exact.ntotal == count_exact_vectors(tmp_path / "full.exact.npy") == 200
    asked = np.array([299, 100, 150])
    np.testing.assert_array_equal(exact.reconstruct_batch(asked), normalised(VECTORS[asked]))
    with pytest.raises(KeyError):
        exact.reconstruct_batch(np.array([99]))


def test_an_update_keeps_removes_and_adds(tmp_path: Path) -> None:
    path = tmp_path / "full.exact.npy"
    write_exact_vectors(path, parts(list(range(200))), 200, 8)
    wanted = np.array([i for i in range(200) if i % 3] + list(range(200, 260)), np.int64)
    changed = update_exact_vectors(path, wanted, lambda only: parts(sorted(only.tolist()), 11))
    assert changed == 67 + 60
    exact = ExactVectors(path)
    assert exact.ntotal == len(wanted) and np.array_equal(np.asarray(exact.ids), np.sort(wanted))
    np.testing.assert_array_equal(exact.reconstruct_batch(wanted), normalised(VECTORS[wanted]))
