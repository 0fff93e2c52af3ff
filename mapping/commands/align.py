"""``compsearch align``: train the aligner of a model's components to a CLIP space.

Also holds the model options that ``rank`` and ``describe`` share with it.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from mapping.align import TrainSettings, align
from mapping.models import LoadedModel, load_model


def model_options(command: Callable) -> Callable:
    """--model, --weights, --random-init, --device, --batch-size."""
    for option in reversed([
        click.option("--model", "model_name", required=True,
                     help="timm or open_clip name of the model whose components are used."),
        click.option("--weights", type=click.Path(path_type=Path), help="Local weights file or folder."),
        click.option("--random-init", is_flag=True, help="Random weights (smoke tests without files)."),
        click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda."),
        click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
                     help="Images per forward pass."),
    ]):
        command = option(command)
    return command


def load_from_options(model_name: str, weights: Path | None, random_init: bool, device: str) -> LoadedModel:
    return load_model(model_name, weights=weights, device=device, pretrained=not random_init)


@click.command("align")
@model_options
@click.option("--clip", "clip_name", required=True, help="open_clip model whose image space is the target.")
@click.option("--clip-weights", type=click.Path(path_type=Path), help="Local weights of the CLIP.")
@click.option("--images", "images_dir", required=True, type=click.Path(path_type=Path),
              help="Training images: a folder (searched recursively), a list file or a Parquet/CSV file "
                   "with a `path` column.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Aligner path: writes OUT.safetensors and OUT.json.")
@click.option("--first-block", default=None, metavar="NAME|INDEX|all", help="First decomposed block.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Feature cache folder (default: OUT.cache); an interrupted run resumes from it.")
@click.option("--epochs", default=TrainSettings.max_epochs, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", "learning_rate", default=TrainSettings.learning_rate, show_default=True, type=float)
@click.option("--train-batch-size", default=TrainSettings.batch_size, show_default=True, type=click.IntRange(min=1))
@click.option("--patience", default=TrainSettings.patience, show_default=True, type=click.IntRange(min=1),
              help="Stop after this many batches without a better loss.")
@click.option("--heldout", "heldout_fraction", default=TrainSettings.heldout_fraction, show_default=True,
              type=click.FloatRange(0.0, 0.9), help="Share of images held out to measure the cosine.")
def align_command(
    model_name: str, weights: Path | None, random_init: bool, device: str, batch_size: int, clip_name: str,
    clip_weights: Path | None, images_dir: Path, out: Path, first_block: str | None, cache_dir: Path | None,
    epochs: int, learning_rate: float, train_batch_size: int, patience: int, heldout_fraction: float,
) -> None:
    """Train one linear map per component into CLIP space and report the held-out cosine."""
    model = load_from_options(model_name, weights, random_init, device)
    clip = load_model(clip_name, weights=clip_weights, device=device, pretrained=not random_init)
    settings = TrainSettings(learning_rate=learning_rate, batch_size=train_batch_size, patience=patience,
                             max_epochs=epochs, heldout_fraction=heldout_fraction)
    aligner = align(model, clip, images_dir, out, first_block, settings, cache_dir, batch_size)
    meta = aligner.meta
    kind = "identity (the model is the CLIP)" if meta.identity else f"final loss {meta.final_loss:.4f}"
    cosine = "n/a (no image held out)" if meta.heldout_cosine is None else f"{meta.heldout_cosine:.4f}"
    click.echo(f"{meta.model_name} → {meta.clip_name}: {len(meta.component_names)} components from "
               f"{meta.first_block}, {kind}")
    click.echo(f"held-out cosine {cosine} on {meta.heldout_images} images; wrote {out}")
