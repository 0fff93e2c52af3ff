"""Combined queries: the threshold bound over per-term candidate lists gives the brute-force
ranking over the whole collection, with far fewer images scored."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from compsearch.indexer.faiss_choice import normalised
from compsearch.search.combine import WeightedVector, combined_top_k

COUNT, DIM = 2000, 24


def _collection(seed: int) -> dict[str, np.ndarray]:
    """Three 'properties' of one collection, correlated like parts of one representation."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((COUNT, DIM))
    return {name: normalised(shared * mix + rng.standard_normal((COUNT, DIM)))
            for name, mix in (("full", 1.0), ("colour", 0.5), ("pattern", 0.2))}


def _brute_force(vectors: dict[str, np.ndarray], terms: list[WeightedVector], k: int) -> tuple[np.ndarray, np.ndarray]:
    totals = sum(term.weight * (vectors[term.index] @ term.vector) for term in terms)
    order = np.lexsort((np.arange(COUNT), -totals))[:k]
    return order, totals[order]


@pytest.mark.parametrize("seed", range(6))
def test_combined_top_k_equals_brute_force(seed: int) -> None:
    vectors = _collection(seed)
    ids = np.arange(COUNT, dtype=np.int64) * 7 + 3  # ids are not positions
    indexes = {}
    for name, values in vectors.items():
        indexes[name] = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
        indexes[name].add_with_ids(values, ids)
    rng = np.random.default_rng(100 + seed)
    names = list(vectors)
    terms = [WeightedVector(names[i % 3], normalised(rng.standard_normal((1, DIM)))[0],
                            float(rng.choice([-1.0, -0.4, 0.5, 1.0, 2.0]))) for i in range(2 + seed % 3)]
    terms[0].weight = abs(terms[0].weight)  # at least one attracting term, as users write them
    k = 10
    found = combined_top_k(terms, lambda name, query, depth: indexes[name].search(query, depth),
                           lambda name, wanted: indexes[name].reconstruct_batch(wanted), k, COUNT, oversampling=2)
    expected_positions, expected_totals = _brute_force(vectors, terms, k)
    assert found.certified
    assert found.candidates < COUNT  # it did not simply score everything
    np.testing.assert_array_equal(found.ids[:k], ids[expected_positions])
    np.testing.assert_allclose(found.totals[:k], expected_totals, rtol=1e-5, atol=1e-5)


def test_a_weak_first_pass_widens_until_the_bound_holds() -> None:
    """Two opposed terms: the best sum is rarely near the top of either list, so one pass
    of k candidates per term cannot be trusted; the depth doubles until it can."""
    vectors = _collection(0)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    index.add_with_ids(vectors["full"], np.arange(COUNT, dtype=np.int64))
    query = normalised(np.random.default_rng(5).standard_normal((2, DIM)))
    terms = [WeightedVector("full", query[0], 1.0), WeightedVector("full", query[1], 1.0)]
    searched: list[int] = []

    def search(name: str, vector: np.ndarray, depth: int):
        searched.append(depth)
        return index.search(vector, depth)

    found = combined_top_k(terms, search, lambda name, wanted: index.reconstruct_batch(wanted), 5, COUNT, 1)
    assert max(searched) > 5
    np.testing.assert_array_equal(found.ids[:5], _brute_force(vectors, terms, 5)[0])
