"""Seeing inside a model through its components: token heatmaps (:mod:`.heatmap`), what they
project on (:mod:`.directions`), drawing them (:mod:`.overlay`), and the whole step for
images (:func:`explain_images`)."""
from mapping.explain.directions import (
    aligned_directions,
    class_directions,
    class_readout,
    mapped_components,
    property_directions,
)
from mapping.explain.heatmap import Heatmap, grid_to_pixels, token_heat
from mapping.explain.overlay import components_caption, render_overlay
from mapping.explain.run import Explanation, Query, explain_images, query_from_ranking, select_components
from mapping.explain.view import SplitTransform, split_transform

__all__ = [
    "Explanation",
    "Heatmap",
    "Query",
    "SplitTransform",
    "aligned_directions",
    "class_directions",
    "class_readout",
    "components_caption",
    "explain_images",
    "grid_to_pixels",
    "mapped_components",
    "property_directions",
    "query_from_ranking",
    "render_overlay",
    "select_components",
    "split_transform",
    "token_heat",
]
