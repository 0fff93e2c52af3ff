"""``compsearch rank``: rank a model's components per property and write the ranking JSON."""
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


KOption = int | str | dict[str, int | str] | None


def parse_k(ctx: click.Context, param: click.Parameter, options: tuple[str, ...]) -> KOption:
    """``--k 3`` or ``--k auto`` for every property, or ``--k colour=2 --k shape=auto``."""
    if not options:
        return None
    from compsearch.mapping.rank.auto_k import AUTO

    def value(text: str) -> int | str:
        return AUTO if text.strip() == AUTO else int(text)

    try:
        if len(options) == 1 and "=" not in options[0]:
            return value(options[0])
        return {name.strip(): value(number) for name, _, number in (option.partition("=") for option in options)}
    except ValueError:
        raise click.BadParameter(f"{' '.join(options)} is not N, auto or NAME=N; write --k 3, --k auto or "
                                 "--k colour=2", ctx, param) from None


@click.command("rank")
@model_options
@aligner_option(purpose="; needed for properties in words")
@clip_weights_option
@images_option("Probe images the text properties are scored on")
@click.option("--property", "property_options", multiple=True, metavar="NAME|NAME=D1,D2|FILE",
              help="A built-in property, one defined inline, or a YAML/JSON file (repeatable; "
                   "default: all built-ins unless --examples is given).")
@click.option("--examples", "example_specs", multiple=True, metavar="DIR|TABLE:COLUMN",
              help="A property defined by labelled images: DIR/VALUE/*.jpg, or a Parquet/CSV table's COLUMN "
                   "of labels beside its `path` or `file` column, e.g. world/train.parquet:colour (repeatable).")
@click.option("--k", "k", multiple=True, metavar="N|auto|NAME=N", callback=parse_k,
              help="Components summed per property: one number, or NAME=N per property (default: the reference "
                   "top-k of the model's family). auto chooses it per property on held-out images: the k whose "
                   "vector best retrieves the property's values and least the other properties' (the curve is "
                   "printed and kept in the ranking).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Ranking JSON to write.")
@json_option
def rank_command(
    model_name: str, weights: Path | None, random_init: bool, device: str, batch_size: int,
    aligner_path: Path | None, clip_weights: Path | None, images: Path | None,
    property_options: tuple[str, ...], example_specs: tuple[str, ...], k: KOption, out: Path,
    as_json: bool,
) -> None:
    """Rank components per property (S_p contrasted with the other properties) and write OUT.

    Properties in words (built-in, inline NAME=D1,D2 or a YAML file) are scored on the
    --images probe set through --aligner; properties by --examples need no aligner.
    Components that do not vary over the images (`bias`) are listed apart, never ranked.
    """
    from compsearch.mapping.align import check_aligner_fit, load_aligner
    from compsearch.mapping.properties import load_examples, resolve_properties
    from compsearch.mapping.rank import check_rank_inputs, format_ranking, rank

    # Everything the files and options say is checked before the model loads.
    properties = resolve_properties(list(property_options)) if property_options or not example_specs else []
    examples = [load_examples(spec) for spec in example_specs]
    aligner = load_aligner(aligner_path) if aligner_path else None
    check_rank_inputs(properties, examples, aligner, images)
    model = load_model_from_options(model_name, weights, random_init, device)
    encode_text = None
    if aligner and properties:
        clip = load_clip_for_aligner(aligner, model, clip_weights)
        check_aligner_fit(model, aligner, clip, images)
        encode_text = clip.encode_text
    ranking = rank(model, aligner, images, properties, examples, encode_text, k, aligner_path, batch_size,
                   progress=True)
    ranking.save(out)
    emit(ranking, as_json, lambda result: f"{format_ranking(result)}\n\nwrote {out}")
