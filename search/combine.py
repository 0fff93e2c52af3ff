"""Combined queries: the top k of Σ_t w_t · cos(v_{p_t}(x), q_t) over a whole collection,
from candidates that each term's own index gathers.

How (Fagin's threshold algorithm over FAISS): every term t searches its index for the K
images that score best *on that term* — the nearest to q_t for a positive weight, to −q_t
for a negative one — starting at K = k · oversampling. Every candidate (the union of the
lists) is then scored exactly on all terms from its stored vectors. An image in none of
the lists scores at most the K-th score of each list on each term, so it cannot beat
B = Σ_t |w_t| · s_t(K). When the k-th best candidate scores ≥ B (or B is under the score
threshold), the top k is the top k of the whole collection; otherwise K doubles and the
search repeats, up to every image or :data:`MAX_DEPTH` per term. With exact indexes (Flat)
the result is therefore the brute-force ranking; with approximate ones (IVF, HNSW) each
list is only as complete as the index's recall, and so is the guarantee.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAX_DEPTH = 16384  # per term: beyond this the answer is returned uncertified
TOLERANCE = 1e-6  # float32 cosines from FAISS and from the stored vectors differ by this much

SearchFunction = Callable[[str, np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (name, (1, d), K) -> scores, ids
VectorsFunction = Callable[[str, np.ndarray], np.ndarray]  # (name, ids) -> (len(ids), d) normalised


@dataclass
class WeightedVector:
    index: str  # the vector name (property) whose index the term searches
    vector: np.ndarray  # (d,) normalised query vector
    weight: float


@dataclass
class Ranked:
    ids: np.ndarray  # (n,) best first
    totals: np.ndarray  # (n,) Σ_t w_t · cosine_t
    cosines: np.ndarray  # (n, terms)
    candidates: int  # images scored exactly
    certified: bool  # whether the bound proved the top k is the collection's


def rank_candidates(terms: list[WeightedVector], ids: np.ndarray, vectors: VectorsFunction) -> Ranked:
    """``ids`` scored exactly on every term and sorted (best first, ties by id)."""
    cosines = np.stack([vectors(term.index, ids) @ term.vector for term in terms], axis=1) if len(ids) else \
        np.zeros((0, len(terms)), np.float32)
    totals = cosines @ np.array([term.weight for term in terms], dtype=np.float32)
    order = np.lexsort((ids, -totals))
    return Ranked(ids[order], totals[order], cosines[order], len(ids), True)


def combined_top_k(terms: list[WeightedVector], search: SearchFunction, vectors: VectorsFunction, k: int,
                   count: int, oversampling: int, threshold: float | None = None) -> Ranked:
    """The ``k`` best of ``count`` indexed images for the weighted ``terms`` (module docstring)."""
    depth = min(count, max(k, k * oversampling))
    while True:
        lists = [search(term.index, np.sign(term.weight) * term.vector[None], depth) for term in terms]
        found = [ids[0][ids[0] >= 0] for _, ids in lists]
        ranked = rank_candidates(terms, np.unique(np.concatenate(found)), vectors)
        if depth >= count:
            return ranked
        # The best an image outside every list can score: each list's last (depth-th) score
        # (an approximate index may return fewer; then its last is the best guess there is).
        bound = sum(abs(term.weight) * (scores[0][len(ids) - 1] if len(ids) else 1.0)
                    for term, (scores, _), ids in zip(terms, lists, found))
        kth = ranked.totals[k - 1] if len(ranked.totals) >= k else -np.inf
        if kth >= bound - TOLERANCE or (threshold is not None and bound < threshold):
            return ranked
        if depth >= MAX_DEPTH:
            ranked.certified = False
            return ranked
        depth = min(count, 2 * depth, MAX_DEPTH)
