"""``compsearch decompose``: split images' representations into components, show the largest."""
from __future__ import annotations

from pathlib import Path

import click

from compsearch.mapping.commands.options import emit, first_block_option, json_option, load_model_from_options, model_options


@click.command("decompose")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@model_options
@first_block_option
@click.option("--tokens", "split_tokens", is_flag=True,
              help="Also split each attention head by token and show the tokens it reads most.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1),
              help="Components shown per image, largest norm first.")
@json_option
def decompose_command(
    images: tuple[Path, ...], model_name: str, weights: Path | None, random_init: bool, device: str,
    batch_size: int, first_block: str | None, split_tokens: bool, top: int, as_json: bool,
) -> None:
    """Split each IMAGE's representation into its components and show the largest.

    The model's output z (pre-logits for timm models, the normalised image embedding for
    CLIP) is written exactly as a sum of named parts: `init` (the stream entering the first
    decomposed block), every attention head (`blocks.9.attn.h7`), every MLP (`blocks.9.mlp`)
    and `bias`. For each image this prints the parts with the largest norm, their share of
    z (⟨c, z⟩/‖z‖², summing to 1), and the relative reconstruction error ‖Σc − z‖/‖z‖.
    """
    from compsearch.mapping.decompose.report import decompose_images, format_report
    from compsearch.mapping.images import read_image

    pictures = [read_image(path) for path in images]  # fail on a bad file before loading the model
    loaded = load_model_from_options(model_name, weights, random_init, device)
    report = decompose_images(
        loaded, pictures, [str(path) for path in images], first_block, split_tokens, top, batch_size
    )
    emit(report, as_json, format_report)
