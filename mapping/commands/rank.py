"""``compsearch rank``: rank a model's components per property and write the ranking JSON."""
from __future__ import annotations

from pathlib import Path

import click

from mapping.align import load_aligner
from mapping.align.features import clip_for_aligner
from mapping.commands.align import load_from_options, model_options
from mapping.properties import PropertyError, load_examples, resolve_properties
from mapping.rank import Ranking, rank

SHOWN = 5  # components listed per property


def parse_k(options: tuple[str, ...]) -> int | dict[str, int] | None:
    """``--k 3`` for every property, or ``--k colour=2 --k shape=5``."""
    if not options:
        return None
    try:
        if len(options) == 1 and "=" not in options[0]:
            return int(options[0])
        return {name.strip(): int(value) for name, _, value in (option.partition("=") for option in options)}
    except ValueError:
        raise PropertyError(f"--k {' '.join(options)} is not N or NAME=N", "write --k 3 or --k colour=2") from None


def format_ranking(ranking: Ranking) -> str:
    lines = [f"{ranking.model_name}: {ranking.probe_images} probe images, aligner {ranking.aligner or 'none'}"]
    for prop in ranking.properties:
        lines.append(f"\n{prop.name} ({prop.source}, k={prop.k})   score   own")
        for position, (name, score, own) in enumerate(zip(prop.components, prop.scores, prop.own_scores)):
            if position == max(SHOWN, prop.k):
                break
            marker = "*" if position < prop.k else " "
            lines.append(f" {marker} {name:<28} {score:+.3f}  {own:+.3f}")
        if prop.constant:
            lines.append(f"   constant, not ranked: {', '.join(prop.constant)}")
    return "\n".join(lines)


@click.command("rank")
@model_options
@click.option("--aligner", "aligner_path", type=click.Path(path_type=Path),
              help="Aligner from `compsearch align` (needed for properties given in words).")
@click.option("--clip-weights", type=click.Path(path_type=Path), help="Local weights of the aligner's CLIP.")
@click.option("--images", "images_dir", type=click.Path(path_type=Path),
              help="Probe images the text properties are scored on: a folder, a list file or a "
                   "Parquet/CSV file with a `path` column.")
@click.option("--property", "property_options", multiple=True, metavar="NAME|NAME=D1,D2|FILE",
              help="A built-in property, one defined inline, or a YAML/JSON file (repeatable; "
                   "default: all built-ins unless --examples is given).")
@click.option("--examples", "example_dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="A property defined by example images: DIR/VALUE/*.jpg (repeatable).")
@click.option("--k", "k_options", multiple=True, metavar="N|NAME=N", help="Override the reference top-k.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Ranking JSON to write.")
def rank_command(
    model_name: str, weights: Path | None, random_init: bool, device: str, batch_size: int,
    aligner_path: Path | None, clip_weights: Path | None, images_dir: Path | None,
    property_options: tuple[str, ...], example_dirs: tuple[Path, ...], k_options: tuple[str, ...], out: Path,
) -> None:
    """Rank components per property (S_p contrasted with the other properties) and write OUT."""
    model = load_from_options(model_name, weights, random_init, device)
    properties = resolve_properties(list(property_options)) if property_options or not example_dirs else []
    aligner = load_aligner(aligner_path) if aligner_path else None
    encode_text = clip_for_aligner(aligner, model, clip_weights).encode_text if aligner and properties else None
    ranking = rank(
        model, aligner, images_dir, properties, [load_examples(folder) for folder in example_dirs], encode_text,
        parse_k(k_options), aligner_path, batch_size, progress=True,
    )
    ranking.save(out)
    click.echo(format_ranking(ranking))
    click.echo(f"\nwrote {out}")
