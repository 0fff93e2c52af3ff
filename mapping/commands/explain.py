"""``compsearch explain``: token heatmaps of chosen components, drawn over the images."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from compsearch.mapping.commands.options import (
    aligner_option,
    clip_weights_option,
    first_block_option,
    json_option,
    load_model_from_options,
    model_options,
)
from compsearch.mapping.errors import CompsearchError

if TYPE_CHECKING:
    from compsearch.mapping.explain import Query
    from compsearch.mapping.rank import Ranking


def build_query(
    ranking: Ranking | None, property_name: str | None, text: str | None, component_patterns: tuple[str, ...],
    class_index: int | None,
) -> Query:
    """The query the options describe; conflicting or incomplete selectors are one clear error."""
    from compsearch.mapping.explain import Query, query_from_ranking

    if (ranking is None) != (property_name is None):
        raise CompsearchError("--ranking and --property go together",
                              "pass both (the property's top components), or neither")
    if class_index is not None and text is not None:
        raise CompsearchError("--class and --text both name a direction", "pass one of them")
    if ranking is not None:
        if component_patterns or class_index is not None:
            raise CompsearchError("--property already chooses the components",
                                  "drop --components/--class, or drop --ranking/--property")
        return query_from_ranking(ranking, property_name, text)
    patterns = [pattern.strip() for option in component_patterns for pattern in option.split(",") if pattern.strip()]
    return Query(components=patterns or None, text=text, class_index=class_index)


def output_paths(images: tuple[Path, ...], out: Path) -> list[Path]:
    """OUT itself for one image; OUT/<stem>.png for several."""
    if len(images) == 1:
        return [out]
    stems = [image.stem for image in images]
    if len(set(stems)) != len(stems):
        raise CompsearchError("several images share a file name", "explain them in separate runs")
    return [out / f"{stem}.png" for stem in stems]


@click.command("explain")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path, dir_okay=False))
@model_options
@aligner_option(purpose="; for --text and --property on a non-CLIP model (default: the ranking's)")
@clip_weights_option
@click.option("--ranking", "ranking_path", type=click.Path(exists=True, path_type=Path, dir_okay=False),
              help="Ranking from `compsearch rank`; with --property, explain that property's top components.")
@click.option("--property", "property_name", help="Property of the ranking whose top components are drawn.")
@click.option("--text", help="Project on this text's CLIP embedding (default with --property: its subspace).")
@click.option("--components", "component_patterns", multiple=True, metavar="NAMES",
              help="Components by name or glob, comma-separated or repeated (default: all decomposed).")
@click.option("--class", "class_index", type=click.IntRange(min=0),
              help="Project on this class of the model's head (default: the predicted class).")
@first_block_option
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="PNG to write (a folder of <image>.png for several images).")
@json_option
def explain_command(
    images: tuple[Path, ...], model_name: str, weights: Path | None, random_init: bool, device: str, batch_size: int,
    aligner_path: Path | None, clip_weights: Path | None, ranking_path: Path | None, property_name: str | None,
    text: str | None, component_patterns: tuple[str, ...], class_index: int | None, first_block: str | None,
    out: Path, as_json: bool,
) -> None:
    """Draw where chosen components' contribution comes from, token by token, over each image.

    The components' token split is projected on a text (--text), a property's subspace
    (--ranking R --property P), or a class of the head (--class N; default: the predicted
    class), and laid on the model's own patch grid.
    """
    from compsearch.mapping.align import load_aligner
    from compsearch.mapping.explain import components_caption, explain_images, render_overlay
    from compsearch.mapping.explain.run import text_encoder
    from compsearch.mapping.images import read_image
    from compsearch.mapping.rank import Ranking

    ranking = Ranking.load(ranking_path) if ranking_path else None
    query = build_query(ranking, property_name, text, component_patterns, class_index)
    model = load_model_from_options(model_name, weights, random_init, device)
    aligner_path = aligner_path or (Path(ranking.aligner) if ranking and ranking.aligner else None)
    aligner = load_aligner(aligner_path) if aligner_path else None
    encode_text = text_encoder(model, aligner, clip_weights) if query.text or query.property else None
    paths = output_paths(images, out)
    pictures = [read_image(image) for image in images]
    reports = []
    for start in range(0, len(pictures), batch_size):
        batch = explain_images(model, pictures[start:start + batch_size], query, aligner, encode_text, first_block)
        for image, path, explanation in zip(images[start:], paths[start:], batch):
            heatmap = explanation.heatmap
            title = f"{model.name}: {explanation.target}" + (f" {explanation.label}" if explanation.label else "")
            path.parent.mkdir(parents=True, exist_ok=True)
            render_overlay(explanation.view, explanation.pixel_heat(), f"{title} (heat per pixel)",
                           components_caption(heatmap.components, heatmap.located)).save(path)
            reports.append({"image": str(image), "png": str(path), **explanation.to_json()})
            if not as_json:
                click.echo(f"{image}: {title}; heat {heatmap.total[0]:+.4g} = {heatmap.grid[0].sum():+.4g} on the "
                           f"{heatmap.grid.shape[1]}×{heatmap.grid.shape[2]} grid {heatmap.prefix[0]:+.4g} prefix "
                           f"{heatmap.unlocated[0]:+.4g} unlocated; wrote {path}")
    if as_json:
        click.echo(json.dumps(reports if len(reports) > 1 else reports[0]))
