"""``compsearch search``: query an index by text, reference image or indexed image, per property."""
from __future__ import annotations

import click

from compsearch.mapping.commands.options import options
from compsearch.search.commands.search_options import SEARCH_OPTIONS
from compsearch.search.commands.search_run import run_search


def _click_settings(settings: dict) -> dict:
    """An option's settings as click takes them: ``choices`` as a ``click.Choice``."""
    if "choices" not in settings:
        return settings
    return {**{name: value for name, value in settings.items() if name != "choices"},
            "type": click.Choice(settings["choices"])}


@click.command("search")
@click.argument("index_dir", metavar="INDEX_DIR|URL")
@options(*(click.option(*flags, **_click_settings(settings)) for flags, settings in SEARCH_OPTIONS))
def search_command(**parameters: object) -> None:
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
    run_search(**parameters)
