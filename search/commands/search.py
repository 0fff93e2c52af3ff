"""``compsearch search``: query an index by text, reference image or indexed image, per property."""
from __future__ import annotations

from pathlib import Path

import click

from compsearch.mapping.commands.options import device_option, json_option
from compsearch.search.results import FORMATS


@click.command("search")
@click.argument("index_dir", metavar="INDEX_DIR|URL")
@click.option("--text", help="Words to search for (needs an index in a CLIP space).")
@click.option("--image", help="A reference image file: images like it in --property.")
@click.option("--id", "image_id", type=int, help="An indexed image's id (from earlier results), used like --image.")
@click.option("--property", "-p", "property_name", metavar="NAME",
              help="The property index the main term searches (default: full, the whole representation).")
@click.option("--weight", default=1.0, show_default=True, type=float, help="Weight of the main term.")
@click.option("--and", "and_terms", multiple=True, metavar="TERM", help="Add a term (syntax below); repeatable.")
@click.option("--not", "not_terms", multiple=True, metavar="TERM", help="Add a term with its weight negated; repeatable.")
@click.option("-k", "k", default=20, show_default=True, type=int, help="Number of results (up to 10,000).")
@click.option("--offset", default=0, show_default=True, type=int,
              help="Skip this many results first: the next page is --offset K (the order is stable).")
@click.option("--where", metavar="EXPR",
              help="Search only images whose columns match, e.g. \"taken >= '2020-01-01' and camera_model == 'X100V'\".")
@click.option("--format", "output_format", type=click.Choice(FORMATS), default=None,
              help="How results print: table (default), json (as --json), jsonl, csv, or paths (one per line).")
@click.option("--copy-to", type=click.Path(path_type=Path, file_okay=False), metavar="DIR",
              help="Also copy the result files into DIR as RANK-NAME.")
@click.option("--link-to", type=click.Path(path_type=Path, file_okay=False), metavar="DIR",
              help="Also symlink the result files into DIR as RANK-NAME.")
@click.option("--threshold", type=float, help="Keep only results whose total score is at least this.")
@click.option("--weights", type=click.Path(path_type=Path), help="The model's weights file, if not found where it was when indexing.")
@click.option("--clip-weights", type=click.Path(path_type=Path), help="The CLIP's weights file (for --text), likewise.")
@device_option
@click.option("--token", envvar="COMPSEARCH_TOKEN", show_envvar=True,
              help="With a URL: the token the server was started with.")
@json_option
def search_command(index_dir: str, text: str | None, image: str | None, image_id: int | None,
                   property_name: str | None, weight: float, and_terms: tuple[str, ...], not_terms: tuple[str, ...],
                   k: int, offset: int, where: str | None, output_format: str | None, copy_to: Path | None,
                   link_to: Path | None, threshold: float | None, weights: Path | None, clip_weights: Path | None,
                   device: str, token: str | None, as_json: bool) -> None:
    """Search the index in INDEX_DIR by one property: for a text (--text), a reference image
    (--image) or an indexed image (--id), the images whose --property is most alike.
    Given the URL of a running `compsearch serve` instead (http://HOST:PORT), the server
    answers, with its models already loaded.

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

    \b
    Filter with --where EXPR over the index's columns (path, folder, width, height, file_size,
    mtime, EXIF columns such as taken, camera_make, camera_model, iso, and any column carried
    from a Parquet/CSV listing; `compsearch info` lists them):
      compsearch search photos.index --text beach -p location \\
          --where "taken >= '2020-01-01' and camera_model == 'X100V'"
      compsearch search photos.index --text red -p colour --where "folder like 'trips/%'" \\
          -k 100 --offset 100 --format paths | xargs feh
      compsearch search http://127.0.0.1:8000 --text red -p colour   # a running `compsearch serve`
    """
    from compsearch.search.query import Query, parse_term
    from compsearch.search.remote import is_url, search_remote
    from compsearch.search.results import render

    if as_json and output_format not in (None, "json"):
        raise click.UsageError(f"--json and --format {output_format} disagree; give one")
    if copy_to and link_to:
        raise click.UsageError("give --copy-to or --link-to, not both")
    terms = [parse_term(spec) for spec in and_terms] + [parse_term(spec, -1.0) for spec in not_terms]
    if is_url(index_dir):
        results = search_remote(index_dir, text=text, image=Path(image) if image else None, id=image_id,
                                property=property_name, weight=weight, terms=terms, k=k, offset=offset, where=where,
                                threshold=threshold, token=token)
    else:
        from compsearch.search.index import open_index

        query = Query(text=text, image=image, id=image_id, property=property_name, weight=weight, terms=terms)
        index = open_index(Path(index_dir), device=device, weights=weights, clip_weights=clip_weights)
        results = index.search_batch([query], k=k, threshold=threshold, offset=offset, where=where)[0]
    # JSON: the one schema of the HTTP API too (query, results with id, path, score, scores, metadata, seconds)
    click.echo(render(results, "json" if as_json else output_format or "table"))
    if copy_to or link_to:
        from compsearch.search.export import export_results

        exported = export_results(results, copy_to or link_to, link=link_to is not None)
        missing = f"; {len(exported.missing)} result file(s) no longer exist" if exported.missing else ""
        click.echo(f"{'linked' if link_to else 'copied'} {len(exported.written)} file(s) into {exported.folder}{missing}",
                   err=True)
