"""The exactness check every decomposition test shares: Σ components = z."""
from __future__ import annotations

import torch

from compsearch.mapping.decompose import Decomposition

TOLERANCE = 1e-5  # relative error ‖Σ c_i − z‖ / ‖z‖ in float32


def tokens_summed(decomposition: Decomposition) -> Decomposition:
    """The decomposition with every split head replaced by the sum of its tokens."""
    contributions = decomposition.contributions.clone()
    for split in decomposition.token_splits:
        columns = [decomposition.index(name) for name in split.component_names]
        contributions[:, columns] = split.contributions.sum(2)
    return Decomposition(decomposition.model_name, decomposition.names, contributions, decomposition.output)


def assert_exact(decomposition: Decomposition, reference: torch.Tensor | None = None) -> None:
    """Σ components = z to :data:`TOLERANCE` (also through the token splits, if any), and
    z = ``reference`` (the model's own output, maybe from another attention kernel) to the same
    relative error when given."""
    if reference is not None:
        assert relative_error(decomposition.output, reference).max().item() <= TOLERANCE
    assert decomposition.relative_error().max().item() <= TOLERANCE
    if decomposition.token_splits is not None:
        assert tokens_summed(decomposition).relative_error().max().item() <= TOLERANCE


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Per image ‖actual − expected‖ / ‖expected‖, in float64."""
    expected = expected.double()
    return (actual.double() - expected).norm(dim=-1) / expected.norm(dim=-1)
