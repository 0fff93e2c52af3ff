"""Zero-shot segmentation: the benchmark's metrics, Grad-CAM's hooks, and masks on world objects."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from compsearch.indexer.world import SPLITS, render_image, render_mask
from compsearch.mapping.errors import UnsupportedModelError
from compsearch.mapping.explain import split_transform
from compsearch.mapping.explain.gradcam import grad_cam
from compsearch.mapping.explain.segmentation import average_precision, segment_images, segmentation_scores, threshold_masks
from compsearch.mapping.models import load_model


def test_average_precision_counts_ties_as_one_threshold() -> None:
    truth = torch.tensor([True, False, True, False])
    assert average_precision(torch.tensor([4.0, 3, 2, 1]), truth) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(torch.tensor([1.0, 2, 3, 4]), ~truth) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(torch.ones(4), truth) == pytest.approx(0.5)  # a constant map: the positive share
    assert average_precision(torch.tensor([2.0, 0, 1, 0]), truth) == 1.0


def test_masks_keep_what_is_above_each_maps_mean() -> None:
    scores = torch.tensor([[[0.0, 10.0], [2.0, 8.0]], [[5.0, 5.0], [5.0, 5.0]]])
    assert threshold_masks(scores).tolist() == [[[False, True], [False, True]], [[False, False], [False, False]]]


def test_perfect_and_inverted_maps_bound_the_scores() -> None:
    truth = torch.zeros(2, 8, 8, dtype=torch.bool)
    truth[:, 2:6, 2:6] = True
    perfect = segmentation_scores(truth.float(), truth)
    assert (perfect.pixel_accuracy, perfect.mean_iou, perfect.mean_ap) == (1.0, 1.0, 1.0)
    inverted = segmentation_scores((~truth).float(), truth)
    assert inverted.pixel_accuracy == 0.0 and inverted.mean_iou == 0.0 and inverted.mean_ap == pytest.approx(0.25)


def test_grad_cam_lays_a_positive_map_on_the_patch_grid_and_removes_its_hook() -> None:
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                              depth=2, num_heads=2, num_classes=5).eval().requires_grad_(False)
    images = torch.randn(3, 3, 32, 32)
    maps, classes = grad_cam(model, images)
    assert maps.shape == (3, 4, 4) and (maps >= 0).all() and maps.sum() > 0
    assert torch.equal(classes, model(images).argmax(-1))
    assert not model.blocks[-1].norm1._forward_hooks
    other, _ = grad_cam(model, images, class_index=int((classes[0] + 1) % 5))
    assert not torch.allclose(maps[0], other[0])


def test_grad_cam_refuses_other_architectures() -> None:
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, patch_size=2,
                              window_size=4, embed_dim=16, depths=(1, 1), num_heads=(2, 2), num_classes=5)
    with pytest.raises(UnsupportedModelError, match="plain ViTs"):
        grad_cam(model, torch.randn(1, 3, 64, 64))


def test_real_deit_masks_find_world_objects_better_than_the_floor(deit_tiny_weights: Path) -> None:
    model = load_model("deit_tiny_patch16_224", weights=deit_tiny_weights)
    transform = split_transform(model.preprocess)
    items = SPLITS["test"].items(16)
    masks = segment_images(model, [render_image(item) for item in items])
    truth = torch.from_numpy(np.stack([transform.mask(render_mask(item)) for item in items]))
    assert masks.shape == truth.shape == (16, 224, 224)
    ious = [(a & b).sum().item() / (a | b).sum().item() for a, b in ((masks, truth), (~masks, ~truth))]
    floor = (~truth).float().mean().item() / 2  # mean IoU of calling every pixel background (≈ 0.34)
    assert np.mean(ious) > floor + 0.15, ious
