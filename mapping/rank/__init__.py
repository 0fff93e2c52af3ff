"""Scoring and ranking components per property: pure tensor functions (:mod:`.scores`),
the ranking file the indexer reads (:mod:`.ranking`), and the stage on image files (:func:`rank`)."""
from compsearch.mapping.rank.ranking import (
    PropertyRanking,
    Ranking,
    default_k,
    format_ranking,
    model_family,
    property_rankings,
)
from compsearch.mapping.rank.run import check_rank_inputs, rank
from compsearch.mapping.rank.scores import (
    ComponentVariance,
    component_variances,
    constant_components,
    contrast_scores,
    label_variance_share,
    property_coordinates,
    property_scores,
    rank_components,
    scores_from_coordinates,
)

__all__ = [
    "ComponentVariance",
    "PropertyRanking",
    "Ranking",
    "check_rank_inputs",
    "component_variances",
    "constant_components",
    "contrast_scores",
    "default_k",
    "format_ranking",
    "label_variance_share",
    "model_family",
    "property_coordinates",
    "property_rankings",
    "property_scores",
    "rank",
    "rank_components",
    "scores_from_coordinates",
]
