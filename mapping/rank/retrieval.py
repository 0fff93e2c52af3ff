"""Measuring property retrieval: brute-force cosine search and how its results agree with
labelled factors (docs/architecture.md, Search). Pure functions on tensors.

A property index should retrieve by its property and ignore the others. Two numbers say so:

- **precision@k** on the queried factor: the share of the top-k results whose value of that
  factor is the query's;
- **leakage** on another factor: how much more often than chance the results share the
  query's value of that factor. For a reference image the query has a value of every factor
  (:func:`match_excess`); a text query names one factor only, so there leakage is the excess
  agreement of the results *with each other* (:func:`agreement_excess`): an index that ignores
  colour returns results of mixed colours.

Chance is computed from the gallery's own label frequencies, so unbalanced labels do not
pass for leakage.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sum_components(contributions: torch.Tensor, indices: torch.Tensor | list[int]) -> torch.Tensor:
    """The summed contributions of the chosen components: (images, components, d) → (images, d)."""
    return contributions[:, torch.as_tensor(indices, dtype=torch.long)].sum(1)


def cosine_top_k(queries: torch.Tensor, gallery: torch.Tensor, k: int, exclude_self: bool = False) -> torch.Tensor:
    """Indices (queries, k) of the ``k`` gallery rows most cosine-similar to each query, best
    first. ``exclude_self``: the queries *are* the gallery rows (same order), and a row may not
    retrieve itself."""
    similarity = F.normalize(queries.double(), dim=-1) @ F.normalize(gallery.double(), dim=-1).T
    if exclude_self:
        if similarity.shape[0] != similarity.shape[1]:
            raise ValueError("exclude_self needs the queries to be the gallery itself")
        similarity.fill_diagonal_(float("-inf"))
    k = min(k, gallery.shape[0] - int(exclude_self))
    # Stable order on ties (e.g. constant representations): lowest index first.
    return torch.sort(similarity, dim=1, descending=True, stable=True).indices[:, :k]


def match_rate(results: torch.Tensor, query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> float:
    """Mean share of results (queries, k) whose gallery label equals their query's label
    (precision@k when the labels are those of the queried factor)."""
    return (gallery_labels[results] == query_labels[:, None]).double().mean().item()


def chance_match_rate(query_labels: torch.Tensor, gallery_labels: torch.Tensor, exclude_self: bool = False) -> float:
    """The expected :func:`match_rate` of results drawn at random from the gallery: per query,
    the share of the gallery (less the query itself with ``exclude_self``) carrying its label."""
    counts = torch.bincount(gallery_labels, minlength=int(max(gallery_labels.max(), query_labels.max())) + 1).double()
    same = counts[query_labels]
    size = float(len(gallery_labels))
    if exclude_self:
        same, size = same - 1, size - 1
    return (same / size).mean().item()


def match_excess(
    results: torch.Tensor, query_labels: torch.Tensor, gallery_labels: torch.Tensor, exclude_self: bool = False,
) -> float:
    """:func:`match_rate` minus its chance rate: 0 when retrieval ignores the factor."""
    return match_rate(results, query_labels, gallery_labels) - chance_match_rate(
        query_labels, gallery_labels, exclude_self
    )


def agreement_rate(results: torch.Tensor, gallery_labels: torch.Tensor) -> float:
    """Mean share of pairs of results, within each query's results, that share a label."""
    labels = gallery_labels[results]  # (queries, k)
    k = labels.shape[1]
    if k < 2:
        raise ValueError("agreement among results needs at least two results per query")
    same = (labels[:, :, None] == labels[:, None, :]).double().sum((1, 2)) - k  # off-diagonal pairs
    return (same / (k * (k - 1))).mean().item()


def chance_agreement_rate(gallery_labels: torch.Tensor) -> float:
    """The expected :func:`agreement_rate` of results drawn at random without replacement."""
    counts = torch.bincount(gallery_labels).double()
    size = counts.sum()
    return ((counts * (counts - 1)).sum() / (size * (size - 1))).item()


def agreement_excess(results: torch.Tensor, gallery_labels: torch.Tensor) -> float:
    """:func:`agreement_rate` minus its chance rate: 0 when the results' labels are as mixed
    as the gallery's."""
    return agreement_rate(results, gallery_labels) - chance_agreement_rate(gallery_labels)
