"""``compsearch world``: render the labelled synthetic world, build the fixture CLIP."""
from __future__ import annotations

import time
from pathlib import Path

import click

from compsearch.indexer.world.splits import SPLITS, get_split
from compsearch.mapping.commands.options import emit, json_option


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
    from compsearch.indexer.world.dataset import write_split

    started = time.perf_counter()
    labels = write_split(out_dir, get_split(split_name, seed), count, size)
    click.echo(f"wrote {labels} ({count} images, {time.perf_counter() - started:.1f}s)")


@world.command("fixture-clip")
@click.option("--rebuild", is_flag=True, help="Retrain even if the cached fixture exists.")
@json_option
def fixture_clip_command(rebuild: bool, as_json: bool) -> None:
    """Train (or find in the cache) the small reference CLIP trained on the world; print its name.

    Prints only `local-dir:<folder>` on stdout (a summary of its training goes to stderr), so
    it feeds other commands directly: `--clip "$(compsearch world fixture-clip)"`. With
    --json, stdout holds its training report instead, with the name under `model`.
    """
    from compsearch.indexer.world.fixture_clip import fixture_clip_dir, training_report

    report = training_report(fixture_clip_dir(rebuild=rebuild))
    if not as_json:
        accuracy = ", ".join(f"{factor} {value:.2f}" for factor, value in report.test_accuracy.items())
        click.echo(f"fixture CLIP: {report.steps} training steps; zero-shot accuracy on the world's test split: "
                   f"{accuracy}", err=True)
    emit(report, as_json, lambda fixture: fixture.model)
