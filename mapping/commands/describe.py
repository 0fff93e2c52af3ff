"""``compsearch describe``: name what each attention head encodes, in words (TextSpan)."""
from __future__ import annotations

from pathlib import Path

import click

from compsearch.mapping.commands.options import (
    aligner_option,
    clip_weights_option,
    emit,
    images_option,
    json_option,
    load_clip_for_aligner,
    load_model_from_options,
    model_options,
)


@click.command("describe")
@model_options
@aligner_option(required=True)
@clip_weights_option
@images_option("Images over which the heads' variation is measured", required=True)
@click.option("--bank", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Text bank: one description a line, or a YAML list (default: the shipped bank).")
@click.option("--heads", "head_patterns", multiple=True, metavar="NAME|GLOB",
              help="Heads to describe, e.g. blocks.11.attn.h3 or 'blocks.11.attn.*' (default: all).")
@click.option("--count", default=5, show_default=True, type=click.IntRange(min=1), help="Descriptions per head.")
@json_option
def describe_command(
    model_name: str, weights: Path | None, random_init: bool, device: str, batch_size: int, aligner_path: Path,
    clip_weights: Path | None, images: Path, bank: Path | None, head_patterns: tuple[str, ...], count: int,
    as_json: bool,
) -> None:
    """For each head, the bank texts along which its aligned outputs vary most (TextSpan).

    Each text is shown with the share of the head's variance along it, once the texts
    listed above it were projected out: the shares add up to what the texts explain
    together (at most 100 %). Only attention heads are described.
    """
    from compsearch.mapping.align import check_aligner_fit, load_aligner
    from compsearch.mapping.describe import describe_heads, format_descriptions, read_text_bank, select_heads

    aligner = load_aligner(aligner_path)
    texts = read_text_bank(bank)
    select_heads(aligner.component_names, head_patterns)  # a pattern matching nothing fails before the model loads
    model = load_model_from_options(model_name, weights, random_init, device)
    clip = load_clip_for_aligner(aligner, model, clip_weights)
    check_aligner_fit(model, aligner, clip, images)
    report = describe_heads(model, aligner, images, clip.encode_text, texts, head_patterns, count, batch_size,
                            progress=True)
    emit(report, as_json, format_descriptions)
