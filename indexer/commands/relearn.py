"""``compsearch add-property`` and ``compsearch reindex``: property indexes rebuilt from an
index's component store, with no image passing through the model (indexer/relearn.py)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from compsearch.mapping.commands.options import device_option, emit, json_option

if TYPE_CHECKING:
    from compsearch.indexer.relearn import RelearnSummary

index_dir = click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
weights_option = click.option("--weights", type=click.Path(path_type=Path, dir_okay=False),
                              help="The image model's weights file, if not where the manifest records it.")
ranking_option = click.option("--ranking", "ranking_path", type=click.Path(path_type=Path, dir_okay=False),
                              help="Ranking from `compsearch rank` (default: the index's own).")


def _parse_k(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, int]:
    parsed = {}
    for value in values:
        name, _, count = value.partition("=")
        if not name or not count.isdigit():
            raise click.BadParameter(f"{value!r} is not PROPERTY=N (e.g. colour=8)")
        parsed[name] = int(count)
    return parsed


@click.command("add-property")
@index_dir
@click.option("--property", "property_names", multiple=True, required=True, metavar="NAME",
              help="A property of the ranking to index (repeat for several).")
@ranking_option
@weights_option
@device_option
@json_option
def add_property_command(folder: Path, property_names: tuple[str, ...], ranking_path: Path | None,
                         weights: Path | None, device: str, as_json: bool) -> None:
    """Add property indexes to the index FOLDER from its component store: no image is read or
    passed through the model (its weights rebuild the stored components).

    \b
    Example:
      compsearch add-property photos.index --property texture --ranking ranking.json
    """
    from compsearch.indexer.relearn import add_properties

    emit(add_properties(folder, list(property_names), ranking_path, weights=weights, device=device),
         as_json, format_summary)


@click.command("reindex")
@index_dir
@click.option("--aligner", "aligner_path", type=click.Path(path_type=Path),
              help="A new aligner (rebuilds `full` too).")
@ranking_option
@click.option("--k", "k", multiple=True, callback=_parse_k, metavar="PROPERTY=N",
              help="Sum the top N components of PROPERTY (repeat for several).")
@weights_option
@device_option
@json_option
def reindex_command(folder: Path, aligner_path: Path | None, ranking_path: Path | None, k: dict[str, int],
                    weights: Path | None, device: str, as_json: bool) -> None:
    """Rebuild the property indexes of FOLDER under a new aligner, ranking or k, from its
    component store (no image passes through the model).

    \b
    Example:
      compsearch reindex photos.index --k colour=8
    """
    from compsearch.indexer.relearn import reindex

    emit(reindex(folder, aligner_path, ranking_path, k, weights=weights, device=device), as_json, format_summary)


def format_summary(summary: RelearnSummary) -> str:
    return "\n".join([
        f"{summary.folder}: rebuilt from the component store for {summary.images} images in {summary.seconds:.1f} s",
        *(f"  {name}.faiss  {factory}" for name, factory in summary.rebuilt.items()),
    ])
