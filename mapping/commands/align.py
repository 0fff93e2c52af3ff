"""``compsearch align``: train the aligner of a model's components to a CLIP space."""
from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

import click

from compsearch.mapping.align import TrainSettings, aligner_paths
from compsearch.mapping.commands.options import (
    clip_weights_option,
    emit,
    first_block_option,
    images_option,
    json_option,
    load_clip,
    load_model_from_options,
    model_options,
)

if TYPE_CHECKING:
    from compsearch.mapping.align import AlignerMeta

DEFAULTS = TrainSettings()


@click.command("align")
@model_options
@click.option("--clip", "clip_name", required=True, metavar="NAME",
              help="open_clip model whose image space is the target: NAME:PRETRAINED or local-dir:/folder "
                   "(offline: the fixture CLIP, `compsearch world fixture-clip` prints it).")
@clip_weights_option
@images_option("Training images", required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Aligner path: writes OUT.safetensors and OUT.json.")
@first_block_option
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Feature cache folder (default: OUT.cache); an interrupted run resumes from it.")
@click.option("--epochs", default=DEFAULTS.max_epochs, show_default=True, type=click.IntRange(min=1),
              help="Most passes over the training images (early stopping may end sooner).")
@click.option("--lr", "learning_rate", default=DEFAULTS.learning_rate, show_default=True, type=float,
              help="Adam learning rate.")
@click.option("--train-batch-size", default=DEFAULTS.batch_size, show_default=True, type=click.IntRange(min=1),
              help="Images per training step.")
@click.option("--patience", default=DEFAULTS.patience, show_default=True, type=click.IntRange(min=1),
              help="Stop after this many batches without a better loss.")
@click.option("--heldout", "heldout_fraction", default=DEFAULTS.heldout_fraction, show_default=True,
              type=click.FloatRange(0.0, 0.9), help="Share of images held out to measure the cosine.")
@json_option
def align_command(
    model_name: str, weights: Path | None, random_init: bool, device: str, batch_size: int, clip_name: str,
    clip_weights: Path | None, images: Path, out: Path, first_block: str | None, cache_dir: Path | None,
    epochs: int, learning_rate: float, train_batch_size: int, patience: int, heldout_fraction: float,
    as_json: bool,
) -> None:
    """Train one linear map per component into CLIP space and report the held-out cosine."""
    from compsearch.mapping.align import align

    model = load_model_from_options(model_name, weights, random_init, device)
    clip = load_clip(clip_name, clip_weights, random_init, device)
    settings = TrainSettings(learning_rate=learning_rate, batch_size=train_batch_size, patience=patience,
                             max_epochs=epochs, heldout_fraction=heldout_fraction)
    aligner = align(model, clip, images, out, first_block, settings, cache_dir, batch_size)
    emit(aligner.meta, as_json, lambda meta: format_alignment(meta, out))


def format_alignment(meta: AlignerMeta, out: Path) -> str:
    kind = "identity (the model is the CLIP)" if meta.identity else f"final loss {meta.final_loss:.4f}"
    cosine = "n/a (no image held out)" if meta.heldout_cosine is None else f"{meta.heldout_cosine:.4f}"
    files = " and ".join(str(path) for path in aligner_paths(out))
    return (f"{meta.model_name} → {meta.clip_name}: {len(meta.component_names)} components from "
            f"{meta.first_block}, {kind}\nheld-out cosine {cosine} on {meta.heldout_images} images; wrote {files}")
