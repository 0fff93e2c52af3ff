"""Zero-shot segmentation from heat: score maps to masks, and the scores a benchmark reports.

The conventions are those of the ViT-explainability segmentation benchmark the paper uses
(Chefer et al.): each image's map is scaled to [0, 1] and thresholded at its mean; pixel
accuracy and mean IoU (over the two classes, background and object) are accumulated over the
whole set; mAP is the mean over images of the average precision of the raw pixel scores.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from compsearch.mapping.explain.run import Query, explain_images
from compsearch.mapping.models import LoadedModel


@dataclass
class SegmentationScores:
    pixel_accuracy: float
    mean_iou: float
    mean_ap: float


def upsample(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(batch, rows, cols) → (batch, H, W) by bilinear interpolation (scores, not sums)."""
    return F.interpolate(grid[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def threshold_masks(scores: torch.Tensor) -> torch.Tensor:
    """(batch, H, W) maps → boolean masks: scaled to [0, 1] per image, kept above their mean."""
    flat = scores.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    scaled = (flat - low) / (high - low).clamp_min(1e-12)
    return (scaled > scaled.mean(1, keepdim=True)).view_as(scores)


def average_precision(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """AP of ``scores`` ranking the ``truth`` pixels first: Σ_n (R_n − R_{n−1}) P_n over the
    distinct score thresholds, so tied scores count as one threshold (a constant map scores
    the positive share, not an order-dependent number)."""
    order = torch.argsort(scores.flatten().double(), descending=True)
    ranked, hits = scores.flatten().double()[order], truth.flatten()[order].double()
    positives = hits.sum()
    if positives == 0:
        return float("nan")
    ends = torch.cat([torch.nonzero(ranked[1:] != ranked[:-1]).flatten(), torch.tensor([len(ranked) - 1])])
    true_positives = hits.cumsum(0)[ends]
    precision = true_positives / (ends + 1).double()
    recall_steps = torch.diff(true_positives, prepend=torch.zeros(1, dtype=torch.double)) / positives
    return float((recall_steps * precision).sum())


def segmentation_scores(scores: torch.Tensor, truth: torch.Tensor) -> SegmentationScores:
    """Pixel accuracy, mean IoU and mAP of (batch, H, W) score maps against boolean ``truth``."""
    masks, truth = threshold_masks(scores), truth.bool()
    correct = (masks == truth).sum().item()
    ious = []
    for predicted, actual in ((masks, truth), (~masks, ~truth)):
        union = (predicted | actual).sum().item()
        ious.append((predicted & actual).sum().item() / union if union else 1.0)
    precisions = [average_precision(image_scores, image_truth) for image_scores, image_truth in zip(scores, truth)]
    return SegmentationScores(correct / truth.numel(), float(np.mean(ious)), float(np.nanmean(precisions)))


def segment_images(
    model: LoadedModel, images: Sequence[PIL.Image.Image], query: Query = Query(), **explain_options: object
) -> torch.Tensor:
    """Zero-shot masks (batch, H, W) of the model's view of ``images``: the token heat for
    ``query`` (default: each image's predicted class), bilinearly upsampled and thresholded."""
    explanations = explain_images(model, images, query, **explain_options)
    grids = torch.cat([explanation.heatmap.grid for explanation in explanations])
    view = explanations[0].view
    return threshold_masks(upsample(grids, (view.height, view.width)))
