"""Retrieval measures on planted data whose right answers are known by construction."""
from __future__ import annotations

import pytest
import torch

from compsearch.mapping.rank.retrieval import (
    agreement_excess,
    agreement_rate,
    chance_agreement_rate,
    chance_match_rate,
    cosine_top_k,
    match_excess,
    match_rate,
    sum_components,
)


def _planted_world(images: int = 600) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two independent factors with 4 values each; component 0 carries factor A (one direction
    per value), component 1 factor B, component 2 noise. Returns (contributions, A, B)."""
    a, b = torch.randint(4, (images,)), torch.randint(4, (images,))
    contributions = 0.05 * torch.randn(images, 3, 8)
    contributions[:, 0, :4] += torch.eye(4)[a]
    contributions[:, 1, 4:] += torch.eye(4)[b]
    contributions[:, 2] += torch.randn(images, 8)
    return contributions, a, b


def test_cosine_top_k_orders_by_cosine_and_can_skip_the_query_itself() -> None:
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.1]])
    assert cosine_top_k(torch.tensor([[3.0, 0.0]]), gallery, 2).tolist() == [[0, 3]]  # scale does not matter
    results = cosine_top_k(gallery, gallery, 1, exclude_self=True)
    assert results[:, 0].tolist() == [3, 2, 3, 0]
    assert cosine_top_k(gallery, gallery, 10, exclude_self=True).shape == (4, 3)
    with pytest.raises(ValueError):
        cosine_top_k(gallery[:2], gallery, 1, exclude_self=True)


def test_a_property_index_retrieves_its_factor_and_ignores_the_other() -> None:
    contributions, a, b = _planted_world()
    index_a = sum_components(contributions, [0])
    results = cosine_top_k(index_a, index_a, 10, exclude_self=True)
    assert match_rate(results, a, a) == 1.0
    assert abs(match_excess(results, b, b, exclude_self=True)) < 0.05  # B leaks only by chance
    full = sum_components(contributions, [0, 1])
    results = cosine_top_k(full, full, 10, exclude_self=True)
    assert match_rate(results, a, a) > 0.95 and match_excess(results, b, b, exclude_self=True) > 0.6
    noise = sum_components(contributions, [2])
    results = cosine_top_k(noise, noise, 10, exclude_self=True)
    assert abs(match_excess(results, a, a, exclude_self=True)) < 0.05


def test_text_queries_precision_and_agreement_among_results() -> None:
    contributions, a, b = _planted_world()
    queries = torch.cat([torch.eye(4), torch.zeros(4, 4)], dim=1)  # one "text" per value of A
    results = cosine_top_k(queries, sum_components(contributions, [0]), 10)
    assert match_rate(results, torch.arange(4), a) == 1.0
    assert agreement_excess(results, b) < 0.25  # B stays mixed among the results
    # A query that also leans towards one value of B: the results then agree on B.
    leaning = queries.clone()
    leaning[:, 4] = 0.5
    results = cosine_top_k(leaning, sum_components(contributions, [0, 1]), 10)
    assert match_rate(results, torch.arange(4), a) == 1.0
    assert agreement_excess(results, b) > 0.6


def test_chance_rates_follow_label_frequencies() -> None:
    labels = torch.tensor([0, 0, 0, 1])
    # Each 0 sees two other 0s of three; the 1 sees none.
    assert chance_match_rate(labels, labels, exclude_self=True) == pytest.approx((3 * 2 / 3 + 0) / 4)
    assert chance_match_rate(torch.tensor([0, 1]), labels) == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert chance_agreement_rate(labels) == pytest.approx(3 * 2 / (4 * 3))
    results = torch.tensor([[0, 1, 2], [0, 1, 3]])
    assert agreement_rate(results, labels) == pytest.approx((1.0 + 1 / 3) / 2)
    assert match_excess(results, torch.tensor([0, 1]), labels) == pytest.approx((1.0 + 1 / 3) / 2 - 0.5)


def test_agreement_needs_two_results() -> None:
    with pytest.raises(ValueError):
        agreement_rate(torch.tensor([[0]]), torch.tensor([0, 1]))
