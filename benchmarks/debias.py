"""Removing a spurious feature on a Waterbirds-like world: worst-group accuracy before → after.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/debias.py [--train-count 400] [--test-count 200]

The split (a pure function of (seed, index), like every world image): the label is the shape
(two of the world's shapes), the spurious attribute is the scene (water or forest, trivially
visible). In training the scene agrees with the label 95 % of the time; the test set is
balanced over the four (shape, scene) groups. Colour, pattern, position and rotation vary as
usual; the object's size may be scaled down to make the shape harder to see.

For each configuration, a linear head (logistic regression on z) is fitted on the training
renders; components are ranked by S_scene − S_shape (label-variance shares on the training
set) and the top k ∈ {1, 3, 10, 20} are mean-ablated (``mapping.explain.debias``); the head
is reused or refitted. Models: the fixture CLIP's image tower (all 4 blocks: 14 components;
k is capped there) on square vs star at half the world's size (at full size it needs no scene),
and the real DeiT-tiny (all 12 blocks: 50 components) on square vs star at the world's size and
on circle vs heart at 0.3 of it (the closest pair at that size).
Prints the table and rewrites its section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import click
import numpy as np
import torch

from compsearch.indexer.world import WorldItem, draw_item, render_image
from compsearch.indexer.world.fixture_clip import fixture_clip_dir
from compsearch.mapping.decompose import decompose
from compsearch.mapping.explain.debias import DebiasReport, LabelledSet, debias
from compsearch.mapping.models import LoadedModel, load_model
from results_section import DEIT_WEIGHTS, publish, shared_cpu

SCENES = ("water", "forest")
TRAIN_SEED, TEST_SEED = 11, 12
AGREEMENT = 0.95
COUNTS = (1, 3, 10, 20)
# (model, label shapes, object scale)
CONFIGURATIONS = (
    ("fixture CLIP image tower", ("square", "star"), 0.5),
    ("DeiT-tiny", ("square", "star"), 1.0),
    ("DeiT-tiny", ("circle", "heart"), 0.3),
)


def waterbirds_item(
    seed: int, index: int, balanced: bool, shapes: tuple[str, str], object_scale: float = 1.0
) -> WorldItem:
    """Item ``index``: its shape (one of ``shapes``) and scene set by the split's rule, its size
    scaled by ``object_scale``, everything else drawn as usual."""
    if balanced:  # groups in turn: exactly balanced
        label, scene = index % 2, (index // 2) % 2
    else:
        rng = np.random.default_rng([seed, index, 1])
        label = int(rng.integers(2))
        scene = label if rng.random() < AGREEMENT else 1 - label
    item = draw_item(seed, index)
    return dataclasses.replace(item, shape=shapes[label], scene=SCENES[scene], radius=item.radius * object_scale)


def labelled_set(model: LoadedModel, items: list[WorldItem], batch_size: int = 50) -> tuple[list[str], LabelledSet]:
    parts = []
    for start in range(0, len(items), batch_size):
        batch = torch.stack([model.preprocess(render_image(item)) for item in items[start:start + batch_size]])
        parts.append(decompose(model.model, batch, first_block="all", model_name=model.name))
    contributions = torch.cat([part.contributions.float() for part in parts])
    return parts[0].names, LabelledSet(contributions, [item.shape for item in items], [item.scene for item in items])


def table_rows(configuration: str, report: DebiasReport) -> list[str]:
    before = report.before
    rows = [f"| {configuration} | 0 | {before.worst:.3f} | {before.average:.3f} | – | – |"]
    for step in report.steps:
        rows.append(f"| {configuration} | {len(step.ablated)} | {step.reused_head.worst:.3f} "
                    f"| {step.reused_head.average:.3f} | {step.refit_head.worst:.3f} | {step.refit_head.average:.3f} |")
    return rows


@click.command()
@click.option("--train-count", default=400, show_default=True, type=click.IntRange(min=20))
@click.option("--test-count", default=200, show_default=True, type=click.IntRange(min=4))
@click.option("--deit-weights", type=click.Path(dir_okay=False, path_type=Path), default=DEIT_WEIGHTS, show_default=True)
def main(train_count: int, test_count: int, deit_weights: Path) -> None:
    loaders = {"fixture CLIP image tower": lambda: load_model(f"local-dir:{fixture_clip_dir()}"),
               "DeiT-tiny": lambda: load_model("deit_tiny_patch16_224", weights=deit_weights)}
    if not deit_weights.is_file():
        click.echo(f"no DeiT-tiny weights at {deit_weights}: measuring the fixture CLIP only", err=True)
    models: dict[str, LoadedModel] = {}
    rows, details = [], []
    for model_name, shapes, scale in CONFIGURATIONS:
        if model_name == "DeiT-tiny" and not deit_weights.is_file():
            continue
        started = time.perf_counter()
        model = models.setdefault(model_name, loaders[model_name]())
        train_items = [waterbirds_item(TRAIN_SEED, index, False, shapes, scale) for index in range(train_count)]
        test_items = [waterbirds_item(TEST_SEED, index, True, shapes, scale) for index in range(test_count)]
        names, train = labelled_set(model, train_items)
        _, test = labelled_set(model, test_items)
        report = debias(names, train, test, sorted({min(count, len(names)) for count in COUNTS}))
        configuration = f"{model_name}, {' vs '.join(shapes)}" + (f" at {scale}×" if scale != 1.0 else "")
        rows += table_rows(configuration, report)
        groups = ", ".join(f"{shape}/{scene} {report.before.groups[(shape, scene)]:.2f}"
                           for shape in shapes for scene in SCENES)
        top = ", ".join(f"`{name}`" for name, _ in report.ranking[:3])
        details.append(f"- {configuration}: {len(names)} components; groups before: {groups}; "
                       f"top-ranked for the scene: {top}; {time.perf_counter() - started:.0f} s.")
        click.echo(f"{configuration} done", err=True)

    lines = [
        "## Spurious-feature removal on a Waterbirds-like world",
        "",
        f"`OMP_NUM_THREADS=2 .venv/bin/python benchmarks/debias.py --train-count {train_count} --test-count {test_count}` "
        f"(label: the shape; spurious: the scene, {' vs '.join(SCENES)}, agreeing {AGREEMENT:.0%} in training, "
        f"balanced in the test set; {shared_cpu()}).",
        "",
        "| model, label shapes | ablated | worst group, same head | average, same head | worst group, refit head "
        "| average, refit head |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        *details,
        "",
        "Ablated components are replaced by their training mean; components are ranked by S_scene − S_shape "
        "(label-variance shares on the training renders). Reference (the paper, real Waterbirds, top 10): "
        "DeiT worst group .733 → .815, CLIP .507 → .744.",
    ]
    publish("debias", lines)


if __name__ == "__main__":
    main()
