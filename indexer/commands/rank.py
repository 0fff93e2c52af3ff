"""``compsearch rank``: the model side's command (mapping/commands/rank.py), plus ``--index
DIR``, which scores the text properties on an index's stored components (its component
store, expanded with the model's weights) instead of passing probe images through the model.
The model, aligner and CLIP then come from the index's manifest."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import click

from compsearch.mapping.commands.options import emit
from compsearch.mapping.commands.rank import rank_command as model_rank_command


def _optional(param: click.Parameter) -> click.Parameter:
    """``--model`` is not needed with --index (the manifest names it)."""
    if param.name != "model_name":
        return param
    param = copy.copy(param)
    param.required = False
    return param


def _rank(index_dir: Path | None, sample: int | None, **options: Any) -> None:
    if index_dir is None:
        if options["model_name"] is None:
            raise click.UsageError("pass --model (or --index DIR to rank on an index's stored components)")
        return model_rank_command.callback(**options)
    if options["example_specs"] or options["images"]:
        raise click.UsageError("--index ranks properties in words on the index's own images: "
                               "drop --images and --examples")
    from compsearch.indexer.relearn import rank_from_index
    from compsearch.mapping.properties import resolve_properties
    from compsearch.mapping.rank import format_ranking

    properties = resolve_properties(list(options["property_options"]))
    ranking = rank_from_index(index_dir, properties, options["k"], options["aligner_path"], sample,
                              weights=options["weights"], clip_weights=options["clip_weights"],
                              device=options["device"])
    out = options["out"]
    ranking.save(out)
    emit(ranking, options["as_json"], lambda result: f"{format_ranking(result)}\n\nwrote {out}")


rank_command = click.Command(
    "rank", callback=_rank, help=model_rank_command.help, short_help=model_rank_command.short_help,
    params=[*map(_optional, model_rank_command.params),
            click.Option(["--index", "index_dir"], type=click.Path(path_type=Path, file_okay=False, exists=True),
                         help="Score the text properties on this index's stored components (its component "
                              "store; model, aligner and CLIP from its manifest) instead of --images."),
            click.Option(["--sample"], type=click.IntRange(min=2),
                         help="With --index: only the first N stored images (default: all).")],
)
