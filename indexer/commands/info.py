"""``compsearch info``: what an index directory holds."""
from __future__ import annotations

from pathlib import Path

import click

from compsearch.mapping.commands.options import emit, json_option


@click.command("info")
@click.argument("index_dir", type=click.Path(path_type=Path, file_okay=False))
@json_option
def info_command(index_dir: Path, as_json: bool) -> None:
    """Describe the index in INDEX_DIR: images indexed, skipped (with reasons), duplicates,
    properties with their k and components, index types and sizes, model, aligner and CLIP."""
    from compsearch.indexer.info import format_info, index_info

    info = index_info(index_dir)
    emit(info, as_json, format_info)  # the JSON is what /api/info serves
