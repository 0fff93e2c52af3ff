"""``compsearch world``: render the labelled synthetic world, build the fixture CLIP."""
from __future__ import annotations

import time
from pathlib import Path

import click

from indexer.world.splits import SPLITS, get_split


@click.group()
def world() -> None:
    """The labelled synthetic world (shapes, colours, patterns, scenes) and its fixture CLIP."""


@world.command("render")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", "split_name", type=click.Choice(list(SPLITS)), default="train", show_default=True,
              help="train/test exclude the held-out factor pairs; compositional holds only them.")
@click.option("--count", type=int, default=1000, show_default=True, help="Number of images.")
@click.option("--size", type=int, default=224, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=int, default=None, help="Replace the split's standard seed (a fresh, disjoint draw).")
def render_command(out_dir: Path, split_name: str, count: int, size: int, seed: int | None) -> None:
    """Write COUNT images of a split as PNG plus <split>.parquet of labels and captions (resumable)."""
    from indexer.world.dataset import write_split

    started = time.perf_counter()
    labels = write_split(out_dir, get_split(split_name, seed), count, size)
    click.echo(f"wrote {labels} ({count} images, {time.perf_counter() - started:.1f}s)")


@world.command("fixture-clip")
@click.option("--rebuild", is_flag=True, help="Retrain even if the cached fixture exists.")
def fixture_clip_command(rebuild: bool) -> None:
    """Train (or find in the cache) the small reference CLIP trained on the world; print its folder.

    The folder loads like any open_clip model: load_model('local-dir:<folder>').
    """
    from indexer.world.fixture_clip import REPORT_NAME, fixture_clip_dir

    folder = fixture_clip_dir(rebuild=rebuild)
    click.echo((folder / REPORT_NAME).read_text())
    click.echo(f"local-dir:{folder}")
