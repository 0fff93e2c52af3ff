"""``compsearch describe``: name what each attention head encodes, in words (TextSpan)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from mapping.align import load_aligner
from mapping.align.features import clip_for_aligner
from mapping.commands.align import load_from_options, model_options
from mapping.describe import describe_heads, read_text_bank


@click.command("describe")
@model_options
@click.option("--aligner", "aligner_path", required=True, type=click.Path(path_type=Path),
              help="Aligner from `compsearch align`.")
@click.option("--clip-weights", type=click.Path(path_type=Path), help="Local weights of the aligner's CLIP.")
@click.option("--images", "images_dir", required=True, type=click.Path(path_type=Path),
              help="Images over which the heads' variation is measured: a folder, a list file or a "
                   "Parquet/CSV file with a `path` column.")
@click.option("--bank", type=click.Path(path_type=Path, dir_okay=False),
              help="Text bank: one description a line, or a YAML list (default: the shipped bank).")
@click.option("--heads", "head_patterns", multiple=True, metavar="NAME|GLOB",
              help="Heads to describe, e.g. blocks.11.attn.h3 or 'blocks.11.attn.*' (default: all).")
@click.option("--count", default=5, show_default=True, type=click.IntRange(min=1), help="Descriptions per head.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def describe_command(
    model_name: str, weights: Path | None, random_init: bool, device: str, batch_size: int, aligner_path: Path,
    clip_weights: Path | None, images_dir: Path, bank: Path | None, head_patterns: tuple[str, ...], count: int,
    as_json: bool,
) -> None:
    """For each head, the bank texts along which its aligned outputs vary most (TextSpan)."""
    model = load_from_options(model_name, weights, random_init, device)
    aligner = load_aligner(aligner_path)
    clip = clip_for_aligner(aligner, model, clip_weights)
    descriptions = describe_heads(model, aligner, images_dir, clip.encode_text, read_text_bank(bank), head_patterns,
                                  count, batch_size, progress=not as_json)
    if as_json:
        click.echo(json.dumps({head: [{"text": text, "share": share} for text, share in picks]
                               for head, picks in descriptions.items()}, indent=2))
        return
    for head, picks in descriptions.items():
        click.echo(head)
        for text, share in picks:
            click.echo(f"  {share:6.1%}  {text}")
