"""Search parameters (``nprobe``, ``efSearch``) chosen for a target recall on the collection's
own vectors.

A few hundred of the collection's vectors are held out as queries (drawn in the same pass as
the training sample, never trained on). While the index is filled, their exact top-k over the
whole collection is kept (one inner-product scan per chunk, nothing stored). Once it is built,
the cheapest setting on a doubling ladder whose recall@k reaches the target is chosen, measured
on the index as it will be searched. A query always finds itself, so its own id is left out of
both the exact and the approximate answer (it would give every setting 1/k for free).

Compressed codes (PQ) bound recall below any target: the ladder stops once recall no longer
grows, and the cheapest setting within ``PLATEAU`` of the best is chosen; the recall reached is
recorded beside it either way.
"""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

TOP = 10
PLATEAU = 0.005  # recall within this of the ladder's best counts as the best
MIN_QUANTIZER_EF = 64  # efSearch of an HNSW coarse quantizer: at least this, and 2·nprobe
# A compressed index (PQ, SQ) is asked for k × this many candidates, rescored with the exact vectors
# kept beside it (indexer.exact_vectors, search.index): recall@10 0.29 → 0.95 at 200k (RESULTS.md,
# pq-rescoring). Its codes get worse as it grows (0.22 at 1M, where k × 50 reach 0.91): the build
# goes deeper, one step at a time, until the target is reached, and records the depth it chose.
RESCORING = 50
RESCORING_DEPTHS = (RESCORING, 100, 200, 400)
RESCORING_KEY = "rescoring"  # the recorded depth, beside faiss's own parameters (not one of them)


def inner(index: faiss.Index) -> faiss.Index:
    """The index that has the search parameters: inside an ``IDMap``/``IDMap2`` wrapper and an
    ``IndexPreTransform`` (``OPQ{m},IVF…``: the rotation is applied before the IVF searches)."""
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
        index = faiss.downcast_index(index.index)
    return index


def set_search_parameters(index: faiss.Index, parameters: dict[str, int]) -> None:
    """Apply recorded ``parameters`` (faiss ``ParameterSpace`` names; the rescoring depth is the
    search layer's) to ``index``."""
    for name, value in parameters.items():
        if name != RESCORING_KEY:
            faiss.ParameterSpace().set_index_parameter(inner(index), name, value)


def ladder(index: faiss.Index) -> list[dict[str, int]]:
    """Settings to try, cheapest first; empty for an exact index."""
    found = inner(index)
    try:
        ivf = faiss.extract_index_ivf(found)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        steps = [1 << power for power in range(ivf.nlist.bit_length()) if 1 << power < ivf.nlist] + [ivf.nlist]
        hnsw_quantizer = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)
        return [{"nprobe": n, **({"quantizer_efSearch": max(MIN_QUANTIZER_EF, 2 * n)} if hnsw_quantizer else {})}
                for n in steps]
    if isinstance(found, faiss.IndexHNSW):
        return [{"efSearch": ef} for ef in (16, 32, 64, 128, 256, 512, 1024, 2048)]
    return []


@dataclass
class HeldOut:
    """Held-out queries and their exact top-``k`` so far (ids and scores), self excluded."""

    ids: np.ndarray
    queries: np.ndarray  # normalised
    k: int = TOP

    def __post_init__(self) -> None:
        self.scores = np.full((len(self.ids), self.k), -np.inf, dtype=np.float32)
        self.labels = np.full((len(self.ids), self.k), -1, dtype=np.int64)

    def see(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Fold one chunk of the collection (normalised) into the exact answers."""
        if not len(self.ids) or not len(ids):
            return
        scores, positions = faiss.knn(self.queries, vectors, min(self.k + 1, len(ids)), metric=faiss.METRIC_INNER_PRODUCT)
        labels = ids[positions]
        scores = np.where(labels == self.ids[:, None], -np.inf, scores)  # a query is not its own neighbour
        self.scores, self.labels = _best(np.hstack([self.scores, scores]), np.hstack([self.labels, labels]), self.k)

    def recall(self, index: faiss.Index, candidates: int = 1) -> float:
        """Mean recall@k of ``index`` as it is set now; with ``candidates`` > 1, of its k ×
        ``candidates`` best rescored exactly — the true neighbours among them, since exact scores
        put every one of those first."""
        depth = self.k * candidates
        _, found = index.search(self.queries, depth + 1)
        hits = [len(set(row[row != own][:depth]) & set(truth[truth >= 0]))
                for row, own, truth in zip(found, self.ids, self.labels)]
        return float(np.mean(hits) / self.k)


def _best(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(labels, order, 1)


def tune(index: faiss.Index, held_out: HeldOut, target: float, rescored: bool = False) -> tuple[dict[str, int],
                                                                                           float | None]:
    """The cheapest setting reaching recall ``target`` on ``held_out`` (see the module
    docstring), applied to ``index``, and the recall it reached (None: exact, or no queries).
    A ``rescored`` (compressed) index is tuned for its k × depth best rescored exactly, the depth
    raised along :data:`RESCORING_DEPTHS` while the target is not reached, and recorded."""
    best: tuple[dict[str, int], float | None] = ({}, None)
    for depth in RESCORING_DEPTHS if rescored else (1,):
        chosen, reached = _tune_probes(index, held_out, target, depth)
        if reached is None:
            return chosen, None
        if best[1] is None or reached > best[1] + PLATEAU:
            best = ({**chosen, RESCORING_KEY: depth} if rescored else chosen, reached)
        if reached >= target:
            break
    set_search_parameters(index, best[0])
    return best


def _tune_probes(index: faiss.Index, held_out: HeldOut, target: float, candidates: int) -> tuple[dict[str, int],
                                                                                                 float | None]:
    """:func:`tune` for one rescoring depth (``candidates``, as :meth:`HeldOut.recall` counts it)."""
    steps = ladder(index)
    if not steps or not len(held_out.ids):
        return {}, None
    measured: list[tuple[dict[str, int], float]] = []
    for step in steps:
        set_search_parameters(index, step)
        measured.append((step, held_out.recall(index, candidates)))
        if measured[-1][1] >= target:
            break
        if len(measured) >= 3 and measured[-1][1] - measured[-3][1] < PLATEAU / 2:
            break  # codes, not probes, bound recall now
    best = max(recall for _, recall in measured)
    return next((step, recall) for step, recall in measured if recall >= min(target, best - PLATEAU))
