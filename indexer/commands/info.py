"""``compsearch info``: what an index directory holds."""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("info")
@click.argument("index_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (what /api/info serves).")
def info_command(index_dir: Path, as_json: bool) -> None:
    """Describe the index in INDEX_DIR: images indexed, skipped (with reasons), duplicates,
    properties with their k and components, index types and sizes, model, aligner and CLIP."""
    from indexer.info import format_info, index_info

    info = index_info(index_dir)
    click.echo(json.dumps(info, indent=2) if as_json else format_info(info))
