"""Choosing a property's k from the data (``--k auto``): pure functions on tensors.

The reference k per model family comes from the paper; for a user's property or a small
model it is a guess. Here each candidate k is tried on images held out of the ranking: the
property's vector v_p = Σ of its top-k components (ranked on the other images) should
retrieve images of the same value of p (its own separation) and not images of the same
value of any other property (leakage). Separation is precision@10 of cosine nearest
neighbours among the held-out images, minus its chance rate (:func:`match_excess`), so
properties with different numbers of values compare fairly. k maximises own − leakage;
ties go to the smaller k (fewer components, less of everything else summed in).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from compsearch.mapping.rank.retrieval import cosine_top_k, match_excess

AUTO = "auto"
MAX_K = 16  # candidates 1..16: the reference tables never go beyond 12
NEIGHBOURS = 10
HELD_OUT_EVERY = 4  # one image in four of each value is held out of the ranking


@dataclass
class KCurve:
    """Separation on held-out images against k (``ks`` 1, 2, …): ``own`` of the property's
    own values, ``leakage`` the highest of the other properties' values (0 alone)."""

    ks: list[int]
    own: list[float]
    leakage: list[float]
    held_out_images: int

    @property
    def scores(self) -> list[float]:
        return [own - leak for own, leak in zip(self.own, self.leakage)]

    def best_k(self) -> int:
        scores = self.scores
        return self.ks[scores.index(max(scores))]  # the first maximum: the smallest such k


@dataclass(frozen=True)
class HeldOut:
    """A property's held-out images: their component contributions (images, components, d)
    and their values (images,)."""

    contributions: torch.Tensor
    labels: torch.Tensor


def held_out_mask(labels: torch.Tensor, every: int = HELD_OUT_EVERY) -> torch.Tensor:
    """Every ``every``-th image of each value, so each value is on both sides of the split
    (a value with fewer than ``every`` images is never held out)."""
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for value in labels.unique():
        positions = (labels == value).nonzero().flatten()
        if len(positions) >= every:
            mask[positions[every - 1::every]] = True
    return mask


def separation(vectors: torch.Tensor, labels: torch.Tensor, neighbours: int = NEIGHBOURS) -> float:
    """Precision@``neighbours`` of each image's cosine nearest neighbours on ``labels``, over
    chance: 0 when the vectors ignore the labels."""
    results = cosine_top_k(vectors, vectors, neighbours, exclude_self=True)
    return match_excess(results, labels, labels, exclude_self=True)


def k_curve(name: str, order: list[int], held_out: Mapping[str, HeldOut], max_k: int = MAX_K) -> KCurve:
    """The separation curve of property ``name`` whose components, best first, are ``order``
    (indices), on every property's held-out images (``held_out[name]`` its own)."""
    ks = list(range(1, min(max_k, len(order)) + 1))
    chosen = torch.tensor(order[:len(ks)], dtype=torch.long)
    curves = {}
    for prop, data in held_out.items():
        cumulative = data.contributions[:, chosen].double().cumsum(1)  # (images, k, d): v_p for each k
        curves[prop] = [separation(cumulative[:, k - 1], data.labels) for k in ks]
    others = [curve for prop, curve in curves.items() if prop != name]
    leakage = [max(values) for values in zip(*others)] if others else [0.0] * len(ks)
    return KCurve(ks, curves[name], leakage, len(held_out[name].labels))
