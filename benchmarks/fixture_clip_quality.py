"""Zero-shot accuracy per factor of the world-trained reference CLIP, and the world's render speed.

    .venv/bin/python benchmarks/fixture_clip_quality.py [--images 500]

Loads the cached fixture (training it first if missing) through ``mapping.models.load_model``,
classifies held-out 224-px renders of the seed split (``test``) and of the compositional split
(held-out factor pairs) by their nearest zero-shot prompt, prints the table, and rewrites its
section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import json
import platform
import time

import click
import torch

from compsearch.indexer.world import FACTORS, SPLITS, render
from compsearch.indexer.world.fixture_clip import REPORT_NAME, fixture_clip_dir
from compsearch.indexer.world.zero_shot import zero_shot_accuracy
from compsearch.mapping.models import load_model
from results_section import publish


def renders_per_second(size: int, count: int = 200) -> float:
    items = SPLITS["test"].items(count)
    started = time.perf_counter()
    for item in items:
        render(item, size)
    return count / (time.perf_counter() - started)


@click.command()
@click.option("--images", type=int, default=1000, show_default=True, help="Held-out renders per split.")
def main(images: int) -> None:
    folder = fixture_clip_dir()
    report = json.loads((folder / REPORT_NAME).read_text())
    model = load_model(f"local-dir:{folder}")
    rows = {name: zero_shot_accuracy(model, SPLITS[name].items(images)) for name in ("test", "compositional")}
    speed = {size: renders_per_second(size) for size in (report["config"]["render_size"], 224)}

    factors = list(FACTORS)
    chance = " | ".join(f"{1 / len(FACTORS[f]):.2f}" for f in factors)
    lines = [
        "## Fixture CLIP: zero-shot accuracy per factor",
        "",
        "`.venv/bin/python benchmarks/fixture_clip_quality.py` "
        f"({images} held-out 224-px renders per split; {platform.processor() or platform.machine()}, "
        f"torch threads {torch.get_num_threads()})",
        "",
        "| split | " + " | ".join(factors) + " |",
        "|---|" + "---|" * len(factors),
        *(f"| {name} | " + " | ".join(f"{acc[f]:.3f}" for f in factors) + " |" for name, acc in rows.items()),
        f"| chance | {chance} |",
        "",
        f"Training: {report['steps']} steps of {report['config']['batch_size']} images "
        f"({report['config']['captions_per_image']} captions each) on {report['config']['train_images']} cached renders; "
        f"data {report['data_seconds']} s + training {report['train_seconds']} s wall with "
        f"{report['torch_threads']} torch threads on a shared CPU. World rendering: "
        + ", ".join(f"{rate:.0f} renders/s at {size} px" for size, rate in speed.items()) + " (one core).",
    ]
    publish("fixture-clip-quality", lines)


if __name__ == "__main__":
    main()
