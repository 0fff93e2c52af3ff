"""Draw the example heatmaps the README shows (``benchmarks/examples/*.png``).

    .venv/bin/python benchmarks/explain_examples.py

World renders only (the project may not redistribute ImageNet photos), explained by

- the real DeiT-tiny (``../shared/models``; skipped without it): its predicted ImageNet class,
  from the heads of its last five blocks;
- the fixture CLIP (trained once if missing): a colour text query, and the shape property's
  subspace.

Each PNG is what ``compsearch explain`` writes for the same query.
"""
from __future__ import annotations

from pathlib import Path

import click

from compsearch.indexer.world import SPLITS, render_image
from compsearch.indexer.world.fixture_clip import fixture_clip_dir
from compsearch.mapping.explain import Query, components_caption, explain_images, render_overlay
from compsearch.mapping.models import LoadedModel, load_model
from compsearch.mapping.properties import builtin_property
from results_section import DEIT_WEIGHTS

OUT = Path(__file__).with_name("examples")


def draw(model: LoadedModel, item_index: int, query: Query, name: str) -> Path:
    item = SPLITS["test"].item(item_index)
    encode_text = model.encode_text if model.is_clip else None
    (explanation,) = explain_images(model, [render_image(item)], query, encode_text=encode_text)
    label = f" {explanation.label}" if explanation.label else ""
    title = f"{model.name.split('/')[-1]}: {explanation.target}{label}"
    caption = f"image: {item.colour} {item.pattern} {item.shape} on {item.scene}. " + components_caption(
        explanation.heatmap.components, explanation.heatmap.located)
    path = OUT / f"{name}.png"
    render_overlay(explanation.view, explanation.pixel_heat(), title, caption).save(path)
    return path


@click.command()
def main() -> None:
    OUT.mkdir(exist_ok=True)
    written = []
    if DEIT_WEIGHTS.is_file():
        deit = load_model("deit_tiny_patch16_224", weights=DEIT_WEIGHTS)
        written += [draw(deit, 1, Query(), "deit_tiny_predicted_class"),
                    draw(deit, 7, Query(), "deit_tiny_predicted_class_2")]
    else:
        click.echo(f"no DeiT-tiny weights at {DEIT_WEIGHTS}: drawing the fixture CLIP's examples only", err=True)
    clip = load_model(f"local-dir:{fixture_clip_dir()}")
    item = SPLITS["test"].item(3)
    written += [draw(clip, 3, Query(text=f"a {item.colour} shape"), "fixture_clip_colour_text"),
                draw(clip, 3, Query(property=builtin_property("shape")), "fixture_clip_shape_property")]
    for path in written:
        click.echo(path)


if __name__ == "__main__":
    main()
