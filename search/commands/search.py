"""``compsearch search``: query an index by text, reference image or indexed image, per property."""
from __future__ import annotations

from pathlib import Path

import click

from compsearch.mapping.commands.options import device_option, emit, json_option


@click.command("search")
@click.argument("index_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--text", help="Words to search for (needs an index in a CLIP space).")
@click.option("--image", help="A reference image file: images like it in --property.")
@click.option("--id", "image_id", type=int, help="An indexed image's id (from earlier results), used like --image.")
@click.option("--property", "-p", "property_name", metavar="NAME",
              help="The property index the main term searches (default: full, the whole representation).")
@click.option("--weight", default=1.0, show_default=True, type=float, help="Weight of the main term.")
@click.option("--and", "and_terms", multiple=True, metavar="TERM", help="Add a term (syntax below); repeatable.")
@click.option("--not", "not_terms", multiple=True, metavar="TERM", help="Add a term with its weight negated; repeatable.")
@click.option("-k", "k", default=20, show_default=True, type=int, help="Number of results.")
@click.option("--threshold", type=float, help="Keep only results whose total score is at least this.")
@click.option("--weights", type=click.Path(path_type=Path), help="The model's weights file, if not found where it was when indexing.")
@click.option("--clip-weights", type=click.Path(path_type=Path), help="The CLIP's weights file (for --text), likewise.")
@device_option
@json_option
def search_command(index_dir: Path, text: str | None, image: str | None, image_id: int | None,
                   property_name: str | None, weight: float, and_terms: tuple[str, ...], not_terms: tuple[str, ...],
                   k: int, threshold: float | None, weights: Path | None, clip_weights: Path | None, device: str,
                   as_json: bool) -> None:
    """Search the index in INDEX_DIR by one property: for a text (--text), a reference image
    (--image) or an indexed image (--id), the images whose --property is most alike.

    \b
    Combine terms with --and TERM / --not TERM, where TERM is
      [WEIGHT*]PROPERTY:KIND:VALUE      KIND is text, image or id
    An image scores Σ weight × cosine over all terms; --not negates a term's weight
    (pushes away); the main term's weight is --weight. Quote terms holding spaces or '*'.

    \b
    Examples:
      compsearch search photos.index --text striped --property pattern
      compsearch search photos.index --image beach.jpg -p colour \\
          --and pattern:text:striped --not pattern:text:plain
      compsearch search photos.index --id 42 -p texture --and '0.5*colour:text:dark red' --json
    """
    from compsearch.search.index import open_index
    from compsearch.search.query import Query, parse_term
    from compsearch.search.results import format_results

    terms = [parse_term(spec) for spec in and_terms] + [parse_term(spec, -1.0) for spec in not_terms]
    query = Query(text=text, image=image, id=image_id, property=property_name, weight=weight, terms=terms)
    index = open_index(index_dir, device=device, weights=weights, clip_weights=clip_weights)
    results = index.search_batch([query], k=k, threshold=threshold)[0]
    emit(results, as_json, format_results)  # JSON: query, results (id, path, score, scores, metadata), seconds
