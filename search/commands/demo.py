"""``compsearch demo``: the whole product, offline, on the synthetic world."""
from __future__ import annotations

from pathlib import Path

import click

from compsearch.mapping.commands.options import emit, json_option


def _default_workdir() -> Path:
    import os

    return Path(os.environ.get("COMPSEARCH_CACHE", "~/.cache/compsearch")).expanduser() / "demo"


@click.command("demo")
@click.option("--weights", type=click.Path(path_type=Path, exists=True),
              help="Real DeiT-tiny weights (file or folder): decompose DeiT-tiny aligned to the fixture CLIP. "
                   "Found by itself in $COMPSEARCH_WEIGHTS_DIR.")
@click.option("--model", "model_choice", type=click.Choice(["auto", "deit", "fixture"]), default="auto",
              show_default=True, help="deit: real DeiT-tiny aligned to the fixture CLIP; fixture: the fixture "
                                      "CLIP decomposes itself; auto: deit when its weights are found.")
@click.option("--images", "count", default=1000, show_default=True, type=click.IntRange(min=50),
              help="World images to index.")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False),
              help="Where renders, aligner, ranking and index are kept (default: $COMPSEARCH_CACHE/demo).")
@json_option
def demo_command(weights: Path | None, model_choice: str, count: int, workdir: Path | None, as_json: bool) -> None:
    """Index a labelled synthetic world and search it by property — no network, no data needed.

    \b
    1. renders world images (a shape of some colour and pattern on a scene);
    2. takes the small CLIP trained on that world (shipped with compsearch);
    3. ranks the model's components for shape, colour, pattern and scene;
    4. indexes the images: one FAISS index per property, plus `full`;
    5. answers text queries ("striped") and reference-image queries ("same colour as this")
       per property, and prints their precision@10 — the labels are known — next to what
       the full representation gives, plus a few results and the commands for your photos.
    Everything is cached in --workdir: a rerun takes seconds.
    """
    from compsearch.search.demo import format_demo, run_demo

    def say(line: str) -> None:
        if not as_json:
            click.echo(line, err=True)

    report = run_demo(workdir or _default_workdir(), count, weights, progress=not as_json, say=say,
                      model_choice=model_choice)
    emit(report, as_json, format_demo)
