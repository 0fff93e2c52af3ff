"""Seeing inside a model through its components: token heatmaps (:mod:`.heatmap`), what they
project on (:mod:`.directions`), drawing them (:mod:`.overlay`), the whole step for
images (:func:`explain_images`), zero-shot segmentation (:mod:`.segmentation`, with Grad-CAM
as its baseline)."""
from compsearch.mapping.explain.directions import (
    aligned_directions,
    class_directions,
    class_readout,
    mapped_components,
    property_directions,
)
from compsearch.mapping.explain.gradcam import grad_cam
from compsearch.mapping.explain.heatmap import Heatmap, grid_to_pixels, token_heat
from compsearch.mapping.explain.overlay import components_caption, render_overlay
from compsearch.mapping.explain.run import Explanation, Query, explain_images, query_from_ranking, select_components
from compsearch.mapping.explain.segmentation import SegmentationScores, segment_images, segmentation_scores, threshold_masks
from compsearch.mapping.explain.view import SplitTransform, split_transform

__all__ = [
    "Explanation",
    "Heatmap",
    "Query",
    "SegmentationScores",
    "SplitTransform",
    "aligned_directions",
    "class_directions",
    "class_readout",
    "components_caption",
    "explain_images",
    "grad_cam",
    "grid_to_pixels",
    "mapped_components",
    "property_directions",
    "query_from_ranking",
    "render_overlay",
    "segment_images",
    "segmentation_scores",
    "select_components",
    "split_transform",
    "threshold_masks",
    "token_heat",
]
