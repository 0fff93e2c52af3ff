"""Searching only the images a filter selected: inside FAISS with an ``IDSelector`` (on every
index type the indexer builds), or as an exact scan of the selected images' stored vectors
where the selection is small enough for that to be cheaper.

Either way the answer holds the best ``depth`` of the selected images, never fewer when that
many are selected: when FAISS returns fewer (an IVF index whose probed lists hold too few
selected images), the exact scan answers instead.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np

from compsearch.indexer.faiss_tuning import inner

EXACT_SCAN_MAX = 5_000  # selected images up to which a scan of their vectors beats the selector (benchmarks/cli_query.py)

VectorsOf = Callable[[np.ndarray], np.ndarray]  # sorted ids -> (len(ids), d) normalised vectors
Search = Callable[[np.ndarray, int, faiss.SearchParameters], tuple[np.ndarray, np.ndarray]]  # queries, depth, params


@dataclass
class Selection:
    """The ids a filter kept, sorted."""

    ids: np.ndarray
    _selector: faiss.IDSelector | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def selector(self) -> faiss.IDSelector:
        if self._selector is None:  # built once per query batch, shared by every term's index
            self._selector = faiss.IDSelectorBatch(self.ids)
        return self._selector


def search_parameters(index: faiss.Index, selector: faiss.IDSelector) -> faiss.SearchParameters:
    """Parameters carrying ``selector`` with the index's own search settings (nprobe,
    efSearch): a plain SearchParameters would search an IVF index with nprobe 1 (and one inside
    an ``OPQ`` pre-transform not at all; the pre-transform hands them on to it)."""
    found = inner(index)
    if isinstance(found, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=selector, nprobe=found.nprobe)
    if isinstance(found, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=found.hnsw.efSearch)
    return faiss.SearchParameters(sel=selector)


def exact_scan(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's ``(scores, ids)`` shape for inner products of ``queries`` with every vector
    (best first, ties by id; -1 pads rows with fewer than ``depth`` images)."""
    scores = queries @ vectors.T if len(ids) else np.zeros((len(queries), 0), np.float32)
    out_scores = np.full((len(queries), depth), -np.inf, np.float32)
    out_ids = np.full((len(queries), depth), -1, np.int64)
    take = min(depth, len(ids))
    for row, row_scores in enumerate(scores):
        order = np.lexsort((ids, -row_scores))[:take]
        out_scores[row, :take], out_ids[row, :take] = row_scores[order], ids[order]
    return out_scores, out_ids


def search_selected(index: faiss.Index, queries: np.ndarray, depth: int, selection: Selection,
                    vectors_of: VectorsOf, search: Search | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The best ``depth`` selected images per query row (module docstring); ``search``: how
    ``index`` is searched with the selector's parameters (default: ``index.search``; the search
    layer's rescores a compressed index)."""
    depth = max(1, min(depth, len(selection)))
    if len(selection) <= EXACT_SCAN_MAX:
        return exact_scan(queries, selection.ids, vectors_of(selection.ids), depth)
    search = search or (lambda queries, depth, params: index.search(queries, depth, params=params))
    scores, ids = search(queries, depth, search_parameters(index, selection.selector))
    if (ids < 0).any():  # the probed lists held too few selected images
        return exact_scan(queries, selection.ids, vectors_of(selection.ids), depth)
    return scores, ids
