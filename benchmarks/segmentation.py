"""Zero-shot segmentation of world objects by the real DeiT-tiny: decomposition heat vs Grad-CAM.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/segmentation.py [--count 300]

World renders (the ``test`` split, 224 px) have exact object masks (``render_mask``), carried
through the model's own resize and crop. Each method gives a score map on the 14×14 patch
grid for the model's predicted class, upsampled bilinearly to 224 px and scored with the
conventions of the ViT-explainability segmentation benchmark (``mapping.explain.segmentation``):

- decomposition: the token split of every head of the decomposed range, projected on the
  predicted class's row of the head (``compsearch explain``'s default heat), for the paper's
  range (blocks 7–11) and for all blocks;
- Grad-CAM on the last block's ``norm1`` output (``mapping.explain.gradcam``);
- uniform: one constant score everywhere (the floor: no pixel called object, AP = object share);
- centre prior: minus the distance to the image centre (world objects sit near the centre,
  so this says how much of a score comes from position alone).

Prints the table and rewrites its section of ``benchmarks/RESULTS.md``. Needs the real
DeiT-tiny weights (``../shared/models``); says so and stops without them.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import torch

from compsearch.indexer.world import SPLITS, render_image, render_mask
from compsearch.mapping.explain import explain_images, split_transform
from compsearch.mapping.explain.gradcam import grad_cam
from compsearch.mapping.explain.segmentation import SegmentationScores, segmentation_scores, upsample
from compsearch.mapping.models import LoadedModel, load_model
from results_section import DEIT_WEIGHTS, publish, shared_cpu

GRID = (14, 14)


def decomposition_maps(first_block: str | None) -> Callable[[LoadedModel, list, torch.Tensor], torch.Tensor]:
    def maps(model: LoadedModel, pictures: list, inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat([e.heatmap.grid for e in explain_images(model, pictures, first_block=first_block)])
    return maps


def grad_cam_maps(model: LoadedModel, pictures: list, inputs: torch.Tensor) -> torch.Tensor:
    return grad_cam(model.model, inputs)[0]


def uniform_maps(model: LoadedModel, pictures: list, inputs: torch.Tensor) -> torch.Tensor:
    return torch.ones(len(inputs), *GRID)


def centre_maps(model: LoadedModel, pictures: list, inputs: torch.Tensor) -> torch.Tensor:
    axis = torch.arange(GRID[0]) - (GRID[0] - 1) / 2
    return -(axis[:, None] ** 2 + axis[None, :] ** 2).sqrt().expand(len(inputs), *GRID)


METHODS: dict[str, Callable] = {
    "decomposition, blocks 7–11 (paper's range)": decomposition_maps(None),
    "decomposition, all blocks": decomposition_maps("all"),
    "Grad-CAM (blocks.11.norm1)": grad_cam_maps,
    "uniform": uniform_maps,
    "centre prior": centre_maps,
}


@click.command()
@click.option("--count", default=300, show_default=True, type=click.IntRange(min=1), help="World images.")
@click.option("--batch-size", default=25, show_default=True, type=click.IntRange(min=1))
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=DEIT_WEIGHTS, show_default=True)
def main(count: int, batch_size: int, weights: Path) -> None:
    if not weights.is_file():
        click.echo(f"no DeiT-tiny weights at {weights}: nothing to measure (pass --weights)", err=True)
        sys.exit(1)
    model = load_model("deit_tiny_patch16_224", weights=weights)
    transform = split_transform(model.preprocess)
    items = SPLITS["test"].items(count)
    scores = {name: [] for name in METHODS}
    seconds = dict.fromkeys(METHODS, 0.0)
    truths = []
    for start in range(0, count, batch_size):
        batch = items[start:start + batch_size]
        pictures = [render_image(item) for item in batch]
        inputs = torch.stack([transform(picture)[1] for picture in pictures])
        truths.append(torch.from_numpy(np.stack([transform.mask(render_mask(item)) for item in batch])))
        for name, method in METHODS.items():
            started = time.perf_counter()
            scores[name].append(upsample(method(model, pictures, inputs), tuple(inputs.shape[-2:])))
            seconds[name] += time.perf_counter() - started
        click.echo(f"{start + len(batch)}/{count} images", err=True)
    truth = torch.cat(truths)
    results: dict[str, SegmentationScores] = {name: segmentation_scores(torch.cat(maps), truth)
                                             for name, maps in scores.items()}

    lines = [
        "## Zero-shot segmentation of world objects (DeiT-tiny)",
        "",
        f"`OMP_NUM_THREADS=2 .venv/bin/python benchmarks/segmentation.py --count {count}` ({count} renders of the "
        f"world's `test` split at 224 px, real DeiT-tiny weights, predicted class; "
        f"{shared_cpu()}). Object share of the pixels: {truth.float().mean():.3f}.",
        "",
        "| method | pixel acc. | mIoU | mAP | ms / image |",
        "|---|---|---|---|---|",
        *(f"| {name} | {r.pixel_accuracy:.3f} | {r.mean_iou:.3f} | {r.mean_ap:.3f} | {1000 * seconds[name] / count:.0f} |"
          for name, r in results.items()),
        "",
        "Maps are on the 14×14 patch grid, upsampled bilinearly; masks threshold each map, scaled to [0, 1], at its "
        "mean; mIoU averages object and background IoU over the whole set; mAP averages per-image average precision. "
        "Reference on real ImageNet masks (the paper, DeiT-base): decomposition .772 / .529 / .831, "
        "Grad-CAM .653 / .463 / .713 (pixel acc. / mIoU / mAP).",
    ]
    publish("segmentation", lines)


if __name__ == "__main__":
    main()
